/** The settings of a distributed deployment (API and worker processes on Redis), with their defaults. */
import { DEFAULT_PREFIX } from "./connection.js";

export interface DistributedConfig {
  /** e.g. redis://127.0.0.1:6379 */
  redisUrl: string;
  /** Every key of this deployment starts with it (several deployments, or test runs, may share a Redis). */
  prefix: string;
  /**
   * How long a worker's claim on a job lasts unless renewed (it is renewed every half of it while the worker is
   * alive). A worker that died has its jobs taken up by another after about this long.
   */
  lockDurationMs: number;
  /** Times a job runs again after its worker was lost, before it ends ERROR PREEMPTED. */
  maxRetries: number;
  /** Longest a job waits for a worker (queued, or after its worker was lost) before it ends ERROR PREEMPTED. */
  queueWaitMs: number;
  /** Worker heartbeats and event-stream registrations are renewed this often. */
  heartbeatMs: number;
  /** How long an ended job's record and events are kept in Redis. */
  recordRetentionMs: number;
}

export function resolveDistributed(options: Partial<DistributedConfig> & { redisUrl: string }, resultRetentionMs: number): DistributedConfig {
  const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<DistributedConfig>;
  const config: DistributedConfig = {
    prefix: DEFAULT_PREFIX,
    lockDurationMs: 30_000,
    maxRetries: 1,
    queueWaitMs: 15 * 60_000,
    heartbeatMs: 2_000,
    recordRetentionMs: resultRetentionMs + 24 * 60 * 60_000,
    ...defined,
    redisUrl: options.redisUrl,
  };
  for (const k of ["lockDurationMs", "queueWaitMs", "heartbeatMs", "recordRetentionMs"] as const) {
    if (!(Number.isFinite(config[k]) && config[k] > 0)) throw new RangeError(`distributed setting ${k} must be a positive number, got ${config[k]}`);
  }
  if (!(Number.isInteger(config.maxRetries) && config.maxRetries >= 0)) throw new RangeError(`distributed setting maxRetries must be a whole number, got ${config.maxRetries}`);
  return config;
}

/**
 * The longest a job can wait and run in a distributed deployment: its queue wait, run, hybrid steps, and a minute
 * more. A result is kept at most this and the result retention after the job was made; an event at most this and the
 * record retention after it was written.
 */
export function longestJobMs(config: { jobTimeoutMs: number; localStepTimeoutMs: number }, dist: Pick<DistributedConfig, "queueWaitMs">): number {
  return dist.queueWaitMs + config.jobTimeoutMs + config.localStepTimeoutMs + 60_000;
}
