/**
 * Hostile jobs against a real server (HTTP on loopback, worker threads, the sandbox), submitted as raw requests
 * so no client-side check stands in the way. Each must end with its typed error while the server keeps serving
 * other jobs, and other keys' jobs stay invisible.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fixture, maxAbsDiff, ref } from "../../../../test/fixtures.js";
import { unpackValue } from "../../../tsight/src/protocol/codec.js";
import { toModelKey } from "../../../tsight/src/protocol/model-key.js";
import type { ErrorInfo, JobRequest, JobState } from "../../../tsight/src/protocol/wire.js";
import { Tensor } from "../../../tsight/src/tensor/index.js";
import { startServer, type RunningServer } from "./server.js";

const GPT2 = toModelKey("LanguageModel", "stdlib-gpt2", null);
const LLAMA = toModelKey("LanguageModel", "stdlib-llama", null);
let server: RunningServer;
let key: string;
let otherKey: string;

const headers = (k = key) => ({ "tsight-protocol": "1", authorization: `Bearer ${k}`, "content-type": "application/json" });

async function submit(job: Partial<JobRequest>, k = key): Promise<string> {
  const res = await fetch(`${server.url}/v1/jobs`, { method: "POST", headers: headers(k), body: JSON.stringify({ model: GPT2, kind: "trace", form: "invoke", input: "def __init__(self", ...job }) });
  expect(res.status, await res.clone().text()).toBe(202);
  return ((await res.json()) as { id: string }).id;
}

async function finished(id: string, k = key): Promise<JobState> {
  for (const until = Date.now() + 30_000; ; ) {
    const s = (await (await fetch(`${server.url}/v1/jobs/${id}`, { headers: headers(k) })).json()) as JobState;
    if (["COMPLETED", "ERROR", "CANCELLED"].includes(s.status)) return s;
    if (Date.now() > until) throw new Error(`job ${id} is still ${s.status}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function failure(source: string, model = GPT2): Promise<ErrorInfo> {
  const state = await finished(await submit({ source, model }));
  expect(state.status, JSON.stringify(state)).toBe("ERROR");
  return state.error!;
}

async function result(id: string): Promise<unknown> {
  const res = await fetch(`${server.url}/v1/jobs/${id}/result`, { headers: headers() });
  expect(res.status).toBe(200);
  return unpackValue(new Uint8Array(await res.arrayBuffer()));
}

/** A normal job, checked against the Hugging Face reference: the server still computes correctly. */
async function stillCorrect(): Promise<void> {
  const id = await submit({ source: "async (m) => await m.lm_head.output" });
  expect((await finished(id)).status).toBe("COMPLETED");
  expect(maxAbsDiff((await result(id)) as Tensor, ref(await fixture("stdlib-gpt2"), "single/logits"))).toBeLessThan(1e-4);
}

beforeAll(async () => {
  server = await startServer({
    port: 0,
    dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "tsight-hostile-")),
    models: ["stdlib-gpt2", "stdlib-llama"],
    jobTimeoutMs: 3_000,
    memoryLimitBytes: 64 * 2 ** 20,
    maxResultBytes: 4 * 2 ** 20,
    maxBodyBytes: 2 * 2 ** 20,
    stopGraceMs: 1_000,
    log: () => undefined,
  });
  key = server.keys.create("hostile").key;
  otherKey = server.keys.create("bystander").key;
}, 120_000);
afterAll(() => server?.close());

