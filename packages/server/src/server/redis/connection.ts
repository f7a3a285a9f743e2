/**
 * Reaching Redis: connections that fail fast with a clear message when nothing answers, the names of every key
 * tsight keeps there (all under one prefix, so several deployments or test runs share a Redis), and Lua scripts run
 * by their SHA-1 (loaded again after a restart of Redis).
 *
 * Layout, for prefix `P`:
 *
 *   P:job:<id>            hash: the job's record (status, owner, model, times, error, result, webhook, ...)
 *   P:events:<id>         stream: its events, with ids `<seq>-0`, so Last-Event-ID resumes exactly
 *   P:body:<id>           string: the request as submitted, until the job ends
 *   P:result:<id>         string: the result envelope, expiring after the retention
 *   P:local:<id>          hash: hybrid-step call -> asked | answered
 *   P:answer:<id>:<call>  string: a hybrid-step answer on its way to the worker
 *   P:watch:<id>          sorted set: the event streams following the job (score: until when, refreshed)
 *   P:keyjobs:<keyId>     sorted set: a key's jobs in submission order (for listing)
 *   P:keyactive:<keyId>   set: a key's unfinished jobs
 *   P:keyevents:<keyId>   hash: hour (since the epoch, by Redis's clock) -> bytes of events the key's jobs wrote then
 *   P:eventkeep           string: how long (ms) an event may be kept after it is written (set by the job store)
 *   P:submitlock:<keyId>  string: held while one of the key's submissions checks its room and makes its job
 *   P:idem:<keyId>:<key>  string: the job a key's submission with that Idempotency-Key made (kept a day; the
 *                         job's hash keeps the body's digest, `requestDigest`)
 *   P:barred:<keyId>      string: a key barred from submitting after its job broke a worker thread (JSON,
 *                         expiring with the bar; see quarantine.ts)
 *   P:active              sorted set: every unfinished job (score: submission time), for the sweep
 *   P:jobseq              counter: submission order
 *   P:apikey:<id>, P:apikeys   API keys (hash each; sorted set of ids)
 *   P:worker:<id>, P:workers   worker processes: presence hash (expires), sorted set by last heartbeat
 *   P:model:<key>         hash: per-model figures (mean seconds per job)
 *   P:control             pub/sub channel: cancels and hybrid-step answers, to the workers
 *   P:bull:*              BullMQ's queues, one per model
 */
import { createHash } from "node:crypto";
import { Redis } from "ioredis";

export const DEFAULT_PREFIX = "tsight";

/** The names of tsight's keys under one prefix. */
export class RedisLayout {
  /** Ends with ":"; every key starts with it. */
  readonly base: string;

  constructor(readonly prefix: string = DEFAULT_PREFIX) {
    if (!/^[A-Za-z0-9_.{}-]+$/.test(prefix)) throw new RangeError(`the Redis key prefix "${prefix}" may hold only letters, digits and _ . - { }`);
    this.base = `${prefix}:`;
  }

  job = (id: string) => `${this.base}job:${id}`;
  events = (id: string) => `${this.base}events:${id}`;
  body = (id: string) => `${this.base}body:${id}`;
  result = (id: string) => `${this.base}result:${id}`;
  local = (id: string) => `${this.base}local:${id}`;
  answer = (id: string, call: string) => `${this.base}answer:${id}:${call}`;
  watch = (id: string) => `${this.base}watch:${id}`;
  keyJobs = (keyId: string) => `${this.base}keyjobs:${keyId}`;
  keyActive = (keyId: string) => `${this.base}keyactive:${keyId}`;
  barred = (keyId: string) => `${this.base}barred:${keyId}`;
  submitLock = (keyId: string) => `${this.base}submitlock:${keyId}`;
  get eventKeep(): string {
    return `${this.base}eventkeep`;
  }
  get active(): string {
    return `${this.base}active`;
  }
  apiKey = (id: string) => `${this.base}apikey:${id}`;
  get apiKeys(): string {
    return `${this.base}apikeys`;
  }
  worker = (id: string) => `${this.base}worker:${id}`;
  get workers(): string {
    return `${this.base}workers`;
  }
  model = (key: string) => `${this.base}model:${key}`;
  get control(): string {
    return `${this.base}control`;
  }
  /** BullMQ's own prefix (its keys are `<this>:<queue>:...`). */
  get bull(): string {
    return `${this.base}bull`;
  }
  /** The BullMQ queue of a model key (queue names may not hold ":"). */
  queueName(modelKey: string): string {
    return `model-${createHash("sha256").update(modelKey).digest("hex").slice(0, 20)}`;
  }
}

/**
 * Opens a connection and waits until Redis answers; a Redis that does not answer within `timeoutMs` is an error
 * saying so. A `failFast` connection (what answers requests uses) does not queue commands while Redis is away:
 * they fail at once, or after `commandTimeoutMs`, so a request gets a typed answer instead of hanging.
 */
export async function connectRedis(url: string, timeoutMs = 5000, failFast = false): Promise<Redis> {
  const redis = new Redis(url, {
    lazyConnect: true,
    retryStrategy: (times) => Math.min(100 * times, 2000),
    ...(failFast ? { maxRetriesPerRequest: 0, enableOfflineQueue: false, commandTimeout: 3000 } : { maxRetriesPerRequest: null }),
  });
  redis.on("error", () => undefined); // reconnects are retried; commands fail with their own errors
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      redis.connect(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    await redis.ping();
    return redis;
  } catch (e) {
    redis.disconnect();
    throw new Error(`tsight cannot reach Redis at ${url}: ${(e as Error).message}. Start Redis (e.g. redis-server) or pass --redis URL`);
  } finally {
    clearTimeout(timer);
  }
}

/** A Lua script, run with EVALSHA (and EVAL once, when Redis does not know it yet). Keys are named inside the script from the prefix (no Redis Cluster). */
export class RedisScript {
  private readonly sha: string;

  constructor(readonly lua: string) {
    this.sha = createHash("sha1").update(lua).digest("hex");
  }

  async run(redis: Redis, args: (string | number | Buffer)[]): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, 0, ...args);
    } catch (e) {
      if (!String((e as Error).message).includes("NOSCRIPT")) throw e;
      return await redis.eval(this.lua, 0, ...args);
    }
  }
}

/** Deletes every key under `prefix` (a deployment's or a test run's); returns how many. */
export async function clearPrefix(redis: Redis, prefix: string): Promise<number> {
  let cursor = "0";
  let n = 0;
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000);
    cursor = next;
    if (keys.length) n += await redis.unlink(...keys);
  } while (cursor !== "0");
  return n;
}

/**
 * Whether an error of a Redis command means Redis could not be reached (the connection broke, was refused, or
 * timed out), as opposed to a failure of the command itself.
 */
export function isRedisUnreachable(error: Error): boolean {
  const code = (error as NodeJS.ErrnoException).code ?? "";
  if (["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENOTCONN"].includes(code)) return true;
  if (error.name === "MaxRetriesPerRequestError") return true;
  return /Connection is closed|Stream isn't writeable|Command timed out|connect ECONNREFUSED|Redis at .* is/i.test(error.message);
}
