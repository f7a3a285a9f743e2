/**
 * Cross-user batching in the embedded server: plain traces of equal token counts that wait for the same model run
 * in one forward pass, each job with its own events and result, and with the numbers it gets alone.
 */
import { afterEach, describe, expect, it } from "vitest";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import type { JobRequest, SequencedEvent } from "../../../tsight/src/protocol/wire.js";
import { Tensor } from "../../../tsight/src/tensor/index.js";
import { LanguageModel } from "../../../tsight/src/intervention/index.js";
import { batchKey } from "./batch-key.js";
import { decodeJob } from "../../../tsight/src/protocol/executor.js";
import { startServer, type RunningServer } from "./server.js";

const servers: RunningServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

/** A server whose worker starts only when asked (so that jobs wait together), and clients of different keys. */
async function server(maxBatch?: number) {
  const s = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], workers: false, maxBatch, log: () => undefined });
  servers.push(s);
  const client = () => new HttpBackend({ url: s.url, apiKey: s.keys.create("batch").key });
  return { s, backend: client(), client };
}

// Five tokens each.
const prompts = [
  [324, 615, 638, 636, 284],
  [531, 221, 324, 615, 638],
  [791, 1077, 199, 791, 1396],
  [387, 345, 309, 14, 8],
];
const trace = (input: unknown, source = "async (m, tr) => { m.transformer.h[1].output = (h) => h.mul(tr.vars.k); return await m.lm_head.output; }"): JobRequest =>
  ({ model: GPT2, kind: "trace", form: "invoke", source, input, vars: { k: 0.5 } }) as JobRequest;

async function events(backend: HttpBackend, id: string): Promise<SequencedEvent[]> {
  const out: SequencedEvent[] = [];
  for await (const e of backend.events(id)) out.push(e);
  return out;
}

