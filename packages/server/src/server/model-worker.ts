/**
 * ModelWorker: the main thread's handle on one served model's worker thread. It runs one job at a time, or one
 * batch of jobs sharing a forward pass (`runBatch`), and keeps the model served: a job that does not stop after
 * cancel, or runs past its deadline, is given up on and a fresh thread takes over; a thread that dies fails its
 * jobs (PREEMPTED, or MEMORY when it ran out of heap) and is started again; a model that fails to load is retried
 * with growing pauses.
 */
import type { Worker } from "node:worker_threads";
import type { LoadProgress, WeightDType } from "tsight";
import { pastDeadline, RETRYABLE, type ErrorCode, type ErrorInfo, type JobEvent } from "tsight/protocol";
import type { ExecutorRef } from "./config.js";
import type { FromWorker, LocalAnswer, RunJob, ToWorker } from "./worker-messages.js";
import { spawnWorkerThread } from "./worker-thread.js";

export type WorkerState = "stopped" | "starting" | "ready" | "busy" | "failed" | "draining" | "closed";

export type RunOutcome = { ok: true; bytes: Uint8Array } | { ok: false; error: ErrorInfo };

export interface ModelWorkerOptions {
  /** The model's name, as clients call it (for messages). */
  model: string;
  /** The name or folder it is loaded from (default: `model`). */
  source?: string;
  executor: ExecutorRef;
  /** How long a job gets to stop (after cancel, or past its deadline) before a fresh thread replaces its own. */
  stopGraceMs: number;
  heapMb?: number;
  /** SAEs the thread splices into the model once loaded. */
  saes?: { source: string; subfolder?: string; at: string }[];
  /** What the thread keeps the model's weights as (default float32). */
  dtype?: WeightDType;
  /** Told as each thread (the first, and any that replaces one) loads the weights, after each tensor. */
  onLoadProgress?: (progress: LoadProgress) => void;
  onState?: (state: WorkerState) => void;
  onStarted?: (jobId: string) => void;
  onEvent?: (jobId: string, event: JobEvent) => void;
  /** A fresh thread was started after the last one died or was given up on. */
  onRestart?: () => void;
  /** Job `jobId` broke a thread beyond recovery (see lose). */
  onBroke?: (jobId: string) => void;
  /** Lines for the server's log: a thread given up on, or one terminated after all. */
  log?: (line: string) => void;
}

interface Current {
  job: RunJob;
  resolve: (o: RunOutcome) => void;
  watchdog?: NodeJS.Timeout;
}

const MAX_BACKOFF_MS = 60_000;
/**
 * Threads given up on that may still be finishing their jobs, per model. With one such thread alive, a second
 * give-up does not start another: the model waits for the first to end (so at most two copies of the weights).
 */
const MAX_ABANDONED = 1;
/** Threads lost to jobs that broke their sandboxes (see lose) before the model is failed. */
const MAX_LOST = 2;
/** How long closing waits for an idle thread to end. */
const CLOSE_WAIT_MS = 5_000;
/** How long a thread told to end (see retire) may take before it is terminated after all. */
const RETIRE_WAIT_MS = 30_000;

/**
 * Ends a thread by asking it to (it closes its port and its event loop runs dry once isolated-vm's work in flight
 * has drained); terminated from outside only if it has not ended after `waitMs`. Terminating a thread while
 * isolated-vm still has tasks for it hangs the terminate or aborts the whole process ("terminate called after
 * throwing an instance of 'ivm::RuntimeError'"), even after the thread has reported the end of all its jobs.
 * Resolves with the thread's exit code once it has exited (0: it ended by itself).
 */
function retire(thread: Worker, waitMs: number, onOverdue: () => void): Promise<number> {
  const exited = new Promise<number>((resolve) => thread.once("exit", resolve));
  thread.postMessage({ type: "exit" } satisfies ToWorker);
  const timer = setTimeout(() => {
    onOverdue();
    void thread.terminate();
  }, waitMs);
  timer.unref();
  return exited.finally(() => clearTimeout(timer));
}

export const serverError = (code: ErrorCode, message: string, type = "ServerError"): ErrorInfo => ({ code, type, message, retryable: RETRYABLE[code] });

