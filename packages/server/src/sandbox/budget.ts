/**
 * What one job may take from the host: bytes (its tensors, and the bookkeeping behind its handles and objects),
 * time (its deadline), and, in a forward pass shared with other jobs, a slice of time per turn so that it cannot
 * hold the others up. Every size the job's code chooses is charged here before the host allocates it.
 */
import type { AllocationGuard } from "tsight";
import { StallError } from "tsight";
import { SandboxError } from "./errors.js";
import { pastDeadline } from "tsight/protocol";

/** The host memory behind one tensor handle (the Tensor object and map entries), besides its data. */
export const HANDLE_BYTES = 256;
/** The host memory behind one registered object (a step iterator, a cache, a barrier, a gradient scope). */
export const OBJECT_BYTES = 4096;
/**
 * A rate this engine beats on any machine it runs on (50 GFLOP/s; 2 cores do 100-200): an op whose floating-point
 * work would take longer than the time left at this rate is refused before it starts, so no op runs far past a
 * deadline (an ONNX Runtime call cannot be interrupted).
 */
export const FLOPS_PER_MS = 5e7;

export interface BudgetLimits {
  /** Wall-clock deadline, ms since the epoch. */
  deadline: number;
  /** The time the job had to its deadline (ms), for the message. */
  timeLimitMs?: number;
  /** Bytes the job's tensors and bookkeeping may take in all. */
  memoryLimitBytes: number;
}

export class JobBudget {
  /** Bytes charged now, and the most charged at once. */
  bytes = 0;
  peak = 0;
  /** In a shared pass: how long one turn of the job's code may take (ms), and when the current turn began. */
  sliceMs: number | null = null;
  private turnStart = 0;

  constructor(
    private readonly limits: BudgetLimits,
    /** Ends the job with `error` (every later call fails with it); returns the error to throw. */
    private readonly fatal: (error: Error) => Error,
  ) {}

  /** What `what` past the deadline is told (with the job's time limit). */
  pastDeadline(what?: string): string {
    return pastDeadline(this.limits.timeLimitMs, what);
  }

  /** Milliseconds before the deadline (0 or less: past it). */
  left(): number {
    return this.limits.deadline - Date.now();
  }

  /** Starts a turn of the job's code; returns the timeout for it (ms). Past the deadline: TIMEOUT. */
  beginTurn(): number {
    const left = this.left();
    if (left <= 0) throw this.fatal(new SandboxError("TIMEOUT", this.pastDeadline()));
    this.turnStart = Date.now();
    return Math.max(1, Math.ceil(this.sliceMs === null ? left : Math.min(left, this.sliceMs)));
  }

  /** Whether a turn that timed out after `timeout` ms was stopped by its slice rather than by the deadline. */
  sliceRanOut(timeout: number): boolean {
    return this.sliceMs !== null && timeout < this.limits.deadline - this.turnStart;
  }

  /** The error for a job whose turn in a shared pass ran out: it leaves the pass (and runs alone). */
  stall(what: string): Error {
    return this.fatal(new StallError(`${what} took longer than the ${this.sliceMs} ms a job may keep a forward pass it shares with other jobs waiting, so it left that pass`));
  }

  /** Charges `bytes` (refused with MEMORY when over the limit; the code may catch that and go on). */
  charge(bytes: number): void {
    if (!(bytes >= 0)) throw new SandboxError("MEMORY", `cannot allocate ${bytes} bytes`);
    if (this.bytes + bytes > this.limits.memoryLimitBytes) {
      throw new SandboxError("MEMORY", `this would allocate ${bytes} bytes; the job may take ${this.limits.memoryLimitBytes} bytes in all and holds ${this.bytes}`);
    }
    this.bytes += bytes;
    this.peak = Math.max(this.peak, this.bytes);
  }

  refund(bytes: number): void {
    this.bytes = Math.max(0, this.bytes - bytes);
  }

  /**
   * The guard for the job's own tensor math: before each op, its output bytes fit the budget (checked, not
   * charged: the handle charges what the code keeps) and its compute fits the time left.
   */
  readonly guard: AllocationGuard = (bytes, flops) => {
    const left = this.left();
    if (left <= 0) throw this.fatal(new SandboxError("TIMEOUT", this.pastDeadline()));
    if (flops > 0) {
      const ms = flops / FLOPS_PER_MS;
      if (this.sliceMs !== null && Date.now() - this.turnStart + ms > this.sliceMs) throw this.stall(`an op of ${flops.toExponential(1)} floating-point operations`);
      if (ms > left) throw new SandboxError("TIMEOUT", `this op computes ${flops.toExponential(1)} floating-point operations, more than fits in the ${Math.round(left)} ms the job has left`);
    }
    if (this.bytes + bytes > this.limits.memoryLimitBytes) {
      throw new SandboxError("MEMORY", `this would allocate ${bytes} bytes; the job may take ${this.limits.memoryLimitBytes} bytes in all and holds ${this.bytes}`);
    }
  };
}
