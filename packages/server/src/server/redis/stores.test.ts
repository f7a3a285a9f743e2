/**
 * The Redis stores against the machine's Redis, under a prefix of this run's own (deleted afterwards): keys, jobs
 * and their numbered events, the state machine in the scripts, results with their retention, event streams.
 */
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { clearPrefix, testRedis, uniquePrefix } from "../../../../../test/server/redis.js";
import { parseSse } from "../../../../../test/server/harness.js";
import type { ErrorInfo, JobStatus, SequencedEvent } from "../../../../tsight/src/protocol/wire.js";
import { newJobId } from "../ids.js";
import { RedisLayout } from "./connection.js";
import { RedisEventFeed, StreamHub, StreamWatchers } from "./event-feed.js";
import { decodeAnswer, encodeAnswer, RedisJobStore } from "./job-store.js";
import { RedisKeyStore } from "./key-store.js";
import { RedisResultStore } from "./result-store.js";
import { resolveDistributed } from "./config.js";
import { modelQueue, modelQueueWorker, queuedJobOptions } from "./queues.js";
import { answerStep, cancelJob, claimJob, markLost } from "./scripts.js";
import { Reconciler } from "./sweep.js";

let redis: Redis;
let reader: Redis;
const prefix = uniquePrefix("stores");
const keys = new RedisLayout(prefix);
let store: RedisJobStore;

beforeAll(async () => {
  redis = await testRedis();
  reader = await testRedis();
  store = new RedisJobStore(redis, keys, 60_000);
});
afterAll(async () => {
  if (!redis) return;
  await clearPrefix(redis, prefix);
  await redis.quit();
  reader.disconnect();
});

const kinds = (events: SequencedEvent[]) => events.map((e) => (e.event.type === "status" ? e.event.status : e.event.type));
async function newJob(keyId = "k1", limit = 8): Promise<string> {
  const id = newJobId();
  expect(await store.create({ id, keyId, model: "M", kind: "trace", limit })).toMatchObject({ rank: expect.any(Number) });
  return id;
}

