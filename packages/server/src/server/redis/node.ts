/**
 * The processes of a distributed deployment, put together: an API process (`startApiNode`: the same HTTP app as
 * the embedded server, on Redis stores and BullMQ queues) and a worker process (`startWorkerNode`: model threads
 * taking jobs from their models' queues). Any number of each share one Redis and one key prefix.
 */
import os from "node:os";
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { serve, type ServerType } from "@hono/node-server";
import type { Queue, Worker } from "bullmq";
import type { Hono } from "hono";
import type { Redis } from "ioredis";
import { createApp } from "../app.js";
import { DEFAULT_HOST, DEFAULT_PORT, resolveConfig, type ServerConfig } from "../config.js";
import type { AppEnv } from "../guards.js";
import { ServerMetrics } from "../metrics.js";
import { ModelRegistry } from "../model-registry.js";
import type { ServerOptions } from "../server.js";
import { WebhookSender } from "../webhook-sender.js";
import { WebhookTargets } from "../webhook-target.js";
import { connectRedis, isRedisUnreachable, RedisLayout } from "./connection.js";
import { longestJobMs, resolveDistributed, type DistributedConfig } from "./config.js";
import { RedisDispatcher } from "./dispatcher.js";
import { RedisEventFeed, StreamHub, StreamWatchers } from "./event-feed.js";
import { RedisJobStore } from "./job-store.js";
import { RedisKeyStore } from "./key-store.js";
import { modelQueue, modelQueueWorker, type QueuedJob } from "./queues.js";
import { RedisResultStore } from "./result-store.js";
import { Reconciler } from "./sweep.js";
import { WorkerNode } from "./worker-node.js";

export interface DistributedOptions extends Omit<ServerOptions, "workers"> {
  /** Redis URL, e.g. redis://127.0.0.1:6379. */
  redis: string;
  prefix?: string;
  lockDurationMs?: number;
  maxRetries?: number;
  queueWaitMs?: number;
  /** Worker heartbeats (and how often the sweep runs). */
  presenceMs?: number;
  recordRetentionMs?: number;
}

/** The parts every process of a deployment has: settings, connection, stores, the models and their queues. */
interface Common {
  config: ServerConfig;
  dist: DistributedConfig;
  redis: Redis;
  /** The fail-fast connection of the stores. */
  requests: Redis;
  layout: RedisLayout;
  registry: ModelRegistry;
  store: RedisJobStore;
  results: RedisResultStore;
  queues: Map<string, Queue<QueuedJob>>;
  metrics: ServerMetrics;
  webhooks: WebhookSender;
  reconciler: Reconciler;
  log: (line: string) => void;
}

async function openCommon(options: DistributedOptions): Promise<Common> {
  const { port: _port, host: _host, log = (line: string) => void process.stderr.write(`${line}\n`), onLoadProgress: _onLoadProgress, redis: redisUrl, prefix, lockDurationMs, maxRetries, queueWaitMs, presenceMs, recordRetentionMs, ...settings } = options;
  const config = resolveConfig(settings);
  const dist = resolveDistributed({ redisUrl, prefix, lockDurationMs, maxRetries, queueWaitMs, heartbeatMs: presenceMs, recordRetentionMs }, config.resultRetentionMs);
  const layout = new RedisLayout(dist.prefix);
  const registry = await ModelRegistry.open(config.models, config.saes, config.dtypes);
  const redis = await connectRedis(redisUrl);
  // The stores answer requests: their commands fail fast while Redis is away (BullMQ's connection waits instead).
  const requests = await connectRedis(redisUrl, undefined, true);
  await Promise.all(registry.list().map((m) => registry.loadTokenizer(m)));
  const store = new RedisJobStore(requests, layout, dist.recordRetentionMs, longestJobMs(config, dist));
  const results = new RedisResultStore(requests, layout);
  const queues = new Map(registry.list().map((m) => [m.key, modelQueue(redis, layout, m.key)] as const));
  const metrics = new ServerMetrics();
  const webhooks = new WebhookSender(store, { timeoutMs: config.webhookTimeoutMs, retryDelayMs: config.webhookRetryDelayMs, counter: metrics.webhooks, log, targets: new WebhookTargets(config.webhookAllow) });
  const reconciler = new Reconciler({ store, queues, config: dist, log, modelName: (key) => registry.get(key)?.name ?? key });
  return { config, dist, redis, requests, layout, registry, store, results, queues, metrics, webhooks, reconciler, log };
}

async function closeCommon(c: Common, workers: Worker<QueuedJob>[]): Promise<void> {
  await c.reconciler.stop();
  await Promise.all(workers.map((w) => w.close(true).catch(() => undefined)));
  await c.webhooks.close();
  await Promise.all([...c.queues.values()].map((q) => q.close().catch(() => undefined)));
  await c.redis.quit().catch(() => undefined);
  await c.requests.quit().catch(() => undefined);
}

