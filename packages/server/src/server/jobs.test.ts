/**
 * Jobs through real worker threads, with the scripted stand-in executor (test/server/scripted-executor.ts): results,
 * events, hybrid steps, cancel, deadlines, crashes, result limits and retention. The sandbox's own end-to-end
 * tests are in e2e.test.ts.
 */
import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openTestServer, type TestServer } from "../../../../test/server/harness.js";
import { packValue, unpackValue } from "../../../tsight/src/protocol/codec.js";
import type { ErrorBody, JobState } from "../../../tsight/src/protocol/wire.js";
import { ENVELOPE_TYPE } from "../../../tsight/src/protocol/wire.js";
import { Tensor, tensor } from "../../../tsight/src/tensor/index.js";

let s: TestServer;
beforeAll(async () => {
  s = await openTestServer({ workers: true, jobTimeoutMs: 1500, stopGraceMs: 300, maxResultBytes: 256 * 1024, memoryLimitBytes: 12345678, workerHeapMb: 128, maxActiveJobsPerKey: 20 });
});
afterAll(() => s.close());

const worker = () => s.core.jobs.modelStatus()[0]!.worker;
const result = async (id: string) => {
  const res = await s.request(`/v1/jobs/${id}/result`);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toBe(ENVELOPE_TYPE);
  return unpackValue(new Uint8Array(await res.arrayBuffer()));
};
const run = async (source: string, extra: object = {}) => s.finished((await s.start({ source, ...extra })).id);

