/**
 * The body of a model's worker thread: loads the executor and the model, then runs the jobs the main thread
 * sends, one at a time or several in one forward pass (`run-batch`), posting back each job's events and its result
 * (envelope bytes) or error. Code that spins here blocks only this thread; the main thread replaces it when a job
 * does not stop past its deadline.
 */
import { parentPort, workerData } from "node:worker_threads";
import { LanguageModel, loadSae } from "tsight";
import { decodeValue, MAX_JSON_VALUES, pastDeadline, unpackValue, packValue, errorFromInfo, infoFromError, ResultTooLargeError, decodeJob, type DecodedJob, type ExecutionContext, type ExecutionModel, type JobExecutor, type ErrorCode, type ErrorInfo, type JobEvent } from "tsight/protocol";
import { collectGarbage as collect } from "../sandbox/gc.js";
import { publicError } from "./public-error.js";
import type { FromWorker, LocalAnswer, RunJob, ToWorker, WorkerData } from "./worker-messages.js";

const port = parentPort!;

/** Jobs that held at least this much at once are followed by a collection. */
const COLLECT_AFTER_BYTES = 8 * 2 ** 20;
let collectNext = false;
const data = workerData as WorkerData;
const post = (m: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);

/** An error with a protocol code, as the executor's own errors are. */
class JobError extends Error {
  override readonly name: string;
  constructor(
    readonly code: ErrorCode,
    message: string,
    name?: string,
  ) {
    super(message);
    this.name = name ?? { CANCELLED: "CancelledError", TIMEOUT: "TimeoutError", MEMORY: "MemoryError" }[code as string] ?? "JobError";
  }
}

/** Why a job was stopped: the reason the server gave, or a plain cancel. */
const stopError = (reason?: ErrorInfo) => (reason ? new JobError(reason.code, reason.message, reason.type) : new JobError("CANCELLED", "the job was cancelled"));

/** The hybrid-step answers of one running job: given before or after the job asks for them. */
class LocalCalls {
  private readonly answers = new Map<string, LocalAnswer>();
  private readonly waiting = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private stopped: Error | undefined;

  answer(call: string, answer: LocalAnswer): void {
    const w = this.waiting.get(call);
    if (!w) return void this.answers.set(call, answer);
    this.waiting.delete(call);
    try {
      w.resolve(open(answer));
    } catch (e) {
      w.reject(e as Error);
    }
  }

  wait(call: string, signal: AbortSignal): Promise<unknown> {
    const given = this.answers.get(call);
    if (given) {
      this.answers.delete(call);
      return Promise.resolve().then(() => open(given));
    }
    if (this.stopped || signal.aborted) return Promise.reject(this.stopped ?? stopError());
    return new Promise((resolve, reject) => this.waiting.set(call, { resolve, reject }));
  }

  /** Rejects every pending wait and later ones: the job is stopping (for the server's reason, when it gave one). */
  cancel(reason?: ErrorInfo): void {
    this.stopped ??= stopError(reason);
    for (const w of this.waiting.values()) w.reject(this.stopped);
    this.waiting.clear();
  }
}

function open(answer: LocalAnswer): unknown {
  if (answer.kind === "error") throw errorFromInfo(answer.error);
  // A client's answer is bounded as a request is (see checkJsonText).
  return answer.kind === "envelope" ? unpackValue(answer.bytes, MAX_JSON_VALUES) : decodeValue(answer.value, new Map());
}

interface Running {
  /** The most memory the job's code held at once (told by the executor). */
  peakBytes?: number;
  controller: AbortController;
  local: LocalCalls;
  /** Why the server stopped the job, when it said. */
  reason?: ErrorInfo;
}

