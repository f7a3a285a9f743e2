/**
 * End to end with the real sandbox: jobs submitted over HTTP (a real socket, the HttpBackend client) run in the
 * SandboxExecutor inside the model's worker thread.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { LanguageModel } from "../../../tsight/src/intervention/index.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import { LanguageModel as RemoteLanguageModel } from "../../../tsight/src/client/language-model.js";
import type { JobEvent, JobRequest } from "../../../tsight/src/protocol/wire.js";
import { Tensor } from "../../../tsight/src/tensor/index.js";
import { startServer, type RunningServer } from "./server.js";
import { fixtureDir } from "../../../../test/fixtures.js";
import { toModelKey } from "../../../tsight/src/protocol/model-key.js";

let server: RunningServer;
let backend: HttpBackend;
beforeAll(async () => {
  server = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], jobTimeoutMs: 5_000, stopGraceMs: 500 });
  backend = new HttpBackend({ url: server.url, apiKey: server.keys.create("e2e").key });
});
afterAll(() => server.close());

const trace = (source: string, extra: Partial<JobRequest> = {}): JobRequest => ({ model: GPT2, kind: "trace", form: "invoke", source, input: "def __init__(self", ...extra });
const worker = () => server.jobs.modelStatus()[0]!.worker;

/** Waits until the job has sent an event of this type. */
async function until(id: string, type: JobEvent["type"] | "RUNNING"): Promise<void> {
  for await (const { event } of backend.events(id)) if (event.type === type || (event.type === "status" && event.status === type)) return;
}

