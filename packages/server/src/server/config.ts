/**
 * Server settings: every limit and place the server uses, with its default. `resolveConfig` fills what a caller
 * leaves out, so the rest of the server reads one complete object.
 */
import { checkWeightDType, type SaeSpec, type WeightDType } from "tsight";
import os from "node:os";
import path from "node:path";
import { defaultWorkbenchDir } from "./workbench-routes.js";
import { servedModel } from "./model-registry.js";

/** Where a worker finds the executor that runs job code: a module and the name of a class it exports. */
export interface ExecutorRef {
  /** A file URL (or absolute path) of the module. */
  module: string;
  /** The exported class; constructed with no arguments inside the worker thread. */
  name: string;
}

export interface ServerConfig {
  /** Holds the SQLite database (`tsight.db`) and the results folder. */
  dataDir: string;
  /** Models to serve: embedded names (`stdlib-gpt2`), folders, or Hugging Face repo ids. */
  models: string[];
  /** SAEs spliced into served models (with the error term), by model name as listed in `models`. */
  saes: Record<string, SaeSpec[]>;
  /** What the weights of every served model are kept as (`LanguageModel.load`'s dtype), unless `dtypes` names the model. */
  dtype: WeightDType;
  /** The dtype of particular models, by name as listed in `models`; resolved, it has every served model. */
  dtypes: Record<string, WeightDType>;
  /** Wall-clock time a job may run, from dispatch. */
  jobTimeoutMs: number;
  /** Bytes of tensors a job's code may create (ExecutionContext.memoryLimitBytes). */
  memoryLimitBytes: number;
  /** How long a result is kept after the job completes. */
  resultRetentionMs: number;
  /** Largest request body accepted. */
  maxBodyBytes: number;
  /**
   * Largest JSON text of a request: a JSON body, or an envelope's header (with its JSON inside). It is parsed on the
   * main thread, which answers no other request meanwhile (5 to 10 ms per MiB), so it is kept well below maxBodyBytes;
   * tensors, which are not parsed, may fill the rest of an envelope.
   */
  maxJsonBytes: number;
  /** Request bodies one API key may be sending (being received and parsed) at once; one more gets 429 unread. */
  maxBodiesPerKey: number;
  /**
   * Bytes of request bodies all keys together may be sending at once (each counts its Content-Length, or its limit
   * when it has none); past it 503, unread. Default: 4 × maxBodyBytes; at least maxBodyBytes.
   */
  maxBodyBytesInFlight: number;
  /** How long a request body may take to come in, from when it is let in; then 408, and what came is let go. */
  bodyTimeoutMs: number;
  /**
   * How long a result download may go without its reader taking any of it; then its connection is closed and the
   * result it held let go (a client that opened downloads and stopped reading held their results for good).
   */
  downloadStallMs: number;
  /** Largest result (envelope bytes) kept; a larger one ends the job with MEMORY. */
  /** Bytes of results one API key may have kept on the server at once; past them its jobs are refused (429). */
  maxStoredResultBytesPerKey: number;
  maxResultBytes: number;
  /** Jobs one API key may have unfinished at once. */
  maxActiveJobsPerKey: number;
  /** How long an API key whose job broke a worker thread (its sandbox's heap, beyond recovery) may not submit jobs. */
  brokeThreadQuarantineMs: number;
  /** Events (log, stream, local) a job may send; one more ends it (MEMORY). */
  maxEventsPerJob: number;
  /** Bytes of events a job may send (log text, hybrid-step values); more ends it (MEMORY). */
  maxEventBytesPerJob: number;
  /** In a forward pass shared by several jobs, how long one job's code may keep the others waiting (ms) before it leaves the pass and runs alone. */
  batchStallMs: number;
  /** Tokens (rows × positions) a job's input may have. */
  maxInputTokens: number;
  /**
   * Webhook targets beyond public addresses: CIDR blocks (e.g. "127.0.0.0/8", "10.0.0.0/8") or "private" for every
   * loopback, private and link-local range. Default: none (webhooks reach public addresses only).
   */
  webhookAllow: string[];
  /** How long a job gets to stop (after cancel, or past its deadline) before its thread is replaced by a fresh one. */
  stopGraceMs: number;
  /** How long a hybrid step (tr.local) waits for the client's answer; a job may ask for less (`localTimeoutMs`). */
  localStepTimeoutMs: number;
  /** How long a hybrid step may wait with no client following the job's events before the job ends. */
  localDisconnectGraceMs: number;
  /** How long one webhook delivery attempt may take. */
  webhookTimeoutMs: number;
  /** The wait before the second webhook attempt; it doubles before the third (the last). */
  webhookRetryDelayMs: number;
  /** How often expired results are deleted. */
  sweepIntervalMs: number;
  /** Seconds between SSE keep-alive comments. */
  heartbeatMs: number;
  /** Serve /metrics without an API key (for a Prometheus that scrapes without credentials). */
  metricsPublic: boolean;
  /** Web origins whose pages may call the API (CORS); empty: none, "*": any. */
  corsOrigins: string[];
  /**
   * Most jobs run in one forward pass: when a model's worker is free, up to this many waiting plain traces of equal
   * token counts run together, each in its own isolate (1: every job runs alone).
   */
  maxBatch: number;
  /** V8 heap limit of each worker thread, in MiB (undefined: Node's default). */
  workerHeapMb?: number;
  /** What runs job code inside the workers (default: the sandbox). */
  executor: ExecutorRef;
  /** The built workbench page served at `/` (default: the package's dist/workbench); null: no page. */
  workbenchDir: string | null;
}

