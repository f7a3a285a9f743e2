/**
 * The BullMQ side: one queue per served model (named from its model key), whose jobs carry only the tsight job id
 * and batch key (the request itself is in `body:<id>`). Workers fetch jobs by hand (`getNextJob`) when their model's
 * thread is free, and BullMQ's stalled-job check gives a job whose worker stopped renewing its lock to another
 * worker, `maxRetries` times.
 */
import { Queue, Worker, type Job } from "bullmq";
import type { Redis } from "ioredis";
import type { RedisLayout } from "./connection.js";
import type { DistributedConfig } from "./config.js";

/** What a queued job carries. */
export interface QueuedJob {
  id: string;
  batch?: string;
  /** The API key that submitted it (a pass takes at most one job of each key). */
  key?: string;
  /** How long a hybrid step waits for the client's answer (the job's own limit, capped by the server's). */
  localTimeoutMs: number;
  /** How long the job may run once dispatched (its own limit, capped by the server's); older entries lack it. */
  timeoutMs?: number;
}

export type BullJob = Job<QueuedJob>;

export function modelQueue(redis: Redis, keys: RedisLayout, modelKey: string): Queue<QueuedJob> {
  return new Queue<QueuedJob>(keys.queueName(modelKey), { connection: redis, prefix: keys.bull });
}

/**
 * A BullMQ worker for a model's queue that runs no processor of its own: the owner fetches jobs with `getNextJob`
 * and renews their locks. Its stalled-job check runs once `startStalledCheckTimer` is called.
 */
export function modelQueueWorker(redis: Redis, keys: RedisLayout, modelKey: string, config: DistributedConfig, name: string): Worker<QueuedJob> {
  return new Worker<QueuedJob>(keys.queueName(modelKey), null, {
    connection: redis,
    prefix: keys.bull,
    name,
    autorun: false,
    lockDuration: config.lockDurationMs,
    stalledInterval: Math.max(250, Math.round(config.lockDurationMs / 2)),
    maxStalledCount: config.maxRetries,
    drainDelay: 2,
  });
}

/** BullMQ options of a tsight job: its id is the job id; it leaves BullMQ when done (tsight keeps the record). */
export const queuedJobOptions = (id: string) => ({ jobId: id, removeOnComplete: true, removeOnFail: { age: 3600 } });
