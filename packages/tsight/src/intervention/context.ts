/**
 * Which trace and invoke the running intervention code belongs to, carried across its `await`s (Node's
 * AsyncLocalStorage). A barrier uses it to know which invoke arrived, and a trace started inside another trace's
 * intervention is refused at once instead of waiting forever for the outer one.
 */
import type { AsyncLocalStorage } from "node:async_hooks";
import { lazyNode } from "../tensor/index.js";
import type { Mediator } from "./mediator.js";

const hooks = lazyNode<typeof import("node:async_hooks")>("node:async_hooks");

export interface InvokeContext {
  /** The module tree being traced. */
  model: object;
  mediator: Mediator;
}

let storage: AsyncLocalStorage<InvokeContext> | undefined;

function store(): AsyncLocalStorage<InvokeContext> {
  return (storage ??= new hooks.AsyncLocalStorage<InvokeContext>());
}

/** Runs `fn` (an invoke's code) so that everything it does, across awaits, knows its invoke. */
export function runInInvoke<T>(context: InvokeContext, fn: () => T): T {
  return store().run(context, fn);
}

/** The invoke whose code is running now, if any. */
export function currentInvoke(): InvokeContext | undefined {
  return storage?.getStore();
}
