/**
 * RedisJobStore: jobs and their events in Redis, for API and worker processes alike (layout in connection.ts).
 * Every state change and event goes through a script of scripts.ts, so any process may move any job and the
 * events stay numbered without gaps. End listeners hear the jobs that this process ended (webhooks are sent by
 * whoever ends the job). Ended jobs' records expire `recordTtlMs` after their end.
 */
import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import type { ErrorInfo, JobEvent, JobKind, JobStatus, SequencedEvent } from "tsight/protocol";
import type { LocalAnswer } from "../worker-messages.js";
import type { EndListener, JobRecord, ListOptions, MoveDetails, NewJob, ResultState, WebhookState } from "../job-store.js";
import { isTerminal } from "../job-status.js";
import type { RedisLayout } from "./connection.js";
import { ApiError } from "../api-error.js";
import { appendEvent, createJob, expireResult, keyEventBytes, keyResultBytes, moveJob, releaseLock } from "./scripts.js";

/** How long a key's submission lock lasts, and the longest a submission waits for it (see withSubmitLock). */
const SUBMIT_LOCK_MS = 10_000;

/** What Redis keeps of a job beyond the protocol's record. */
export interface RedisJobRecord extends JobRecord {
  /** Jobs with equal keys may share a forward pass (see batch-key.ts). */
  batch: string | undefined;
  /** Runs started (1 for the first; more after a lost worker). */
  attempt: number;
  /** Its owner asked to cancel it while it ran. */
  cancel: boolean;
  /** Since when its worker is lost (ms), while it waits for another. */
  lost: number | null;
  /** Since when it waits in its queue (ms). */
  queuedAt: number | null;
  /** Its place in the queue when it was queued. */
  position: number | undefined;
}

const num = (v: string | undefined): number | null => (v === undefined || v === "" ? null : Number(v));

function fromHash(id: string, h: Record<string, string>): RedisJobRecord {
  return {
    id,
    keyId: h.keyId!,
    model: h.model!,
    kind: h.kind as JobKind,
    status: h.status as JobStatus,
    created: Number(h.created),
    updated: Number(h.updated),
    started: num(h.started),
    finished: num(h.finished),
    error: h.error ? (JSON.parse(h.error) as ErrorInfo) : null,
    result: (h.result ?? "none") as ResultState,
    resultBytes: num(h.resultBytes),
    expires: num(h.expires),
    lastSeq: Number(h.lastSeq ?? 0),
    webhook: h.webhook ?? null,
    webhookState: (h.webhookState ?? null) as WebhookState | null,
    requestDigest: h.requestDigest ?? null,
    batch: h.batch,
    attempt: Number(h.attempt ?? 0),
    cancel: h.cancel === "1",
    lost: num(h.lost),
    queuedAt: num(h.queuedAt),
    position: h.position === undefined ? undefined : Number(h.position),
  };
}

export interface NewRedisJob extends NewJob {
  /** Unfinished jobs the key may have; creating one more is refused. */
  limit: number;
  batch?: string;
}

export class RedisJobStore {
  private readonly endListeners = new Set<EndListener>();

  constructor(
    readonly redis: Redis,
    readonly keys: RedisLayout,
    /** How long an ended job's record and events are kept. */
    readonly recordTtlMs: number,
    /** The longest a job waits and runs: its events are kept at most this and recordTtlMs after they are written. */
    longestJobMs = 0,
  ) {
    // For the scripts' count of a key's event bytes by the hour (see storedBytes); a failure shows at its first use.
    this.keepSet = redis.set(keys.eventKeep, String(recordTtlMs + longestJobMs)).then(() => undefined);
    this.keepSet.catch(() => undefined);
  }

  private readonly keepSet: Promise<void>;

  /**
   * Records a new job (RECEIVED) and its first event. Answers its rank among its key's unfinished jobs (1 for the
   * only one), "limit" when the key has `limit` unfinished jobs already, or the id of the key's earlier job with
   * the same idempotency key (its record has the digest to compare, set in the same step).
   */
  async create(job: NewRedisJob): Promise<{ rank: number } | "limit" | { earlier: string }> {
    await this.keepSet;
    const { webhook, idempotency } = job;
    const out = await createJob.run(this.redis, [
      this.keys.base,
      job.id,
      job.keyId,
      job.model,
      job.kind,
      Date.now(),
      webhook?.url ?? "",
      webhook?.secret ?? "",
      job.limit,
      job.batch ?? "",
      idempotency?.key ?? "",
      idempotency?.digest ?? "",
    ]);
    if (typeof out === "string" && out.startsWith("job:")) return { earlier: out.slice(4) };
    return Number(out) === 0 ? "limit" : { rank: Number(out) };
  }