export const DEFAULT_PORT = 8787;
export const DEFAULT_HOST = "127.0.0.1";
/** Longest log line of a job that is stored; a longer one is cut (the sandbox cuts at the same length first). */
export const MAX_LOG_CHARS = 10_000;

/** How long a job may run once dispatched: the time it asked for (its request's timeoutMs), within jobTimeoutMs. */
export function runTimeoutMs(config: Pick<ServerConfig, "jobTimeoutMs">, requested: number | undefined): number {
  return Math.min(requested ?? config.jobTimeoutMs, config.jobTimeoutMs);
}

/** A job's log event, cut to MAX_LOG_CHARS (the same in both deployments). */
export function cutLog(text: string): string {
  return text.length > MAX_LOG_CHARS ? `${text.slice(0, MAX_LOG_CHARS)}… [cut at ${MAX_LOG_CHARS} characters]` : text;
}
export const DEFAULT_MODELS: readonly string[] = ["stdlib-gpt2", "stdlib-llama"];

export function defaultDataDir(): string {
  return path.join(os.homedir(), ".tsight", "server");
}

export function defaultExecutor(): ExecutorRef {
  return { module: new URL("../sandbox/index.js", import.meta.url).href, name: "SandboxExecutor" };
}

const MiB = 1024 * 1024;