describe("batching", () => {
  it("runs waiting traces of equal length in one pass, each with the numbers it gets alone", async () => {
    const { s, backend, client } = await server();
    // Four users' jobs (a pass takes at most one job of each key).
    const users = prompts.map(() => client());
    const jobs = await Promise.all(prompts.map((p, i) => users[i]!.submit(trace(p))));
    const other = await backend.submit(trace("def __init__(self, x):")); // another length: a pass of its own
    await s.jobs.startWorkers();
    const together = (await Promise.all(jobs.map((j) => j.result()))) as Tensor[];
    await other.result();
    const logs = await Promise.all(jobs.map(async (j, i) => (await events(users[i]!, j.id)).filter((e) => e.event.type === "log").map((e) => (e.event as { text: string }).text)));
    for (const l of logs) expect(l).toEqual(["[tsight] batched: this job runs in one forward pass with 3 other jobs"]);
    expect((await events(backend, other.id)).some((e) => e.event.type === "log")).toBe(false);
    expect(s.metrics.render()).toMatch(/tsight_batch_jobs_sum\{model="stdlib-gpt2"\} 5\b/);
    const status = s.jobs.status();
    expect(status).toMatchObject({ mode: "embedded", maxBatch: 8, queued: 0, models: [{ name: "stdlib-gpt2", jobsPerPass: 2.5 }] });
    expect(status.workers).toEqual([expect.objectContaining({ models: ["stdlib-gpt2"], busy: false, running: 0 })]);

    // The same jobs alone, on a server that does not batch.
    const solo = await server(1);
    await solo.s.jobs.startWorkers();
    for (let i = 0; i < prompts.length; i++) {
      const alone = (await (await solo.backend.submit(trace(prompts[i]))).result()) as Tensor;
      expect(together[i]!.shape).toEqual([1, 5, 4096]);
      expect(Array.from(together[i]!.toArray().flat(2) as number[])).toEqual(Array.from(alone.toArray().flat(2) as number[]));
    }
  });

  it("keeps each job's failure and cancel its own, and runs other kinds alone", async () => {
    const { s, backend, client } = await server();
    const ok = await backend.submit(trace(prompts[0]));
    const bad = await client().submit(trace(prompts[1], "async (m) => { await m.transformer.h[0].output; throw new RangeError('mine alone'); }"));
    const cancelled = await client().submit(trace(prompts[2]));
    const gen = await backend.submit({ model: GPT2, kind: "generate", form: "invoke", source: "async (m) => 1", input: prompts[3], generate: { maxNewTokens: 2 } } as JobRequest);
    await cancelled.cancel();
    await s.jobs.startWorkers();
    expect(((await ok.result()) as Tensor).shape).toEqual([1, 5, 4096]);
    await expect(bad.result()).rejects.toMatchObject({ name: "RangeError", message: expect.stringContaining("mine alone") });
    await expect(cancelled.result()).rejects.toMatchObject({ code: "CANCELLED" });
    expect(await gen.result()).toBeDefined();
    const genLogs = (await events(backend, gen.id)).filter((e) => e.event.type === "log");
    expect(genLogs).toEqual([]);
    const okLogs = (await events(backend, ok.id)).filter((e) => e.event.type === "log").map((e) => (e.event as { text: string }).text);
    expect(okLogs).toEqual(["[tsight] batched: this job runs in one forward pass with 1 other job"]);
  });

  it("never puts two jobs of one key in a pass (fair share): one key's jobs go one per pass, beside other keys'", async () => {
    const { s, backend, client } = await server();
    const mine = await Promise.all(prompts.slice(0, 3).map((p) => backend.submit(trace(p))));
    const theirs = await client().submit(trace(prompts[3]));
    await s.jobs.startWorkers();
    await Promise.all([...mine, theirs].map((j) => j.result()));
    const batched = await Promise.all(mine.map(async (j) => (await events(backend, j.id)).some((e) => e.event.type === "log" && /batched/.test(e.event.text))));
    // The first of mine shares its pass with theirs; the other two run in passes of their own.
    expect(batched).toEqual([true, false, false]);
    expect(s.jobs.status().models[0]!.jobsPerPass).toBe(1.33);
  });

  it("gives batch keys to plain traces only, by token counts", () => {
    const key = (r: Partial<JobRequest>) => batchKey(decodeJob({ model: GPT2, kind: "trace", form: "invoke", source: "async () => 1", input: [1, 2, 3], ...r } as JobRequest), undefined);
    expect(key({})).toBe("nograd|3");
    expect(key({ input: [[1, 2], [3, 4]] })).toBe("nograd|2,2");
    expect(key({ grad: true })).toBe("grad|3");
    expect(key({ input: "text" })).toBeUndefined(); // no tokenizer given
    expect(key({ kind: "generate", generate: { maxNewTokens: 1 } })).toBeUndefined();
    expect(key({ edits: ["async (m) => undefined"] })).toBeUndefined();
    expect(key({ form: "tracer", input: undefined })).toBeUndefined();
    expect(key({ source: "async (m, tr) => await tr.local(async (v) => v, 1)" })).toBeUndefined();
  });

  it("runs a job with a hybrid step alone (its step waits for the client, longer than a pass may wait), the step asked once", async () => {
    const { s, backend, client } = await server();
    const hybrid = await backend.submit(trace(prompts[0], "async (m, tr) => { await m.transformer.h[0].output; return await tr.local(async (v) => v * 2, 21); }"));
    const plain = await client().submit(trace(prompts[1]));
    await s.jobs.startWorkers();
    const asked: string[] = [];
    // A slow answer (a person's, in the README's words), past the 1 s a shared pass waits.
    const value = await hybrid.wait({
      onLocal: async (e) => {
        asked.push(e.call);
        await new Promise((r) => setTimeout(r, 1500));
        return 42;
      },
    });
    expect(value).toBe(42);
    expect(asked).toEqual(["c1"]);
    expect(((await plain.result()) as Tensor).shape).toEqual([1, 5, 4096]);
    const logs = (await events(backend, hybrid.id)).filter((e) => e.event.type === "log").map((e) => (e.event as { text: string }).text);
    expect(logs.filter((t) => /batched|left a forward pass/.test(t))).toEqual([]);
  }, 60_000);

  it("tokenizes at most 4096 characters of a job's text on the main thread, over all its rows", async () => {
    const tokenizer = (await LanguageModel.load("stdlib-gpt2")).tokenizer;
    const key = (input: string[]) => batchKey(decodeJob({ model: GPT2, kind: "trace", form: "invoke", source: "async () => 1", input } as JobRequest), tokenizer);
    expect(key(["def __init__(self", "class "])).toBe("nograd|5,2");
    expect(key(["x".repeat(2048), "y".repeat(2048)])).toMatch(/^nograd\|\d+,\d+$/);
    // 200 rows of 4096 spaces took the main thread 4.6 s, each row under the bound alone: they run alone, unkeyed.
    expect(key(["x".repeat(2048), "y".repeat(2049)])).toBeUndefined();
    expect(key(Array.from({ length: 200 }, () => " ".repeat(4096)))).toBeUndefined();
  });
});
