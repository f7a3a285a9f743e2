/**
 * Mediator: one invoke's intervention code and what it waits for.
 *
 * The code talks to the mediator through the envoys: `read` (await a module's value), `write` (replace it),
 * `skip` (do not run a module). Each becomes a Request keyed by module path, kind and iteration; the Interleaver
 * answers requests as the forward pass reaches them. A request for the value being provided right now is
 * answered at once; one for a value already gone by is an OutOfOrderError at the user's line.
 */
import { MissedProviderError, OutOfOrderError, TraceError } from "./errors.js";
import type { Rows } from "./rows.js";

export type ValueKind = "input" | "output";
/** Which part of a module's arguments an input request means: the first argument, or all of them. */
export type InputPart = "first" | "all";

interface BaseRequest {
  path: string;
  kind: ValueKind;
  iteration: number;
  part: InputPart;
  /** Created when the user's code made the request, so its stack points there. */
  origin: Error;
}
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
}

export class Mediator {
  /** Pending requests, in the order the code made them. */
  readonly requests: Request[] = [];
  /** The iteration (generation step) requests refer to. */
  iteration = 0;
  /** Set when an unbounded step loop ran out: the generation is over, no module value will come. */
  pastEnd: string | null = null;
  /** Module paths this invoke skips in the call now running (their descendants cannot be asked for). */
  readonly skipping = new Set<string>();
  done = false;
  result: unknown;
  error: unknown;
  provider: Provider | null = null;
  private wake: (() => void) | null = null;

  constructor(
    /** Invoke index, for messages. */
    readonly index: number,
    /** Its rows of the batch; null: the whole batch (an empty invoke, an edit). */
    public rows: Rows | null,
  ) {}

  read(path: string, kind: ValueKind, part: InputPart, origin: Error): Promise<unknown> {
    return new Promise((resolve, reject) => this.submit({ op: "read", path, kind, part, iteration: this.iteration, origin, resolve, reject }));
  }

  write(path: string, kind: ValueKind, part: InputPart, value: unknown, origin: Error): void {
    if (value === undefined) throw new TraceError(`assigning undefined to ${describe(path, kind, part)}; assign a tensor (or a function of the current value)`);
    this.submit({ op: "write", path, kind, part, iteration: this.iteration, origin, value });
  }

  skip(path: string, value: unknown, origin: Error): void {
    if (path === "") throw new TraceError("the model itself cannot be skipped; skip one of its modules");
    this.submit({ op: "skip", path, kind: "input", part: "all", iteration: this.iteration, origin, value });
  }

  private submit(r: Request): void {
    if (this.pastEnd) {
      fail(r, new OutOfOrderError(`${describe(r.path, r.kind, r.part)}: ${this.pastEnd}`, r.origin));
      return;
    }
    const skippedParent = [...this.skipping].find((p) => r.path.startsWith(p + "."));
    if (skippedParent !== undefined) {
      fail(r, new MissedProviderError(`${describe(r.path, r.kind, r.part)} is inside ${skippedParent}, which this invoke skips: it does not run`, r.origin));
      return;
    }
    const p = this.provider;
    if (p?.isCurrent(r) && r.op !== "skip") return p.answer(this, r);
    if (p?.hasPassed(r)) {
      const what = r.op === "skip" ? `skip ${r.path}: it has already started` : `${describe(r.path, r.kind, r.part)}${r.iteration ? ` (iteration ${r.iteration})` : ""} was already provided`;
      fail(r, new OutOfOrderError(`${what}. Within one invoke, module values must be asked for in the order the model computes them (did you ask out of order?)`, r.origin));
      return;
    }
    this.requests.push(r);
    p?.watch(r.path, 1);
    if (r.op === "read") this.signal();
  }

  /** Resolves at this invoke's next event: a new pending read, or its end. Lets the forward go on without a full event-loop turn. */
  nextEvent(): Promise<void> {
    return new Promise((resolve) => (this.wake = resolve));
  }

  /** The invoke started waiting or ended. */
  signal(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

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
  return `${path || "the model"}.${what}`;
}
