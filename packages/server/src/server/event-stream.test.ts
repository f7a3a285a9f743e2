/**
 * Resuming a job's events with Last-Event-ID, over a real socket, in both deployments: the embedded server (a job
 * RUNNING on a worker thread, with the scripted executor) and an API process on Redis (no worker: the live job
 * waits QUEUED). An id past the job's last event is refused at once, 400 VALIDATION, for a live job and an ended
 * one alike (it used to open a stream that ended with nothing, which the client took for a dropped connection and
 * tried again until it gave up); a malformed id is a 400 VALIDATION too.
 */
import fsp from "node:fs/promises";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2, parseSse, tempDir } from "../../../../test/server/harness.js";
import { startApiProcess, type ServeProcess } from "../../../../test/server/processes.js";
import { clearPrefix, TEST_REDIS, testRedis, uniquePrefix } from "../../../../test/server/redis.js";
import { scriptedExecutor } from "../../../../test/server/scripted-executor.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import { RemoteError } from "../../../tsight/src/protocol/errors.js";
import type { ErrorBody, JobStatus } from "../../../tsight/src/protocol/wire.js";
import { RedisLayout } from "./redis/connection.js";
import { RedisKeyStore } from "./redis/key-store.js";
import { startServer, type RunningServer } from "./server.js";

interface Target {
  url: string;
  key: string;
  /** What a job that has not ended is while the test looks at it. */
  live: JobStatus;
}

function resumeSuite(name: string, open: () => Promise<Target>, close: () => Promise<void>): void {
  describe(name, () => {
    let t: Target;
    beforeAll(async () => {
      t = await open();
    }, 60_000);
    afterAll(close, 30_000);

    const headers = (extra: Record<string, string> = {}) => ({ "tsight-protocol": "1", authorization: `Bearer ${t.key}`, ...extra });
    const backend = () => new HttpBackend({ url: t.url, apiKey: t.key, retry: { attempts: 3, baseDelayMs: 2000 } });
    const events = (id: string, lastEventId?: string, query = "") =>
      fetch(`${t.url}/v1/jobs/${id}/events${query}`, { headers: headers(lastEventId === undefined ? {} : { "last-event-id": lastEventId }) });
    /** A job whose code sleeps a minute (on the embedded server; on Redis it waits for a worker). */
    const liveJob = async () => {
      const b = backend();
      const job = await b.submit({ model: GPT2, kind: "trace", form: "tracer", source: "sleep 60000" });
      for (let state = await b.job(job.id); state.status !== t.live; state = await b.job(job.id)) await new Promise((r) => setTimeout(r, 20));
      return job.id;
    };
    const lastSeq = async (id: string) => Math.max(...parseSse(await (await events(id, undefined, "?follow=0")).text()).map((e) => e.seq));
    /** Cancels the job and waits until it has ended. */
    const end = async (id: string) => {
      const b = backend();
      await b.cancel(id);
      while (!["COMPLETED", "ERROR", "CANCELLED"].includes((await b.job(id)).status)) await new Promise((r) => setTimeout(r, 20));
    };

    it("an ended job: an id past its last event is a 400 VALIDATION that says so; its last event's id ends the stream at once", async () => {
      const id = await liveJob();
      await end(id);
      const last = await lastSeq(id);
      const atEnd = await events(id, String(last));
      expect(atEnd.status).toBe(200);
      expect(await atEnd.text()).toBe("");
      for (const [past, query] of [[last + 1, ""], [1000, ""], [1000, "?follow=0"]] as const) {
        const res = await events(id, String(past), query);
        expect(res.status).toBe(400);
        expect(((await res.json()) as ErrorBody).error).toEqual({
          code: "VALIDATION",
          type: "ApiError",
          retryable: false,
          message: `Last-Event-ID ${past} is past the last event of job ${id} (event ${last}; the job ended CANCELLED); resume after an id its event stream sent, or without Last-Event-ID for all its events`,
        });
      }
      const byQuery = await fetch(`${t.url}/v1/jobs/${id}/events?after=${last + 5}`, { headers: headers() });
      expect(byQuery.status).toBe(400);
      expect(((await byQuery.json()) as ErrorBody).error.message).toMatch(new RegExp(`^"after" ${last + 5} is past the last event of job`));
    });

    it("an ended job: the tsight client gets the error at once instead of reconnecting until it gives up", async () => {
      const id = await liveJob();
      await end(id);
      const started = Date.now();
      const error = await (async () => {
        for await (const e of backend().events(id, { lastEventId: 1000 })) throw new Error(`an event came: ${JSON.stringify(e)}`);
      })().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RemoteError);
      expect(error).toMatchObject({ status: 400, code: "VALIDATION", message: expect.stringMatching(/^Last-Event-ID 1000 is past the last event of job .*the job ended CANCELLED/) });
      expect(Date.now() - started).toBeLessThan(2000);
    });

    it("a live job: an id past its last event is refused at once; its last event's id follows it to its end", async () => {
      const id = await liveJob();
      const last = await lastSeq(id);
      const res = await events(id, String(last + 1));
      expect(res.status).toBe(400);
      expect(((await res.json()) as ErrorBody).error.message).toBe(
        `Last-Event-ID ${last + 1} is past the last event of job ${id} (event ${last}; the job is ${t.live}); resume after an id its event stream sent, or without Last-Event-ID for all its events`,
      );
      const following = await events(id, String(last));
      expect(following.status).toBe(200);
      const text = following.text();
      await backend().cancel(id);
      const rest = parseSse(await text);
      expect(rest[0]!.seq).toBe(last + 1);
      expect(rest.at(-1)!.event).toEqual({ type: "done", status: "CANCELLED" });
    });

    it("a malformed id is a 400 VALIDATION", async () => {
      const id = await liveJob();
      for (const bad of ["x", "-1", "1.5", "1e3", "0x10", "99999999999999999999"]) {
        const res = await events(id, bad);
        expect(res.status, bad).toBe(400);
        expect(((await res.json()) as ErrorBody).error).toMatchObject({ code: "VALIDATION", message: `Last-Event-ID must be the id of one of the job's events (a whole number), not "${bad}"` });
      }
      const res = await fetch(`${t.url}/v1/jobs/${id}/events?after=x`, { headers: headers() });
      expect(((await res.json()) as ErrorBody).error.message).toBe(`"after" must be the id of one of the job's events (a whole number), not "x"`);
      await end(id);
    });
  });
}

let server: RunningServer | undefined;
resumeSuite(
  "Last-Event-ID, embedded server (SQLite)",
  async () => {
    const s = (server = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], executor: scriptedExecutor, stopGraceMs: 300 }));
    return { url: s.url, key: s.keys.create("resume").key, live: "RUNNING" };
  },
  async () => {
    if (!server) return;
    await server.close();
    await fsp.rm(server.config.dataDir, { recursive: true, force: true });
  },
);

const prefix = uniquePrefix("resume");
const processes: ServeProcess[] = [];
let redis: Redis | undefined;
resumeSuite(
  "Last-Event-ID, API process on Redis",
  async () => {
    redis = await testRedis();
    const key = (await new RedisKeyStore(redis, new RedisLayout(prefix)).create("resume")).key;
    const { url } = await startApiProcess(["--redis", TEST_REDIS, "--prefix", prefix, "-m", "stdlib-gpt2"], processes);
    return { url, key, live: "QUEUED" };
  },
  async () => {
    await Promise.all(processes.map((p) => p.stop()));
    if (!redis) return;
    await clearPrefix(redis, prefix);
    await redis.quit();
  },
);