describe("jobs on worker threads", () => {
  it("runs a job and keeps its result and events", async () => {
    const job = await s.start({ source: "log hello; stream 2; value {\"a\": [1, 2]}" });
    const done = await s.finished(job.id);
    expect(done).toMatchObject({ status: "COMPLETED", result: "available", expires: expect.any(String) });
    expect(await result(job.id)).toEqual({ a: [1, 2] });
    expect((await s.events(job.id)).map((e) => e.event)).toEqual([
      { type: "status", status: "RECEIVED" },
      { type: "status", status: "QUEUED", position: 0 },
      { type: "status", status: "DISPATCHED" },
      { type: "status", status: "RUNNING" },
      { type: "log", text: "hello" },
      { type: "stream", step: 0, tokens: [0] },
      { type: "stream", step: 1, tokens: [1] },
      { type: "status", status: "COMPLETED" },
      { type: "done", status: "COMPLETED" },
    ]);
    expect(worker().state).toBe("ready");
  });

  it("runs the model in the worker and sends tensors back", async () => {
    const done = await run("trace", { form: "invoke", input: "def __init__(self" });
    expect(done.status).toBe("COMPLETED");
    const logits = (await result(done.id)) as Tensor;
    expect(logits).toBeInstanceOf(Tensor);
    expect(logits.shape).toEqual([1, 5, 4096]);
  });

  it("gives the executor the deadline, memory limit and vars", async () => {
    const done = await run("context", { vars: { n: 3 } });
    const ctx = (await result(done.id)) as { deadlineInMs: number; memoryLimitBytes: number; vars: unknown };
    expect(ctx.deadlineInMs).toBeGreaterThan(500);
    expect(ctx.deadlineInMs).toBeLessThanOrEqual(1500);
    expect(ctx.memoryLimitBytes).toBe(12345678);
    expect(ctx.vars).toEqual({ n: 3 });
  });

  it("reports the job's own errors as typed ERROR", async () => {
    const done = await run("fail no such tensor");
    expect(done.status).toBe("ERROR");
    expect(done.error).toMatchObject({ code: "USER_CODE", type: "TypeError", message: "no such tensor", retryable: false });
    const events = await s.events(done.id);
    expect(events.at(-3)!.event).toMatchObject({ type: "error", error: { code: "USER_CODE" } });
    const res = await s.request(`/v1/jobs/${done.id}/result`);
    expect(res.status).toBe(409);
    expect(((await res.json()) as ErrorBody).error.message).toMatch(/ended ERROR and has no result: no such tensor/);
  });

  it("passes answers to hybrid steps (JSON and envelope) to the running job", async () => {
    for (const answer of [
      { body: JSON.stringify({ value: { x: 1 } }), type: "application/json", expected: { x: 1 } },
      { body: packValue({ t: tensor([1, 2]) }), type: ENVELOPE_TYPE, expected: "tensor" },
    ]) {
      const job = await s.start({ source: "local c0" });
      const stream = s.request(`/v1/jobs/${job.id}/events`);
      const reader = (await stream).body!.pipeThrough(new TextDecoderStream()).getReader();
      let seen = "";
      while (!seen.includes('"type":"local"')) seen += (await reader.read()).value;
      const local = JSON.parse(/data: (\{"type":"local".*)/.exec(seen)![1]!);
      expect(local).toMatchObject({ type: "local", call: "c0", step: 0 });
      expect(unpackValue(Buffer.from(local.vals, "base64"))).toEqual({ asked: "c0" });
      const post = (body: NonNullable<RequestInit["body"]>, type: string) => s.request(`/v1/jobs/${job.id}/local/c0`, { method: "POST", body, headers: { "content-type": type } });
      expect((await post(answer.body as NonNullable<RequestInit["body"]>, answer.type)).status).toBe(204);
      expect((await post(answer.body as NonNullable<RequestInit["body"]>, answer.type)).status).toBe(409); // answered already
      expect((await s.request(`/v1/jobs/${job.id}/local/c9`, { method: "POST", body: answer.body as NonNullable<RequestInit["body"]>, headers: { "content-type": answer.type } })).status).toBe(404); // never asked
      const done = await s.finished(job.id);
      await reader.cancel();
      expect(done.status).toBe("COMPLETED");
      const value = await result(job.id);
      if (answer.expected === "tensor") expect(((value as { t: Tensor }).t.toArray() as number[])).toEqual([1, 2]);
      else expect(value).toEqual(answer.expected);
      expect((await post(answer.body as NonNullable<RequestInit["body"]>, answer.type)).status).toBe(409); // not running any more
    }
  });

  it("cancels a running job through its AbortSignal", async () => {
    const restarts = worker().restarts;
    const job = await s.start({ source: "sleep 20000" });
    while ((await s.state(job.id)).status !== "RUNNING") await new Promise((r) => setTimeout(r, 5));
    const res = await s.request(`/v1/jobs/${job.id}`, { method: "DELETE" });
    expect(res.status).toBe(202);
    const done = await s.finished(job.id, 2000);
    expect(done.status).toBe("CANCELLED");
    expect(worker().restarts).toBe(restarts);
    expect((await s.events(job.id)).map((e) => e.event.type).slice(-2)).toEqual(["status", "done"]);
  });

  it("gives up on a job that ignores cancel, and runs the next job on a fresh thread", async () => {
    const restarts = worker().restarts;
    const spinning = await s.start({ source: "spin 2500" });
    const next = await s.start({ source: "value 7" });
    while ((await s.state(spinning.id)).status !== "RUNNING") await new Promise((r) => setTimeout(r, 5));
    // The HTTP thread is not blocked by the spinning job.
    const t0 = performance.now();
    expect((await s.request("/v1/status")).status).toBe(200);
    expect(performance.now() - t0).toBeLessThan(1000); // the spin lasts 2.5 s
    await s.request(`/v1/jobs/${spinning.id}`, { method: "DELETE" });
    expect((await s.finished(spinning.id, 3000)).status).toBe("CANCELLED");
    expect(worker().restarts).toBe(restarts + 1);
    expect(await result((await s.finished(next.id)).id)).toBe(7);
    // The old thread, once its spin ends and it reports the job's end, ends by itself when told (never terminated
    // from outside: that can abort the process while isolated-vm has work in flight).
    while (worker().threads > 1) await new Promise((r) => setTimeout(r, 20));
    expect(worker().forcedEnds).toBe(0);
  });

  it("ends a job past its deadline with TIMEOUT", async () => {
    const done = await run("spin 3000");
    expect(done.status).toBe("ERROR");
    expect(done.error).toMatchObject({ code: "TIMEOUT", retryable: false, message: expect.stringMatching(/ran past its deadline \(its time limit: 1\.5 s; a job asks for less with its timeout option/) });
  });

  it("fails the job of a crashed worker with PREEMPTED (retryable) and restarts the worker", async () => {
    const restarts = worker().restarts;
    const done = await run("crash");
    expect(done.status).toBe("ERROR");
    expect(done.error).toMatchObject({ code: "PREEMPTED", retryable: true, message: expect.stringMatching(/scripted crash/) });
    expect(worker().restarts).toBe(restarts + 1);
    expect((await run("value 1")).status).toBe("COMPLETED");
    const metrics = await (await s.request("/metrics")).text();
    expect(metrics).toMatch(/tsight_worker_restarts_total\{model="stdlib-gpt2"\} [1-9]/);
    expect(metrics).toContain('tsight_job_errors_total{code="PREEMPTED"} 1');
    expect(metrics).toMatch(/tsight_job_duration_seconds_count\{model="stdlib-gpt2"\} [1-9]/);
  });

  it("ends a job that runs its worker out of heap with MEMORY", async () => {
    const done = await run("oom");
    expect(done.error).toMatchObject({ code: "MEMORY", retryable: false });
  });

  it("refuses a result over the size limit with MEMORY", async () => {
    const done = await run("floats 100000");
    expect(done.status).toBe("ERROR");
    expect(done.error).toMatchObject({ code: "MEMORY", message: expect.stringMatching(/over this server's limit of 262144/) });
  });

  it("keeps a result until it expires, then answers 410", async () => {
    const done = await run("value 5");
    const file = path.join(s.dataDir, "results", `${done.id}.safetensors`);
    expect(fs.existsSync(file)).toBe(true);
    expect(await s.core.sweeper.sweep()).toEqual([]);
    const swept = await s.core.sweeper.sweep(Date.now() + 3_600_001);
    expect(swept).toContain(done.id);
    expect(fs.existsSync(file)).toBe(false);
    const res = await s.request(`/v1/jobs/${done.id}/result`);
    expect(res.status).toBe(410);
    expect(((await s.state(done.id)) as JobState).result).toBe("expired");
  });

  it("says a result removed before its expiry is no longer stored (not that it was deleted at a time to come)", async () => {
    const done = await run("value 5");
    fs.rmSync(path.join(s.dataDir, "results", `${done.id}.safetensors`));
    const res = await s.request(`/v1/jobs/${done.id}/result`);
    expect(res.status).toBe(410);
    const { error } = (await res.json()) as ErrorBody;
    expect(error.message).toMatch(/is no longer stored: it was removed before it was due to expire at /);
    expect(error.message).not.toMatch(/was deleted at/);
    expect(((await s.state(done.id)) as JobState).result).toBe("expired");
  });
});

describe("results a key keeps", () => {
  it("are bounded per key, each unfinished job counted at the largest result: past maxStoredResultBytesPerKey its jobs are refused (429) until it deletes some (DELETE .../result) or they expire; other keys go on", async () => {
    const t = await openTestServer({ workers: true, maxResultBytes: 50_000, maxEventBytesPerJob: 1_000, maxStoredResultBytesPerKey: 205_000, maxActiveJobsPerKey: 20 });
    try {
      // Jobs submitted at once: each counts the largest result and event log until it ends, so the fifth has no room
      // (4 x 51,000).
      const started: string[] = [];
      for (let i = 0; i < 4; i++) started.push((await t.start({ source: "spin 200; floats 10000" })).id);
      const early = await t.submit({ source: "floats 10" });
      expect(early.status).toBe(429);
      expect(((await early.json()) as ErrorBody).error.message).toMatch(/keeps 0 bytes of results and \d+ bytes of event logs and errors on the server and has 4 unfinished jobs, each of which may keep up to 51000 more \(a result and its events\); with one more that could pass the 205000 it may have: wait for the logs of ended jobs to expire \(kept 25 h after their job\), or wait for its jobs to end$/);
      for (const id of started) expect((await t.finished(id)).status).toBe("COMPLETED");
      // Four results of ~40 KB kept: no room for a fifth job's largest.
      const refused = await t.submit({ source: "floats 10" });
      expect(refused.status).toBe(429);
      expect(((await refused.json()) as ErrorBody).error).toMatchObject({ code: "NOT_ALLOWED", retryable: true, message: expect.stringMatching(/delete results it has downloaded \(DELETE \/v1\/jobs\/ID\/result\)/) });
      // Another key is not held up by this one's results.
      const other = t.core.keys.create("other").key;
      expect((await t.submit({ source: "value 1" }, { headers: { authorization: `Bearer ${other}` } })).status).toBe(202);
      // Deleting two makes room; a deleted result is gone (410), the job's state says so.
      for (const id of started.slice(0, 2)) expect((await t.request(`/v1/jobs/${id}/result`, { method: "DELETE" })).status).toBe(204);
      const gone = await t.request(`/v1/jobs/${started[0]}/result`);
      expect(gone.status).toBe(410);
      // Said to be deleted by its owner before its expiry, not expired at a time still to come.
      expect(((await gone.json()) as ErrorBody).error.message).toMatch(new RegExp(`the result of job ${started[0]} was deleted before it was due to expire at .* \\(by DELETE /v1/jobs/${started[0]}/result, or removed from the server's storage\\)`));
      expect(((await t.state(started[0]!)) as JobState).result).toBe("expired");
      expect((await t.submit({ source: "floats 10" })).status).toBe(202);
    } finally {
      await t.close();
    }
  });
});

describe("event logs a key keeps", () => {
  it("count with its results: jobs that log a lot fill the key's room (429) and no more, while other keys go on", async () => {
    const t = await openTestServer({ workers: true, maxResultBytes: 10_000, maxEventBytesPerJob: 50_000, maxStoredResultBytesPerKey: 200_000, maxActiveJobsPerKey: 20 });
    try {
      const line = "x".repeat(9_000);
      const logs = `log ${line}; log ${line}; log ${line}; log ${line}; log ${line}; value 1`;
      let accepted = 0;
      let last = "";
      for (;;) {
        const res = await t.submit({ source: logs });
        if (res.status === 429) {
          // Told apart: its results (a small value each) and its logs, which fill the room.
          const [, results, logs] = /keeps (\d+) bytes of results and (\d+) bytes of event logs and errors on the server/.exec(((await res.json()) as ErrorBody).error.message) ?? [];
          expect(Number(results)).toBeLessThan(2_000);
          expect(Number(logs)).toBeGreaterThan(130_000);
          break;
        }
        expect(res.status).toBe(202);
        last = ((await res.json()) as { id: string }).id;
        expect((await t.finished(last)).status).toBe("COMPLETED");
        accepted++;
        expect(accepted).toBeLessThan(10);
      }
      // About 45 KB of logs a job: after three (136 KB) there is room for one more job's 60,000, after four not.
      expect(accepted).toBe(4);
      expect(t.core.store.storedBytes(t.core.store.get(last)!.keyId)).toBeGreaterThan(4 * 45_000);
      const other = t.core.keys.create("other").key;
      const accepted2 = await t.submit({ source: `log ${"€".repeat(3_000)}; value 1` }, { headers: { authorization: `Bearer ${other}` } });
      expect(accepted2.status).toBe(202);
      const euros = ((await accepted2.json()) as { id: string }).id;
      while (t.core.store.get(euros)!.status !== "COMPLETED") await new Promise((r) => setTimeout(r, 20));
      // Counted as stored, in UTF-8 bytes: three a "€".
      expect(t.core.store.storedBytes(t.core.store.get(euros)!.keyId)).toBeGreaterThan(9_000);
    } finally {
      await t.close();
    }
  });
});

describe("a model that fails to load", () => {
  it("fails the jobs waiting for it and refuses new ones with 503, retryable", async () => {
    const broken = await openTestServer({ executor: { module: new URL("./no-such-executor.js", import.meta.url).href, name: "Nothing" } });
    try {
      const waiting = await broken.start();
      await broken.core.jobs.startWorkers();
      expect(await broken.finished(waiting.id)).toMatchObject({ status: "ERROR", error: { code: "INTERNAL", retryable: true, message: expect.stringMatching(/stdlib-gpt2 failed to load on this server \(.*no-such-executor/) } });
      const refused = await broken.submit();
      expect(refused.status).toBe(503);
      expect(((await refused.json()) as ErrorBody).error).toMatchObject({ code: "INTERNAL", retryable: true });
      // Listed as failed (it runs no jobs), not as available.
      expect(broken.core.jobs.models()[0]!.state).toBe("failed");
    } finally {
      await broken.close();
    }
  });
});
