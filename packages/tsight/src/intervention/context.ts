/**
 * Which trace and invoke the running intervention code belongs to, carried across its `await`s. A barrier uses it
 * to know which invoke arrived, and a trace started inside another trace's intervention is refused at once instead
 * of waiting forever for the outer one. On only while some invoke's code runs (see tensor/async-scope.ts).
 */
import { AsyncScope } from "../tensor/async-scope.js";
import type { Mediator } from "./mediator.js";

export interface InvokeContext {
  /** The module tree being traced. */
  model: object;
  mediator: Mediator;
}

const invokes = new AsyncScope<InvokeContext>();

/** Runs `fn` (an invoke's code) so that everything it does, across awaits, knows its invoke, until what it returns settles. */
export function runInInvoke<T>(context: InvokeContext, fn: () => T): T {
  return invokes.run(context, fn);
}

/** The invoke whose code is running now, if any. */
export function currentInvoke(): InvokeContext | undefined {
  return invokes.get();
}