describe("RedisKeyStore", () => {
  it("makes keys of the embedded form, checks them against salted hashes, lists and revokes", async () => {
    const ks = new RedisKeyStore(redis, keys);
    const k = await ks.create("alice");
    expect(k.key).toMatch(/^tsk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    expect(await ks.verify(k.key)).toEqual({ ok: true, caller: { keyId: k.id, name: "alice" } });
    const stored = await redis.hgetall(keys.apiKey(k.id));
    expect(JSON.stringify(stored)).not.toContain(k.key.slice(-43));
    expect(await ks.verify(k.key.slice(0, -1) + (k.key.endsWith("A") ? "B" : "A"))).toEqual({ ok: false, reason: "unknown" });
    expect(await ks.verify("tsk_nope")).toEqual({ ok: false, reason: "unknown" });
    expect((await ks.list()).map((x) => x.name)).toContain("alice");
    expect(await ks.revoke("alice")).toBe(1);
    expect(await ks.verify(k.key)).toEqual({ ok: false, reason: "revoked" });
  });
});

describe("RedisJobStore", () => {
  it("moves a job through its states with events numbered from 1, and refuses moves the state machine forbids", async () => {
    const id = await newJob();
    expect(await store.move(id, "QUEUED", { position: 3 })).toBe(true);
    expect(await store.move(id, "RUNNING")).toBe(false); // QUEUED -> RUNNING skips DISPATCHED
    expect(await store.move(id, "DISPATCHED")).toBe(true);
    expect(await store.append(id, { type: "log", text: "hello" })).toBe(4);
    expect(await store.move(id, "RUNNING")).toBe(true);
    expect(await store.move(id, "COMPLETED", { result: { bytes: 10, expires: Date.now() + 1000 } })).toBe(true);
    expect(await store.move(id, "ERROR")).toBe(false);
    const events = await store.eventsAfter(id, 0);
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(kinds(events)).toEqual(["RECEIVED", "QUEUED", "DISPATCHED", "log", "RUNNING", "COMPLETED", "done"]);
    expect(events[1]!.event).toEqual({ type: "status", status: "QUEUED", position: 3 });
    expect((await store.eventsAfter(id, 4)).map((e) => e.seq)).toEqual([5, 6, 7]);
    const job = (await store.get(id))!;
    expect(job).toMatchObject({ status: "COMPLETED", result: "available", resultBytes: 10, lastSeq: 7 });
    expect(job.started).not.toBeNull();
    expect(await redis.pttl(keys.job(id))).toBeGreaterThan(0); // ended records expire
    expect(await redis.zscore(keys.active, id)).toBeNull();
    await store.markResultExpired(id);
    expect((await store.get(id))!.result).toBe("expired");
  });

  it("sums the bytes a key keeps now: results not expired, deleted or another key's (summed as they are kept), and its jobs' events", async () => {
    const complete = async (keyId: string, bytes: number, expires: number) => {
      const id = await newJob(keyId);
      for (const s of ["QUEUED", "DISPATCHED", "RUNNING"] as const) await store.move(id, s);
      await store.move(id, "COMPLETED", { result: { bytes, expires } });
      return id;
    };
    const now = Date.now();
    const ids = [await complete("k-stored", 100, now + 60_000), await complete("k-stored", 20, now + 60_000), await complete("k-stored", 7, now - 1), await complete("k-other", 1000, now + 60_000)];
    const log = { type: "log" as const, text: "x".repeat(1000) };
    await store.append(ids[1]!, log);
    // Every event of the key's jobs (their status events too), as stored.
    const events = async () => {
      let n = 0;
      for (const id of ids.slice(0, 3)) for (const e of await store.eventsAfter(id, 0)) n += JSON.stringify(e.event).length;
      return n;
    };
    expect(await events()).toBeGreaterThan(1000);
    const day = 24 * 3_600_000;
    expect(await store.storedBytes("k-stored", day, now)).toBe(120 + (await events()));
    await store.markResultExpired(ids[0]!);
    expect(await store.storedBytes("k-stored", day, now)).toBe(20 + (await events()));
    // Marked again (the sweeper and a DELETE racing): taken off once.
    await store.markResultExpired(ids[0]!);
    expect(await store.storedBytes("k-stored", day, now)).toBe(20 + (await events()));
    // Counted by the hour written: an hour older than events are kept is no longer counted, and is dropped.
    const hours = `${keys.base}keyevents:k-stored`;
    const old = String(Math.floor(now / 3_600_000) - 30);
    await redis.hset(hours, old, 5000);
    expect(await store.storedBytes("k-stored", 40 * 3_600_000, now)).toBe(20 + 5000 + (await events()));
    expect(await store.storedBytes("k-stored", day, now)).toBe(20 + (await events()));
    expect(await redis.hexists(hours, old)).toBe(0);
    // The hours are kept as long as events are (the store's record retention and longest job), then go.
    expect(await redis.pttl(hours)).toBeGreaterThan(60_000);
    // Past its expiry a result no longer counts, whether or not the sweeper has marked it yet; the events, kept a
    // day longer, still do.
    expect(await store.storedBytes("k-stored", day, now + 2 * 3_600_000)).toBe(await events());
    expect(await store.storedBytes("k-stored", day, now)).toBe(await events());
    // The key's results are summed as they are kept, not read job by job: what it keeps lives an hour past the last
    // result's expiry.
    // With the last result gone, so is the sum (no expiry of it can outlive the next result's entries).
    expect(await redis.exists(`${keys.base}keyresultsum:k-stored`, `${keys.base}keyresults:k-stored`, `${keys.base}keyresultbytes:k-stored`)).toBe(0);
    expect(await redis.get(`${keys.base}keyresultsum:k-other`)).toBe("1000");
    expect(await redis.pttl(`${keys.base}keyresultsum:k-other`)).toBeGreaterThan(3_600_000);
    // A result expiring before one kept earlier: the three keys keep the later expiry together.
    const later = await complete("k-order", 50, now + 3 * 3_600_000);
    await complete("k-order", 7, now + 60_000);
    const ttls = await Promise.all(["keyresultsum", "keyresults", "keyresultbytes"].map((k) => redis.pttl(`${keys.base}${k}:k-order`)));
    expect(Math.max(...ttls) - Math.min(...ttls)).toBeLessThan(1_000);
    expect(Math.min(...ttls)).toBeGreaterThan(3 * 3_600_000);
    await store.markResultExpired(later);
    expect((await store.storedParts("k-order", day, now)).results).toBe(7);
  });

  it("counts a failed job's error against its key twice, as it keeps it twice: as an event and in the job's record", async () => {
    const id = await newJob("k-failed");
    await store.move(id, "QUEUED");
    const error = { code: "USER_CODE" as const, type: "Error", message: "€".repeat(2_000), retryable: false };
    await store.move(id, "ERROR", { error });
    let events = 0;
    for (const e of await store.eventsAfter(id, 0)) events += Buffer.byteLength(JSON.stringify(e.event));
    const record = Buffer.byteLength(JSON.stringify(error));
    expect(record).toBeGreaterThan(6_000);
    expect(await store.storedBytes("k-failed", 24 * 3_600_000)).toBe(events + record);
  });

  it("runs one submission of a key at a time across stores (API processes), others' keys alongside", async () => {
    const other = new RedisJobStore(redis, keys, 60_000);
    let inside = 0;
    let most = 0;
    const order: string[] = [];
    const submit = (s: RedisJobStore, key: string, name: string) =>
      s.withSubmitLock(key, async () => {
        inside++;
        most = Math.max(most, inside);
        await new Promise((r) => setTimeout(r, 15));
        order.push(name);
        inside--;
        return name;
      });
    const names = await Promise.all(Array.from({ length: 8 }, (_, i) => submit(i % 2 ? other : store, "k-lock", `s${i}`)));
    expect(names).toEqual(["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"]);
    expect(most).toBe(1);
    expect(order.length).toBe(8);
    // A failing submission lets go too; another key's never waits for this one's.
    await expect(store.withSubmitLock("k-lock", async () => Promise.reject(new Error("refused")))).rejects.toThrow("refused");
    most = 0;
    await Promise.all([submit(store, "k-lock", "a"), submit(other, "k-lock-2", "b")]);
    expect(most).toBe(2);
    // A lock whose holder died lapses; one lapsed and taken by another is not let go by the first.
    await redis.set(keys.submitLock("k-dead"), "gone", "PX", 50);
    expect(await store.withSubmitLock("k-dead", async () => "after the lapse")).toBe("after the lapse");
    await redis.set(keys.submitLock("k-taken"), "someone", "PX", 60_000);
    const { releaseLock } = await import("./scripts.js");
    await releaseLock.run(redis, [keys.base, keys.submitLock("k-taken"), "not-mine"]);
    expect(await redis.get(keys.submitLock("k-taken"))).toBe("someone");
  });

  it("stores an error event before ERROR, and appends after done (webhook logs)", async () => {
    const id = await newJob();
    const error: ErrorInfo = { code: "USER_CODE", type: "TypeError", message: "boom", retryable: false, line: 3 };
    expect(await store.move(id, "ERROR", { error })).toBe(true);
    expect(await store.append(id, { type: "log", text: "webhook delivered: 200" })).toBe(5);
    const events = await store.eventsAfter(id, 0);
    expect(kinds(events)).toEqual(["RECEIVED", "error", "ERROR", "done", "log"]);
    expect(events[1]!.event).toEqual({ type: "error", error });
    expect((await store.get(id))!.error).toEqual(error);
    expect(await store.append(newJobId(), { type: "log", text: "x" })).toBeUndefined();
  });

  it("limits a key's unfinished jobs, and lists its jobs newest first by pages and status", async () => {
    const ids = [await newJob("k2", 3), await newJob("k2", 3), await newJob("k2", 3)];
    expect(await store.create({ id: newJobId(), keyId: "k2", model: "M", kind: "trace", limit: 3 })).toBe("limit");
    expect(await store.activeCount("k2")).toBe(3);
    await store.move(ids[1]!, "CANCELLED");
    expect(await store.activeCount("k2")).toBe(2);
    const all = (await store.list("k2", { limit: 10 }))!.map((j) => j.id);
    expect(all).toEqual([...ids].reverse());
    expect((await store.list("k2", { limit: 1, before: ids[2] }))!.map((j) => j.id)).toEqual([ids[1]]);
    expect((await store.list("k2", { limit: 10, status: "CANCELLED" }))!.map((j) => j.id)).toEqual([ids[1]]);
    expect(await store.list("k2", { limit: 10, before: newJobId() })).toBeUndefined();
    expect(await store.list("k1", { limit: 10, before: ids[0] })).toBeUndefined(); // another key's job
  });

  it("keeps a keyed submission's body digest with the job, and answers the key's next submission with that job", async () => {
    const id = newJobId();
    const idempotency = { key: "the-key", digest: "d1" };
    expect(await store.create({ id, keyId: "k3", model: "M", kind: "trace", limit: 8, idempotency })).toMatchObject({ rank: 1 });
    expect((await store.get(id))!.requestDigest).toBe("d1");
    expect(await store.create({ id: newJobId(), keyId: "k3", model: "M", kind: "trace", limit: 8, idempotency: { key: "the-key", digest: "d2" } })).toEqual({ earlier: id });
    expect((await store.get(await newJob("k3")))!.requestDigest).toBeNull();
  });

  it("keeps the request as sent (envelope or JSON), and hybrid-step answers as bytes", async () => {
    const id = await newJob();
    await store.putBody(id, new Uint8Array([1, 2, 3]));
    expect(await store.body(id)).toEqual(new Uint8Array([1, 2, 3]));
    await store.putBody(id, { model: "M", source: "x" });
    expect(await store.body(id)).toEqual({ model: "M", source: "x" });
    await store.move(id, "CANCELLED");
    expect(await store.body(id)).toBeUndefined(); // dropped when the job ends
    expect(decodeAnswer(encodeAnswer({ kind: "envelope", bytes: new Uint8Array([9, 8]) }))).toEqual({ kind: "envelope", bytes: new Uint8Array([9, 8]) });
    expect(decodeAnswer(encodeAnswer({ kind: "json", value: { a: 1 } }))).toEqual({ kind: "json", value: { a: 1 } });
  });
});

describe("the job scripts", () => {
  const claim = async (id: string, attempt: number) => (await claimJob.run(redis, [keys.base, id, Date.now(), String(attempt), "w1", JSON.stringify({ type: "log", text: "again" })])) as string[];

  it("claims a queued job, and takes up a lost one again with a note; an ended one is gone", async () => {
    const id = await newJob();
    await store.move(id, "QUEUED", { position: 0 });
    expect(await claim(id, 1)).toEqual(["ok", ""]);
    await store.move(id, "RUNNING");
    await store.append(id, { type: "local", call: "c1", step: 0, vals: "" }, "c1");
    expect(await markLost.run(redis, [keys.base, id, "2", Date.now(), JSON.stringify({ type: "log", text: "lost" })])).toBe(0); // not the attempt that ran
    expect(await markLost.run(redis, [keys.base, id, "1", Date.now(), JSON.stringify({ type: "log", text: "lost" })])).toBe(1);
    expect((await store.get(id))!.lost).not.toBeNull();
    expect(await claim(id, 2)).toEqual(["ok", ""]);
    const job = (await store.get(id))!;
    expect(job).toMatchObject({ status: "DISPATCHED", attempt: 2, lost: null });
    expect(await redis.exists(keys.local(id))).toBe(0); // the first run's hybrid steps are forgotten
    expect(kinds(await store.eventsAfter(id, 0))).toEqual(["RECEIVED", "QUEUED", "DISPATCHED", "RUNNING", "local", "log", "log", "DISPATCHED"]);
    await store.move(id, "CANCELLED");
    expect(await claim(id, 3)).toEqual(["gone"]);
  });

  it("cancels a waiting job at once and flags a running one for its worker", async () => {
    const waiting = await newJob();
    await store.move(waiting, "QUEUED", { position: 0 });
    expect(await cancelJob.run(redis, [keys.base, waiting, Date.now(), 60_000])).toBe("cancelled");
    expect((await store.get(waiting))!.status).toBe("CANCELLED");
    const running = await newJob();
    await store.move(running, "QUEUED", { position: 0 });
    await claim(running, 1);
    const sub = await testRedis();
    const heard = new Promise<string>((resolve) => sub.on("message", (_c: string, m: string) => resolve(m)));
    await sub.subscribe(keys.control);
    expect(await cancelJob.run(redis, [keys.base, running, Date.now(), 60_000])).toBe("running");
    expect(JSON.parse(await heard)).toEqual({ type: "cancel", id: running });
    sub.disconnect();
    expect((await store.get(running))!).toMatchObject({ status: "DISPATCHED", cancel: true });
    expect(await cancelJob.run(redis, [keys.base, waiting, Date.now(), 60_000])).toBe("final");
  });

  it("takes a hybrid-step answer once, for a step the running job asked", async () => {
    const id = await newJob();
    await store.move(id, "QUEUED", { position: 0 });
    await claim(id, 1);
    const answer = (call: string) => answerStep.run(redis, [keys.base, id, call, encodeAnswer({ kind: "json", value: 1 }), 10_000]);
    expect(await answer("c1")).toBe("status:DISPATCHED");
    await store.move(id, "RUNNING");
    expect(await answer("c1")).toBe("unknown");
    await store.append(id, { type: "local", call: "c1", step: 0, vals: "" }, "c1");
    expect(await answer("c1")).toBe("ok");
    expect(await answer("c1")).toBe("answered");
    expect(decodeAnswer((await redis.getBuffer(keys.answer(id, "c1")))!)).toEqual({ kind: "json", value: 1 });
    await redis.hset(keys.job(id), "stopping", "its step timed out");
    await store.append(id, { type: "local", call: "c2", step: 0, vals: "" }, "c2");
    expect(await answer("c2")).toBe("stopping:its step timed out");
  });
});

describe("RedisResultStore", () => {
  it("keeps a result's bytes until its retention runs out", async () => {
    const results = new RedisResultStore(redis, keys);
    const id = newJobId();
    await results.write(id, new Uint8Array([5, 6, 7]), 150);
    expect(await results.read(id)).toEqual(new Uint8Array([5, 6, 7]));
    await new Promise((r) => setTimeout(r, 250));
    expect(await results.read(id)).toBeUndefined();
  });
});

describe("RedisEventFeed", () => {
  it("replays stored events, follows new ones, ends after done, and resumes after a Last-Event-ID", async () => {
    const hub = new StreamHub(reader, redis);
    const watchers = new StreamWatchers(redis, keys, 200);
    const feed = new RedisEventFeed(store, hub, watchers, 60_000);
    try {
      const id = await newJob();
      await store.move(id, "QUEUED", { position: 0 });
      const res = feed.open(id, 0, true);
      const text = res.text();
      await new Promise((r) => setTimeout(r, 50));
      expect(await redis.zcard(keys.watch(id))).toBe(1); // a client follows the job
      // A second stream joins while the first waits, and both hear what comes next.
      const later = feed.open(id, 2, true).text();
      for (const s of ["DISPATCHED", "RUNNING"] as JobStatus[]) await store.move(id, s);
      await store.append(id, { type: "stream", step: 0, tokens: [7] });
      await store.move(id, "COMPLETED", { result: { bytes: 1, expires: Date.now() + 1000 } });
      const events = parseSse(await text);
      expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
      expect(kinds(events)).toEqual(["RECEIVED", "QUEUED", "DISPATCHED", "RUNNING", "stream", "COMPLETED", "done"]);
      expect(parseSse(await later).map((e) => e.seq)).toEqual([3, 4, 5, 6, 7]);
      await new Promise((r) => setTimeout(r, 50));
      expect(await redis.zcard(keys.watch(id))).toBe(0);
      // An ended job's stream replays what is stored and ends; ?follow=0 likewise for a running one.
      expect(parseSse(await feed.open(id, 5, true).text()).map((e) => e.seq)).toEqual([6, 7]);
      const running = await newJob();
      expect(parseSse(await feed.open(running, 0, false).text()).map((e) => e.seq)).toEqual([1]);
      // A stream opened past a live job's last event (the route refuses such ids) sends nothing, and ends when the job does.
      const ahead = feed.open(running, 1000, true).text();
      await new Promise((r) => setTimeout(r, 50));
      await store.move(running, "CANCELLED");
      expect(parseSse(await ahead)).toEqual([]);
    } finally {
      watchers.close();
      await hub.close();
      reader = await testRedis();
    }
  });
});

describe("Reconciler", () => {
  const dist = resolveDistributed({ redisUrl: "unused", prefix, lockDurationMs: 300, maxRetries: 0, queueWaitMs: 1000, heartbeatMs: 100 }, 60_000);

  it("ends jobs that wait too long for a worker, or whose worker is gone, PREEMPTED", async () => {
    const queue = modelQueue(redis, keys, "M");
    const reconciler = new Reconciler({ store, queues: new Map([["M", queue]]), config: dist, log: () => undefined });
    try {
      const queued = await newJob();
      await store.move(queued, "QUEUED", { position: 0 });
      const lost = await newJob();
      await store.move(lost, "QUEUED", { position: 0 });
      await claimJob.run(redis, [keys.base, lost, Date.now(), "1", "w", "{}"]);
      await markLost.run(redis, [keys.base, lost, "1", Date.now(), JSON.stringify({ type: "log", text: "lost" })]);
      const orphan = await newJob(); // DISPATCHED, but BullMQ holds no such job
      await store.move(orphan, "QUEUED", { position: 0 });
      await claimJob.run(redis, [keys.base, orphan, Date.now(), "1", "w", "{}"]);
      const fresh = await newJob();
      await store.move(fresh, "QUEUED", { position: 0 });
      await reconciler.sweep(Date.now() + 500);
      expect((await store.get(queued))!.status).toBe("QUEUED");
      expect((await store.get(orphan))!.status).toBe("ERROR");
      await reconciler.sweep(Date.now() + 1500);
      for (const id of [queued, lost]) expect((await store.get(id))!).toMatchObject({ status: "ERROR", error: { code: "PREEMPTED", retryable: true } });
      expect((await store.get(queued))!.error!.message).toMatch(/no worker serving M took the job within 1 s/);
      expect((await store.get(lost))!.error!.message).toMatch(/worker running the job was lost/);
    } finally {
      await queue.close();
    }
  });

  it("ends a job PREEMPTED when its worker was lost more often than the retries allow", async () => {
    const queue = modelQueue(redis, keys, "M2");
    const worker = modelQueueWorker(redis, keys, "M2", dist, "test");
    const reconciler = new Reconciler({ store, queues: new Map([["M2", queue]]), config: dist, log: () => undefined });
    reconciler.watch(worker, "M2");
    try {
      const id = newJobId();
      await store.create({ id, keyId: "k1", model: "M2", kind: "trace", limit: 8 });
      await queue.add("job", { id, localTimeoutMs: 1000 }, queuedJobOptions(id));
      await store.move(id, "QUEUED", { position: 0 });
      const taken = await worker.getNextJob("lost-token", { block: false });
      expect(taken?.id).toBe(id);
      await claimJob.run(redis, [keys.base, id, Date.now(), String(taken!.attemptsStarted), "w", "{}"]);
      // Nobody renews the lock: the stalled-job check finds the job, and with no retries left it ends.
      await worker.startStalledCheckTimer();
      const until = Date.now() + 5000;
      while ((await store.get(id))!.status !== "ERROR" && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      expect((await store.get(id))!).toMatchObject({ status: "ERROR", error: { code: "PREEMPTED", retryable: true } });
      expect((await store.get(id))!.error!.message).toMatch(/lost 1 time, more than this server retries \(0\)/);
    } finally {
      await worker.close(true);
      await queue.close();
    }
  });
});
