/**
 * Messages between the server's main thread and a model's worker thread. Plain data (structured clone); request
 * bodies and results travel as bytes, and tensors are rebuilt on the side that uses them.
 */
import type { LoadProgress, WeightDType } from "tsight";
import type { ErrorInfo, JobEvent, JobRequest } from "tsight/protocol";
import type { ExecutorRef } from "./config.js";

/** What a worker thread starts with. */
export interface WorkerData {
  /** The name or folder the model is loaded from (`LanguageModel.load`). */
  model: string;
  executor: ExecutorRef;
  /** SAEs to splice into it (with the error term), each at its resolved module. */
  saes?: { source: string; subfolder?: string; at: string }[];
  /** What its weights are kept as (default float32). */
  dtype?: WeightDType;
}

/** A job handed to a worker. */
export interface RunJob {
  jobId: string;
  /** The request as it came: an envelope, or JSON without tensors (`decodeJob` takes either). */
  body: Uint8Array | JobRequest;
  /** Wall-clock deadline, ms since the epoch. */
  deadline: number;
  /** The time the job has from its dispatch to its deadline (ms). */
  timeLimitMs: number;
  memoryLimitBytes: number;
  maxResultBytes: number;
  /** Events (and their bytes) the job may send; past them it ends (MEMORY). */
  maxEvents: number;
  maxEventBytes: number;
  /** In a shared pass, how long one job's code may hold the others up (ms). */
  batchStallMs: number;
  /** Most tokens (rows × positions) its input may have. */
  maxInputTokens: number;
  /**
   * Set to 1 (over shared memory) when the job is cancelled. A thread busy with the job may not read its messages
   * until the job yields to the event loop, so it checks this flag whenever the job emits an event.
   */
  stop: Int32Array;
}

/** The client's answer to a hybrid step: a value (envelope bytes, or an encoded JSON value) or an error it raised. */
export type LocalAnswer = { kind: "envelope"; bytes: Uint8Array } | { kind: "json"; value: unknown } | { kind: "error"; error: ErrorInfo };

export type ToWorker =
  | { type: "run"; job: RunJob }
  /** Run several jobs as invokes of one forward pass (JobExecutor.executeBatch); each ends on its own. */
  | { type: "run-batch"; jobs: RunJob[] }
  /** Stop the job; `reason` (when the server ends it for its own reasons, e.g. a hybrid step timed out) is what its waits reject with. */
  | { type: "cancel"; jobId: string; reason?: ErrorInfo }
  | { type: "local"; jobId: string; call: string; answer: LocalAnswer }
  /**
   * End the thread: it cancels what still runs and closes its port, so it ends by itself once isolated-vm's work
   * in flight has drained (terminating it from outside then could hang or abort the whole process).
   */
  | { type: "exit" };

export type FromWorker =
  /** The model is loaded; `batching`: the executor can run several jobs in one forward pass. */
  | { type: "ready"; batching: boolean }
  | { type: "load-failed"; error: ErrorInfo }
  /** How far loading the weights has got (after each tensor). */
  | { type: "progress"; progress: LoadProgress }
  | { type: "started"; jobId: string }
  | { type: "event"; jobId: string; event: JobEvent }
  | { type: "completed"; jobId: string; bytes: Uint8Array }
  | { type: "failed"; jobId: string; error: ErrorInfo }
  /** A job (`jobId`, when known) broke the thread beyond recovery (its sandbox's heap): the thread is stuck, its jobs are lost. */
  | { type: "catastrophe"; message: string; jobId?: string };
