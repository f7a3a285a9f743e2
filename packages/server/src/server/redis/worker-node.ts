/**
 * WorkerNode: a worker process of a distributed deployment. It loads its models (a ModelWorker thread each, as the
 * embedded server does) and takes jobs only from their queues. Whenever a model's thread is free it takes the next
 * job; when that is a plain trace, it also takes the waiting jobs behind it that can share its forward pass (the
 * same batch key, up to `maxBatch`) and runs them together as invokes of one pass (continuous batching). A fetched
 * job that cannot join is kept for the next pass; other workers take the rest. Each job keeps its own
 * events, deadline, cancel and result: events and state changes go to Redis as they happen, the result to the
 * result store, and the BullMQ job is completed last.
 *
 * While it holds jobs, the node renews their BullMQ locks (its event loop is free: models run in threads). A node
 * that dies stops renewing them, and BullMQ's stalled-job check hands its jobs to another worker (see sweep.ts).
 * Cancels and hybrid-step answers arrive over the control channel; hybrid steps are bounded as in the embedded
 * server, with the streams that follow a job counted across API processes (`watch:<id>`).
 */
import type { Queue, Worker } from "bullmq";
import type { Redis } from "ioredis";
import type { LoadProgress } from "tsight";
import { infoFromError, type ErrorInfo, type JobEvent } from "tsight/protocol";
import { cutLog, runTimeoutMs, type ServerConfig } from "../config.js";
import type { StreamCountListener, StreamCounts } from "../event-stream.js";
import { batchNote } from "../batch-key.js";
import { LocalStepWatch } from "../local-step-watch.js";
import { barredNote, newBar } from "../quarantine.js";
import type { ServerMetrics } from "../metrics.js";
import type { ModelRegistry, ServedModel } from "../model-registry.js";
import { ModelWorker, serverError, type RunOutcome } from "../model-worker.js";
import type { RunJob } from "../worker-messages.js";
import type { DistributedConfig } from "./config.js";
import { decodeAnswer, type RedisJobStore } from "./job-store.js";
import { liveWorkers, Presence } from "./presence.js";
import type { BullJob, QueuedJob } from "./queues.js";
import type { RedisResultStore } from "./result-store.js";
import { claimJob } from "./scripts.js";

export interface WorkerNodeParts {
  /** This process's name among the workers (presence, BullMQ worker name, tokens). */
  id: string;
  config: ServerConfig;
  dist: DistributedConfig;
  /** Commands (the store's connection). */
  redis: Redis;
  /** A connection of its own for the control channel (a subscribed connection takes no other commands). */
  subscriber: Redis;
  store: RedisJobStore;
  results: RedisResultStore;
  registry: ModelRegistry;
  metrics: ServerMetrics;
  /** Each served model's queue, and the BullMQ worker that fetches from it, by model key. */
  queues: Map<string, Queue<QueuedJob>>;
  fetchers: Map<string, Worker<QueuedJob>>;
  log: (line: string) => void;
  /** Told as a model's thread loads its weights (by model name), after each tensor. */
  onLoadProgress?: (model: string, progress: LoadProgress) => void;
}

/** A job fetched from its queue: its lock is ours until it ends or is handed back. */
interface Held {
  bull: BullJob;
  token: string;
  id: string;
  batch: string | undefined;
  /** The API key that submitted it. */
  key: string | undefined;
  localTimeoutMs: number;
  /** The job's run-time limit once dispatched (ms). */
  timeoutMs: number;
}

/** A job running on a model's thread. */
interface Run {
  held: Held;
  lane: Lane;
  dispatchedAt: number;
  cancelRequested: boolean;
  /** Set when this node stops the job itself (a hybrid step timed out, its client went away): how it ends. */
  endError?: ErrorInfo;
  /** Set when the job is not this node's to end any more (its lock was lost, or the node hands it back). */
  letGo?: "lock-lost" | "hand-back";
  events: number;
  /** Appended to the hybrid-step calls of a retried run, so that clients tell them from the first run's. */
  callSuffix: string;
  localCalls: Set<string>;
  answered: Set<string>;
}

