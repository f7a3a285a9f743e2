/**
 * JobManager: the embedded server's dispatcher. It takes a submitted request (checked with `decodeJob`), stores
 * the job, queues it for its model, hands it to the model's worker when the worker is free, stores the events
 * the worker sends, and ends the job: the result to disk (COMPLETED), its error (ERROR) or CANCELLED. Every move
 * is a status event in the JobStore. When the worker is free and the next job is a plain trace, the waiting traces
 * of the same token counts go with it, up to `maxBatch`, as invokes of one forward pass (continuous batching);
 * each keeps its own events, deadline, cancel and result. Hybrid steps are bounded by a LocalStepWatch: a step left
 * unanswered too long, or by a client that went away, stops the job.
 */
import type { LoadProgress } from "tsight";
import { decodeJob, type DecodedJob, type ErrorInfo, type JobEvent, type JobRequest, type JobState, type ModelInfo } from "tsight/protocol";
import { barredNote, checkBarred, newBar, type Barred } from "./quarantine.js";
import { ApiError, checkRoomToStore, jobNotFound } from "./api-error.js";
import { batchKey, batchNote, perPass } from "./batch-key.js";
import { cutLog, recordRetentionMs, runTimeoutMs, type ServerConfig } from "./config.js";
import type { ClusterStatus, Dispatcher, ModelLoad, WorkerInfo } from "./contracts.js";
import type { OpenStreams } from "./event-stream.js";
import { checkRepeat, type Idempotency } from "./idempotency.js";
import { newJobId } from "./ids.js";
import { JobQueue } from "./job-queue.js";
import { isTerminal } from "./job-status.js";
import type { JobStore, ListOptions, MoveDetails } from "./job-store.js";
import { publicError } from "./public-error.js";
import type { Caller } from "./key-store.js";
import { LocalStepWatch } from "./local-step-watch.js";
import type { ServerMetrics } from "./metrics.js";
import type { ModelRegistry, ServedModel } from "./model-registry.js";
import { ModelWorker, serverError, type RunOutcome, type WorkerState } from "./model-worker.js";
import type { ResultStore } from "./result-store.js";
import type { LocalAnswer } from "./worker-messages.js";

export interface JobManagerParts {
  config: ServerConfig;
  store: JobStore;
  results: ResultStore;
  registry: ModelRegistry;
  metrics: ServerMetrics;
  /** The open event streams of each job (a hybrid step needs a client following its job). */
  streams: OpenStreams;
  /** Where failures of the server itself are written. */
  log?: (line: string) => void;
  /** Told as a model's thread loads its weights (by model name), after each tensor. */
  onLoadProgress?: (model: string, progress: LoadProgress) => void;
  /** A model is failed until the server restarts (see ServerOptions.onModelFailed). */
  onModelFailed?: (model: string, reason: string) => void;
}

/** A job from submission until it ends. */
interface ActiveJob {
  id: string;
  /** The API key that submitted it. */
  keyId: string;
  model: ServedModel;
  /** The request, until it is handed to a worker. */
  body: Uint8Array | JobRequest | undefined;
  /** Jobs with the same key may share a forward pass (see batch-key.ts); undefined: runs alone. */
  batch: string | undefined;
  dispatchedAt?: number;
  cancelRequested: boolean;
  events: number;
  /** Hybrid steps the job asked for and the client has not answered. */
  localCalls: Set<string>;
  /** Hybrid steps answered already. */
  answered: Set<string>;
  /** How long a hybrid step of this job waits for its answer (the job's localTimeoutMs, capped by the server's). */
  localTimeoutMs: number;
  /** How long the job may run once dispatched (its timeoutMs, capped by the server's jobTimeoutMs). */
  timeoutMs: number;
  /** Set when the server stops the job itself (a hybrid step timed out, its client went away): how it ends. */
  endError?: ErrorInfo;
  /** Its place in its model's queue, as last stored. */
  position?: number;
  /** Bytes of the events it sent. */
  eventBytes: number;
}

/** What /v1/status says about one model of the embedded server. */
export interface ModelStatus extends ModelLoad {
  running: boolean;
  /** `threads`: alive now (the serving one and any still finishing); `forcedEnds`: threads let go of that did not end by themselves. */
  worker: { state: WorkerState; threadId: number | null; restarts: number; lastError: string | null; threads: number; forcedEnds: number };
}

