/**
 * LocalStepWatch: bounds the hybrid steps (tr.local) of running jobs, which otherwise wait for the client as long as
 * the job may run. A step not answered within its time limit ends the job with TIMEOUT. A step that waits while
 * nobody follows the job's events (no open event stream) for `disconnectGraceMs` ends it with CANCELLED
 * (ClientDisconnectedError): the client that must answer went away, and waiting on would only hold the model's
 * worker. A client that reconnects within the grace period (resuming with Last-Event-ID) keeps the job.
 */
import type { ErrorInfo } from "tsight/protocol";
import type { StreamCounts } from "./event-stream.js";

export interface LocalStepWatchOptions {
  streams: StreamCounts;
  disconnectGraceMs: number;
  /** Job `jobId` must end with `error`: a step timed out, or its client went away. Called once per job. */
  onExpired(jobId: string, error: ErrorInfo): void;
}

interface Watched {
  /** Steps asked and not answered, oldest first, each with its deadline. */
  calls: Map<string, NodeJS.Timeout>;
  /** Set while steps wait and no event stream of the job is open. */
  disconnect?: NodeJS.Timeout;
}

export class LocalStepWatch {
  private readonly jobs = new Map<string, Watched>();
  private readonly stopListening: () => void;

  constructor(private readonly options: LocalStepWatchOptions) {
    this.stopListening = options.streams.onChange((jobId) => this.check(jobId));
  }

  /** Job `jobId` asked its client for step `call`, which must be answered within `timeoutMs`. */
  asked(jobId: string, call: string, timeoutMs: number): void {
    let w = this.jobs.get(jobId);
    if (!w) this.jobs.set(jobId, (w = { calls: new Map() }));
    if (w.calls.has(call)) return;
    const error: ErrorInfo = {
      code: "TIMEOUT",
      type: "TimeoutError",
      message: `the client did not answer hybrid step ${call} (tr.local) within ${duration(timeoutMs)}, the job's limit for a local step (its localTimeoutMs, at most the server's)`,
      retryable: false,
    };
    w.calls.set(call, unref(setTimeout(() => this.expire(jobId, error), timeoutMs)));
    this.check(jobId);
  }

  /** The client answered step `call`. */
  answered(jobId: string, call: string): void {
    const w = this.jobs.get(jobId);
    if (!w) return;
    clearTimeout(w.calls.get(call));
    w.calls.delete(call);
    if (w.calls.size === 0) this.forget(jobId);
    else this.check(jobId);
  }

  /** The steps job `jobId` waits for. */
  waiting(jobId: string): string[] {
    return [...(this.jobs.get(jobId)?.calls.keys() ?? [])];
  }

  /** Stops watching a job (it ended, or is stopping). */
  forget(jobId: string): void {
    const w = this.jobs.get(jobId);
    if (!w) return;
    for (const timer of w.calls.values()) clearTimeout(timer);
    clearTimeout(w.disconnect);
    this.jobs.delete(jobId);
  }

  close(): void {
    this.stopListening();
    for (const jobId of [...this.jobs.keys()]) this.forget(jobId);
  }

  /** Starts or stops the disconnect countdown of a job, by whether anyone follows it while it waits. */
  private check(jobId: string): void {
    const w = this.jobs.get(jobId);
    if (!w) return;
    if (w.calls.size === 0 || this.options.streams.count(jobId) > 0) {
      clearTimeout(w.disconnect);
      w.disconnect = undefined;
      return;
    }
    if (w.disconnect) return;
    const grace = this.options.disconnectGraceMs;
    w.disconnect = unref(
      setTimeout(() => {
        const call = this.waiting(jobId)[0];
        this.expire(jobId, {
          code: "CANCELLED",
          type: "ClientDisconnectedError",
          message: `the client that must answer step ${call} (tr.local) went away: no client followed the job's events for ${duration(grace)} while the step waited. Keep following the job (e.g. job.wait()) until it ends`,
          retryable: false,
        });
      }, grace),
    );
  }

  private expire(jobId: string, error: ErrorInfo): void {
    if (!this.jobs.has(jobId)) return;
    this.forget(jobId);
    this.options.onExpired(jobId, error);
  }
}

function unref(timer: NodeJS.Timeout): NodeJS.Timeout {
  timer.unref();
  return timer;
}

const duration = (ms: number) => (ms < 1000 ? `${ms} ms` : `${Math.round(ms / 100) / 10} s`);