export class ModelWorker {
  state: WorkerState = "stopped";
  /** Times a fresh thread was started after one died or was given up on. */
  restarts = 0;
  /** Threads let go of (given up on, or closed) that did not end by themselves: terminated from outside, or died. */
  forcedEnds = 0;
  /** Why the model last failed to load, or the thread last died (cleared when a thread is ready). */
  lastError: ErrorInfo | undefined;
  /** Whether the thread's executor can run several jobs in one forward pass (known once it is ready). */
  batching = false;
  private thread: Worker | undefined;
  /** The jobs running now: one, or the jobs of one batch. */
  private readonly current = new Map<string, Current>();
  private backoffMs = 1000;
  private retryTimer: NodeJS.Timeout | undefined;
  private settled: (() => void)[] = [];
  /** Threads given up on that are still finishing (told to end as soon as they report their jobs' ends). */
  private readonly abandoned = new Set<Worker>();
  /** Failed until the server restarts (too many threads lost, see lose): no load is tried again. */
  failedForGood = false;
  /** Threads stuck for good where a job broke its sandbox (see lose); they end with the process. */
  private readonly lost = new Set<Worker>();

  constructor(private readonly options: ModelWorkerOptions) {}

  get threadId(): number | undefined {
    return this.thread?.threadId;
  }

  /** A job running now (the first of a batch). */
  get jobId(): string | undefined {
    return this.current.keys().next().value;
  }

  /** The jobs running now. */
  get jobIds(): string[] {
    return [...this.current.keys()];
  }

  /** Starts the thread; resolves once the model loaded or failed to (a failure is retried later). */
  start(): Promise<void> {
    if (this.state !== "stopped") return Promise.resolve();
    const done = new Promise<void>((resolve) => this.settled.push(resolve));
    this.spawn();
    return done;
  }

  /** Runs a job; the worker must be ready. Resolves with the result bytes or the job's error, never rejects. */
  run(spec: Omit<RunJob, "stop">): Promise<RunOutcome> {
    return this.runBatch([spec])[0]!;
  }

  /**
   * Runs jobs together, as invokes of one forward pass when there are several (the thread's executor must be
   * `batching`); the worker must be ready. Each job ends on its own: its outcome resolves with its result bytes or
   * its error, and never rejects. The worker is ready again once every job of the batch has ended.
   */
  runBatch(specs: readonly Omit<RunJob, "stop">[]): Promise<RunOutcome>[] {
    if (this.state !== "ready" || !this.thread) throw new Error(`worker for ${this.options.model} is ${this.state}, not ready`);
    if (specs.length === 0) return [];
    if (specs.length > 1 && !this.batching) throw new Error(`the executor of ${this.options.model} cannot run jobs in one forward pass`);
    const thread = this.thread;
    const jobs: RunJob[] = specs.map((spec) => ({ ...spec, stop: new Int32Array(new SharedArrayBuffer(4)) }));
    const outcomes = jobs.map(
      (job) =>
        new Promise<RunOutcome>((resolve) => {
          const current: Current = { job, resolve };
          this.current.set(job.jobId, current);
          const untilGiveUp = Math.max(0, job.deadline - Date.now()) + this.options.stopGraceMs;
          current.watchdog = setTimeout(() => this.giveUp(current, serverError("TIMEOUT", `${pastDeadline(job.timeLimitMs)} and did not stop`, "TimeoutError")), untilGiveUp);
        }),
    );
    this.setState("busy");
    try {
      thread.postMessage(jobs.length === 1 ? { type: "run", job: jobs[0]! } : { type: "run-batch", jobs });
    } catch (e) {
      // Not sent (a request the structured clone cannot copy): the jobs end here, and the thread is as it was.
      for (const job of jobs) {
        const current = this.current.get(job.jobId)!;
        clearTimeout(current.watchdog);
        this.current.delete(job.jobId);
        current.resolve({ ok: false, error: serverError("INTERNAL", `the job could not be handed to the model's thread: ${(e as Error).message}`) });
      }
      this.setState("ready");
    }
    return outcomes;
  }

  /**
   * Asks the running job to stop; gives up on it (see giveUp) if it has not stopped after the grace period. With a
   * `reason` (the server ends the job itself) the job's pending waits reject with it.
   */
  cancel(jobId: string, reason?: ErrorInfo): boolean {
    const current = this.current.get(jobId);
    if (!current || !this.thread) return false;
    Atomics.store(current.job.stop, 0, 1);
    this.thread.postMessage(reason ? { type: "cancel", jobId, reason } : { type: "cancel", jobId });
    clearTimeout(current.watchdog);
    const abandoned = reason ?? serverError("CANCELLED", "the job was cancelled and did not stop in time; it was abandoned", "CancelledError");
    current.watchdog = setTimeout(() => this.giveUp(current, abandoned), this.options.stopGraceMs);
    return true;
  }

  /** Passes the client's answer to a hybrid step of the running job. */
  answerLocal(jobId: string, call: string, answer: LocalAnswer): boolean {
    if (!this.current.has(jobId) || !this.thread) return false;
    this.thread.postMessage({ type: "local", jobId, call, answer }, answer.kind === "envelope" ? [answer.bytes.buffer as ArrayBuffer] : []);
    return true;
  }

