/**
 * The HTTP API through `app.request` (no socket), with no worker threads: jobs stay queued, so this covers the
 * protocol check, auth, limits, validation, ownership, queue positions, cancel of waiting jobs, SSE resume,
 * models, meta, status and metrics.
 */
import fsp from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2, openTestServer, parseSse, type TestServer } from "../../../../test/server/harness.js";
import { encodeEnvelope, encodeValue } from "../../../tsight/src/protocol/codec.js";
import { toModelKey } from "../../../tsight/src/protocol/model-key.js";
import type { ErrorBody, JobState, ModelInfo, ModelMeta } from "../../../tsight/src/protocol/wire.js";
import { ENVELOPE_TYPE } from "../../../tsight/src/protocol/wire.js";
import { tensor, type Tensor } from "../../../tsight/src/tensor/index.js";
import { openServer } from "./server.js";

let s: TestServer;
beforeAll(async () => {
  s = await openTestServer({ maxActiveJobsPerKey: 3, maxBodyBytes: 4096 });
});
afterAll(() => s.close());

const errorOf = async (res: Response) => ((await res.json()) as ErrorBody).error;

/** A fresh key of the test server, with a request function of its own. */
function otherKey() {
  const { key } = s.core.keys.create("other");
  return (path: string, init: RequestInit = {}) => s.request(path, { ...init, headers: { authorization: `Bearer ${key}`, ...(init.headers as Record<string, string>) } });
}

describe("protocol and auth", () => {
  it("answers /healthz with neither header", async () => {
    const res = await s.core.app.request("/healthz");
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
    expect(res.headers.get("tsight-protocol")).toBe("1");
  });

  it("answers 426 with the versions it speaks when the protocol header is missing or wrong", async () => {
    for (const headers of [{}, { "tsight-protocol": "2" }, { "tsight-protocol": "one" }] as Record<string, string>[]) {
      const res = await s.core.app.request("/v1/models", { headers: { authorization: `Bearer ${s.key}`, ...headers } });
      expect(res.status).toBe(426);
      const body = (await res.json()) as ErrorBody;
      expect(body.supported).toEqual([1]);
      expect(body.error).toMatchObject({ code: "PROTOCOL", retryable: false });
    }
    // An 8 KB header is not echoed back whole.
    const long = await s.core.app.request("/v1/models", { headers: { authorization: `Bearer ${s.key}`, "tsight-protocol": "9".repeat(8192) } });
    expect(((await long.json()) as ErrorBody).error.message).toBe(`this server speaks tsight protocol 1, not "${"9".repeat(40)}..."; update the client or the server`);
  });

  it("answers 401 AUTH without a valid key", async () => {
    const missing = await s.request("/v1/models", { headers: { authorization: "" } });
    expect(missing.status).toBe(401);
    expect(missing.headers.get("www-authenticate")).toMatch(/^Bearer/);
    expect(await errorOf(missing)).toMatchObject({ code: "AUTH", message: expect.stringMatching(/Authorization: Bearer/) });
    const wrong = await s.request("/v1/models", { headers: { authorization: "Bearer tsk_0123456789abcdef_" + "x".repeat(43) } });
    expect(wrong.status).toBe(401);
    const { key, id } = s.core.keys.create("short-lived");
    expect((await s.request("/v1/status", { headers: { authorization: `Bearer ${key}` } })).status).toBe(200);
    s.core.keys.revoke(id);
    const revoked = await s.request("/v1/status", { headers: { authorization: `Bearer ${key}` } });
    expect(revoked.status).toBe(401);
    expect((await errorOf(revoked)).message).toMatch(/revoked/);
  });

  it("guards /metrics with a key unless metrics are public", async () => {
    expect((await s.core.app.request("/metrics")).status).toBe(401);
    const res = await s.core.app.request("/metrics", { headers: { authorization: `Bearer ${s.key}` } });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  });
});

