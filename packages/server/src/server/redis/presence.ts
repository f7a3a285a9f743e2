/**
 * Worker presence: each worker process writes a hash of what it serves and runs every `heartbeatMs` (expiring after
 * three missed beats) and its time in `workers`; API processes read the live ones for /v1/status and estimated waits.
 */
import os from "node:os";
import type { Redis } from "ioredis";
import type { WeightDType } from "tsight";
import type { WorkerInfo } from "../contracts.js";
import type { RedisLayout } from "./connection.js";

export interface PresenceData {
  /** Served models: key, name and what the worker keeps their weights as. */
  models: { key: string; name: string; dtype: WeightDType }[];
  /** Jobs running now, per model key. */
  running: Record<string, number>;
}

export interface LiveWorker extends WorkerInfo {
  modelKeys: string[];
  /** Jobs running per model key. */
  runningByModel: Record<string, number>;
  /** What it keeps each model's weights as, by model key (float32 for a worker from before dtypes). */
  dtypeByModel: Record<string, WeightDType>;
  host: string;
  pid: number;
  started: string;
}

export class Presence {
  private timer: NodeJS.Timeout | undefined;
  private readonly started = Date.now();

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisLayout,
    readonly id: string,
    private readonly heartbeatMs: number,
    private readonly data: () => PresenceData,
  ) {}

  async start(): Promise<void> {
    await this.beat();
    this.timer = setInterval(() => void this.beat().catch(() => undefined), this.heartbeatMs);
    this.timer.unref();
  }

  /** Writes the heartbeat now (also when what it runs changed). */
  async beat(): Promise<void> {
    const d = this.data();
    const now = Date.now();
    await this.redis
      .multi()
      .hset(this.keys.worker(this.id), { models: JSON.stringify(d.models), running: JSON.stringify(d.running), host: os.hostname(), pid: String(process.pid), started: String(this.started), heartbeat: String(now) })
      .pexpire(this.keys.worker(this.id), 3 * this.heartbeatMs)
      .zadd(this.keys.workers, now, this.id)
      .exec();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.redis.multi().del(this.keys.worker(this.id)).zrem(this.keys.workers, this.id).exec();
  }
}

/** The workers that beat within the last three heartbeats. */
export async function liveWorkers(redis: Redis, keys: RedisLayout, heartbeatMs: number): Promise<LiveWorker[]> {
  const now = Date.now();
  await redis.zremrangebyscore(keys.workers, "-inf", now - 30 * heartbeatMs);
  const ids = await redis.zrangebyscore(keys.workers, now - 3 * heartbeatMs, "+inf");
  const out: LiveWorker[] = [];
  for (const id of ids) {
    const h = await redis.hgetall(keys.worker(id));
    if (!h.heartbeat) continue;
    const models = JSON.parse(h.models ?? "[]") as { key: string; name: string; dtype?: WeightDType }[];
    const runningByModel = JSON.parse(h.running ?? "{}") as Record<string, number>;
    const running = Object.values(runningByModel).reduce((a, b) => a + b, 0);
    out.push({
      id,
      models: models.map((m) => m.name),
      modelKeys: models.map((m) => m.key),
      busy: running > 0,
      running,
      runningByModel,
      dtypeByModel: Object.fromEntries(models.map((m) => [m.key, m.dtype ?? "float32"])),
      lastHeartbeat: new Date(Number(h.heartbeat)).toISOString(),
      host: h.host ?? "",
      pid: Number(h.pid ?? 0),
      started: new Date(Number(h.started ?? 0)).toISOString(),
    });
  }
  return out;
}