export class JobManager implements Dispatcher {
  readonly queue = new JobQueue();
  private readonly workers = new Map<string, ModelWorker>();
  private readonly active = new Map<string, ActiveJob>();
  private readonly averageSeconds = new Map<string, number>();
  /** Passes handed to each model's worker, and the jobs in them. */
  private readonly passes = new Map<string, { passes: number; jobs: number }>();
  private readonly finishing = new Set<Promise<void>>();
  /** Ends of jobs the store could not record yet (see settle). */
  private readonly unsettled = new Map<string, { status: "COMPLETED" | "ERROR" | "CANCELLED"; details: MoveDetails }>();
  private readonly localSteps: LocalStepWatch;
  private closed = false;

  constructor(private readonly parts: JobManagerParts) {
    const { store, metrics, registry } = parts;
    this.localSteps = new LocalStepWatch({ streams: parts.streams, disconnectGraceMs: parts.config.localDisconnectGraceMs, onExpired: (id, error) => this.stop(id, error) });
    for (const id of store.activeIds()) store.move(id, "ERROR", { error: serverError("PREEMPTED", "the server restarted before the job ended; submit it again") });
    metrics.registry.gauge("tsight_queue_depth", "Jobs waiting, by model.", () => registry.list().map((m) => ({ labels: { model: m.name }, value: this.queue.length(m.key) })));
    metrics.registry.gauge("tsight_jobs_running", "Jobs running, by model.", () => registry.list().map((m) => ({ labels: { model: m.name }, value: this.workers.get(m.key)?.jobId ? 1 : 0 })));
    metrics.registry.gauge("tsight_worker_up", "Whether the model's worker has its model loaded.", () =>
      registry.list().map((m) => ({ labels: { model: m.name }, value: ["ready", "busy"].includes(this.workers.get(m.key)?.state ?? "") ? 1 : 0 })),
    );
  }

  /** Starts a worker thread per model; resolves when each has loaded its model or failed to. */
  async startWorkers(): Promise<void> {
    const started: Promise<void>[] = [];
    for (const model of this.parts.registry.list()) {
      if (this.workers.has(model.key)) continue;
      const worker = new ModelWorker({
        model: model.name,
        source: model.source,
        executor: this.parts.config.executor,
        stopGraceMs: this.parts.config.stopGraceMs,
        heapMb: this.parts.config.workerHeapMb,
        saes: model.saes.map(({ source, subfolder, at }) => ({ source, subfolder, at })),
        dtype: model.dtype,
        onLoadProgress: (p) => this.parts.onLoadProgress?.(model.name, p),
        onState: (s) => {
          if (s === "ready") this.pump(model.key);
          if (s !== "failed") return;
          const why = worker.lastError?.message ?? "no reason given";
          this.failWaiting(model, serverError("INTERNAL", worker.failedForGood ? failedUntilRestart(model.name, worker) : `${model.name} failed to load on this server (${why}); try again later`));
          if (worker.failedForGood) this.parts.onModelFailed?.(model.name, why);
        },
        onStarted: (id) => this.parts.store.move(id, "RUNNING"),
        onEvent: (id, e) => this.onEvent(id, e),
        onRestart: () => this.parts.metrics.restarts.inc({ model: model.name }),
        onBroke: (id) => this.quarantine(id, model.name),
        log: (line) => this.parts.log?.(line),
      });
      this.workers.set(model.key, worker);
      started.push(worker.start(), this.parts.registry.loadTokenizer(model).then(() => undefined));
    }
    await Promise.all(started);
  }

  /**
   * Checks and queues a request; the caller's key owns the job. A repeated idempotency key gives the earlier job when
   * the body is the same, else a 422.
   */
  /** API keys whose job broke a worker thread, with until when they may not submit (see quarantine.ts). */
  private readonly quarantined = new Map<string, Barred>();

  private quarantine(jobId: string, model: string): void {
    const keyId = this.active.get(jobId)?.keyId ?? this.parts.store.get(jobId)?.keyId;
    if (keyId === undefined) return;
    const barred = newBar(jobId, model, this.parts.config.brokeThreadQuarantineMs);
    this.quarantined.set(keyId, barred);
    this.parts.log?.(barredNote(keyId, barred));
  }

