/**
 * RedisDispatcher: the Dispatcher of an API process. It checks a request as the embedded server does, keeps the
 * job in Redis and queues it in its model's BullMQ queue, where any worker process serving the model takes it.
 * Cancels and hybrid-step answers reach the worker running a job over the control channel (scripts.ts). Status
 * comes from the workers' heartbeats, the queues' lengths and the mean time per job the workers record.
 */
import type { Queue } from "bullmq";
import { decodeJob, type DecodedJob, type JobRequest, type JobState, type ModelInfo } from "tsight/protocol";
import { ApiError, checkRoomToStore, jobNotFound } from "../api-error.js";
import { batchKey, perPass } from "../batch-key.js";
import { runTimeoutMs, type ServerConfig } from "../config.js";
import type { ClusterStatus, Dispatcher, ModelLoad } from "../contracts.js";
import { checkRepeat, type Idempotency } from "../idempotency.js";
import { checkBarred, parseBarred } from "../quarantine.js";
import { newJobId } from "../ids.js";
import { jobState, type ListOptions } from "../job-store.js";
import type { Caller } from "../key-store.js";
import type { ServerMetrics } from "../metrics.js";
import type { ModelRegistry } from "../model-registry.js";
import type { LocalAnswer } from "../worker-messages.js";
import { longestJobMs, type DistributedConfig } from "./config.js";
import { encodeAnswer, type RedisJobRecord, type RedisJobStore } from "./job-store.js";
import { liveWorkers } from "./presence.js";
import { queuedJobOptions, type QueuedJob } from "./queues.js";
import { answerStep, cancelJob } from "./scripts.js";

export interface RedisDispatcherParts {
  config: ServerConfig;
  dist: DistributedConfig;
  store: RedisJobStore;
  registry: ModelRegistry;
  /** Each served model's queue, by model key. */
  queues: Map<string, Queue<QueuedJob>>;
  metrics: ServerMetrics;
}

export class RedisDispatcher implements Dispatcher {
  private closed = false;

  constructor(private readonly parts: RedisDispatcherParts) {}

  async submit(caller: Caller, body: Uint8Array | JobRequest, idempotency?: Idempotency): Promise<JobState> {
    if (this.closed) throw new ApiError(503, "INTERNAL", "the server is shutting down; try again later", { retryable: true });
    const { store, registry, config } = this.parts;
    let job: DecodedJob;
    try {
      job = decodeJob(body);
    } catch (e) {
      throw new ApiError(400, "VALIDATION", (e as Error).message);
    }
    const model = registry.get(job.model);
    if (!model) throw registry.unserved(job.model);
    // A bar a worker process set on this key (its job broke a thread there) holds in every API process.
    checkBarred(parseBarred(await store.redis.get(store.keys.barred(caller.keyId))));
    const id = newJobId();
    const batch = config.maxBatch > 1 ? batchKey(job, registry.tokenizer(model)) : undefined;
    const webhook = job.webhook === undefined ? undefined : { url: job.webhook, secret: job.webhookSecret };
    await store.putBody(id, body);
    // The key's room to store is checked and its job made as one, one submission of a key at a time across the API
    // processes: checked apart, eight submitted at once each saw room for one more and kept 360 MiB under a 300 MiB
    // bound. Its unfinished jobs are counted first: one that ends meanwhile is then counted twice, never not at all.
    const created = await store.withSubmitLock(caller.keyId, async () => {
      const active = await store.activeCount(caller.keyId);
      // An event lives at most its job's wait and run and the record retention after it (results are summed as kept).
      const longest = longestJobMs(config, this.parts.dist);
      const stored = await store.storedParts(caller.keyId, this.parts.dist.recordRetentionMs + longest);
      checkRoomToStore({ ...stored, logsKeptMs: this.parts.dist.recordRetentionMs }, active, config);
      return store.create({ id, keyId: caller.keyId, model: model.key, kind: job.kind, webhook, batch, limit: config.maxActiveJobsPerKey, idempotency });
    }).catch(async (e: unknown) => {
      await store.redis.del(store.keys.body(id));
      throw e;
    });
    if (created === "limit" || "earlier" in created) {
      await store.redis.del(store.keys.body(id));
      if (created !== "limit") {
        const earlier = await this.owned(created.earlier, caller.keyId);
        if (idempotency) checkRepeat(earlier, idempotency);
        return this.view(earlier);
      }
      throw new ApiError(429, "NOT_ALLOWED", `this API key already has ${config.maxActiveJobsPerKey} unfinished jobs, the most it may have; wait for one to end`, { retryable: true, headers: { "retry-after": "1" } });
    }
    const queue = this.parts.queues.get(model.key)!;
    const position = await waitingCount(queue);
    const localTimeoutMs = Math.min(job.localTimeoutMs ?? config.localStepTimeoutMs, config.localStepTimeoutMs);
    const timeoutMs = runTimeoutMs(config, job.timeoutMs);
    // Fair share: a key's first unfinished job comes before every key's second, and so on (BullMQ serves lower
    // priorities first, equal ones in order), so a light key waits for at most one job of each other key.
    await queue.add("job", { id, batch, key: caller.keyId, localTimeoutMs, timeoutMs }, { ...queuedJobOptions(id), priority: Math.min(created.rank, 2_000_000) });
    await store.move(id, "QUEUED", { position });
    // A model no live worker runs: the job says so at once instead of waiting in silence.
    const { dist } = this.parts;
    if (!(await liveWorkers(store.redis, store.keys, dist.heartbeatMs)).some((w) => w.modelKeys.includes(model.key))) {
      await store.append(id, { type: "log", text: `[tsight] no worker runs ${model.name} right now; the job waits for one (at most ${Math.round(dist.queueWaitMs / 1000)} s, then it ends PREEMPTED)` });
    }
    this.parts.metrics.submitted.inc({ model: model.name });
    return this.view((await store.get(id))!);
  }

