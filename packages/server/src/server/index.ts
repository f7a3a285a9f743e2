/**
 * The server layer: the HTTP API, job store, queue and workers, results, keys and metrics (sandbox/: job code), in
 * one process, or as API and worker processes on Redis (redis/).
 */
import type { ApiNode, DistributedOptions, WorkerProcess } from "./redis/node.js";
import type { RedisKeyStore } from "./redis/key-store.js";
export { startServer, openServer, databaseFile, type ServerOptions, type ServerCore, type RunningServer } from "./server.js";
export { createApp, type AppDeps } from "./app.js";
export type { ClusterStatus, Dispatcher, EventFeed, JobRecords, KeyVerifier, MaybePromise, ModelLoad, ResultReader, WorkerInfo } from "./contracts.js";
export { batchKey } from "./batch-key.js";
export { resolveConfig, defaultDataDir, defaultExecutor, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_MODELS, type ServerConfig, type ExecutorRef } from "./config.js";
export { openDatabase, type Db } from "./database.js";
export { KeyStore, type ApiKeyInfo, type NewApiKey, type Caller, type KeyCheck } from "./key-store.js";
export { JobStore, type JobRecord, type NewJob, type MoveDetails, type ResultState, type WebhookState, type ListOptions } from "./job-store.js";
export { OpenStreams, eventStream } from "./event-stream.js";
export { LocalStepWatch, type LocalStepWatchOptions } from "./local-step-watch.js";
export { WebhookSender, type WebhookSenderOptions } from "./webhook-sender.js";
export { JobManager, type ModelStatus } from "./job-manager.js";
export { JobQueue } from "./job-queue.js";
export { ModelRegistry, type ServedModel } from "./model-registry.js";
export { ModelWorker, type WorkerState, type RunOutcome } from "./model-worker.js";
export { ResultStore } from "./result-store.js";
export { Sweeper } from "./sweeper.js";
export { ServerMetrics, MetricsRegistry, Counter, Histogram } from "./metrics.js";
export { ApiError } from "./api-error.js";
export { canMove, isTerminal, ACTIVE } from "./job-status.js";
export { newJobId, isJobId } from "./ids.js";
export type { ApiNode, DistributedOptions, WorkerProcess } from "./redis/node.js";

// Distributed mode: BullMQ and ioredis are loaded on first use, not with this module.

/** Starts an API process of a distributed deployment (see redis/node.ts). */
export async function startApiNode(options: DistributedOptions): Promise<ApiNode> {
  return (await import("./redis/node.js")).startApiNode(options);
}

/** Starts a worker process of a distributed deployment (see redis/node.ts). */
export async function startWorkerNode(options: DistributedOptions): Promise<WorkerProcess> {
  return (await import("./redis/node.js")).startWorkerNode(options);
}

/** The API keys of a distributed deployment (for `tsight keys --redis`). */
export async function openRedisKeys(url: string, prefix?: string): Promise<{ keys: RedisKeyStore; close: () => Promise<void> }> {
  return (await import("./redis/node.js")).openRedisKeys(url, prefix);
}