  /** Stops the thread for good; running jobs end PREEMPTED (or with `error`). */
  async close(error = serverError("PREEMPTED", "the server shut down while the job ran; submit it again")): Promise<void> {
    clearTimeout(this.retryTimer);
    const thread = this.thread;
    const running = [...this.current.values()];
    this.setState("closed");
    this.release();
    if (!thread) return;
    // A thread inside a long native call ends only when the call returns; closing does not wait past CLOSE_WAIT_MS.
    if (running.length === 0) return void (await Promise.race([retire(thread, CLOSE_WAIT_MS, () => this.overdue(CLOSE_WAIT_MS)).then((code) => this.ended(code)), new Promise((r) => setTimeout(r, CLOSE_WAIT_MS).unref())]));
    for (const current of running) {
      Atomics.store(current.job.stop, 0, 1);
      thread.postMessage({ type: "cancel", jobId: current.job.jobId });
    }
    this.abandon(thread, running.map((c) => c.job.jobId));
    for (const current of running) this.finish(current, { ok: false, error });
  }

  private spawn(): void {
    const thread = spawnWorkerThread({ model: this.options.source ?? this.options.model, executor: this.options.executor, saes: this.options.saes, dtype: this.options.dtype }, this.options.heapMb ? { maxOldGenerationSizeMb: this.options.heapMb } : undefined);
    this.thread = thread;
    this.setState("starting");
    let crash: Error | undefined;
    thread.on("message", (m: FromWorker) => {
      if (thread === this.thread) this.onMessage(m);
    });
    thread.on("error", (e) => {
      crash = e;
    });
    thread.on("exit", () => {
      if (thread === this.thread) this.onExit(crash);
    });
  }

  private onMessage(m: FromWorker): void {
    const current = "jobId" in m && m.jobId !== undefined ? this.current.get(m.jobId) : undefined;
    switch (m.type) {
      case "ready":
        this.batching = m.batching === true;
        this.backoffMs = 1000;
        this.lastError = undefined;
        this.setState("ready");
        this.release();
        return;
      case "load-failed":
        this.lastError = m.error;
        this.setState("failed");
        return;
      case "progress":
        this.options.onLoadProgress?.(m.progress);
        return;
      case "started":
        if (current) this.options.onStarted?.(m.jobId);
        return;
      case "event":
        if (current) this.options.onEvent?.(m.jobId, m.event);
        return;
      case "catastrophe":
        return this.lose(m.message, m.jobId);
      case "completed":
      case "failed":
        if (!current) return;
        this.finish(current, m.type === "completed" ? { ok: true, bytes: m.bytes } : { ok: false, error: m.error });
        if (this.current.size === 0) this.setState("ready");
        return;
    }
  }

  private onExit(crash: Error | undefined): void {
    this.thread = undefined;
    if (this.state === "closed") return;
    if (this.current.size > 0) {
      const oom = (crash as { code?: string } | undefined)?.code === "ERR_WORKER_OUT_OF_MEMORY";
      const error = oom
        ? serverError("MEMORY", "the job ran its worker out of memory; it was stopped", "MemoryError")
        : serverError("PREEMPTED", `the worker running the job died${crash ? ` (${crash.message})` : ""}; submit it again`);
      for (const current of [...this.current.values()]) this.finish(current, { ok: false, error });
    }
    if (this.state === "starting" || this.state === "failed") {
      // It never became ready: a load failure. Try again later.
      this.lastError ??= serverError("INTERNAL", `the worker for ${this.options.model} stopped while loading${crash ? `: ${crash.message}` : ""}`);
      this.setState("failed");
      this.release();
      this.retryTimer = setTimeout(() => this.spawn(), this.backoffMs);
      this.retryTimer.unref();
      this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
      return;
    }
    if (crash) this.lastError = serverError("INTERNAL", `the worker died: ${crash.message}`);
    this.restarts++;
    this.options.onRestart?.();
    this.spawn();
  }