/** One served model: its thread, its queue and the jobs this node holds of it. */
interface Lane {
  model: ServedModel;
  worker: ModelWorker;
  fetcher: Worker<QueuedJob>;
  held: Held[];
  running: Map<string, Run>;
  wake: (() => void) | undefined;
  loop?: Promise<void>;
  /** Mean seconds of model time per job (a pass of n jobs counts 1/n of its time for each). */
  mean: number | undefined;
}

/** How long a closing node waits for running jobs before handing them back to the queue. */
const CLOSE_GRACE_MS = 10_000;

export class WorkerNode {
  readonly id: string;
  private readonly lanes = new Map<string, Lane>();
  private readonly runs = new Map<string, Run>();
  private readonly finishing = new Set<Promise<void>>();
  private readonly presence: Presence;
  private readonly counts: SharedStreamCounts;
  private readonly localSteps: LocalStepWatch;
  private lockTimer: NodeJS.Timeout | undefined;
  private tokens = 0;
  private closing = false;

  constructor(private readonly parts: WorkerNodeParts) {
    this.id = parts.id;
    this.presence = new Presence(parts.redis, parts.store.keys, this.id, parts.dist.heartbeatMs, () => ({
      models: parts.registry.list().map((m) => ({ key: m.key, name: m.name, dtype: m.dtype })),
      running: Object.fromEntries([...this.lanes].map(([key, lane]) => [key, lane.running.size])),
    }));
    this.counts = new SharedStreamCounts(parts.redis, parts.store.keys.watch, 500);
    this.localSteps = new LocalStepWatch({ streams: this.counts, disconnectGraceMs: parts.config.localDisconnectGraceMs, onExpired: (id, error) => this.stop(id, error) });
  }

  /** Loads the models, then starts taking jobs. Resolves once every model loaded or failed to (failures are retried). */
  async start(): Promise<void> {
    const { config, registry, fetchers } = this.parts;
    const loading: Promise<unknown>[] = [];
    for (const model of registry.list()) {
      const lane: Lane = { model, fetcher: fetchers.get(model.key)!, held: [], running: new Map(), wake: undefined, mean: undefined, worker: undefined as unknown as ModelWorker };
      lane.worker = new ModelWorker({
        model: model.name,
        source: model.source,
        executor: config.executor,
        stopGraceMs: config.stopGraceMs,
        heapMb: config.workerHeapMb,
        saes: model.saes.map(({ source, subfolder, at }) => ({ source, subfolder, at })),
        dtype: model.dtype,
        onLoadProgress: (p) => this.parts.onLoadProgress?.(model.name, p),
        onState: (s) => {
          if (s === "ready") lane.wake?.();
          if (s === "failed") void this.handBackHeld(lane);
        },
        onStarted: (id) => {
          if (this.runs.has(id)) void this.write(this.parts.store.move(id, "RUNNING"));
        },
        onEvent: (id, e) => this.onEvent(id, e),
        onRestart: () => this.parts.metrics.restarts.inc({ model: model.name }),
        onBroke: (id) => void this.write(this.bar(id, model.name)),
        log: (line) => this.parts.log(line),
      });
      this.lanes.set(model.key, lane);
      loading.push(lane.worker.start(), registry.loadTokenizer(model));
    }
    await Promise.all(loading);
    await this.parts.subscriber.subscribe(this.parts.store.keys.control);
    this.parts.subscriber.on("message", (_channel: string, message: string) => void this.onControl(message));
    await this.warnOfOtherDTypes();
    await this.presence.start();
    for (const lane of this.lanes.values()) {
      await lane.fetcher.startStalledCheckTimer();
      lane.loop = this.loop(lane);
    }
    const renew = Math.max(100, Math.round(this.parts.dist.lockDurationMs / 2));
    this.lockTimer = setInterval(() => void this.renewLocks(), renew);
  }