  async get(id: string): Promise<RedisJobRecord | undefined> {
    const h = await this.redis.hgetall(this.keys.job(id));
    return h.status ? fromHash(id, h) : undefined;
  }

  async getOwned(id: string, keyId: string): Promise<RedisJobRecord | undefined> {
    const job = await this.get(id);
    return job && job.keyId === keyId ? job : undefined;
  }

  /** Moves a job (see JobStore.move); false when it is unknown or cannot move there. */
  async move(id: string, status: JobStatus, details: MoveDetails = {}): Promise<boolean> {
    const moved = await moveJob.run(this.redis, [
      this.keys.base,
      id,
      status,
      Date.now(),
      details.error ? JSON.stringify(details.error) : "",
      details.result ? details.result.bytes : "",
      details.result ? details.result.expires : "",
      details.position ?? "",
      this.recordTtlMs,
    ]);
    if (moved !== 1) return false;
    if (isTerminal(status)) await this.announceEnd(id);
    return true;
  }

  /** Tells the end listeners (webhooks) of job `id`, which this process ended (by move, or by a script of its own). */
  async announceEnd(id: string): Promise<void> {
    if (this.endListeners.size === 0) return;
    const job = await this.get(id);
    if (job) for (const l of [...this.endListeners]) l(job);
  }

  /** Stores an event (log, stream, local); `localCall`: the hybrid step it asks for. Its seq, or undefined for an unknown job. */
  async append(id: string, event: JobEvent, localCall?: string): Promise<number | undefined> {
    const seq = await appendEvent.run(this.redis, [this.keys.base, id, JSON.stringify(event), localCall ?? ""]);
    return typeof seq === "number" ? seq : undefined;
  }

  /** The job's events after sequence number `seq`, in order (at most `count`). */
  async eventsAfter(id: string, seq: number, count = 10_000): Promise<SequencedEvent[]> {
    const entries = await this.redis.xrange(this.keys.events(id), `(${seq}-0`, "+", "COUNT", count);
    return entries.map(toEvent);
  }

  /**
   * Runs `work` holding the key's submission lock (P:submitlock:<keyId>, which lapses after SUBMIT_LOCK_MS should its
   * process die holding it): one submission of a key at a time, in every API process. Waits for it at most
   * SUBMIT_LOCK_MS; then a 503, retryable.
   */
  async withSubmitLock<T>(keyId: string, work: () => Promise<T>): Promise<T> {
    const lock = this.keys.submitLock(keyId);
    const token = randomUUID();
    const until = Date.now() + SUBMIT_LOCK_MS;
    while ((await this.redis.set(lock, token, "PX", SUBMIT_LOCK_MS, "NX")) !== "OK") {
      if (Date.now() > until) throw new ApiError(503, "UNAVAILABLE", `this API key's submissions are many at once: its submission waited ${SUBMIT_LOCK_MS / 1000} s for those before it; try again`, { retryable: true, headers: { "retry-after": "1" } });
      await new Promise((r) => setTimeout(r, 2 + Math.random() * 8));
    }
    try {
      return await work();
    } finally {
      await releaseLock.run(this.redis, [this.keys.base, lock, token]);
    }
  }

  async activeCount(keyId: string): Promise<number> {
    return this.redis.scard(this.keys.keyActive(keyId));
  }

  /**
   * Bytes kept now for the key (see JobStore.storedBytes): its results not expired nor deleted (summed in Redis as
   * they are kept and let go of: paging through its jobs at every submission took 40 ms for a key with 1,000 jobs in
   * the last hour), and every event its jobs wrote within `eventsMs` (a job's wait and run and the record retention
   * after it: an event lives at most that long), counted by the hour as they were written (see scripts.ts's addEvent).
   */
  async storedBytes(keyId: string, eventsMs: number, now = Date.now()): Promise<number> {
    const { results, logs } = await this.storedParts(keyId, eventsMs, now);
    return results + logs;
  }

  /** storedBytes in its parts: the key's results, and its jobs' events and errors. */
  async storedParts(keyId: string, eventsMs: number, now = Date.now()): Promise<{ results: number; logs: number }> {
    await this.keepSet;
    const logs = Number(await keyEventBytes.run(this.redis, [this.keys.base, keyId, eventsMs]));
    return { results: Number(await keyResultBytes.run(this.redis, [this.keys.base, keyId, now])), logs };
  }