describe("submitting", () => {
  it("refuses malformed bodies with 400/413/415 VALIDATION and a clear message", async () => {
    const cases: [RequestInit, number, RegExp][] = [
      [{ body: "{nope", headers: { "content-type": "application/json" } }, 400, /not valid JSON/],
      [{ body: "{}", headers: { "content-type": "text/plain" } }, 415, /application\/json or application\/vnd\.tsight/],
      [{ body: JSON.stringify({ model: GPT2, kind: "trace", form: "tracer" }), headers: { "content-type": "application/json" } }, 400, /"source"/],
      [{ body: JSON.stringify({ model: "gpt2", kind: "trace", form: "tracer", source: "x" }), headers: { "content-type": "application/json" } }, 400, /no "<Class>:" prefix/],
      [{ body: JSON.stringify({ model: GPT2, kind: "dance", form: "tracer", source: "x" }), headers: { "content-type": "application/json" } }, 400, /"kind" must be one of/],
      [{ body: "x".repeat(5000), headers: { "content-type": "application/json" } }, 413, /larger than this server's limit of 4096 bytes/],
      [{ body: new Uint8Array([1, 2, 3]), headers: { "content-type": ENVELOPE_TYPE } }, 400, /not a valid envelope/],
      // A flag that is not a boolean (not taken as false), a timeout past the safe integers (not capped quietly).
      [{ body: JSON.stringify({ model: GPT2, kind: "trace", form: "tracer", source: "x", grad: "yes" }), headers: { "content-type": "application/json" } }, 400, /"grad" must be true or false, got "yes"/],
      [{ body: JSON.stringify({ model: GPT2, kind: "trace", form: "tracer", source: "x", localTimeoutMs: 1e300 }), headers: { "content-type": "application/json" } }, 400, /"localTimeoutMs" must be a whole number of milliseconds/],
    ];
    for (const [init, status, message] of cases) {
      const res = await s.request("/v1/jobs", { method: "POST", ...init });
      expect(res.status, String(message)).toBe(status);
      expect(await errorOf(res)).toMatchObject({ code: "VALIDATION", retryable: false, message: expect.stringMatching(message) });
    }
  });

  it("stops reading a streamed body past the limit", async () => {
    let pulled = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        pulled++;
        if (pulled > 100) return c.close();
        c.enqueue(new Uint8Array(1024));
      },
    });
    const res = await s.request("/v1/jobs", { method: "POST", body, headers: { "content-type": ENVELOPE_TYPE }, duplex: "half" } as RequestInit);
    expect(res.status).toBe(413);
    expect(pulled).toBeLessThan(10);
  });

  it("answers 404 VALIDATION for a model it does not serve, and never loads it", async () => {
    const res = await s.submit({ model: toModelKey("LanguageModel", "/etc", null) });
    expect(res.status).toBe(404);
    expect((await errorOf(res)).message).toContain(`does not serve "/etc" (key LanguageModel:{"repo_id":"/etc","revision":null}); it serves stdlib-gpt2 (key ${GPT2})`);
  });

  it("queues jobs with server-made ids and positions, and shows them only to their key", async () => {
    const other = otherKey();
    const a = await s.start();
    const res = await s.submit({ source: "value 2" });
    const b = (await res.json()) as JobState;
    expect(res.headers.get("location")).toBe(`/v1/jobs/${b.id}`);
    expect(a.id).toMatch(/^[A-Za-z0-9_-]{24}$/);
    expect([a.status, a.position, b.status, b.position]).toEqual(["QUEUED", 0, "QUEUED", 1]);
    expect(await s.state(b.id)).toMatchObject({ id: b.id, status: "QUEUED", position: 1, model: GPT2, kind: "trace", result: "none" });
    for (const [method, path] of [["GET", ""], ["GET", "/events"], ["GET", "/result"], ["DELETE", ""]]) {
      const res = await other(`/v1/jobs/${a.id}${path}`, { method });
      expect(res.status).toBe(404);
      expect(await errorOf(res)).toMatchObject({ code: "VALIDATION", message: `there is no job ${a.id} for this API key` });
    }
    expect((await other(`/v1/jobs/${a.id}/local/c0`, { method: "POST", body: "{}", headers: { "content-type": "application/json" } })).status).toBe(404);
    expect((await s.request("/v1/jobs/AAAAAAAAAAAAAAAAAAAAAAAA")).status).toBe(404);
    expect((await s.request("/v1/jobs/..%2F..%2Fetc")).status).toBe(404);
    // A queued job has no result yet: 409, worth asking again.
    const early = await s.request(`/v1/jobs/${a.id}/result`);
    expect(early.status).toBe(409);
    expect(await errorOf(early)).toMatchObject({ code: "NOT_ALLOWED", retryable: true });
    // Cancelling the first moves the second up; its events say so.
    const cancelled = await s.request(`/v1/jobs/${a.id}`, { method: "DELETE" });
    expect(cancelled.status).toBe(200);
    expect(await cancelled.json()).toMatchObject({ status: "CANCELLED" });
    expect(await s.state(b.id)).toMatchObject({ position: 0 });
    expect((await s.request(`/v1/jobs/${a.id}`, { method: "DELETE" })).status).toBe(200); // again: no change
    expect((await s.events(a.id)).map((e) => e.event)).toEqual([
      { type: "status", status: "RECEIVED" },
      { type: "status", status: "QUEUED", position: 0 },
      { type: "status", status: "CANCELLED" },
      { type: "done", status: "CANCELLED" },
    ]);
    const bEvents = await s.core.store.eventsAfter(b.id, 0);
    expect(bEvents.at(-1)!.event).toEqual({ type: "status", status: "QUEUED", position: 0 });
    const late = await s.request(`/v1/jobs/${a.id}/result`);
    expect(late.status).toBe(409);
    expect(await errorOf(late)).toMatchObject({ retryable: false, message: expect.stringMatching(/ended CANCELLED/) });
    await s.request(`/v1/jobs/${b.id}`, { method: "DELETE" });
  });

  it("accepts an envelope body with tensors", async () => {
    const tensors = new Map<string, Tensor>();
    const payload = { model: GPT2, kind: "trace", form: "invoke", source: "value 3", input: encodeValue(tensor([[1, 2, 3]], "int64"), tensors), vars: encodeValue({ v: tensor([0.5]) }, tensors) };
    const res = await s.request("/v1/jobs", { method: "POST", body: encodeEnvelope(payload, tensors), headers: { "content-type": ENVELOPE_TYPE } });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as JobState;
    await s.request(`/v1/jobs/${id}`, { method: "DELETE" });
  });

  it("limits unfinished jobs per key with 429 NOT_ALLOWED, retryable", async () => {
    const other = otherKey();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await s.start()).id);
    const refused = await s.submit();
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(await errorOf(refused)).toMatchObject({ code: "NOT_ALLOWED", retryable: true, message: expect.stringMatching(/already has 3 unfinished jobs/) });
    // Another key is not held back; a finished job frees a place.
    const theirs = await other("/v1/jobs", { method: "POST", body: JSON.stringify({ model: GPT2, kind: "trace", form: "tracer", source: "value 1" }), headers: { "content-type": "application/json" } });
    expect(theirs.status).toBe(202);
    await s.request(`/v1/jobs/${ids[0]}`, { method: "DELETE" });
    const again = await s.submit();
    expect(again.status).toBe(202);
    for (const id of [...ids.slice(1), ((await again.json()) as JobState).id]) await s.request(`/v1/jobs/${id}`, { method: "DELETE" });
    await other(`/v1/jobs/${((await theirs.json()) as JobState).id}`, { method: "DELETE" });
  });
});