describe("the server with the sandbox", () => {
  it("runs a trace job and returns the same logits as a local trace", async () => {
    const job = await backend.submit(trace("async (m) => await m.lm_head.output"));
    const logits = (await job.result()) as Tensor;
    expect(logits).toBeInstanceOf(Tensor);
    expect(logits.shape).toEqual([1, 5, 4096]);
    const local = await LanguageModel.load("stdlib-gpt2");
    const expected = (await local.trace("def __init__(self", async (m) => await m.lm_head.output)) as Tensor;
    expect(logits.toArray()).toEqual(expected.toArray());
  });

  it("runs each job in an isolate of its own, made ahead of it: what one job leaves in its globals, the next never sees", async () => {
    const leave = "async (m) => { globalThis.left = 'by the job before'; Object.prototype.polluted = 1; Array.prototype.push = () => 0; return typeof globalThis.left; }";
    const look = "async (m) => [typeof globalThis.left, ({}).polluted === undefined, [].push(1)]";
    for (let i = 0; i < 3; i++) {
      expect(await (await backend.submit(trace(leave))).result()).toBe("string");
      // Made once the job before ended (a spare isolate), or while this one is taken: fresh either way.
      expect(await (await backend.submit(trace(look))).result()).toEqual(["undefined", true, 1]);
    }
  });

  it("serves a meta model to the client, which traces remotely and answers a hybrid step", async () => {
    const meta = await RemoteLanguageModel.fromServer("stdlib-gpt2", { backend });
    expect(meta.dispatched).toBe(false);
    const out = await meta.trace(
      "def __init__(self",
      async (m, tr) => {
        const logits = await m.lm_head.output;
        const doubled = await tr.local(async (v: { n: number }) => v.n * 2, { n: 21 });
        return { shape: logits.shape, doubled };
      },
      { backend, print: null },
    );
    expect(out).toEqual({ shape: [1, 5, 4096], doubled: 42 });
    // A session: several traces in one job, values passed between them on the server.
    const both = await meta.session(
      async (s) => {
        const h = await s.trace("def f(", async (m) => await m.transformer.h[0].output);
        return s.trace("def g(", async (m) => {
          m.transformer.h[0].output = h;
          return (await m.lm_head.output).shape;
        });
      },
      { backend, print: null },
    );
    expect(both).toEqual([1, 3, 4096]);
  });

  it("streams logs and generated tokens, and reports the job's errors typed", async () => {
    const events: JobEvent[] = [];
    const job = await backend.submit({ ...trace('async (m) => { console.log("hi"); return 1; }'), kind: "generate", generate: { maxNewTokens: 3 } });
    const out = (await job.wait({ onEvent: ({ event }) => void events.push(event) })) as { generated: Tensor };
    expect(out.generated.shape).toEqual([1, 3]);
    expect(events.filter((e) => e.type === "stream").length).toBe(3);
    expect(events.some((e) => e.type === "log" && e.text.includes("hi"))).toBe(true);
    const failing = await backend.submit(trace("async (m) => {\n  const x = await m.lm_head.output;\n  return x.nosuch();\n}"));
    await expect(failing.result()).rejects.toMatchObject({ code: "USER_CODE" });
    expect((await failing.status()).error).toMatchObject({ code: "USER_CODE", retryable: false });
  });

  it("cancels a running job", async () => {
    const restarts = worker().restarts;
    const job = await backend.submit({ ...trace("async (m) => 1"), kind: "generate", generate: { maxNewTokens: 500, eosTokenId: null } });
    await until(job.id, "stream");
    await job.cancel();
    await expect(job.result()).rejects.toMatchObject({ code: "CANCELLED" });
    expect((await job.status()).status).toBe("CANCELLED");
    expect(worker().restarts).toBe(restarts);
  });

  it("keeps answering while a job spins, and stops it for real on cancel (its isolate, not its thread)", async () => {
    const restarts = worker().restarts;
    const spinning = await backend.submit(trace("async (m) => { for (;;) {} }"));
    const next = await backend.submit(trace("async (m) => 42"));
    await until(spinning.id, "RUNNING");
    const t0 = performance.now();
    await backend.status();
    await backend.job(next.id);
    expect(performance.now() - t0).toBeLessThan(1000);
    const cancelled = performance.now();
    await spinning.cancel();
    await expect(spinning.result()).rejects.toMatchObject({ code: "CANCELLED" });
    expect(await next.result()).toBe(42);
    // The spin ended when its isolate was disposed of: the thread (and its copy of the model) stayed.
    expect(performance.now() - cancelled).toBeLessThan(2000);
    expect(worker().restarts).toBe(restarts);
  });

  it("stops a job that fills its isolate's memory, and goes on", async () => {
    const job = await backend.submit(trace("async (m) => { const a = []; for (;;) a.push(new Array(100000).fill(1)); }"));
    await expect(job.result()).rejects.toMatchObject({ code: "MEMORY" });
    expect(await (await backend.submit(trace("async (m) => 'ok'"))).result()).toBe("ok");
  });
});

describe("a model served without tokenizer.json", () => {
  it("gives a meta with tokenizer null; the client's model takes token ids, with the numbers of a local run, and refuses text naming why", async () => {
    const folder = fixtureDir("llama3");
    const ids = await startServer({ port: 0, dataDir: await tempDir(), models: [folder], jobTimeoutMs: 10_000 });
    try {
      const b = new HttpBackend({ url: ids.url, apiKey: ids.keys.create("ids").key });
      const meta = await b.meta(toModelKey("LanguageModel", folder, null));
      expect(meta.tokenizer).toBeNull();
      const lm = await RemoteLanguageModel.fromServer(folder, { backend: b });
      expect(lm.tokenizer.hasText).toBe(false);
      const fn = async (m: any) => await m.lm_head.output;
      const remote = (await lm.trace([1, 2, 3, 4], fn, { backend: b, remote: true, print: null } as never)) as unknown as Tensor;
      const local = (await (await LanguageModel.load(folder)).trace([1, 2, 3, 4], fn as never)) as Tensor;
      expect(remote.toArray()).toEqual(local.toArray());
      await expect(lm.trace("hello", fn, { backend: b, remote: true, print: null } as never)).rejects.toThrow(/cannot encode text: the server has no tokenizer\.json for .*token ids only/);
    } finally {
      await ids.close();
    }
  }, 60_000);
});
