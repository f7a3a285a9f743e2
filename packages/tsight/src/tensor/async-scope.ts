/**
 * A value carried across the awaits of the code that runs with it (Node's AsyncLocalStorage), switched on only
 * while such code is in flight.
 *
 * On Node 20, while any AsyncLocalStorage is on, every promise in the process runs its async hooks: about 0.2 µs
 * each per storage on, where a promise alone costs 0.05. tsight has two (a graph capture, a noGrad scope; an
 * invoke's code is told by its stack instead, see intervention/context.ts), and a trace makes a few dozen promises
 * per value read; left on after their first use, they made every later forward, trace and generation pay for them.
 * A scope is on from a `run` until what it returned has settled, and off when no run is in flight (switching costs
 * about 2 µs).
 */
import type { AsyncLocalStorage } from "node:async_hooks";
import { lazyNode } from "./node.js";

const hooks = lazyNode<typeof import("node:async_hooks")>("node:async_hooks");

/** A promise (of this realm or another) or any other thenable. */
export function isThenable(x: unknown): x is PromiseLike<unknown> {
  return x !== null && (typeof x === "object" || typeof x === "function") && typeof (x as { then?: unknown }).then === "function";
}

export class AsyncScope<T> {
  /** null: not in Node (code then runs unscoped, see run). */
  private storage: AsyncLocalStorage<T> | null | undefined;
  /** Runs in flight (begun, and what they returned not settled yet). */
  private live = 0;

  /** The value of the run the calling code is part of, if any. */
  get(): T | undefined {
    return this.storage?.getStore();
  }

  /**
   * Runs `fn` with `value`, carried across its awaits until what it returns has settled (for a thenable returned,
   * a promise of the same outcome is returned instead; `fn` throwing, or returning something else, ends the run
   * at once). Not in Node: `fn` just runs.
   */
  run<R>(value: T, fn: () => R): R {
    const storage = this.open();
    if (!storage) return fn();
    this.live++;
    let result: R;
    try {
      result = storage.run(value, fn);
    } catch (e) {
      this.end();
      throw e;
    }
    if (!isThenable(result)) {
      this.end();
      return result;
    }
    // A promise of its own that ends the run when the result settles, with the same outcome (a failure nobody
    // handles is still reported), for a thenable of any kind (another realm's promise too).
    return Promise.resolve(result).then(
      (v) => (this.end(), v),
      (e: unknown) => {
        this.end();
        throw e;
      },
    ) as R;
  }

  private open(): AsyncLocalStorage<T> | null {
    if (this.storage === undefined) {
      try {
        this.storage = new hooks.AsyncLocalStorage<T>();
      } catch {
        this.storage = null;
      }
    }
    return this.storage;
  }

  private end(): void {
    if (--this.live === 0) this.storage!.disable();
  }
}
