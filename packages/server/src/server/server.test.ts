/** The server on a real socket: headers, streamed bodies, event streams that resume and that clients drop, close. */
import fsp from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2, parseSse, tempDir } from "../../../../test/server/harness.js";
import type { ErrorBody, JobState } from "../../../tsight/src/protocol/wire.js";
import { startServer, type RunningServer } from "./server.js";

let server: RunningServer;
let key: string;
beforeAll(async () => {
  server = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], workers: false, maxBodyBytes: 1000, heartbeatMs: 50 });
  key = server.keys.create("socket").key;
});
afterAll(async () => {
  await server.close();
  await fsp.rm(server.config.dataDir, { recursive: true, force: true });
});

const headers = (extra: Record<string, string> = {}) => ({ "tsight-protocol": "1", authorization: `Bearer ${key}`, ...extra });
const submit = async () => {
  const res = await fetch(`${server.url}/v1/jobs`, { method: "POST", headers: headers({ "content-type": "application/json" }), body: JSON.stringify({ model: GPT2, kind: "trace", form: "tracer", source: "x" }) });
  return (await res.json()) as JobState;
};

describe("startServer", () => {
  it("listens on 127.0.0.1 and answers over HTTP", async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(await (await fetch(`${server.url}/healthz`)).json()).toEqual({ ok: true });
    const res = await fetch(`${server.url}/v1/status`, { headers: { authorization: `Bearer ${key}` } });
    expect(res.status).toBe(426);
    expect(((await res.json()) as ErrorBody).supported).toEqual([1]);
  });

  it("refuses a chunked body over the limit with 413", async () => {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < 5; i++) c.enqueue(new TextEncoder().encode("x".repeat(400)));
        c.close();
      },
    });
    const res = await fetch(`${server.url}/v1/jobs`, { method: "POST", headers: headers({ "content-type": "application/json" }), body, duplex: "half" } as RequestInit);
    expect(res.status).toBe(413);
    expect(((await res.json()) as ErrorBody).error.code).toBe("VALIDATION");
  });

  it("streams events with keep-alives, resumes after Last-Event-ID, and lets go of dropped streams", async () => {
    const job = await submit();
    const dropped = new AbortController();
    const res = await fetch(`${server.url}/v1/jobs/${job.id}/events`, { headers: headers(), signal: dropped.signal });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes(": keep-alive")) text += (await reader.read()).value;
    expect(parseSse(text).map((e) => e.seq)).toEqual([1, 2]);
    expect(server.store.listenerCount(job.id)).toBe(1);
    dropped.abort();
    for (let i = 0; i < 100 && server.store.listenerCount(job.id) > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(server.store.listenerCount(job.id)).toBe(0);
    // Reconnect after event 2: only what came later.
    const resumed = fetch(`${server.url}/v1/jobs/${job.id}/events`, { headers: headers({ "last-event-id": "2" }) }).then((r) => r.text());
    await new Promise((r) => setTimeout(r, 20));
    await fetch(`${server.url}/v1/jobs/${job.id}`, { method: "DELETE", headers: headers() });
    expect(parseSse(await resumed).map((e) => [e.seq, e.event.type])).toEqual([
      [3, "status"],
      [4, "done"],
    ]);
  });

  it("closes with an event stream open, ending the stream after the job's last events", async () => {
    const other = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], workers: false });
    const k = other.keys.create().key;
    const res = await fetch(`${other.url}/v1/jobs`, { method: "POST", headers: { "tsight-protocol": "1", authorization: `Bearer ${k}`, "content-type": "application/json" }, body: JSON.stringify({ model: GPT2, kind: "trace", form: "tracer", source: "x" }) });
    const { id } = (await res.json()) as JobState;
    const events = fetch(`${other.url}/v1/jobs/${id}/events`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${k}` } }).then((r) => r.text());
    await new Promise((r) => setTimeout(r, 20));
    await other.close();
    const got = parseSse(await events);
    expect(got.at(-3)!.event).toMatchObject({ type: "error", error: { code: "PREEMPTED", retryable: true } });
    expect(got.at(-1)!.event).toEqual({ type: "done", status: "ERROR" });
    await fsp.rm(other.config.dataDir, { recursive: true, force: true });
  });

  it("answers browsers' preflight requests for the origins it is told", async () => {
    const dataDir = await tempDir();
    const web = await startServer({ port: 0, dataDir, models: ["stdlib-gpt2"], workers: false, corsOrigins: ["https://notebook.example"] });
    try {
      const preflight = await fetch(`${web.url}/v1/jobs`, { method: "OPTIONS", headers: { origin: "https://notebook.example", "access-control-request-method": "POST", "access-control-request-headers": "tsight-protocol, authorization, content-type" } });
      expect(preflight.status).toBe(204);
      expect(preflight.headers.get("access-control-allow-origin")).toBe("https://notebook.example");
      expect(preflight.headers.get("access-control-allow-headers")).toMatch(/tsight-protocol.*authorization/);
      const res = await fetch(`${web.url}/v1/models`, { headers: { origin: "https://notebook.example", "tsight-protocol": "1", authorization: `Bearer ${web.keys.create().key}` } });
      expect(res.headers.get("access-control-allow-origin")).toBe("https://notebook.example");
      const stranger = await fetch(`${web.url}/v1/jobs`, { method: "OPTIONS", headers: { origin: "https://evil.example", "access-control-request-method": "POST" } });
      expect(stranger.headers.get("access-control-allow-origin")).toBeNull();
    } finally {
      await web.close();
      await fsp.rm(dataDir, { recursive: true, force: true });
    }
  });

  it("fails to start on a port in use, and says so", async () => {
    const dataDir = await tempDir();
    await expect(startServer({ port: server.port, dataDir, models: ["stdlib-gpt2"], workers: false })).rejects.toThrow(/EADDRINUSE/);
    await fsp.rm(dataDir, { recursive: true, force: true });
  });
});