  submit(caller: Caller, body: Uint8Array | JobRequest, idempotency?: Idempotency): JobState {
    if (this.closed) throw new ApiError(503, "INTERNAL", "the server is shutting down; try again later", { retryable: true });
    if (idempotency !== undefined) {
      const earlier = this.parts.store.byIdempotencyKey(caller.keyId, idempotency.key);
      if (earlier) {
        checkRepeat(earlier, idempotency);
        return this.state(earlier.id, caller.keyId);
      }
    }
    let job: DecodedJob;
    try {
      job = decodeJob(body);
    } catch (e) {
      throw new ApiError(400, "VALIDATION", (e as Error).message);
    }
    const model = this.parts.registry.get(job.model);
    if (!model) throw this.parts.registry.unserved(job.model);
    const worker = this.workers.get(model.key);
    // Not retryable: no wait makes it serve again, only a restart (its state in /v1/models is "failed").
    if (worker?.failedForGood) throw new ApiError(503, "INTERNAL", failedUntilRestart(model.name, worker), { retryable: false });
    if (worker?.state === "failed") {
      throw new ApiError(503, "INTERNAL", `${model.name} failed to load on this server (${worker.lastError?.message ?? "no reason given"}); it is retried, try again later`, { retryable: true, headers: { "retry-after": "30" } });
    }
    checkBarred(this.quarantined.get(caller.keyId));
    const limit = this.parts.config.maxActiveJobsPerKey;
    const unfinished = this.parts.store.activeCount(caller.keyId);
    checkRoomToStore({ ...this.parts.store.storedParts(caller.keyId), logsKeptMs: recordRetentionMs(this.parts.config) }, unfinished, this.parts.config);
    if (unfinished >= limit) {
      throw new ApiError(429, "NOT_ALLOWED", `this API key already has ${limit} unfinished jobs, the most it may have; wait for one to end`, { retryable: true, headers: { "retry-after": "1" } });
    }
    const id = newJobId();
    const webhook = job.webhook === undefined ? undefined : { url: job.webhook, secret: job.webhookSecret };
    this.parts.store.create({ id, keyId: caller.keyId, model: model.key, kind: job.kind, webhook, idempotency });
    const cap = this.parts.config.localStepTimeoutMs;
    const localTimeoutMs = Math.min(job.localTimeoutMs ?? cap, cap);
    const batch = this.parts.config.maxBatch > 1 ? batchKey(job, this.parts.registry.tokenizer(model)) : undefined;
    const timeoutMs = runTimeoutMs(this.parts.config, job.timeoutMs);
    const active: ActiveJob = { id, keyId: caller.keyId, model, body, batch, cancelRequested: false, events: 0, eventBytes: 0, localCalls: new Set(), answered: new Set(), localTimeoutMs, timeoutMs };
    this.active.set(id, active);
    this.parts.store.move(id, "QUEUED", { position: (active.position = this.queue.push(model.key, id, caller.keyId)) });
    this.parts.metrics.submitted.inc({ model: model.name });
    this.pump(model.key);
    return this.state(id, caller.keyId);
  }

  /** The job's state, if `keyId` owns it (its end as known here, while the store cannot record it yet). */
  state(id: string, keyId: string): JobState {
    const job = this.parts.store.getOwned(id, keyId);
    if (!job) throw jobNotFound(id);
    const end = this.unsettled.get(id);
    if (end) return { ...this.parts.store.state(job), status: end.status, ...(end.details.error ? { error: end.details.error } : {}) };
    return this.parts.store.state(job, this.queue.position(id));
  }

  /** The key's jobs, newest first (GET /v1/jobs). */
  list(keyId: string, options: ListOptions): JobState[] {
    const jobs = this.parts.store.list(keyId, options);
    if (!jobs) throw new ApiError(400, "VALIDATION", `"before" must be the id of one of this API key's jobs; there is no job ${options.before} for it`);
    return jobs.map((job) => this.parts.store.state(job, this.queue.position(job.id)));
  }

  /**
   * Cancels a job: a waiting one is CANCELLED at once; a running one is asked to stop (its worker's thread is
   * replaced if it does not) and becomes CANCELLED when it has. A finished job stays as it is.
   */
  cancel(id: string, keyId: string): JobState {
    const job = this.parts.store.getOwned(id, keyId);
    if (!job) throw jobNotFound(id);
    const active = this.active.get(id);
    if (!isTerminal(job.status) && active) {
      if (this.queue.remove(id) !== undefined) {
        this.active.delete(id);
        this.parts.store.move(id, "CANCELLED");
        this.countEnd(active, "CANCELLED");
        this.renumber(active.model.key);
      } else if (!active.cancelRequested) {
        active.cancelRequested = true;
        this.workers.get(active.model.key)?.cancel(id);
      }
    }
    return this.state(id, keyId);
  }