/** An executor that can also run several jobs as invokes of one forward pass (the sandbox's executeBatch). */
type BatchExecutor = JobExecutor & {
  /** Each job's outcome, told as soon as it is known. */
  executeBatch?(items: readonly { job: DecodedJob; ctx: ExecutionContext }[], model: ExecutionModel, options?: { stallMs?: number }): Promise<PromiseSettledResult<unknown>>[];
  /** Tells when a job broke this thread beyond recovery (the sandbox's isolate lost control of its heap), with its context. */
  onCatastrophe?(listener: (message: string, ctx: ExecutionContext) => void): void;
};

/** The job each context was made for: which job of a shared pass broke the thread. */
const jobOfContext = new WeakMap<ExecutionContext, string>();

let executor: BatchExecutor;
let model: ExecutionModel;
const running = new Map<string, Running>();

/** Registers a job as running and makes its ExecutionContext. */
function begin(job: RunJob): { r: Running; ctx: ExecutionContext } {
  const r: Running = { controller: new AbortController(), local: new LocalCalls() };
  running.set(job.jobId, r);
  const { signal } = r.controller;
  signal.addEventListener("abort", () => r.local.cancel(r.reason), { once: true });
  post({ type: "started", jobId: job.jobId });
  let events = 0;
  let eventBytes = 0;
  const ctx: ExecutionContext = {
    emit: (event: JobEvent) => {
      // A job told to stop that still sends events (e.g. tokens of a generation) stops here. The cancel message
      // may not have been read yet (the job has kept the thread busy), so the shared flag is checked too.
      if (Atomics.load(job.stop, 0) === 1) r.controller.abort();
      if (signal.aborted) throw new JobError("CANCELLED", "the job was cancelled");
      if (Date.now() > job.deadline) throw new JobError("TIMEOUT", pastDeadline(job.timeLimitMs));
      // Over the limits, the job ends here: a flood of events never reaches the main thread.
      // As the store will keep them: UTF-8 JSON (a log line of "€" or of control characters takes 3 to 6 bytes a character).
      eventBytes += event.type === "log" ? Buffer.byteLength(JSON.stringify(event.text)) : event.type === "local" ? event.vals.length : 64;
      if (++events > job.maxEvents || eventBytes > job.maxEventBytes) {
        throw new JobError("MEMORY", `the job sent more than ${events > job.maxEvents ? `${job.maxEvents} events` : `${job.maxEventBytes} bytes of events`} (log lines, streamed tokens, hybrid steps), the most a job may send`);
      }
      post({ type: "event", jobId: job.jobId, event });
    },
    signal,
    deadline: job.deadline,
    timeLimitMs: job.timeLimitMs,
    memoryLimitBytes: job.memoryLimitBytes,
    maxInputTokens: job.maxInputTokens,
    awaitLocal: (call: string) => r.local.wait(call, signal),
    onFinish: ({ peakBytes }) => void (r.peakBytes = Math.max(r.peakBytes ?? 0, peakBytes)),
    stopRequested: () => Atomics.load(job.stop, 0) === 1,
  };
  jobOfContext.set(ctx, job.jobId);
  return { r, ctx };
}

/** Posts a job's end: its value packed (within the result limit), or its error. */
function end(job: RunJob, r: Running, outcome: PromiseSettledResult<unknown>): void {
  try {
    if (outcome.status === "rejected") throw outcome.reason;
    if (r.controller.signal.aborted) throw new JobError("CANCELLED", "the job was cancelled");
    // Encoding is linear in the result and counts against the job's time; its size is checked before it is made.
    const bytes = packValue(outcome.value, job.maxResultBytes);
    if (Date.now() > job.deadline) throw new JobError("TIMEOUT", `${pastDeadline(job.timeLimitMs)}, while its result was encoded`);
    const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
    post({ type: "completed", jobId: job.jobId, bytes: whole }, [whole.buffer as ArrayBuffer]);
  } catch (e) {
    post({ type: "failed", jobId: job.jobId, error: publicError(infoFromError(e instanceof ResultTooLargeError ? new JobError("MEMORY", `the job's result is ${e.size} bytes, over this server's limit of ${e.limit}; return less (a slice of a tensor, or a reduction)`) : e, "USER_CODE")) });
  } finally {
    running.delete(job.jobId);
    // After a big or failed job (it may have been stopped with much allocated), and once more after the job after it
    // (some of a job's objects stay reachable until the next one replaces them): what it took goes back before the
    // next job rather than whenever the heap next fills.
    const heavy = outcome.status === "rejected" || (r.peakBytes ?? 0) >= COLLECT_AFTER_BYTES;
    if (heavy || collectNext) collect();
    collectNext = heavy;
  }
}

