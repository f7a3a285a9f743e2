/**
 * Hybrid steps (tr.local) that are not answered: the real sandbox in the model's worker thread, over HTTP on a
 * real socket. A step past its time limit ends the job with TIMEOUT; a step whose client went away (no event
 * stream open) ends it with ClientDisconnectedError; either way the job really stops and the worker takes the
 * next job without being replaced.
 */
import fsp from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import { RemoteJob } from "../../../tsight/src/client/job.js";
import type { JobRequest, JobState } from "../../../tsight/src/protocol/wire.js";
import { startServer, type RunningServer } from "./server.js";

let server: RunningServer;
let backend: HttpBackend;
beforeAll(async () => {
  server = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], jobTimeoutMs: 20_000, stopGraceMs: 3_000, localStepTimeoutMs: 1_200, localDisconnectGraceMs: 300 });
  backend = new HttpBackend({ url: server.url, apiKey: server.keys.create("local").key, retry: { attempts: 2, baseDelayMs: 20 } });
});
afterAll(async () => {
  await server.close();
  await fsp.rm(server.config.dataDir, { recursive: true, force: true });
});

/** A job whose first act is a hybrid step (call c1); it returns the client's answer. */
const hybrid = (extra: Partial<JobRequest> = {}): JobRequest => ({
  model: GPT2,
  kind: "trace",
  form: "invoke",
  input: "def f(",
  source: "async (m, tr) => { const doubled = await tr.local(async (v) => v.n * 2, { n: 21 }); return doubled; }",
  ...extra,
});
const worker = () => server.jobs.modelStatus()[0]!.worker;

/** Follows the job's events until its hybrid step is asked; the stream stays open until `signal` aborts. */
async function untilAsked(id: string, signal?: AbortSignal): Promise<{ call: string; at: number }> {
  for await (const { event } of backend.events(id, { signal })) if (event.type === "local") return { call: event.call, at: performance.now() };
  throw new Error(`job ${id} ended without asking for a local step`);
}

/** Polls the job's state (which opens no event stream) until it ends. */
async function ended(id: string, timeoutMs = 5_000): Promise<JobState> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const state = await backend.job(id);
    if (["COMPLETED", "ERROR", "CANCELLED"].includes(state.status)) return state;
    if (Date.now() > until) throw new Error(`job ${id} still ${state.status} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("hybrid-step deadlines", () => {
  it("ends a job whose step is not answered within its localTimeoutMs with TIMEOUT naming the call", async () => {
    const restarts = worker().restarts;
    const job = await backend.submit(hybrid({ localTimeoutMs: 250 }));
    const events = backend.events(job.id)[Symbol.asyncIterator]();
    let asked = 0;
    const seen: string[] = [];
    for (let e = await events.next(); !e.done; e = await events.next()) {
      seen.push(e.value.event.type);
      if (e.value.event.type === "local") asked = performance.now();
    }
    const waited = performance.now() - asked;
    expect(seen.slice(-3)).toEqual(["error", "status", "done"]);
    const state = await backend.job(job.id);
    expect(state).toMatchObject({ status: "ERROR", error: { code: "TIMEOUT", type: "TimeoutError", retryable: false, message: expect.stringMatching(/hybrid step c1 \(tr\.local\) within 250 ms/) } });
    expect(waited).toBeGreaterThanOrEqual(200);
    expect(waited).toBeLessThan(1_000);
    await expect(RemoteJob.attach(job.id, backend).result()).rejects.toMatchObject({ code: "TIMEOUT" });
    // The job really stopped: the worker took the next job on the same thread.
    expect(await (await backend.submit({ ...hybrid(), source: "async (m) => 42" })).result()).toBe(42);
    expect(worker().restarts).toBe(restarts);
    // A late answer is refused.
    await expect(backend.answerLocal(job.id, "c1", 1)).rejects.toMatchObject({ status: 409 });
  });

  it("caps the job's localTimeoutMs at the server's localStepTimeoutMs", async () => {
    const job = await backend.submit(hybrid({ localTimeoutMs: 600_000 }));
    const stream = new AbortController();
    const { at } = await untilAsked(job.id, stream.signal);
    // Keep following: the job ends by its deadline, not for want of a client.
    const rest = (async () => {
      for await (const _ of backend.events(job.id)) void _;
    })();
    stream.abort();
    await rest;
    const state = await backend.job(job.id);
    expect(state.error).toMatchObject({ code: "TIMEOUT", message: expect.stringMatching(/step c1 .* within 1\.2 s/) });
    expect(performance.now() - at).toBeGreaterThanOrEqual(1_100);
  });

  it("refuses a localTimeoutMs that is not a positive whole number", async () => {
    for (const bad of [0, -5, 1.5, "60000"]) {
      await expect(backend.submit(hybrid({ localTimeoutMs: bad as number }))).rejects.toMatchObject({ status: 400, code: "VALIDATION", message: expect.stringMatching(/localTimeoutMs/) });
    }
  });
});

describe("a client that goes away during a hybrid step", () => {
  it("ends the job with ClientDisconnectedError once no client has followed it for the grace period", async () => {
    const restarts = worker().restarts;
    const job = await backend.submit(hybrid());
    const stream = new AbortController();
    const { call } = await untilAsked(job.id, stream.signal);
    expect(server.streams.count(job.id)).toBe(1);
    const left = performance.now();
    stream.abort();
    const state = await ended(job.id);
    expect(performance.now() - left).toBeLessThan(1_100); // before the step's own deadline (1.2 s)
    expect(state).toMatchObject({
      status: "ERROR",
      error: { code: "CANCELLED", type: "ClientDisconnectedError", retryable: false, message: expect.stringContaining(`the client that must answer step ${call} (tr.local) went away`) },
    });
    expect(server.streams.count(job.id)).toBe(0);
    expect(await (await backend.submit({ ...hybrid(), source: "async (m) => 'next'" })).result()).toBe("next");
    expect(worker().restarts).toBe(restarts);
    expect(worker().state).toBe("ready");
  });

  it("ends a job whose client never followed it", async () => {
    const job = await backend.submit(hybrid());
    expect((await ended(job.id)).error).toMatchObject({ type: "ClientDisconnectedError", message: expect.stringMatching(/step c1/) });
  });

  it("keeps the job when the client reconnects within the grace period, and takes its answer", async () => {
    const job = await backend.submit(hybrid());
    const stream = new AbortController();
    await untilAsked(job.id, stream.signal);
    stream.abort();
    await new Promise((r) => setTimeout(r, 100));
    // A fresh handle, as after a restart of the client: it replays the events, answers the step and waits.
    const again = RemoteJob.attach<number>(job.id, backend);
    expect(await again.wait({ onLocal: () => 42 })).toBe(42);
    expect((await backend.job(job.id)).status).toBe("COMPLETED");
  });
});