  /**
   * Logs a model that another live worker keeps as another dtype: a job of it may go to either worker, and gets
   * other numbers from each (/v1/models then gives the API process's own --dtype).
   */
  private async warnOfOtherDTypes(): Promise<void> {
    const { redis, store, dist, registry, log } = this.parts;
    const others = (await liveWorkers(redis, store.keys, dist.heartbeatMs).catch(() => [])).filter((w) => w.id !== this.id);
    for (const m of registry.list()) {
      const differ = others.filter((w) => w.modelKeys.includes(m.key) && w.dtypeByModel[m.key] !== m.dtype);
      if (differ.length === 0) continue;
      log(`tsight worker: ${m.name} is loaded as ${m.dtype} here but as ${differ.map((w) => `${w.dtypeByModel[m.key]} by ${w.id}`).join(", ")}; its jobs get different numbers on different workers (start every worker of a model with the same --dtype)`);
    }
  }

  /** What the node runs, per model: for status lines. */
  describe(): string {
    return [...this.lanes.values()].map((l) => `${l.model.name} (${l.worker.state})`).join(", ");
  }

  /**
   * Stops taking jobs; jobs fetched but not started go back to their queues, running ones get `CLOSE_GRACE_MS` to
   * end and are then handed back too (another worker runs them again).
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // The loops end once their fetches do (a blocked fetch waits at most BullMQ's drainDelay).
    for (const lane of this.lanes.values()) lane.wake?.();
    await Promise.all([...this.lanes.values()].map((l) => l.loop));
    for (const lane of this.lanes.values()) await this.handBackHeld(lane);
    if (this.runs.size > 0) await Promise.race([Promise.all([...this.finishing]), new Promise((r) => setTimeout(r, CLOSE_GRACE_MS))]);
    for (const run of this.runs.values()) run.letGo = "hand-back";
    await Promise.all([...this.lanes.values()].map((l) => l.worker.close(serverError("PREEMPTED", "the worker process shut down; the job runs again on another worker"))));
    await Promise.all([...this.finishing]);
    clearInterval(this.lockTimer);
    await Promise.all([...this.lanes.values()].map((l) => l.fetcher.close(true).catch(() => undefined)));
    this.localSteps.close();
    this.counts.close();
    await this.parts.subscriber.unsubscribe().catch(() => undefined);
    await this.presence.stop().catch(() => undefined);
  }

  // #region taking jobs

  private async loop(lane: Lane): Promise<void> {
    const max = () => (lane.worker.batching ? this.parts.config.maxBatch : 1);
    while (!this.closing) {
      if (lane.worker.state !== "ready") {
        await new Promise<void>((resolve) => (lane.wake = resolve));
        lane.wake = undefined;
        continue;
      }
      if (lane.held.length === 0 && !(await this.fetch(lane, true))) continue;
      // Fetch more only while they can join the next job's pass: at most one job that cannot is held for later.
      const head = lane.held[0]!;
      if (max() > 1 && head.batch !== undefined) {
        while (this.mates(lane, head).length < max() && (await this.fetch(lane, false)) && this.mates(lane, head).includes(lane.held.at(-1)!));
      }
      if (this.closing) break;
      await this.dispatch(lane, this.pick(lane, max()));
    }
  }

  /** Fetches a job of the lane's queue (waiting a little for one when `block`); false when none came. */
  private async fetch(lane: Lane, block: boolean): Promise<boolean> {
    const token = `${this.id}:${++this.tokens}`;
    let bull: BullJob | undefined;
    try {
      bull = await lane.fetcher.getNextJob(token, { block });
    } catch (e) {
      if (this.closing) return false;
      this.parts.log(`tsight worker: fetching a job of ${lane.model.name} failed: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, 1000));
      return false;
    }
    if (!bull) return false;
    lane.held.push({ bull, token, id: bull.data.id, batch: bull.data.batch, key: bull.data.key, localTimeoutMs: bull.data.localTimeoutMs ?? this.parts.config.localStepTimeoutMs, timeoutMs: runTimeoutMs(this.parts.config, bull.data.timeoutMs) });
    return true;
  }

  /** The held jobs that can share `head`'s pass: its batch key, and at most one job of each API key (fair share). */
  private mates(lane: Lane, head: Held): Held[] {
    const keys = new Set<string | undefined>();
    return lane.held.filter((h) => {
      if (h.batch !== head.batch || (h.key !== undefined && keys.has(h.key))) return false;
      keys.add(h.key);
      return true;
    });
  }

  /** The next held job, with the held jobs that can share its pass (up to `max` in all). */
  private pick(lane: Lane, max: number): Held[] {
    const head = lane.held[0]!;
    const batch = max > 1 && head.batch !== undefined ? this.mates(lane, head).slice(0, max) : [head];
    for (const h of batch) lane.held.splice(lane.held.indexOf(h), 1);
    return batch;
  }

  /** Claims the jobs (DISPATCHED) and starts them on the lane's thread, together when there are several. */
  private async dispatch(lane: Lane, batch: Held[]): Promise<void> {
    const { store, config, redis } = this.parts;
    const now = Date.now();
    const claimed: { run: Run; body: Uint8Array | object }[] = [];
    for (const held of batch) {
      const attempt = held.bull.attemptsStarted;
      const note: JobEvent = { type: "log", text: `[tsight] the job runs again on worker ${this.id} (attempt ${attempt}), after its worker was lost` };
      const [outcome, cancel] = (await claimJob.run(redis, [store.keys.base, held.id, now, String(attempt), this.id, JSON.stringify(note)])) as [string, string?];
      if (outcome !== "ok") {
        await this.release(held); // ended meanwhile (cancelled, or ended by a sweep)
        continue;
      }
      const body = await store.body(held.id);
      if (!body) {
        await store.move(held.id, "ERROR", { error: serverError("INTERNAL", "the job's request was not found in Redis; submit it again") });
        await this.release(held);
        continue;
      }
      const run: Run = { held, lane, dispatchedAt: now, cancelRequested: cancel === "1", events: 0, callSuffix: attempt > 1 ? `.r${attempt}` : "", localCalls: new Set(), answered: new Set() };
      claimed.push({ run, body });
    }
    if (claimed.length === 0) return;
    if (lane.worker.state !== "ready") {
      // The thread died between the fetch and now: another worker (or this one, later) runs them again.
      for (const { run } of claimed) await this.handBack(run.held);
      return;
    }
    if (claimed.length > 1) for (const { run } of claimed) void this.write(store.append(run.held.id, { type: "log", text: batchNote(claimed.length) }));
    const specs: Omit<RunJob, "stop">[] = claimed.map(({ run, body }) => ({
      jobId: run.held.id,
      body: body as RunJob["body"],
      deadline: now + run.held.timeoutMs,
      timeLimitMs: run.held.timeoutMs,
      memoryLimitBytes: config.memoryLimitBytes,
      maxResultBytes: config.maxResultBytes,
      maxEvents: config.maxEventsPerJob,
      maxEventBytes: config.maxEventBytesPerJob,
      batchStallMs: config.batchStallMs,
      maxInputTokens: config.maxInputTokens,
    }));
    for (const { run } of claimed) {
      this.runs.set(run.held.id, run);
      lane.running.set(run.held.id, run);
    }
    this.parts.metrics.batchSize.observe({ model: lane.model.name }, claimed.length);
    const outcomes = lane.worker.runBatch(specs);
    claimed.forEach(({ run }, i) => {
      if (run.cancelRequested) lane.worker.cancel(run.held.id);
      const done = outcomes[i]!.then((o) => this.finish(run, o)).catch((e: Error) => this.parts.log(`tsight worker: ending job ${run.held.id} failed: ${e.stack ?? e.message}`));
      this.finishing.add(done);
      void done.finally(() => this.finishing.delete(done));
    });
    void Promise.all(outcomes).then(() => this.recordPass(lane, (Date.now() - now) / 1000, claimed.length));
    void this.presence.beat().catch(() => undefined);
  }

  // #endregion

  // #region running jobs

  private onEvent(id: string, event: JobEvent): void {
    const run = this.runs.get(id);
    if (!run || run.letGo) return;
    if (event.type !== "log" && event.type !== "stream" && event.type !== "local") return; // the server's own events
    const { store, config } = this.parts;
    const limit = config.maxEventsPerJob;
    if (++run.events > limit) {
      if (run.events === limit + 1) void this.write(store.append(id, { type: "log", text: `[tsight] the job sent more than ${limit} events; later ones are dropped` }));
      return;
    }
    if (event.type === "log") event = { type: "log", text: cutLog(event.text) };
    let asked: string | undefined;
    if (event.type === "local") {
      event = { ...event, call: event.call + run.callSuffix };
      if (!run.answered.has(event.call) && !run.endError) {
        asked = event.call;
        run.localCalls.add(asked);
        this.counts.watch(id);
        this.localSteps.asked(id, asked, run.held.localTimeoutMs);
      }
    }
    void this.write(store.append(id, event, asked));
  }

  private async onControl(message: string): Promise<void> {
    let m: { type?: string; id?: string; call?: string };
    try {
      m = JSON.parse(message) as typeof m;
    } catch {
      return;
    }
    const run = m.id === undefined ? undefined : this.runs.get(m.id);
    if (!run || run.letGo) return;
    const id = run.held.id;
    if (m.type === "cancel" && !run.cancelRequested) {
      run.cancelRequested = true;
      run.lane.worker.cancel(id);
    } else if (m.type === "local" && typeof m.call === "string" && run.localCalls.has(m.call)) {
      const call = m.call;
      const key = this.parts.store.keys.answer(id, call);
      const bytes = await this.parts.redis.getBuffer(key);
      if (!bytes) return;
      await this.parts.redis.del(key);
      run.localCalls.delete(call);
      run.answered.add(call);
      this.localSteps.answered(id, call);
      const original = run.callSuffix && call.endsWith(run.callSuffix) ? call.slice(0, -run.callSuffix.length) : call;
      run.lane.worker.answerLocal(id, original, decodeAnswer(bytes));
    }
  }

  /** Stops a running job for this node's own reason (a hybrid step timed out, its client went away). */
  private stop(id: string, error: ErrorInfo): void {
    const run = this.runs.get(id);
    if (!run || run.cancelRequested || run.endError || run.letGo) return;
    run.endError = error;
    void this.write(this.parts.redis.hset(this.parts.store.keys.job(id), "stopping", error.message));
    run.lane.worker.cancel(id, error);
  }

  /** Ends a job as its run came out: result and state in Redis, then its BullMQ job completed (or handed back). */
  private async finish(run: Run, outcome: RunOutcome): Promise<void> {
    const { store, results, config, metrics, redis } = this.parts;
    const id = run.held.id;
    const model = run.lane.model.name;
    this.runs.delete(id);
    run.lane.running.delete(id);
    this.localSteps.forget(id);
    this.counts.unwatch(id);
    if (run.letGo === "lock-lost") return;
    if (run.letGo === "hand-back") return void (await this.handBack(run.held));
    metrics.duration.observe({ model }, (Date.now() - run.dispatchedAt) / 1000);
    let status: "COMPLETED" | "ERROR" | "CANCELLED";
    let error: ErrorInfo | undefined;
    if (run.cancelRequested || (await redis.hget(store.keys.job(id), "cancel")) === "1") status = "CANCELLED";
    else if (run.endError) [status, error] = ["ERROR", run.endError];
    else if (!outcome.ok) [status, error] = ["ERROR", outcome.error];
    else if (outcome.bytes.byteLength > config.maxResultBytes) {
      [status, error] = ["ERROR", serverError("MEMORY", `the job's result is ${outcome.bytes.byteLength} bytes, over this server's limit of ${config.maxResultBytes}; return less`, "MemoryError")];
    } else {
      try {
        await results.write(id, outcome.bytes, config.resultRetentionMs);
        status = "COMPLETED";
      } catch (e) {
        const info = infoFromError(e, "INTERNAL");
        [status, error] = ["ERROR", { ...info, code: "INTERNAL", retryable: true, message: `the result could not be stored: ${info.message}` }];
      }
    }
    const details = status === "COMPLETED" && outcome.ok ? { result: { bytes: outcome.bytes.byteLength, expires: Date.now() + config.resultRetentionMs } } : error ? { error } : {};
    if (await store.move(id, status, details)) {
      metrics.finished.inc({ model, status });
      if (error) metrics.errors.inc({ code: error.code });
    }
    await this.release(run.held);
    void this.presence.beat().catch(() => undefined);
  }

  private recordPass(lane: Lane, seconds: number, jobs: number): void {
    const perJob = seconds / jobs;
    lane.mean = lane.mean === undefined ? perJob : 0.8 * lane.mean + 0.2 * perJob;
    const key = this.parts.store.keys.model(lane.model.key);
    void this.write(this.parts.redis.multi().hset(key, "meanJobSeconds", lane.mean.toFixed(4)).hincrby(key, "passes", 1).hincrby(key, "jobs", jobs).exec());
  }

  // #endregion

  // #region locks

  /** Renews the locks of every job this node holds; a job whose lock is gone is given up without a word (another worker has it). */
  private async renewLocks(): Promise<void> {
    for (const lane of this.lanes.values()) {
      const held = [...lane.held, ...[...lane.running.values()].map((r) => r.held)];
      if (held.length === 0) continue;
      let lost: string[];
      try {
        lost = await lane.fetcher.extendJobLocks(held.map((h) => h.id), held.map((h) => h.token), this.parts.dist.lockDurationMs);
      } catch (e) {
        this.parts.log(`tsight worker: renewing job locks failed: ${(e as Error).message}`);
        continue;
      }
      for (const id of lost) {
        lane.held = lane.held.filter((h) => h.id !== id);
        const run = lane.running.get(id);
        if (run && !run.letGo) {
          run.letGo = "lock-lost";
          lane.worker.cancel(id);
          this.parts.log(`tsight worker: lost the lock of job ${id}; another worker runs it`);
        }
      }
    }
  }

  /** Completes a job's BullMQ job (its tsight record ended already). */
  private async release(held: Held): Promise<void> {
    await held.bull.moveToCompleted(null, held.token, false).catch(() => undefined);
  }

  /** Puts a job back in its queue for another worker (its tsight record is left as it is: a taker sees a retry). */
  private async handBack(held: Held): Promise<void> {
    await held.bull.moveToWait(held.token).catch(() => undefined);
  }

  private async handBackHeld(lane: Lane): Promise<void> {
    for (const held of lane.held.splice(0)) await this.handBack(held);
  }

  // #endregion

  /**
   * Bars the API key of job `id`, which broke a worker thread of `model`, from submitting for a while (see
   * quarantine.ts): in Redis, so that every API process refuses it.
   */
  private async bar(id: string, model: string): Promise<void> {
    const keyId = this.runs.get(id)?.held.key ?? (await this.parts.store.get(id))?.keyId;
    if (keyId === undefined) return;
    const forMs = this.parts.config.brokeThreadQuarantineMs;
    const barred = newBar(id, model, forMs);
    await this.parts.redis.set(this.parts.store.keys.barred(keyId), JSON.stringify(barred), "PX", Math.max(1, forMs));
    this.parts.log(barredNote(keyId, barred));
  }

  /** Runs a store write, logging a failure (events of a job are written in order on one connection). */
  private async write(p: Promise<unknown>): Promise<void> {
    try {
      await p;
    } catch (e) {
      this.parts.log(`tsight worker: a write to Redis failed: ${(e as Error).message}`);
    }
  }
}

/**
 * How many event streams follow each job whose hybrid step waits, read from `watch:<id>` (which every API process
 * keeps up for its open streams). Counts are polled; until the first poll a job counts as followed.
 */
class SharedStreamCounts implements StreamCounts {
  private readonly counts = new Map<string, number>();
  private readonly listeners = new Set<StreamCountListener>();
  private readonly watched = new Set<string>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly redis: Redis,
    private readonly key: (id: string) => string,
    pollMs: number,
  ) {
    this.timer = setInterval(() => void this.poll().catch(() => undefined), pollMs);
    this.timer.unref();
  }

  count(jobId: string): number {
    return this.counts.get(jobId) ?? 1;
  }

  onChange(listener: StreamCountListener): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  watch(jobId: string): void {
    this.watched.add(jobId);
  }

  unwatch(jobId: string): void {
    this.watched.delete(jobId);
    this.counts.delete(jobId);
  }

  close(): void {
    clearInterval(this.timer);
  }

  private async poll(): Promise<void> {
    const now = Date.now();
    for (const id of [...this.watched]) {
      const n = await this.redis.zcount(this.key(id), now, "+inf");
      if (!this.watched.has(id) || this.counts.get(id) === n) continue;
      this.counts.set(id, n);
      for (const l of [...this.listeners]) l(id, n);
    }
  }
}