async function run(job: RunJob): Promise<void> {
  const { r, ctx } = begin(job);
  let outcome: PromiseSettledResult<unknown>;
  try {
    outcome = { status: "fulfilled", value: await executor.execute(decodeJob(job.body), model, ctx) };
  } catch (e) {
    outcome = { status: "rejected", reason: e };
  }
  end(job, r, outcome);
}

/** Runs jobs as invokes of one forward pass; a job whose request does not decode fails alone. */
async function runBatch(jobs: RunJob[]): Promise<void> {
  if (!executor.executeBatch) {
    for (const job of jobs) await run(job);
    return;
  }
  const items: { job: RunJob; r: Running; decoded: DecodedJob; ctx: ExecutionContext }[] = [];
  for (const job of jobs) {
    const { r, ctx } = begin(job);
    try {
      items.push({ job, r, decoded: decodeJob(job.body), ctx });
    } catch (e) {
      end(job, r, { status: "rejected", reason: e });
    }
  }
  let outcomes: Promise<PromiseSettledResult<unknown>>[];
  try {
    outcomes = executor.executeBatch(
      items.map(({ decoded, ctx }) => ({ job: decoded, ctx })),
      model,
      { stallMs: jobs[0]!.batchStallMs },
    );
  } catch (e) {
    outcomes = items.map(() => Promise.resolve({ status: "rejected", reason: e }));
  }
  // Each job ends as soon as its outcome is known (one that runs again alone holds up none of the others).
  await Promise.all(items.map(({ job, r }, i) => (outcomes[i] ?? Promise.resolve<PromiseSettledResult<unknown>>({ status: "rejected", reason: new JobError("INTERNAL", "the batch gave no outcome for this job") })).then((o) => end(job, r, o))));
}

port.on("message", (m: ToWorker) => {
  switch (m.type) {
    case "run":
      void run(m.job);
      break;
    case "run-batch":
      void runBatch(m.jobs);
      break;
    case "cancel": {
      const r = running.get(m.jobId);
      if (r) {
        r.reason ??= m.reason;
        r.controller.abort();
      }
      break;
    }
    case "local":
      running.get(m.jobId)?.local.answer(m.call, m.answer);
      break;
    case "exit":
      // The sandbox collects garbage as the thread exits, once its isolates are disposed of (see its watchExit).
      for (const r of running.values()) r.controller.abort();
      port.close();
      break;
  }
});

try {
  const mod = (await import(data.executor.module)) as Record<string, unknown>;
  const Executor = mod[data.executor.name] as (new () => JobExecutor) | undefined;
  if (typeof Executor !== "function") throw new Error(`${data.executor.module} exports no class "${data.executor.name}"`);
  executor = new Executor();
  // This thread cannot go on (it is stuck where the isolate failed): the main thread gives up on it at once.
  executor.onCatastrophe?.((message, ctx) => post({ type: "catastrophe", message, jobId: jobOfContext.get(ctx) }));
  model = await LanguageModel.load(data.model, { dtype: data.dtype, onLoadProgress: (progress) => post({ type: "progress", progress }) });
  for (const s of data.saes ?? []) model.addSae(await loadSae(s.source, { subfolder: s.subfolder }), { at: s.at, useErrorTerm: true });
  post({ type: "ready", batching: typeof executor.executeBatch === "function" });
} catch (e) {
  post({ type: "load-failed", error: infoFromError(e, "INTERNAL") });
  port.close();
}
