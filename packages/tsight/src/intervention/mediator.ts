/**
 * Mediator: one invoke's intervention code, what it asks for, and whether it is waiting.
 *
 * The code talks to the mediator through the envoys: `read` (await a module's value), `write` (replace it),
 * `skip` (do not run a module). Each becomes a Request keyed by module path, kind and iteration; the Interleaver
 * answers requests as the forward pass reaches them. A request for the value being provided right now is answered
 * at once; one for a value already gone by is an OutOfOrderError at the user's line.
 *
 * Waiting is explicit: the forward pass goes on only once every invoke is *blocked* on tsight, that is done, asking
 * for a module value, or parked on a generation step, a barrier or the run's result. Work tsight runs for an
 * invoke (a hybrid step, a backward pass) keeps it *busy*: the forward waits for it. Anything else the code awaits
 * (a file, a fetch) is waited for too, up to the run's stall limit, so no timing race decides what happens.
 */
import { LeftPassError, MissedProviderError, OutOfOrderError, TraceError } from "./errors.js";
import type { Rows } from "./rows.js";
import { ValueRequest } from "./watched.js";

export type ValueKind = "input" | "output";
/** Which part of a module's arguments an input request means: the first argument, or all of them. */
export type InputPart = "first" | "all";

interface BaseRequest {
  path: string;
  kind: ValueKind;
  /** The iteration the code was at (the mediator's: a generation step, or a call) and the module's `next()`s on from it. */
  step: number;
  offset: number;
  /**
   * Which call of the module it is for (see Provider.callOf): `step + offset` in one pass; in a generation, the
   * offset-th call from the first of that step (a module called twice a step has two calls in each), UNRESOLVED
   * while that step has not begun.
   */
  iteration: number;
  part: InputPart;
  /**
   * Created when the user's code made the request, so that an error found later has its stack. Not made for a
   * read of a value this model has given before (see Mediator.read).
   */
  origin: Error | undefined;
}

/** Where the user's code made a request: an Error made there, or the function that makes one (`limit`: frames kept). */
export type Origin = Error | ((limit?: number) => Error);
export interface ReadRequest extends BaseRequest {
  op: "read";
  resolve(value: unknown): void;
  reject(error: unknown): void;
}
export interface WriteRequest extends BaseRequest {
  op: "write";
  /** The replacement, or a function from the current value to it. */
  value: unknown;
}
export interface SkipRequest extends BaseRequest {
  op: "skip";
  value: unknown;
}
export type Request = ReadRequest | WriteRequest | SkipRequest;

/** What the interleaver tells a mediator about the forward pass. */
export interface Provider {
  /** The request is for the value being provided now: answer it at once. */
  isCurrent(r: BaseRequest): boolean;
  /** The forward pass already went past the value. */
  hasPassed(r: BaseRequest): boolean;
  /** Answers a request for the current value. */
  answer(m: Mediator, r: Request): void;
  /** Counts interest in a module path, so modules nobody asked about run without a stop. */
  watch(path: string, delta: number): void;
  /** Whether this model gave the value (at a module's first call in a pass) in an earlier pass or this one. */
  gaveBefore(path: string, kind: ValueKind): boolean;
  /** Which call of the module at `path` iteration `step` and `offset` calls on mean (see BaseRequest.iteration). */
  callOf(path: string, step: number, offset: number): number;
}

/** The call a request is for, while its generation step has not begun (no call is it yet; none has gone past it). */
export const UNRESOLVED = Number.POSITIVE_INFINITY;

/** Most requests one invoke may have waiting (each holds memory until its value comes). */
const MAX_PENDING = 100_000;