describe("hostile jobs", () => {
  it("cannot reach files, the process, modules or code from strings", async () => {
    for (const source of [
      "async (m) => { const fs = await import('node:fs'); return fs.readFileSync('/etc/passwd', 'utf8'); }",
      "async (m) => process.env",
      "async (m) => require('fs')",
      "async (m) => (await m.lm_head.output).constructor.constructor('return process')().exit(1)",
      "async (m) => Function('return this')().process.mainModule",
      "async (m) => eval('process')",
    ]) {
      const error = await failure(source);
      expect(error.code, source).toBe("USER_CODE");
      expect(error.retryable).toBe(false);
      expect(error.type).toMatch(/Error$/);
    }
    const probe = await submit({ source: "async () => [typeof process, typeof require, typeof setTimeout, typeof fetch, typeof globalThis.Buffer]" });
    expect((await finished(probe)).status).toBe("COMPLETED");
    expect(await result(probe)).toEqual(["undefined", "undefined", "undefined", "undefined", "undefined"]);
    await stillCorrect();
  });

  it("tampering with prototypes stays inside the job", async () => {
    const id = await submit({ source: "async (m) => { Object.prototype.polluted = 'yes'; Array.prototype.map = () => { throw new Error('broken'); }; Tensor.prototype.mul = () => 0; return 1; }" });
    await finished(id);
    const clean = await submit({ source: "async (m) => [({}).polluted ?? 'clean', [1, 2].map((x) => x * 2), (await m.transformer.wte.output).mul(2).shape]" });
    expect((await finished(clean)).status).toBe("COMPLETED");
    expect(await result(clean)).toEqual(["clean", [2, 4], [1, 5, 256]]);
    await stillCorrect();
  });

  it("an infinite loop ends with TIMEOUT while other jobs and requests are served", async () => {
    const spin = await submit({ source: "async (m) => { while (true) {} }" });
    // A job for another model runs meanwhile, and the HTTP thread answers at once.
    const llama = await submit({ model: LLAMA, source: "async (m) => (await m.lm_head.output).shape" });
    const started = Date.now();
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect((await finished(llama)).status).toBe("COMPLETED");
    const state = await finished(spin);
    expect(state.status).toBe("ERROR");
    expect(state.error!.code).toBe("TIMEOUT");
    await stillCorrect();
  });

  it("memory bombs end with MEMORY: the isolate's heap and the tensors the code makes", async () => {
    expect((await failure("async () => { const a = []; while (true) a.push(new Array(1e6).fill(1)); }")).code).toBe("MEMORY");
    const tensors = await failure("async () => zeros([100000, 100000])");
    expect(tensors.code).toBe("MEMORY");
    expect(tensors.message).toMatch(/bytes/);
    expect((await failure("async (m) => { let t = (await m.lm_head.output); for (let i = 0; i < 100; i++) t = t.expand(4, -1, -1, -1).reshape(-1, 5, 4096).mul(1); return t; }")).code).toBe("MEMORY");
    await stillCorrect();
  });

  it("a result over the server's limit ends with MEMORY and says so", async () => {
    // 64 copies of the logits: about 5 MiB, over the 4 MiB this server sends back.
    const error = await failure("async (m) => (await m.lm_head.output).expand(64, -1, -1).mul(1)");
    expect(error.code).toBe("MEMORY");
    expect(error.message).toMatch(/result is \d+ bytes, over this server's limit/);
    await stillCorrect();
  });

  it("refuses enormous requests with 413 and keeps serving", async () => {
    const body = JSON.stringify({ model: GPT2, kind: "trace", form: "invoke", input: "x".repeat(3 * 2 ** 20), source: "async (m) => 1" });
    const res = await fetch(`${server.url}/v1/jobs`, { method: "POST", headers: headers(), body });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: ErrorInfo }).error.code).toBe("VALIDATION");
    await stillCorrect();
  });

  it("forged ids and other keys' jobs are 404, for reading, events, results and cancelling", async () => {
    const mine = await submit({ source: "async (m) => 1" });
    await finished(mine);
    const forged = "A".repeat(24);
    for (const [k, id] of [
      [key, forged],
      [key, "../../etc/passwd"],
      [otherKey, mine],
    ] as const) {
      for (const [method, suffix] of [
        ["GET", ""],
        ["GET", "/events"],
        ["GET", "/result"],
        ["DELETE", ""],
      ] as const) {
        const res = await fetch(`${server.url}/v1/jobs/${encodeURIComponent(id)}${suffix}`, { method, headers: headers(k) });
        expect(res.status, `${method} ${id}${suffix} as ${k === key ? "owner" : "another key"}`).toBe(404);
      }
    }
    // The owner still sees it.
    expect((await fetch(`${server.url}/v1/jobs/${mine}`, { headers: headers() })).status).toBe(200);
  });

  it("bad requests: wrong protocol, malformed body, unknown model key", async () => {
    const wrong = await fetch(`${server.url}/v1/jobs`, { method: "POST", headers: { ...headers(), "tsight-protocol": "7" }, body: "{}" });
    expect(wrong.status).toBe(426);
    expect(((await wrong.json()) as { supported: number[] }).supported).toEqual([1]);
    const malformed = await fetch(`${server.url}/v1/jobs`, { method: "POST", headers: headers(), body: "{not json" });
    expect(malformed.status).toBe(400);
    expect(((await malformed.json()) as { error: ErrorInfo }).error.message).toMatch(/JSON/i);
    const unknown = await fetch(`${server.url}/v1/jobs`, { method: "POST", headers: headers(), body: JSON.stringify({ model: toModelKey("LanguageModel", "gpt2-xl", null), kind: "trace", form: "invoke", input: "x", source: "async (m) => 1" }) });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: ErrorInfo }).error.message).toMatch(/gpt2-xl/);
  });
});