  async state(id: string, keyId: string): Promise<JobState> {
    return this.view(await this.owned(id, keyId));
  }

  async list(keyId: string, options: ListOptions): Promise<JobState[]> {
    const jobs = await this.parts.store.list(keyId, options);
    if (!jobs) throw new ApiError(400, "VALIDATION", `"before" must be the id of one of this API key's jobs; there is no job ${options.before} for it`);
    return jobs.map((j) => this.view(j));
  }

  async cancel(id: string, keyId: string): Promise<JobState> {
    const job = await this.owned(id, keyId);
    const { store, dist } = this.parts;
    const outcome = await cancelJob.run(store.redis, [store.keys.base, id, Date.now(), dist.recordRetentionMs]);
    if (outcome === "cancelled") {
      // A worker that took it meanwhile finds it CANCELLED and drops it.
      await this.parts.queues.get(job.model)?.remove(id).catch(() => 0);
      this.parts.metrics.finished.inc({ model: this.modelName(job.model), status: "CANCELLED" });
      // This process ended it: its webhook is this process's to send (it was left pending).
      await store.announceEnd(id);
    }
    return this.state(id, keyId);
  }

  async answerLocal(id: string, keyId: string, call: string, answer: LocalAnswer): Promise<void> {
    await this.owned(id, keyId);
    const { store, config } = this.parts;
    const outcome = String(await answerStep.run(store.redis, [store.keys.base, id, call, encodeAnswer(answer), config.localStepTimeoutMs + 60_000]));
    if (outcome === "ok") return;
    if (outcome.startsWith("status:")) throw new ApiError(409, "NOT_ALLOWED", `job ${id} is ${outcome.slice(7)}; only a running job takes answers to local steps`);
    if (outcome.startsWith("stopping:")) throw new ApiError(409, "NOT_ALLOWED", `job ${id} is stopping: ${outcome.slice(9)}`);
    if (outcome === "answered") throw new ApiError(409, "NOT_ALLOWED", `local step "${call}" of job ${id} was answered already`);
    throw new ApiError(404, "VALIDATION", `job ${id} is not waiting for local step "${call}"`);
  }

  async models(): Promise<ModelInfo[]> {
    return (await this.status()).models.map(({ key, name, modelType, state, queued, dtype }) => ({ key, name, modelType, state, queued, dtype }));
  }

  async status(): Promise<ClusterStatus> {
    const { store, registry, dist, queues } = this.parts;
    const workers = await liveWorkers(store.redis, store.keys, dist.heartbeatMs);
    const models: (ModelLoad & { running: number; workers: number })[] = [];
    for (const m of registry.list()) {
      const serving = workers.filter((w) => w.modelKeys.includes(m.key));
      const running = serving.reduce((n, w) => n + (w.runningByModel[m.key] ?? 0), 0);
      const queue = queues.get(m.key);
      const queued = queue ? await waitingCount(queue) : 0;
      const [mean, passes, jobs] = await store.redis.hmget(store.keys.model(m.key), "meanJobSeconds", "passes", "jobs");
      const average = mean === null ? null : Number(mean);
      const wait = average === null || serving.length === 0 ? null : ((queued + running) * average) / serving.length;
      // What the live workers load (they run its jobs), when they agree; else what this process was told.
      const loaded = new Set(serving.map((w) => w.dtypeByModel[m.key]));
      models.push({
        key: m.key,
        name: m.name,
        modelType: m.modelType,
        dtype: loaded.size === 1 ? [...loaded][0]! : m.dtype,
        state: serving.length > 0 ? "loaded" : "unserved",
        queued,
        running,
        workers: serving.length,
        averageJobSeconds: average,
        estimatedWaitSeconds: wait === null ? null : Math.round(wait * 1000) / 1000,
        jobsPerPass: perPass({ passes: Number(passes ?? 0), jobs: Number(jobs ?? 0) }),
      });
    }
    const info = workers.map(({ id, models: names, busy, running, lastHeartbeat, host, pid, started }) => ({ id, models: names, busy, running, lastHeartbeat, host, pid, started }));
    return { mode: "distributed", queued: models.reduce((n, m) => n + m.queued, 0), running: models.reduce((n, m) => n + m.running, 0), models, workers: info, maxBatch: this.parts.config.maxBatch };
  }

  close(): void {
    this.closed = true;
  }

  private async owned(id: string, keyId: string): Promise<RedisJobRecord> {
    const job = await this.parts.store.getOwned(id, keyId);
    if (!job) throw jobNotFound(id);
    return job;
  }

  private view(job: RedisJobRecord): JobState {
    return jobState(job, job.status === "QUEUED" ? job.position : undefined);
  }

  private modelName(key: string): string {
    return this.parts.registry.get(key)?.name ?? key;
  }
}

/** Jobs waiting in a model's queue: BullMQ keeps jobs with a priority (all of ours: fair share) apart from the rest. */
async function waitingCount(queue: Queue<QueuedJob>): Promise<number> {
  const [plain, prioritized] = await Promise.all([queue.getWaitingCount(), queue.getPrioritizedCount()]);
  return plain + prioritized;
}