export class Mediator {
  /** Pending requests, in the order the code made them. */
  readonly requests: Request[] = [];
  /** The iteration (generation step, or call of a module) requests refer to. */
  iteration = 0;
  /** Per-module extra iterations from `envoy.next()`: later requests for that module refer to later calls. */
  readonly calls = new Map<string, number>();
  /** Set when the invoke can get no more module values (it left the pass, or a step loop ran out). */
  pastEnd: string | null = null;
  /** Module paths this invoke skips in the call now running (their descendants cannot be asked for). */
  readonly skipping = new Set<string>();
  done = false;
  /**
   * tsight ended reads of this invoke because it left the pass: an error its code raises after that (rethrowing
   * the LeftPassError, or one made from it in a sandbox) is a consequence, not a failure of its own.
   */
  abandoned = false;
  /** Its code kept the forward waiting past the stall timeout: after the forward it is not waited for either. */
  stalled = false;
  /**
   * How long the forward has waited for this invoke's code in all, in a pass of separate jobs (strictRows): there a
   * job's holds add up, so many short ones (0.9 s before each of 44 reads) cannot hold the others up for 40 s.
   */
  heldMs = 0;
  /** The trace ended early (tr.stop(), another invoke's error): what the code asks for now ends it quietly. */
  passEnded = false;
  /** Failures of promises tsight gave the code (tr.backward, tr.local, ...), checked for use when the code ends. */
  readonly unusedFailures: { error: unknown; isUsed(): boolean }[] = [];
  /** The code called tr.stop(value): its EarlyStop is a normal end, with that value. */
  stopping: { value: unknown } | null = null;
  result: unknown;
  error: unknown;
  provider: Provider | null = null;
  /** Parked on something tsight resumes it from (a step, the run's result): the forward need not wait. */
  private parked = 0;
  /** Running work tsight tracks for it (a hybrid step, a backward pass): the forward waits for it. */
  private busy = 0;
  private wake: (() => void) | null = null;

  constructor(
    /** Invoke index, for messages. */
    readonly index: number,
    /** Its rows of the batch; null: the whole batch (an empty invoke, an edit). */
    public rows: Rows | null,
  ) {}

  /**
   * A read. Its origin (a stack capture, several microseconds) is made now unless the model has given this value
   * before, at a first call: such a read is answered, so no error found later needs its line. Errors found at once
   * (out of order, past the end) are made here and get the line either way.
   */
  read(path: string, kind: ValueKind, part: InputPart, origin: Origin, point = false): Promise<unknown> {
    if (point && kind === "input") {
      // An operation point's input is its output (nn/points.ts): either may be asked first, as one value.
      const value = this.read(path, "output", "all", origin);
      // A read of its own (whose failure nobody awaiting it is dropped, see ValueRequest.read), not a `.then` of one.
      return part === "first" ? value : ValueRequest.read((resolve, reject) => Promise.prototype.then.call(value, (v) => resolve([v]), reject));
    }
    const at = this.iterationOf(path);
    const known = typeof origin === "function" && at.iteration === 0 && this.provider?.gaveBefore(path, kind) === true;
    const made = typeof origin === "function" && !known ? origin() : origin;
    // A read nobody awaits (the trace ended first, or the code forgot `await`) must not crash the process with an
    // unhandled rejection; code that awaits it still gets the error (see watched.ts).
    return ValueRequest.read((resolve, reject) => this.submit({ op: "read", path, kind, part, ...at, origin: made instanceof Error ? made : undefined, resolve, reject }, made));
  }

  write(path: string, kind: ValueKind, part: InputPart, value: unknown, origin: Origin, point = false): void {
    const made = typeof origin === "function" ? origin() : origin;
    if (point && kind === "input") {
      // An operation point's input is its output (see read): an edit of either is the same edit.
      if (part === "all") value = pointArgument(path, value, made);
      return this.write(path, "output", "all", value, made);
    }
    if (value === undefined) {
      // Most often a value another invoke reads, assigned before that invoke has read it: invokes run in turn.
      throw new TraceError(
        `assigning undefined to ${describe(path, kind, part)}; assign a tensor (or a function of the current value). If it is a value another invoke reads, it is not read yet when this line runs: assign a function that returns it (\`= () => value\`, called when this value is reached), or wait for it with tr.barrier`,
        made,
      );
    }
    this.submit({ op: "write", path, kind, part, ...this.iterationOf(path), origin: made, value }, made);
  }