  /** A key's jobs, newest first; undefined when `before` is not one of them. Records that expired are skipped (and forgotten). */
  async list(keyId: string, options: ListOptions): Promise<RedisJobRecord[] | undefined> {
    const index = this.keys.keyJobs(keyId);
    let max = "+inf";
    if (options.before !== undefined) {
      const score = await this.redis.zscore(index, options.before);
      if (score === null) return undefined;
      max = `(${score}`;
    }
    const out: RedisJobRecord[] = [];
    for (;;) {
      const page = await this.redis.zrevrangebyscore(index, max, "-inf", "WITHSCORES", "LIMIT", 0, 100);
      if (page.length === 0) return out;
      const ids = page.filter((_, i) => i % 2 === 0);
      const pipeline = this.redis.pipeline();
      for (const id of ids) pipeline.hgetall(this.keys.job(id));
      const hashes = (await pipeline.exec()) ?? [];
      const gone: string[] = [];
      ids.forEach((id, i) => {
        const h = hashes[i]?.[1] as Record<string, string> | undefined;
        if (!h?.status) return void gone.push(id);
        const job = fromHash(id, h);
        if ((options.status === undefined || job.status === options.status) && out.length < options.limit) out.push(job);
      });
      if (gone.length) await this.redis.zrem(index, ...gone);
      if (out.length >= options.limit) return out;
      max = `(${page[page.length - 1]}`;
    }
  }

  async markResultExpired(id: string): Promise<void> {
    await expireResult.run(this.redis, [this.keys.base, id]);
  }

  /** Keeps the request's bytes (a tag byte, then the envelope or the JSON) until the job ends. */
  async putBody(id: string, body: Uint8Array | object): Promise<void> {
    const bytes = body instanceof Uint8Array ? Buffer.concat([Buffer.of(0), body]) : Buffer.concat([Buffer.of(1), Buffer.from(JSON.stringify(body))]);
    await this.redis.set(this.keys.body(id), bytes);
  }

  /** The request as submitted, or undefined once the job ended. */
  async body(id: string): Promise<Uint8Array | object | undefined> {
    const bytes = await this.redis.getBuffer(this.keys.body(id));
    if (!bytes || bytes.length === 0) return undefined;
    const rest = bytes.subarray(1);
    return bytes[0] === 0 ? new Uint8Array(rest.buffer, rest.byteOffset, rest.byteLength) : (JSON.parse(rest.toString("utf8")) as object);
  }

  async webhookDelivery(id: string): Promise<{ url: string; secret: string | undefined } | undefined> {
    const [url, secret, state] = await this.redis.hmget(this.keys.job(id), "webhook", "webhookSecret", "webhookState");
    return url && state === "pending" ? { url, secret: secret ?? undefined } : undefined;
  }

  async finishWebhook(id: string, state: "delivered" | "failed"): Promise<void> {
    await this.redis.multi().hset(this.keys.job(id), "webhookState", state).hdel(this.keys.job(id), "webhookSecret").exec();
  }

  /** Deliveries are made by the process that ended the job; none are resumed (see redis/README). */
  pendingWebhooks(): string[] {
    return [];
  }

  onEnd(listener: EndListener): () => void {
    this.endListeners.add(listener);
    return () => void this.endListeners.delete(listener);
  }
}

/** A stream entry `<seq>-0` with field `e` as a SequencedEvent. */
export function toEvent([id, fields]: [string, string[]]): SequencedEvent {
  return { seq: Number(id.split("-")[0]), event: JSON.parse(fields[1]!) as JobEvent };
}

/** A hybrid-step answer as bytes: a tag byte, then the envelope (0) or the answer as JSON (1). */
export function encodeAnswer(answer: LocalAnswer): Buffer {
  if (answer.kind === "envelope") return Buffer.concat([Buffer.of(0), answer.bytes]);
  return Buffer.concat([Buffer.of(1), Buffer.from(JSON.stringify(answer))]);
}

export function decodeAnswer(bytes: Buffer): LocalAnswer {
  const rest = bytes.subarray(1);
  if (bytes[0] === 0) return { kind: "envelope", bytes: new Uint8Array(rest) };
  return JSON.parse(rest.toString("utf8")) as LocalAnswer;
}