  /**
   * Gives up on a job that does not stop: it ends now with `reason`, and a fresh thread takes the model's jobs (the
   * other jobs of its batch, sharing its forward pass, end PREEMPTED). The old thread is not terminated while it
   * works, since terminating a thread inside a native call (ONNX Runtime, isolated-vm) can abort the whole process;
   * it is told to cancel and is retired once it reports the end of all its jobs (back in its event loop; see
   * retire). One that never reports (stuck in a native call) stays, and keeps the model draining (MAX_ABANDONED).
   */
  private giveUp(current: Current, reason: ErrorInfo): void {
    if (this.current.get(current.job.jobId) !== current || !this.thread) return;
    const old = this.thread;
    const running = [...this.current.values()];
    for (const c of running) {
      Atomics.store(c.job.stop, 0, 1);
      old.postMessage({ type: "cancel", jobId: c.job.jobId });
    }
    this.options.log?.(`tsight: job ${current.job.jobId} of ${this.options.model} did not stop in time (${reason.message}); a fresh thread takes the model's jobs, the old one ends once the job does`);
    this.abandon(old, running.map((c) => c.job.jobId));
    const mates = serverError("PREEMPTED", "another job sharing this job's forward pass did not stop, and the worker was replaced; submit it again");
    for (const c of running) this.finish(c, c === current ? { ok: false, error: reason } : { ok: false, error: mates });
    this.restarts++;
    this.options.onRestart?.();
    // A fixed ceiling on threads and copies of the model: with another thread still finishing, wait for it.
    if (this.abandoned.size > MAX_ABANDONED) this.setState("draining");
    else this.spawn();
  }

  /**
   * The thread is stuck for good: a job's isolate lost control of its heap, and isolated-vm keeps the thread where
   * it failed rather than abort the process. Its jobs end (MEMORY), and a fresh thread takes the model's jobs, up to
   * MAX_LOST lost threads (each keeps what it held, a copy of the model among it, until the process ends); past
   * them the model is failed, so that repeated attacks cost no more memory.
   */
  private lose(message: string, culprit?: string): void {
    const thread = this.thread;
    if (!thread) return;
    this.thread = undefined;
    this.lost.add(thread);
    thread.unref();
    thread.removeAllListeners("message");
    const failing = this.lost.size > MAX_LOST;
    this.options.log?.(`tsight: job ${culprit ?? "(unknown)"}'s sandbox failed beyond recovery on a thread of ${this.options.model} (${message}); the thread is lost (${this.lost.size} so far)${failing ? "; the model is failed until the server restarts" : ", a fresh one takes the model's jobs"}`);
    const error = serverError("MEMORY", "the job's code ran its sandbox out of memory in a way it could not recover from; its worker was replaced", "MemoryError");
    // The other jobs of a shared forward pass did nothing wrong: they may run again (when the job is not known, every
    // job of the thread gets the error, as any of them may have caused it).
    const mates = serverError("PREEMPTED", "another job sharing this job's forward pass broke its worker thread, which was replaced; submit it again");
    for (const current of [...this.current.values()]) this.finish(current, { ok: false, error: culprit === undefined || current.job.jobId === culprit ? error : mates });
    if (culprit !== undefined) this.options.onBroke?.(culprit);
    this.restarts++;
    this.options.onRestart?.();
    if (failing) {
      this.failedForGood = true;
      this.lastError = serverError("INTERNAL", `${this.lost.size} jobs broke their worker threads beyond recovery; restart the server to serve ${this.options.model} again`);
      this.setState("failed");
      this.release();
      return;
    }
    this.spawn();
  }

  /**
   * Lets a thread finish the jobs it was told to stop, then retires it (see retire) once it has reported their
   * ends. The jobs stop within about one op after their cancel (see the sandbox's budget), so it does not go on for
   * long.
   */
  private abandon(thread: Worker, jobIds: string[]): void {
    this.thread = undefined;
    this.abandoned.add(thread);
    const left = new Set(jobIds);
    thread.on("message", (m: FromWorker) => {
      if ((m.type === "completed" || m.type === "failed") && left.delete(m.jobId) && left.size === 0) void retire(thread, RETIRE_WAIT_MS, () => this.overdue(RETIRE_WAIT_MS));
    });
    thread.once("exit", (code) => {
      this.ended(code);
      this.abandoned.delete(thread);
      if (this.state === "draining") this.spawn();
    });
    thread.unref();
  }

  private overdue(waitedMs: number): void {
    this.options.log?.(`tsight: a thread of ${this.options.model} did not end ${waitedMs} ms after it was told to; it is terminated`);
  }

  /** A thread let go of has exited with `code` (a terminated one exits with 1). */
  private ended(code: number): void {
    if (code !== 0) this.forcedEnds++;
  }

  /** Threads of this model alive now: the one serving it, those given up on that are still finishing, and those lost. */
  get threads(): number {
    return (this.thread ? 1 : 0) + this.abandoned.size + this.lost.size;
  }

  private finish(current: Current, outcome: RunOutcome): void {
    clearTimeout(current.watchdog);
    if (this.current.get(current.job.jobId) === current) this.current.delete(current.job.jobId);
    current.resolve(outcome);
  }

  private setState(state: WorkerState): void {
    if (this.state === state) return;
    this.state = state;
    this.options.onState?.(state);
  }

  private release(): void {
    for (const r of this.settled.splice(0)) r();
  }
}
