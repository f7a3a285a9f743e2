/** The server layer: the HTTP API, job store, queue and workers, results, keys and metrics (sandbox/: job code). */
export { startServer, openServer, databaseFile, type ServerOptions, type ServerCore, type RunningServer } from "./server.js";
export { createApp, type AppDeps } from "./app.js";
export { resolveConfig, defaultDataDir, defaultExecutor, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_MODELS, type ServerConfig, type ExecutorRef } from "./config.js";
export { openDatabase, type Db } from "./database.js";
export { KeyStore, type ApiKeyInfo, type NewApiKey, type Caller, type KeyCheck } from "./key-store.js";
export { JobStore, type JobRecord, type NewJob, type MoveDetails, type ResultState } from "./job-store.js";
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