  /** Passes the client's answer to hybrid step `call` of a running job. */
  answerLocal(id: string, keyId: string, call: string, answer: LocalAnswer): void {
    const job = this.parts.store.getOwned(id, keyId);
    if (!job) throw jobNotFound(id);
    const active = this.active.get(id);
    if (job.status !== "RUNNING" || !active) throw new ApiError(409, "NOT_ALLOWED", `job ${id} is ${job.status}; only a running job takes answers to local steps`);
    if (active.endError || active.cancelRequested) throw new ApiError(409, "NOT_ALLOWED", `job ${id} is stopping${active.endError ? `: ${active.endError.message}` : " (cancelled)"}`);
    if (active.answered.has(call)) throw new ApiError(409, "NOT_ALLOWED", `local step "${call}" of job ${id} was answered already`);
    if (!active.localCalls.has(call)) throw new ApiError(404, "VALIDATION", `job ${id} is not waiting for local step "${call}"`);
    active.localCalls.delete(call);
    active.answered.add(call);
    this.localSteps.answered(id, call);
    this.workers.get(active.model.key)?.answerLocal(id, call, answer);
  }

  /** The served models, as GET /v1/models lists them. */
  models(): ModelInfo[] {
    return this.modelStatus().map(({ key, name, modelType, state, queued, dtype }) => ({ key, name, modelType, state, queued, dtype }));
  }

  modelStatus(): ModelStatus[] {
    return this.parts.registry.list().map((m) => {
      const worker = this.workers.get(m.key);
      const wstate = worker?.state ?? "stopped";
      const queued = this.queue.length(m.key);
      const average = this.averageSeconds.get(m.key) ?? null;
      const runningFor = worker?.jobId ? (Date.now() - (this.active.get(worker.jobId)?.dispatchedAt ?? Date.now())) / 1000 : null;
      const wait = average === null ? null : queued * average + (runningFor === null ? 0 : Math.max(0, average - runningFor));
      return {
        key: m.key,
        name: m.name,
        modelType: m.modelType,
        dtype: m.dtype,
        state: wstate === "ready" || wstate === "busy" ? "loaded" : wstate === "starting" ? "loading" : wstate === "failed" ? "failed" : "available",
        queued,
        running: runningFor !== null,
        worker: { state: wstate, threadId: worker?.threadId ?? null, restarts: worker?.restarts ?? 0, lastError: worker?.lastError?.message ?? null, threads: worker?.threads ?? 0, forcedEnds: worker?.forcedEnds ?? 0 },
        averageJobSeconds: average,
        estimatedWaitSeconds: wait === null ? null : Math.round(wait * 1000) / 1000,
        jobsPerPass: perPass(this.passes.get(m.key)),
      };
    });
  }

  /** GET /v1/status: the models, and each model's thread as a worker. */
  status(): ClusterStatus {
    const models = this.modelStatus();
    const workers: WorkerInfo[] = [];
    for (const m of this.parts.registry.list()) {
      const worker = this.workers.get(m.key);
      if (!worker || worker.threadId === undefined) continue;
      const running = worker.jobIds.length;
      workers.push({ id: `thread-${worker.threadId}`, models: [m.name], busy: running > 0, running, lastHeartbeat: new Date().toISOString() });
    }
    return { mode: "embedded", queued: models.reduce((n, m) => n + m.queued, 0), running: models.filter((m) => m.running).length, models, workers, maxBatch: this.parts.config.maxBatch };
  }

