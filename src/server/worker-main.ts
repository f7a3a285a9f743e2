/**
 * The body of a model's worker thread: loads the executor and the model, then runs the jobs the main thread
 * sends, one at a time, posting back their events and their result (envelope bytes) or error. Code that spins
 * here blocks only this thread; the main thread replaces it when a job does not stop past its deadline.
 */
import { parentPort, workerData } from "node:worker_threads";
import { LanguageModel } from "../intervention/index.js";
import { decodeValue, unpackValue, packValue } from "../remote/codec.js";
import { errorFromInfo, infoFromError } from "../remote/errors.js";
import { decodeJob, type ExecutionContext, type JobExecutor } from "../remote/executor.js";
import type { ErrorCode, ErrorInfo, JobEvent } from "../remote/protocol.js";
import type { FromWorker, LocalAnswer, RunJob, ToWorker, WorkerData } from "./worker-messages.js";

const port = parentPort!;
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
  return answer.kind === "envelope" ? unpackValue(answer.bytes) : decodeValue(answer.value, new Map());
}

interface Running {
  controller: AbortController;
  local: LocalCalls;
  /** Why the server stopped the job, when it said. */
  reason?: ErrorInfo;
}

let executor: JobExecutor;
let model: LanguageModel;
const running = new Map<string, Running>();

async function run(job: RunJob): Promise<void> {
  const r: Running = { controller: new AbortController(), local: new LocalCalls() };
  running.set(job.jobId, r);
  const { signal } = r.controller;
  signal.addEventListener("abort", () => r.local.cancel(r.reason), { once: true });
  post({ type: "started", jobId: job.jobId });
  try {
    const decoded = decodeJob(job.body);
    const ctx: ExecutionContext = {
      emit: (event: JobEvent) => {
        // A job told to stop that still sends events (e.g. tokens of a generation) stops here. The cancel message
        // may not have been read yet (the job has kept the thread busy), so the shared flag is checked too.
        if (Atomics.load(job.stop, 0) === 1) r.controller.abort();
        if (signal.aborted) throw new JobError("CANCELLED", "the job was cancelled");
        if (Date.now() > job.deadline) throw new JobError("TIMEOUT", "the job ran past its deadline");
        post({ type: "event", jobId: job.jobId, event });
      },
      signal,
      deadline: job.deadline,
      memoryLimitBytes: job.memoryLimitBytes,
      awaitLocal: (call: string) => r.local.wait(call, signal),
      stopRequested: () => Atomics.load(job.stop, 0) === 1,
    };
    const value = await executor.execute(decoded, model, ctx);
    if (signal.aborted) throw new JobError("CANCELLED", "the job was cancelled");
    const bytes = packValue(value);
    if (bytes.byteLength > job.maxResultBytes) {
      throw new JobError("MEMORY", `the job's result is ${bytes.byteLength} bytes, over this server's limit of ${job.maxResultBytes}; return less (a slice of a tensor, or a reduction)`);
    }
    const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
    post({ type: "completed", jobId: job.jobId, bytes: whole }, [whole.buffer as ArrayBuffer]);
  } catch (e) {
    post({ type: "failed", jobId: job.jobId, error: infoFromError(e, "USER_CODE") });
  } finally {
    running.delete(job.jobId);
  }
}

port.on("message", (m: ToWorker) => {
  switch (m.type) {
    case "run":
      void run(m.job);
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
  }
});

try {
  const mod = (await import(data.executor.module)) as Record<string, unknown>;
  const Executor = mod[data.executor.name] as (new () => JobExecutor) | undefined;
  if (typeof Executor !== "function") throw new Error(`${data.executor.module} exports no class "${data.executor.name}"`);
  executor = new Executor();
  model = await LanguageModel.load(data.model);
  post({ type: "ready" });
} catch (e) {
  post({ type: "load-failed", error: infoFromError(e, "INTERNAL") });
  port.close();
}