  skip(path: string, value: unknown, origin: Origin): void {
    const made = typeof origin === "function" ? origin() : origin;
    if (path === "") throw new TraceError("the model itself cannot be skipped; skip one of its modules", made);
    this.submit({ op: "skip", path, kind: "input", part: "all", ...this.iterationOf(path), origin: made, value }, made);
  }

  /**
   * Later requests are for iteration `k` (a generation step, or a call), from its first call: `next()`s made
   * before are forgotten (a loop reading `x.next().output` each step reads each step's second call).
   */
  moveTo(k: number): void {
    this.calls.clear();
    this.iteration = k;
  }

  /** Moves later requests for `path` `n` calls on (`envoy.next()`), within the iteration. */
  nextCall(path: string, n: number): void {
    this.calls.set(path, (this.calls.get(path) ?? 0) + n);
  }

  private iterationOf(path: string): { step: number; offset: number; iteration: number } {
    const [step, offset] = [this.iteration, this.calls.get(path) ?? 0];
    return { step, offset, iteration: this.provider ? this.provider.callOf(path, step, offset) : step + offset };
  }

  /** `origin` makes the request's origin for an error found now, when the request was made without one. */
  private submit(r: Request, origin: Origin): void {
    // Called from the user's line through read (or write, skip), ValueRequest and here: frames enough to reach it.
    const here = (): Error => (r.origin ??= typeof origin === "function" ? origin(16) : origin);
    if (this.pastEnd) {
      // An invoke that left the pass (stopped, or another failed) ends quietly; otherwise the order was wrong.
      const what = describe(r.path, r.kind, r.part);
      fail(r, this.passEnded ? new LeftPassError(`${what} was never reached: ${this.pastEnd}`, here()) : new OutOfOrderError(`${what}: ${this.pastEnd}`, here()));
      return;
    }
    if (this.skipping.size > 0) {
      const skippedParent = [...this.skipping].find((p) => r.path.startsWith(p + "."));
      if (skippedParent !== undefined) {
        fail(r, new MissedProviderError(`${describe(r.path, r.kind, r.part)} is inside ${skippedParent}, which this invoke skips: it does not run`, here()));
        return;
      }
    }
    const p = this.provider;
    if (p?.isCurrent(r) && r.op !== "skip") return p.answer(this, r);
    if (p?.hasPassed(r)) {
      const what = r.op === "skip" ? `skip ${r.path}: it has already started` : `${describe(r.path, r.kind, r.part)}${iterationNote(r)} was already provided`;
      fail(r, new OutOfOrderError(`${what}. Within one invoke, module values must be asked for in the order the model computes them (did you ask out of order?)`, here()));
      return;
    }
    if (this.requests.length >= MAX_PENDING) {
      fail(r, new TraceError(`this invoke has ${MAX_PENDING} requests waiting for module values, the most it may have (a loop over iterations that never come?)`, here()));
      return;
    }
    this.requests.push(r);
    p?.watch(r.path, 1);
    if (r.op === "read") this.signal();
  }

  // #region waiting

  /** Whether the forward pass may go on without this invoke: it is done, or waits for something tsight gives. */
  get blocked(): boolean {
    return this.busy === 0 && (this.done || this.pastEnd !== null || this.parked > 0 || this.requests.some((r) => r.op === "read"));
  }

  /** After the forward: whether its code is done, or waits for something tsight alone can give (it is parked). */
  get finished(): boolean {
    return this.busy === 0 && (this.done || this.parked > 0);
  }

  /** Whether tsight is running work for it (the forward waits for that without counting it as a stall). */
  get working(): boolean {
    return this.busy > 0;
  }

  /** Resolves at the invoke's next change of state (a request, parking, resuming, its end). */
  changed(): Promise<void> {
    return new Promise((resolve) => (this.wake = resolve));
  }