  /** Stops taking jobs, fails the waiting ones (PREEMPTED) and stops the workers. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.localSteps.close();
    const preempted = serverError("PREEMPTED", "the server shut down before the job ran; submit it again");
    for (const model of this.parts.registry.list()) this.failWaiting(model, preempted);
    await Promise.all([...this.workers.values()].map((w) => w.close()));
    // Ending a job stores its record and result: quick, but closing never hangs on a store that does not answer.
    const waited = await Promise.race([Promise.all([...this.finishing]).then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 10_000).unref())]);
    if (!waited) this.parts.log?.("tsight server: closed before every ended job was stored");
  }

  /** Hands waiting jobs to the model's worker while it is free: the next job, with those that can share its pass. */
  private pump(modelKey: string): void {
    const worker = this.workers.get(modelKey);
    while (!this.closed && worker?.state === "ready") {
      const batch = this.takeBatch(modelKey, worker.batching ? this.parts.config.maxBatch : 1);
      if (batch.length === 0) return;
      this.renumber(modelKey);
      const { memoryLimitBytes, maxResultBytes, maxEventsPerJob: maxEvents, maxEventBytesPerJob: maxEventBytes, batchStallMs, maxInputTokens } = this.parts.config;
      const now = Date.now();
      const specs = batch.map((active) => {
        const body = active.body!;
        active.body = undefined;
        active.dispatchedAt = now;
        this.parts.store.move(active.id, "DISPATCHED");
        if (batch.length > 1) this.parts.store.append(active.id, { type: "log", text: batchNote(batch.length) });
        return { jobId: active.id, body, deadline: now + active.timeoutMs, timeLimitMs: active.timeoutMs, memoryLimitBytes, maxResultBytes, maxEvents, maxEventBytes, batchStallMs, maxInputTokens };
      });
      this.parts.metrics.batchSize.observe({ model: batch[0]!.model.name }, batch.length);
      const runs = worker.runBatch(specs);
      void Promise.all(runs).then(() => this.recordPass(modelKey, (Date.now() - now) / 1000, batch.length));
      batch.forEach((active, i) => {
        const done = runs[i]!.then((outcome) => this.finish(active, outcome)).catch((e: Error) => this.parts.log?.(`tsight server: ending job ${active.id} failed: ${e.stack ?? e.message}`));
        this.finishing.add(done);
        void done.finally(() => this.finishing.delete(done));
      });
    }
  }

  /**
   * The next waiting job of a model, and waiting jobs with its batch key after it, in the order they would be served
   * (up to `max` in all): at most one of each API key, so a pass never holds several jobs of one key while another
   * key waits (fair share holds with batching).
   */
  private takeBatch(modelKey: string, max: number): ActiveJob[] {
    const first = this.queue.shift(modelKey);
    if (first === undefined) return [];
    const head = this.active.get(first)!;
    const batch = [head];
    if (max > 1 && head.batch !== undefined) {
      const keys = new Set([head.keyId]);
      for (const id of this.queue.waiting(modelKey)) {
        if (batch.length >= max) break;
        const other = this.active.get(id);
        if (other?.batch !== head.batch || keys.has(other.keyId)) continue;
        this.queue.remove(id);
        keys.add(other.keyId);
        batch.push(other);
      }
    }
    return batch;
  }

  /** Records how long a pass took per job (the mean that estimated waits use). */
  private recordPass(modelKey: string, seconds: number, jobs: number): void {
    const p = this.passes.get(modelKey) ?? { passes: 0, jobs: 0 };
    this.passes.set(modelKey, { passes: p.passes + 1, jobs: p.jobs + jobs });
    const perJob = seconds / jobs;
    const previous = this.averageSeconds.get(modelKey);
    this.averageSeconds.set(modelKey, previous === undefined ? perJob : 0.8 * previous + 0.2 * perJob);
  }

  /**
   * Stops a running job for the server's own reason (a hybrid step timed out, its client went away): its waits
   * reject with `error`, and it ends ERROR with it once its worker reports the end (or gives up on it).
   */
  private stop(id: string, error: ErrorInfo): void {
    const active = this.active.get(id);
    if (!active || active.cancelRequested || active.endError) return;
    active.endError = error;
    this.workers.get(active.model.key)?.cancel(id, error);
  }

  /** Fails the waiting jobs of a model with `error`. */
  private failWaiting(model: ServedModel, error: ErrorInfo): void {
    for (let id = this.queue.shift(model.key); id !== undefined; id = this.queue.shift(model.key)) {
      const active = this.active.get(id);
      this.active.delete(id);
      this.parts.store.move(id, "ERROR", { error });
      if (active) this.countEnd(active, "ERROR", error.code);
    }
  }

  /** Stores the new positions of a model's waiting jobs (those whose place changed). */
  private renumber(modelKey: string): void {
    this.queue.waiting(modelKey).forEach((id, position) => {
      const active = this.active.get(id);
      if (!active || active.position === position) return;
      active.position = position;
      this.parts.store.move(id, "QUEUED", { position });
    });
  }

