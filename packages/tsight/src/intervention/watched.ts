/**
 * The promises tsight hands to intervention code, made safe for code that does not await them. A forgotten
 * `await`, a `.then` chain nobody ends with a catch, or a read left pending when the trace stops must never crash
 * the user's process with an unhandled rejection, and must not hide the user's own mistakes either.
 *
 * - ValueRequest (module values, `await m.x.output`): when the invoke leaves the forward pass (tr.stop(), another
 *   invoke's error) its pending reads reject with LeftPassError, so code awaiting one ends. Promises derived from
 *   a read (`.then(...)`) drop that rejection and stay pending instead: the code after a stop does not run, and
 *   nothing is left unhandled. Every other rejection passes through unchanged.
 * - Watched (tr.backward, tr.local, tr.result, barriers, envoy.call): notices whether the code ever used it
 *   (`await` and `.then` both call `then`). A failure nobody used is handed to `unused`, which makes it the
 *   invoke's error, so the user sees it from the trace instead of from a crash.
 */
import { LeftPassError } from "./errors.js";

const nativeThen = Promise.prototype.then;

export class ValueRequest<T = unknown> extends Promise<T> {
  /** A read: `start` gets the functions that answer it. Not awaiting it is allowed (its failure is then dropped). */
  static read<T>(start: (resolve: (value: T) => void, reject: (reason: unknown) => void) => void): ValueRequest<T> {
    const p = new ValueRequest<T>(start);
    nativeThen.call(p, undefined, () => undefined);
    return p;
  }

  /**
   * Derived by `.then`/`.catch`/`.finally` (not by `await`: see below): the invoke leaving the pass ends the chain
   * quietly. The derived promise is a ValueRequest too, so chains of any length do.
   */
  override then<A = T, B = never>(onFulfilled?: ((value: T) => A | PromiseLike<A>) | null, onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null): Promise<A | B> {
    const derived = nativeThen.call(this, onFulfilled, onRejected) as Promise<A | B>;
    // Left pending (never settled, so nothing holds it: it is collected with what its callbacks captured).
    return new ValueRequest<A | B>((resolve, reject) => nativeThen.call(derived, resolve, (e: unknown) => (e instanceof LeftPassError ? undefined : reject(e))));
  }
}
// `await read` takes the engine's fast path only for promises whose constructor is Promise itself: a subclass costs
// two more promises and microtask turns at every read. Promise's own methods (Promise.prototype.then, which
// `await` does not call, and the statics) then make plain promises; the override above covers code's `.then`.
Object.defineProperty(ValueRequest.prototype, "constructor", { value: Promise, writable: true, configurable: true });

export class Watched<T = unknown> extends Promise<T> {
  /** Whether intervention code called `then` (directly, or by awaiting it). */
  used = false;
  /** Whether an unused failure is printed as a warning (a whole trace's promise; see unawaitedReported). */
  warnsUnused = false;

  static override get [Symbol.species](): PromiseConstructor {
    return Promise;
  }

  override then<A = T, B = never>(onFulfilled?: ((value: T) => A | PromiseLike<A>) | null, onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null): Promise<A | B> {
    this.used = true;
    return super.then(onFulfilled, onRejected);
  }

  /**
   * `work` as a Watched promise. When it fails, `unused(error, isUsed)` is called (isUsed tells whether the code
   * has used the promise since); the rejection itself never goes unhandled.
   */
  static of<T>(work: Promise<T>, unused: (error: unknown, isUsed: () => boolean) => void): Watched<T> {
    const w = new Watched<T>((resolve, reject) => work.then(resolve, reject));
    // Promise.prototype.then itself: tsight's own handler does not count as a use.
    Promise.prototype.then.call(w, undefined, (e: unknown) => unused(e, () => w.used));
    return w;
  }
}

/**
 * The promise of a whole trace, scan, generation or session. Code that forgets to await it and fails would crash
 * the process with an unhandled rejection; instead, when nothing has used it shortly after it failed, the error is
 * printed as a warning and the process goes on. Code that awaits it (even later) still gets the error.
 */
export function unawaitedReported<T>(work: Promise<T>, what: string): Promise<T> {
  const watched = Watched.of(work, (error, isUsed) => {
    setTimeout(() => {
      if (isUsed()) return;
      const detail = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
      warn(`${what} failed, and nothing awaited it (a missing await?): ${detail}`);
    }, 0);
  });
  watched.warnsUnused = true;
  return watched;
}

/** Warnings printed per minute at most: code that makes them in a loop (a server's job) cannot flood the log. */
const WARNINGS_PER_MINUTE = 20;
const printed = { since: 0, count: 0, dropped: 0 };

/** A TsightWarning (a process warning where there is a process), at most WARNINGS_PER_MINUTE a minute. */
export function warn(message: string): void {
  const now = Date.now();
  if (now - printed.since > 60_000) {
    if (printed.dropped) emit(`${printed.dropped} more warning${printed.dropped === 1 ? " was" : "s were"} not printed in the last minute (at most ${WARNINGS_PER_MINUTE} a minute)`);
    Object.assign(printed, { since: now, count: 0, dropped: 0 });
  }
  if (printed.count >= WARNINGS_PER_MINUTE) return void printed.dropped++;
  printed.count++;
  emit(message);
}

function emit(message: string): void {
  const proc = (globalThis as { process?: { emitWarning?: (m: string, type: string) => void } }).process;
  if (proc?.emitWarning) proc.emitWarning(message, "TsightWarning");
  else console.warn(`TsightWarning: ${message}`);
}