  /** Wakes whoever waits for a change of state. */
  signal(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /**
   * Parks the invoke until tsight resumes it: `start` gets the functions that resume it (with a value, or an
   * error), which tsight calls when the step begins, the barrier fills or the run ends. Resuming marks the invoke
   * running at once, so the forward pass, which goes on while it is parked, waits for it again.
   */
  parkUntil<T>(start: (resume: (value: T) => void, fail: (error: unknown) => void) => void): Promise<T> {
    this.parked++;
    this.signal();
    let resumed = false;
    const unpark = () => {
      if (resumed) return false;
      resumed = true;
      this.parked--;
      this.signal();
      return true;
    };
    return new Promise<T>((resolve, reject) =>
      start(
        (v) => unpark() && resolve(v),
        (e) => unpark() && reject(e),
      ),
    );
  }

  /** Waits for `p` busy: tsight is running work for the invoke, and the forward waits for it. */
  track<T>(p: Promise<T>): Promise<T> {
    this.busy++;
    this.signal();
    const end = () => {
      this.busy--;
      this.signal();
    };
    return p.then(
      (v) => (end(), v),
      (e) => {
        end();
        throw e;
      },
    );
  }

  // #endregion

  /** Removes and returns the pending requests matching `test`. */
  take(test: (r: Request) => boolean): Request[] {
    const taken: Request[] = [];
    for (let i = 0; i < this.requests.length; ) {
      if (test(this.requests[i]!)) {
        const [r] = this.requests.splice(i, 1);
        taken.push(r!);
        this.provider?.watch(r!.path, -1);
      } else i++;
    }
    return taken;
  }

  /**
   * Takes the invoke out of the pass: later requests are refused with `why`, pending reads reject (quietly, for
   * code that no longer awaits them).
   */
  leave(why: string): void {
    this.pastEnd ??= why;
    this.abandoned = true;
    for (const r of this.take(() => true)) if (r.op === "read") r.reject(new LeftPassError(`${describe(r.path, r.kind, r.part)} was never reached: ${this.pastEnd}`, r.origin));
    this.signal();
  }

  /** Told about every error of this invoke (the trace decides which one it reports). */
  onError: ((error: unknown) => void) | null = null;

  /** Records the invoke's first error and tells the trace. */
  fail(error: unknown): void {
    if (this.error === undefined) this.error = error;
    this.onError?.(error);
    this.signal();
  }
}

/** Rejects a read, or throws for a write or skip (which the user's code made synchronously). */
function fail(r: Request, error: Error): void {
  if (r.op === "read") r.reject(error);
  else throw error;
}

export function describe(path: string, kind: ValueKind, part: InputPart = "all"): string {
  const what = kind === "output" ? "output" : part === "first" ? "input" : "inputs";
  // The model's own value reads "the model's inputs" (a path with ".inputs" after "the model" read as a path).
  return path ? `${path}.${what}` : `the model's ${what}`;
}

/** ` (iteration N)` for a request past the first iteration (a step, or the `next()`s on from it), for messages. */
export function iterationNote(r: BaseRequest): string {
  const n = r.step + r.offset;
  return n ? ` (iteration ${n})` : "";
}

/**
 * What assigning `.inputs` of an operation point means for its one value: a list of one value is that value, a
 * function of the list becomes a function of the value (its list of one unwrapped).
 */
function pointArgument(path: string, value: unknown, origin: Error | undefined): unknown {
  const one = (list: unknown): unknown => {
    if (Array.isArray(list) && list.length === 1) return list[0];
    throw new TraceError(`${path}.inputs is a list of one value (an operation point's input, the same value as its output); got ${Array.isArray(list) ? `a list of ${list.length}` : typeof list}`, origin);
  };
  if (typeof value === "function") return (v: unknown) => one((value as (args: unknown[]) => unknown)([v]));
  return one(value);
}