export function resolveConfig(options: Partial<ServerConfig> = {}): ServerConfig {
  const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<ServerConfig>;
  const config: ServerConfig = {
    dataDir: defaultDataDir(),
    models: [...DEFAULT_MODELS],
    saes: {},
    dtype: "float32",
    dtypes: {},
    jobTimeoutMs: 60_000,
    memoryLimitBytes: 512 * MiB,
    resultRetentionMs: 60 * 60_000,
    maxBodyBytes: 64 * MiB,
    maxJsonBytes: 8 * MiB,
    maxBodiesPerKey: 2,
    maxBodyBytesInFlight: 4 * (defined.maxBodyBytes ?? 64 * MiB),
    bodyTimeoutMs: 60_000,
    downloadStallMs: 30_000,
    maxResultBytes: 256 * MiB,
    maxStoredResultBytesPerKey: 4 * 1024 * MiB,
    maxActiveJobsPerKey: 8,
    brokeThreadQuarantineMs: 15 * 60_000,
    maxEventsPerJob: 10_000,
    maxEventBytesPerJob: 16 * MiB,
    batchStallMs: 1_000,
    maxInputTokens: 16_384,
    webhookAllow: [],
    stopGraceMs: 3_000,
    localStepTimeoutMs: 60_000,
    localDisconnectGraceMs: 5_000,
    webhookTimeoutMs: 10_000,
    webhookRetryDelayMs: 1_000,
    sweepIntervalMs: 60_000,
    heartbeatMs: 15_000,
    metricsPublic: false,
    corsOrigins: [],
    maxBatch: 8,
    executor: defaultExecutor(),
    workbenchDir: defaultWorkbenchDir(),
    ...defined,
  };
  for (const k of ["jobTimeoutMs", "memoryLimitBytes", "resultRetentionMs", "maxBodyBytes", "maxResultBytes", "maxStoredResultBytesPerKey", "maxActiveJobsPerKey", "brokeThreadQuarantineMs", "maxEventsPerJob", "maxEventBytesPerJob", "batchStallMs", "maxInputTokens", "stopGraceMs", "localStepTimeoutMs", "localDisconnectGraceMs", "webhookTimeoutMs", "webhookRetryDelayMs", "sweepIntervalMs", "heartbeatMs"] as const) {
    if (!(Number.isFinite(config[k]) && config[k] > 0)) throw new RangeError(`server setting ${k} must be a positive number, got ${config[k]}`);
  }
  for (const k of ["maxJsonBytes", "maxBodyBytesInFlight", "bodyTimeoutMs", "downloadStallMs"] as const) {
    if (!(Number.isFinite(config[k]) && config[k] > 0)) throw new RangeError(`server setting ${k} must be a positive number, got ${config[k]}`);
  }
  if (!(Number.isInteger(config.maxBodiesPerKey) && config.maxBodiesPerKey >= 1)) throw new RangeError(`server setting maxBodiesPerKey must be a whole number of 1 or more, got ${config.maxBodiesPerKey}`);
  // Else a body of the largest size could never come in.
  if (config.maxBodyBytesInFlight < config.maxBodyBytes) throw new RangeError(`server setting maxBodyBytesInFlight (${config.maxBodyBytesInFlight}) must be at least maxBodyBytes (${config.maxBodyBytes})`);
  // Else no job could run: each is counted at the largest result until it ends.
  if (config.maxStoredResultBytesPerKey < config.maxResultBytes + config.maxEventBytesPerJob) {
    throw new RangeError(`server setting maxStoredResultBytesPerKey (${config.maxStoredResultBytesPerKey}) must be at least maxResultBytes + maxEventBytesPerJob (${config.maxResultBytes + config.maxEventBytesPerJob}): one job's result and events`);
  }
  if (!(Number.isInteger(config.maxBatch) && config.maxBatch >= 1)) throw new RangeError(`server setting maxBatch must be a whole number of 1 or more, got ${config.maxBatch}`);
  if (config.models.length === 0) throw new RangeError("the server needs at least one model to serve");
  config.dtype = checkWeightDType(config.dtype, "server setting dtype");
  const names = config.models.map((m) => servedModel(m).name);
  for (const name of Object.keys(config.dtypes)) if (!names.includes(name)) throw new RangeError(`server setting dtypes: a dtype is given for "${name}", which is not a served model (${names.join(", ")})`);
  config.dtypes = Object.fromEntries(names.map((name) => [name, checkWeightDType(config.dtypes[name] ?? config.dtype, `server setting dtypes["${name}"]`)]));
  config.dataDir = path.resolve(config.dataDir);
  return config;
}

/** How much longer than its result an ended job's record and events are kept (as in distributed mode). */
const RECORD_GRACE_MS = 24 * 3_600_000;

/** How long an ended job's record and events are kept (the sweeper deletes them then; a key's logs count until). */
export const recordRetentionMs = (config: Pick<ServerConfig, "resultRetentionMs">): number => config.resultRetentionMs + RECORD_GRACE_MS;