export interface ApiNode {
  config: ServerConfig;
  dist: DistributedConfig;
  keys: RedisKeyStore;
  store: RedisJobStore;
  registry: ModelRegistry;
  jobs: RedisDispatcher;
  app: Hono<AppEnv>;
  /** e.g. http://127.0.0.1:8787 */
  url: string;
  host: string;
  port: number;
  http: ServerType;
  close(): Promise<void>;
}

/** Starts an API process on `host:port`: takes jobs, serves their state, events and results, from Redis. */
export async function startApiNode(options: DistributedOptions): Promise<ApiNode> {
  const c = await openCommon(options);
  const reader = await connectRedis(c.dist.redisUrl);
  const keys = new RedisKeyStore(c.requests, c.layout);
  // Stalled-job checks only (no jobs are taken here): a job whose worker died is found even with no worker left.
  const checkers = c.registry.list().map((m) => {
    const w = modelQueueWorker(c.redis, c.layout, m.key, c.dist, `api-${process.pid}`);
    c.reconciler.watch(w, m.key);
    return w;
  });
  await Promise.all(checkers.map((w) => w.startStalledCheckTimer()));
  c.reconciler.start();
  const hub = new StreamHub(reader, c.redis);
  const watchers = new StreamWatchers(c.redis, c.layout, c.dist.heartbeatMs);
  const events = new RedisEventFeed(c.store, hub, watchers, c.config.heartbeatMs);
  const jobs = new RedisDispatcher({ config: c.config, dist: c.dist, store: c.store, registry: c.registry, queues: c.queues, metrics: c.metrics });
  const health = () => {
    const problems = [c.redis, c.requests, reader].filter((r) => r.status !== "ready").map((r) => `Redis at ${c.dist.redisUrl} is ${r.status}`);
    return { ready: problems.length === 0, problems: [...new Set(problems)] };
  };
  const app = createApp({ config: c.config, keys, store: c.store, results: c.results, registry: c.registry, jobs, events, metrics: c.metrics, log: c.log, health, unreachable: isRedisUnreachable });
  const host = options.host ?? DEFAULT_HOST;
  let http: ServerType;
  try {
    http = await new Promise<ServerType>((resolve, reject) => {
      const s = serve({ fetch: app.fetch, port: options.port ?? DEFAULT_PORT, hostname: host }, () => resolve(s));
      s.once("error", reject);
    });
  } catch (e) {
    await closeCommon(c, checkers);
    reader.disconnect();
    throw e;
  }
  const port = (http.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      jobs.close();
      watchers.close();
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        (http as { closeAllConnections?: () => void }).closeAllConnections?.();
      });
      await hub.close();
      await closeCommon(c, checkers);
    })());
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  return { config: c.config, dist: c.dist, keys, store: c.store, registry: c.registry, jobs, app, url, host, port, http, close };
}

export interface WorkerProcess {
  id: string;
  config: ServerConfig;
  dist: DistributedConfig;
  node: WorkerNode;
  registry: ModelRegistry;
  close(): Promise<void>;
}

/** Starts a worker process: loads its models and runs the jobs of their queues until closed. */
export async function startWorkerNode(options: DistributedOptions): Promise<WorkerProcess> {
  const c = await openCommon(options);
  const id = `${os.hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const subscriber = await connectRedis(c.dist.redisUrl);
  const fetchers = new Map(
    c.registry.list().map((m) => {
      const w = modelQueueWorker(c.redis, c.layout, m.key, c.dist, id);
      c.reconciler.watch(w, m.key);
      return [m.key, w] as const;
    }),
  );
  const node = new WorkerNode({ id, config: c.config, dist: c.dist, redis: c.redis, subscriber, store: c.store, results: c.results, registry: c.registry, metrics: c.metrics, queues: c.queues, fetchers, log: c.log, onLoadProgress: options.onLoadProgress });
  await node.start();
  c.reconciler.start();
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      await node.close();
      await closeCommon(c, [...fetchers.values()]);
      subscriber.disconnect();
    })());
  return { id, config: c.config, dist: c.dist, node, registry: c.registry, close };
}

/** Opens the key store of a deployment (for `tsight keys --redis`); close it with the returned function. */
export async function openRedisKeys(url: string, prefix?: string): Promise<{ keys: RedisKeyStore; close: () => Promise<void> }> {
  const redis = await connectRedis(url);
  return { keys: new RedisKeyStore(redis, new RedisLayout(prefix)), close: async () => void (await redis.quit().catch(() => undefined)) };
}