describe("events", () => {
  it("resumes exactly after Last-Event-ID, and follows a live job to its end", async () => {
    const job = await s.start();
    const all = await s.core.store.eventsAfter(job.id, 0);
    expect(all.map((e) => e.seq)).toEqual([1, 2]);
    const live = await s.request(`/v1/jobs/${job.id}/events`, { headers: { "last-event-id": "1" } });
    expect(live.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const text = live.text();
    await s.request(`/v1/jobs/${job.id}`, { method: "DELETE" });
    const got = parseSse(await text);
    expect(got.map((e) => [e.seq, e.event.type])).toEqual([
      [2, "status"],
      [3, "status"],
      [4, "done"],
    ]);
    expect((await s.events(job.id, 3)).map((e) => e.seq)).toEqual([4]);
    expect(await s.events(job.id, 4)).toEqual([]);
    expect(parseSse(await (await s.request(`/v1/jobs/${job.id}/events?after=2`)).text()).map((e) => e.seq)).toEqual([3, 4]);
    expect((await s.request(`/v1/jobs/${job.id}/events`, { headers: { "last-event-id": "x" } })).status).toBe(400);
  });

  it("refuses to resume past a job's last event, live or ended, with a 400 (see event-stream.test.ts)", async () => {
    const job = await s.start();
    const ahead = await s.request(`/v1/jobs/${job.id}/events`, { headers: { "last-event-id": "1000" } });
    expect(ahead.status).toBe(400);
    expect(await errorOf(ahead)).toMatchObject({ code: "VALIDATION", message: `Last-Event-ID 1000 is past the last event of job ${job.id} (event 2; the job is QUEUED); resume after an id its event stream sent, or without Last-Event-ID for all its events` });
    await s.request(`/v1/jobs/${job.id}`, { method: "DELETE" });
    expect((await s.request(`/v1/jobs/${job.id}/events`, { headers: { "last-event-id": "5" } })).status).toBe(400);
  });
});

describe("models, status, metrics", () => {
  it("lists served models and their queues", async () => {
    const job = await s.start();
    const res = await s.request("/v1/models");
    expect(res.status).toBe(200);
    const { models } = (await res.json()) as { models: ModelInfo[] };
    expect(models).toEqual([{ key: GPT2, name: "stdlib-gpt2", modelType: "gpt2", state: "available", queued: 1, dtype: "float32" }]);
    const status = (await (await s.request("/v1/status")).json()) as { queued: number; models: { key: string; worker: { state: string } }[] };
    expect(status).toMatchObject({ protocol: 1, queued: 1, running: 0 });
    expect(status.models[0]).toMatchObject({ key: GPT2, queued: 1, worker: { state: "stopped" }, estimatedWaitSeconds: null });
    const metrics = await (await s.request("/metrics")).text();
    expect(metrics).toContain('tsight_queue_depth{model="stdlib-gpt2"} 1');
    expect(metrics).toMatch(/tsight_jobs_finished_total\{model="stdlib-gpt2",status="CANCELLED"\} \d+/);
    expect(metrics).toMatch(/tsight_requests_rejected_total\{status="429"\} 1/);
    await s.request(`/v1/jobs/${job.id}`, { method: "DELETE" });
  });

  it("gives the meta of a served model: config, generation config and tokenizer", async () => {
    const res = await s.request(`/v1/models/${encodeURIComponent(GPT2)}/meta`);
    expect(res.status).toBe(200);
    const meta = (await res.json()) as ModelMeta;
    expect(meta.key).toBe(GPT2);
    expect(meta.config.model_type).toBe("gpt2");
    expect(meta.generationConfig).not.toBeNull();
    expect(meta.tokenizer).toHaveProperty("model");
    expect(typeof meta.tokenizerConfig).toBe("object");
    const unknown = await s.request(`/v1/models/${encodeURIComponent(toModelKey("LanguageModel", "stdlib-llama"))}/meta`);
    expect(unknown.status).toBe(404);
    expect(await errorOf(unknown)).toMatchObject({ code: "VALIDATION" });
    expect((await s.request("/v1/nothing")).status).toBe(404);
  });
});

describe("restart", () => {
  it("fails jobs left unfinished by a previous run with PREEMPTED, and keeps the rest", async () => {
    const first = await openTestServer();
    const job = await first.start();
    // The first server dies without shutting down: its database is simply closed.
    first.core.sweeper.stop();
    first.core.db.close();
    const second = await openServer({ dataDir: first.dataDir, models: ["stdlib-gpt2"], workers: false });
    try {
      const rec = second.store.get(job.id)!;
      expect(rec.status).toBe("ERROR");
      expect(rec.error).toMatchObject({ code: "PREEMPTED", retryable: true });
      expect(second.keys.verify(first.key).ok).toBe(true);
    } finally {
      await second.close();
      await fsp.rm(first.dataDir, { recursive: true, force: true });
    }
  });
});
