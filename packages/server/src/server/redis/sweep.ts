/**
 * Reconciler: makes sure no job of a distributed deployment waits forever. Every process runs one (the work is
 * idempotent: state changes are atomic scripts, so two processes ending the same job end it once).
 *
 * - A worker lost mid-job (its process died, so its lock was not renewed): BullMQ's stalled-job check puts the job
 *   back in its queue and tells this process (`stalled`); the job gets a log event and waits for another worker
 *   (`lost`). Past `maxRetries` losses it ends ERROR PREEMPTED (retryable).
 * - The sweep, every `heartbeatMs`: a job still RECEIVED after a minute (the API process that took it stopped
 *   before queueing it), QUEUED or lost for longer than `queueWaitMs` (no worker of its model came), or DISPATCHED /
 *   RUNNING while BullMQ no longer holds it (failed, or gone), ends ERROR PREEMPTED.
 */
import type { Queue, Worker } from "bullmq";
import { RETRYABLE, type ErrorInfo } from "tsight/protocol";
import type { DistributedConfig } from "./config.js";
import type { RedisJobRecord, RedisJobStore } from "./job-store.js";
import type { QueuedJob } from "./queues.js";
import { markLost } from "./scripts.js";

const preempted = (message: string): ErrorInfo => ({ code: "PREEMPTED", type: "PreemptedError", message, retryable: RETRYABLE.PREEMPTED });
const RECEIVED_LIMIT_MS = 60_000;
const seconds = (ms: number) => `${Math.round(ms / 100) / 10} s`;

export interface ReconcilerParts {
  store: RedisJobStore;
  /** Each served model's queue, by model key. */
  queues: Map<string, Queue<QueuedJob>>;
  config: DistributedConfig;
  log: (line: string) => void;
  /** A model's name as users give it ("stdlib-gpt2"), from its key (the dispatcher's, from the registry). */
  modelName?: (key: string) => string;
}

export class Reconciler {
  private timer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;

  constructor(private readonly parts: ReconcilerParts) {}

  /** Hears the jobs that `worker`'s stalled-job check (of model `modelKey`'s queue) found lost. */
  watch(worker: Worker<QueuedJob>, modelKey: string): void {
    worker.on("stalled", (jobId) => void this.onStalled(modelKey, jobId).catch((e: Error) => this.parts.log(`tsight: handling lost job ${jobId} failed: ${e.message}`)));
  }

  start(): void {
    this.timer = setInterval(() => {
      this.sweeping ??= this.sweep()
        .catch((e: Error) => this.parts.log(`tsight: the sweep failed: ${e.message}`))
        .finally(() => (this.sweeping = undefined));
    }, this.parts.config.heartbeatMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.sweeping;
  }

  /** One pass over the unfinished jobs. */
  async sweep(now = Date.now()): Promise<void> {
    const { store, config } = this.parts;
    const ids = await store.redis.zrange(store.keys.active, "0", "-1");
    for (const id of ids) {
      const job = await store.get(id);
      if (!job) {
        await store.redis.zrem(store.keys.active, id);
        continue;
      }
      if (job.status === "RECEIVED" && now - job.created > RECEIVED_LIMIT_MS) {
        await this.end(job, preempted("the job was never queued (the API process that took it stopped); submit it again"));
      } else if (job.status === "QUEUED" && job.queuedAt !== null && now - job.queuedAt > config.queueWaitMs) {
        await this.end(job, preempted(`no worker serving ${this.parts.modelName?.(job.model) ?? job.model} took the job within ${seconds(config.queueWaitMs)}; submit it again later`));
      } else if (job.lost !== null && now - job.lost > config.queueWaitMs) {
        await this.end(job, preempted(`the worker running the job was lost, and no other worker took the job up within ${seconds(config.queueWaitMs)}; submit it again`));
      } else if ((job.status === "DISPATCHED" || job.status === "RUNNING") && job.lost === null && now - job.updated > config.lockDurationMs) {
        const state = await this.parts.queues.get(job.model)?.getJobState(id);
        if (state === "failed" || state === "unknown" || state === "completed") {
          await this.end(job, preempted(`the worker running the job was lost ${config.maxRetries + 1} time${config.maxRetries ? "s" : ""}, the most this server allows; submit it again`));
        } else if (state === "waiting" || state === "prioritized" || state === "delayed") {
          // Back in its queue without this process having heard of it (the process that found it lost stopped).
          await this.lost(job.id, job.attempt);
        }
      }
    }
  }

  private async onStalled(modelKey: string, id: string): Promise<void> {
    const { store, config } = this.parts;
    const queued = await this.parts.queues.get(modelKey)?.getJob(id);
    const losses = queued?.stalledCounter ?? config.maxRetries + 1;
    const job = await store.get(id);
    if (!job) return;
    if (!queued || queued.deferredFailure || losses > config.maxRetries) {
      await this.end(job, preempted(`the worker running the job was lost ${losses} time${losses === 1 ? "" : "s"}, more than this server retries (${config.maxRetries}); submit it again`));
      return;
    }
    // The attempt that stalled: when another worker has taken the job up already, its counter counts that worker's
    // attempt too, which is running (marked lost, it was later ended PREEMPTED while healthy).
    const state = await queued.getState().catch(() => "unknown");
    await this.lost(id, queued.attemptsStarted - (state === "active" || state === "completed" ? 1 : 0));
  }

  /** Marks attempt `attempt` of a job lost (unless another worker took the job up since), with a log event. */
  private async lost(id: string, attempt: number): Promise<void> {
    const note = { type: "log", text: `[tsight] the worker running this job was lost (attempt ${attempt}); it waits for another worker and runs again from the start` };
    await markLost.run(this.parts.store.redis, [this.parts.store.keys.base, id, String(attempt), Date.now(), JSON.stringify(note)]);
  }

  /** Ends a job ERROR with `error`, and takes it out of its queue. */
  private async end(job: RedisJobRecord, error: ErrorInfo): Promise<void> {
    if (await this.parts.store.move(job.id, "ERROR", { error })) await this.parts.queues.get(job.model)?.remove(job.id).catch(() => 0);
  }
}
