/**
 * Putting the server together: the database, key and job stores, results folder, model registry, job manager
 * with its worker threads, sweeper and HTTP app (`openServer`, no socket), and the same on a port (`startServer`).
 */
import path from "node:path";
import type { AddressInfo } from "node:net";
import { serve, type ServerType } from "@hono/node-server";
import type { Hono } from "hono";
import type { LoadProgress } from "tsight";
import { createApp } from "./app.js";
import { DEFAULT_HOST, DEFAULT_PORT, recordRetentionMs, resolveConfig, type ServerConfig } from "./config.js";
import { openDatabase, type Db } from "./database.js";
import type { AppEnv } from "./guards.js";
import { JobManager } from "./job-manager.js";
import { JobStore } from "./job-store.js";
import { KeyStore } from "./key-store.js";
import { ServerMetrics } from "./metrics.js";
import { ModelRegistry } from "./model-registry.js";
import { ResultStore } from "./result-store.js";
import { Sweeper } from "./sweeper.js";
import { eventStream, OpenStreams } from "./event-stream.js";
import { WebhookTargets } from "./webhook-target.js";
import { WebhookSender } from "./webhook-sender.js";

export interface ServerOptions extends Partial<ServerConfig> {
  port?: number;
  host?: string;
  /** Start a worker thread per model (default). false: jobs wait in their queues (for tests of the rest). */
  workers?: boolean;
  /** Where failures of the server itself are written (default: stderr). */
  log?: (line: string) => void;
  /** Told as a model's worker thread loads its weights (by model name), after each tensor: for a progress bar. */
  onLoadProgress?: (model: string, progress: LoadProgress) => void;
  /**
   * Told when a model is failed until the server restarts (jobs broke too many of its worker threads, which keep
   * what they held): `tsight serve` under its parent process restarts then (see the cli's serve.ts).
   */
  onModelFailed?: (model: string, reason: string) => void;
}

/** A server's parts, not on a socket: `app.request(...)` reaches it. */
export interface ServerCore {
  config: ServerConfig;
  db: Db;
  keys: KeyStore;
  store: JobStore;
  results: ResultStore;
  registry: ModelRegistry;
  jobs: JobManager;
  metrics: ServerMetrics;
  sweeper: Sweeper;
  /** The open event streams of each job. */
  streams: OpenStreams;
  webhooks: WebhookSender;
  app: Hono<AppEnv>;
  close(): Promise<void>;
}

export interface RunningServer extends ServerCore {
  /** e.g. http://127.0.0.1:8787 */
  url: string;
  host: string;
  port: number;
  http: ServerType;
}

export const databaseFile = (dataDir: string): string => path.join(dataDir, "tsight.db");

export async function openServer(options: ServerOptions = {}): Promise<ServerCore> {
  const { port: _port, host: _host, workers = true, log = (line: string) => void process.stderr.write(`${line}\n`), onLoadProgress, onModelFailed, ...settings } = options;
  const config = resolveConfig(settings);
  const registry = await ModelRegistry.open(config.models, config.saes, config.dtypes);
  const db = openDatabase(databaseFile(config.dataDir));
  const keys = new KeyStore(db);
  const store = new JobStore(db);
  const results = new ResultStore(config.dataDir);
  const metrics = new ServerMetrics();
  const streams = new OpenStreams();
  // Before the job manager: jobs it ends at start (left unfinished by a previous run) have webhooks to deliver.
  const webhooks = new WebhookSender(store, { timeoutMs: config.webhookTimeoutMs, retryDelayMs: config.webhookRetryDelayMs, counter: metrics.webhooks, log, targets: new WebhookTargets(config.webhookAllow) });
  webhooks.resume();
  const jobs = new JobManager({ config, store, results, registry, metrics, streams, log, onLoadProgress, onModelFailed });
  results.cleanTemporary();
  const sweeper = new Sweeper(store, results, (e) => log(`tsight server: deleting expired results failed: ${e.message}`), recordRetentionMs(config));
  sweeper.start(config.sweepIntervalMs);
  if (workers) await jobs.startWorkers();
  const events = { open: (id: string, after: number, follow: boolean, sent?: (bytes: number) => void) => eventStream(store, id, after, config.heartbeatMs, follow ? streams : undefined, follow, sent) };
  const app = createApp({ config, keys, store, results, registry, jobs, events, metrics, log });
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      sweeper.stop();
      await jobs.close();
      await webhooks.close();
      db.close();
    })());
  return { config, db, keys, store, results, registry, jobs, metrics, sweeper, streams, webhooks, app, close };
}

/** Starts the server on `host:port` (default 127.0.0.1:8787; port 0 picks a free one). */
export async function startServer(options: ServerOptions = {}): Promise<RunningServer> {
  const core = await openServer(options);
  const host = options.host ?? DEFAULT_HOST;
  let http: ServerType;
  try {
    http = await new Promise<ServerType>((resolve, reject) => {
      const s = serve({ fetch: core.app.fetch, port: options.port ?? DEFAULT_PORT, hostname: host }, () => resolve(s));
      s.once("error", reject);
    });
  } catch (e) {
    await core.close();
    throw e;
  }
  const port = (http.address() as AddressInfo).port;
  const close = async () => {
    await core.close();
    await new Promise<void>((resolve) => {
      http.close(() => resolve());
      (http as { closeAllConnections?: () => void }).closeAllConnections?.();
    });
  };
  return { ...core, close, http, host, port, url: `http://${host.includes(":") ? `[${host}]` : host}:${port}` };
}
