/**
 * Idempotency-Key on POST /v1/jobs, over a real socket, in both deployments: the embedded server (SQLite) and an API
 * process of a distributed one (Redis; no worker, so jobs wait in their queue). The same key with the same body
 * gives the earlier job; with another body it is refused, 422 NOT_ALLOWED, and the tsight client says so.
 */
import fsp from "node:fs/promises";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { startApiProcess, type ServeProcess } from "../../../../test/server/processes.js";
import { clearPrefix, TEST_REDIS, testRedis, uniquePrefix } from "../../../../test/server/redis.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import { encodeEnvelope } from "../../../tsight/src/protocol/codec.js";
import { RemoteError } from "../../../tsight/src/protocol/errors.js";
import { ENVELOPE_TYPE, type ErrorBody, type JobRequest, type JobState } from "../../../tsight/src/protocol/wire.js";
import { tensor } from "../../../tsight/src/tensor/index.js";
import { RedisLayout } from "./redis/connection.js";
import { RedisKeyStore } from "./redis/key-store.js";
import { startServer, type RunningServer } from "./server.js";

interface Target {
  url: string;
  /** A new API key of the deployment. */
  newKey(): Promise<string>;
  /** Makes the key's job `id` look like one stored before request digests were kept. */
  forgetDigest(id: string): Promise<void>;
}

const request = (source: string): JobRequest => ({ model: GPT2, kind: "trace", form: "tracer", source });

function idempotencySuite(name: string, open: () => Promise<Target>, close: () => Promise<void>): void {
  describe(name, () => {
    let t: Target;
    let key: string;
    beforeAll(async () => {
      t = await open();
      key = await t.newKey();
    }, 60_000);
    afterAll(close, 30_000);

    const post = (body: Uint8Array | string, idempotencyKey: string, type = "application/json") =>
      fetch(`${t.url}/v1/jobs`, { method: "POST", headers: { "tsight-protocol": "1", authorization: `Bearer ${key}`, "content-type": type, "idempotency-key": idempotencyKey }, body });
    const jobCount = async () => (await new HttpBackend({ url: t.url, apiKey: key }).list({ limit: 100 })).length;

    it("gives the earlier job for the same key and the same JSON body", async () => {
      const body = JSON.stringify(request("async (tr) => 1"));
      const first = await post(body, "same-json");
      expect(first.status).toBe(202);
      const before = await jobCount();
      const again = await post(body, "same-json");
      expect(again.status).toBe(202);
      expect(((await again.json()) as JobState).id).toBe(((await first.json()) as JobState).id);
      expect(await jobCount()).toBe(before);
    });

    it("refuses the same key with another JSON body: 422 NOT_ALLOWED, nothing new queued", async () => {
      const first = (await (await post(JSON.stringify(request("async (tr) => 1")), "reused")).json()) as JobState;
      const before = await jobCount();
      const other = await post(JSON.stringify(request("async (tr) => 2")), "reused");
      expect(other.status).toBe(422);
      expect(((await other.json()) as ErrorBody).error).toEqual({
        code: "NOT_ALLOWED",
        type: "ApiError",
        retryable: false,
        message: `Idempotency-Key "reused" was used by this API key for a different request (job ${first.id}); send a new key with a new request (the same body again gives that job)`,
      });
      expect(await jobCount()).toBe(before);
      // The key still names the first job.
      expect(((await (await post(JSON.stringify(request("async (tr) => 1")), "reused")).json()) as JobState).id).toBe(first.id);
    });

    it("compares envelopes by their bytes: the same tensors give the earlier job, other values are refused", async () => {
      const envelope = (x: number) => encodeEnvelope({ ...request("async (tr) => tr.vars.t"), vars: { t: { $t: "t0" } } }, new Map([["t0", tensor([x, 2, 3])]]));
      const first = await post(envelope(1), "envelope", ENVELOPE_TYPE);
      expect(first.status).toBe(202);
      const { id } = (await first.json()) as JobState;
      expect(((await (await post(envelope(1), "envelope", ENVELOPE_TYPE)).json()) as JobState).id).toBe(id);
      const other = await post(envelope(7), "envelope", ENVELOPE_TYPE);
      expect(other.status).toBe(422);
      expect(((await other.json()) as ErrorBody).error.message).toMatch(/was used by this API key for a different request/);
    });

    it("takes a request in the other encoding, or with other spacing, for a different one (bodies are compared as sent)", async () => {
      const req = request("async (tr) => 3");
      expect((await post(JSON.stringify(req), "encoding")).status).toBe(202);
      expect((await post(encodeEnvelope(req, new Map()), "encoding", ENVELOPE_TYPE)).status).toBe(422);
      expect((await post(JSON.stringify(req, null, 2), "encoding")).status).toBe(422);
    });

    it("gives the earlier job whatever the body when the job was stored before digests were kept", async () => {
      const { id } = (await (await post(JSON.stringify(request("async (tr) => 4")), "old")).json()) as JobState;
      await t.forgetDigest(id);
      const again = await post(JSON.stringify(request("async (tr) => 5")), "old");
      expect(again.status).toBe(202);
      expect(((await again.json()) as JobState).id).toBe(id);
    });

    it("the tsight client: a reused key is a RemoteError with the server's message, not tried again", async () => {
      const backend = new HttpBackend({ url: t.url, apiKey: key, retry: { attempts: 3, baseDelayMs: 2000 } });
      const first = await backend.submit(request("async (tr) => 6"), new Map(), { idempotencyKey: "client-key" });
      expect((await backend.submit(request("async (tr) => 6"), new Map(), { idempotencyKey: "client-key" })).id).toBe(first.id);
      const started = Date.now();
      const error = await backend.submit(request("async (tr) => 7"), new Map([["t0", tensor([1])]]), { idempotencyKey: "client-key" }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RemoteError);
      expect(error).toMatchObject({ status: 422, code: "NOT_ALLOWED", retryable: false, message: expect.stringMatching(new RegExp(`^Idempotency-Key "client-key" was used by this API key for a different request \\(job ${first.id}\\)`)) });
      expect(Date.now() - started).toBeLessThan(2000);
    });
  });
}

let server: RunningServer | undefined;
idempotencySuite(
  "Idempotency-Key, embedded server (SQLite)",
  async () => {
    // No workers: jobs wait in their queue.
    const s = (server = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], workers: false, maxActiveJobsPerKey: 50 }));
    return {
      url: s.url,
      newKey: async () => s.keys.create("idempotency").key,
      forgetDigest: async (id) => void s.db.prepare("UPDATE jobs SET request_digest = NULL WHERE id = ?").run(id),
    };
  },
  async () => {
    if (!server) return;
    await server.close();
    await fsp.rm(server.config.dataDir, { recursive: true, force: true });
  },
);

const prefix = uniquePrefix("idempotency");
const processes: ServeProcess[] = [];
let redis: Redis | undefined;
idempotencySuite(
  "Idempotency-Key, API process on Redis",
  async () => {
    const r = (redis = await testRedis());
    const layout = new RedisLayout(prefix);
    const { url } = await startApiProcess(["--redis", TEST_REDIS, "--prefix", prefix, "-m", "stdlib-gpt2", "--max-jobs", "50"], processes);
    return {
      url,
      newKey: async () => (await new RedisKeyStore(r, layout).create("idempotency")).key,
      forgetDigest: async (id) => void (await r.hdel(layout.job(id), "requestDigest")),
    };
  },
  async () => {
    await Promise.all(processes.map((p) => p.stop()));
    if (!redis) return;
    await clearPrefix(redis, prefix);
    await redis.quit();
  },
);