  private onEvent(id: string, event: JobEvent): void {
    const active = this.active.get(id);
    if (!active || active.endError) return;
    if (event.type !== "log" && event.type !== "stream" && event.type !== "local") return; // the server's own events
    if (event.type === "log") event = { type: "log", text: cutLog(event.text) };
    const bytes = JSON.stringify(event).length;
    const { maxEventsPerJob, maxEventBytesPerJob } = this.parts.config;
    if (++active.events > maxEventsPerJob || (active.eventBytes += bytes) > maxEventBytesPerJob) {
      // Limits a job cannot talk its way past: it ends (MEMORY), nothing more of it is stored.
      const over = active.events > maxEventsPerJob ? `more than ${maxEventsPerJob} events` : `more than ${maxEventBytesPerJob} bytes of events`;
      return this.stop(id, serverError("MEMORY", `the job sent ${over} (log lines, streamed tokens, hybrid steps), the most a job may send; it was stopped`, "MemoryError"));
    }
    if (event.type === "local" && !active.answered.has(event.call)) {
      active.localCalls.add(event.call);
      this.localSteps.asked(id, event.call, active.localTimeoutMs);
    }
    try {
      this.parts.store.append(id, event);
    } catch (e) {
      this.parts.log?.(`tsight server: an event of job ${id} could not be stored: ${(e as Error).message}`);
    }
  }

  private async finish(active: ActiveJob, outcome: RunOutcome): Promise<void> {
    const { results, config } = this.parts;
    const id = active.id;
    this.active.delete(id);
    this.localSteps.forget(id);
    this.parts.metrics.duration.observe({ model: active.model.name }, (Date.now() - active.dispatchedAt!) / 1000);
    if (active.cancelRequested) {
      this.settle(id, "CANCELLED");
      return this.countEnd(active, "CANCELLED");
    }
    if (active.endError) {
      this.settle(id, "ERROR", { error: active.endError });
      return this.countEnd(active, "ERROR", active.endError.code);
    }
    let error = outcome.ok ? undefined : publicError(outcome.error);
    if (outcome.ok) {
      if (outcome.bytes.byteLength > config.maxResultBytes) {
        error = serverError("MEMORY", `the job's result is ${outcome.bytes.byteLength} bytes, over this server's limit of ${config.maxResultBytes}; return less`, "MemoryError");
      } else {
        try {
          await results.write(id, outcome.bytes);
          this.settle(id, "COMPLETED", { result: { bytes: outcome.bytes.byteLength, expires: Date.now() + config.resultRetentionMs } });
          return this.countEnd(active, "COMPLETED");
        } catch (e) {
          // A full disk, say: the job ends now (retryable), and nothing half-written is kept. The user learns what
          // happened, not the server's paths.
          const full = ["ENOSPC", "EDQUOT"].includes((e as NodeJS.ErrnoException).code ?? "");
          this.parts.log?.(`tsight server: the result of job ${id} could not be stored: ${(e as Error).message}`);
          error = serverError("INTERNAL", `the result could not be stored${full ? " (the server's disk is full)" : ""}; submit the job again`);
        }
      }
    }
    this.settle(id, "ERROR", { error });
    this.countEnd(active, "ERROR", error!.code);
  }

  /**
   * Moves a job to its final state. When the store cannot take it (its disk is full too), the state is kept here
   * and answered from here, and storing it is tried again until it works: a job never stays RUNNING because the
   * record of its end could not be written.
   */
  private settle(id: string, status: "COMPLETED" | "ERROR" | "CANCELLED", details: MoveDetails = {}): void {
    try {
      this.parts.store.move(id, status, details);
      this.unsettled.delete(id);
    } catch (e) {
      const first = !this.unsettled.has(id);
      this.unsettled.set(id, { status, details });
      if (first) this.parts.log?.(`tsight server: the end of job ${id} (${status}) could not be stored (${(e as Error).message}); trying again`);
      const retry = setTimeout(() => this.unsettled.has(id) && this.settle(id, status, details), 1000);
      retry.unref();
    }
  }

  private countEnd(active: ActiveJob, status: "COMPLETED" | "ERROR" | "CANCELLED", code?: string): void {
    this.parts.metrics.finished.inc({ model: active.model.name, status });
    if (code) this.parts.metrics.errors.inc({ code });
  }
}

/** Why a model failed for good (its jobs broke too many worker threads) runs no job until the server restarts. */
function failedUntilRestart(name: string, worker: ModelWorker): string {
  return `${name} cannot run jobs on this server until it restarts: ${worker.lastError?.message ?? "its worker failed"}`;
}
