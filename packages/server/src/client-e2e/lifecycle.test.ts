/**
 * Remote sessions, hybrid steps, streamed generation, cancelling, reconnecting and picking a job up from another
 * process, over a real server on a loopback port.
 */
import { execFile } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fixture, maxAbsDiff, ref } from "../../../../test/fixtures.js";
import type { GPT2LMHeadModel } from "../../../tsight/src/models/index.js";
import { startServer, type RunningServer } from "../server/index.js";
import type { Tensor } from "../../../tsight/src/tensor/index.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import { RemoteJob } from "../../../tsight/src/client/job.js";
import { LanguageModel, type RemoteOptions } from "../../../tsight/src/client/language-model.js";
import type { SequencedEvent } from "../../../tsight/src/protocol/wire.js";

let server: RunningServer;
let apiKey: string;
let lm: LanguageModel<GPT2LMHeadModel>;
let remote: RemoteOptions;

beforeAll(async () => {
  server = await startServer({ port: 0, dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "tsight-lifecycle-")), models: ["stdlib-gpt2"], log: () => undefined });
  apiKey = server.keys.create("lifecycle").key;
  remote = { backend: server.url, apiKey, print: null };
  lm = await LanguageModel.fromServer("stdlib-gpt2", { backend: server.url, apiKey });
}, 60_000);
afterAll(() => server?.close());

describe("remote lifecycle", () => {
  it("a server's model run without { remote: true } fails at once, saying so, instead of returning tensors without values", async () => {
    const attempts = [
      () => lm.trace("def f(x", async (m) => await m.transformer.h[0].attn.source.pattern.output),
      () => lm.generate("def f(x", { maxNewTokens: 2 }),
      () => lm.session(async (s) => s.trace("def f(x", async (m) => await m.lm_head.output)),
    ];
    for (const attempt of attempts) {
      await expect(attempt()).rejects.toMatchObject({ name: "TraceError", message: expect.stringMatching(/has no weights here \(a meta model from a server\): run it with \{ remote: true \}/) });
    }
    // scan needs no weights: it still runs here.
    expect(await lm.scan("def f(x", async (m) => (await m.transformer.h[0].output).shape)).toEqual([1, 4, 256]);
    // And { remote: true }, as the error says, is all it takes: the calls go to the server fromServer found it on.
    expect(await lm.trace("def f(x", async (m) => (await m.lm_head.output).shape, { remote: true, print: null })).toEqual([1, 4, 4096]);
  });

  it("a session's second trace uses a value computed in the first, which never leaves the server", async () => {
    const out = await lm.session(async (s) => {
      const clean = await s.trace("def __init__(self", async (m) => await m.transformer.h[1].output);
      const patched = await s.trace("def __init__(cls", async (m) => {
        m.transformer.h[1].output = clean;
        return await m.lm_head.output;
      });
      const reference = await s.trace("def __init__(self", async (m) => await m.lm_head.output);
      return { same: patched.sub(reference).abs().max().item(), shape: clean.shape };
    }, remote);
    // Patching the whole residual stream after layer 1 makes the cls prompt compute exactly the self prompt.
    expect(out).toEqual({ same: 0, shape: [1, 5, 256] });
  });

  it("a session reads the values passed with it as s.vars, on the server as in process", async () => {
    const local = await LanguageModel.load("stdlib-gpt2");
    const run = (model: LanguageModel<GPT2LMHeadModel>, options: RemoteOptions) =>
      model.session(async (s) => {
        const { prompt, scale, layer } = s.vars;
        const h = await s.trace(prompt, async (m) => await m.transformer.h[layer].output);
        return s.trace(prompt, async (m) => {
          m.transformer.h[layer].output = h.mul(scale);
          return (await m.lm_head.output).index(0, -1);
        });
      }, options);
    const vars = { prompt: "def __init__(self", scale: local.tokenizer.encode("self").length + 0.5, layer: 2 };
    const remoteOut = await run(lm, { ...remote, vars });
    const localOut = await run(local, { vars });
    expect(remoteOut.shape).toEqual([4096]);
    expect(maxAbsDiff(remoteOut, localOut)).toBeLessThan(1e-5);
  });

  it("a hybrid step's answer from the client changes the remote computation", async () => {
    const asked: unknown[] = [];
    const run = (factor: number) =>
      lm.trace(
        "def __init__(self",
        async (m, tr) => {
          const h = await m.transformer.h[1].output;
          const scale = await tr.local(async (v: { norm: number; factor: number }) => {
            // Runs in this test's process: it could read files, plot, or ask a human.
            (globalThis as { __asked?: unknown[] }).__asked?.push(v.norm);
            return v.factor;
          }, { norm: h.norm().item(), factor: tr.vars.factor });
          m.transformer.h[1].output = h.mul(scale);
          return await m.lm_head.output;
        },
        { ...remote, vars: { factor } },
      );
    (globalThis as { __asked?: unknown[] }).__asked = asked;
    const one = await run(1);
    const half = await run(0.5);
    delete (globalThis as { __asked?: unknown[] }).__asked;
    expect(asked).toHaveLength(2);
    expect(asked[0]).toBeGreaterThan(1);
    expect(maxAbsDiff(one, ref(await fixture("stdlib-gpt2"), "single/logits"))).toBeLessThan(1e-4);
    const local = await (await LanguageModel.load("stdlib-gpt2")).trace("def __init__(self", async (m) => {
      m.transformer.h[1].output = (h) => h.mul(0.5);
      return await m.lm_head.output;
    });
    expect(maxAbsDiff(half, local)).toBe(0);
  });

  it("streams generated tokens as events while a per-step intervention runs", async () => {
    const job = await lm.generate(
      "def __init__(self",
      { maxNewTokens: 10 },
      async (m, tr) => {
        const norms: number[] = [];
        for await (const _ of tr.all()) norms.push((await m.transformer.h[3].output).norm().item());
        return norms;
      },
      { ...remote, blocking: false },
    );
    const streamed: number[] = [];
    const events: SequencedEvent[] = [];
    const out = await job.wait({ onEvent: (e) => void (events.push(e), e.event.type === "stream" && streamed.push(...e.event.tokens)) });
    expect(out.value).toHaveLength(10);
    expect(streamed).toEqual(out.generated.index(0).toArray());
    expect(out.text[0]).toBe(", config: ModelType, config: M");
    const types = events.map((e) => e.event.type);
    expect(types.indexOf("stream")).toBeGreaterThan(types.indexOf("status"));
    expect(types.at(-1)).toBe("done");
    // With no intervention the options come third; the tokens are the same.
    const plain = await lm.generate("def __init__(self", { maxNewTokens: 10 }, { ...remote, blocking: false });
    expect((await plain.result()).text[0]).toBe(out.text[0]);
  });

  it("cancelling a running job stops its forward passes at the next module and frees the worker", async () => {
    const job = await lm.generate("def __init__(self", { maxNewTokens: 500, eosTokenId: null }, async () => undefined, { ...remote, blocking: false });
    // Wait until it is generating, then cancel.
    for await (const { event } of job.events()) if (event.type === "stream") break;
    const started = Date.now();
    await job.cancel();
    const final = await new Promise<string>((resolve) => {
      const poll = async () => {
        const s = await job.status();
        if (["CANCELLED", "ERROR", "COMPLETED"].includes(s.status)) resolve(s.status);
        else setTimeout(poll, 20);
      };
      void poll();
    });
    expect(final).toBe("CANCELLED");
    expect(Date.now() - started).toBeLessThan(3_000);
    await expect(job.result()).rejects.toMatchObject({ code: "CANCELLED" });
    const after = await lm.trace("def __init__(self", async (m) => await m.lm_head.output, remote);
    expect(maxAbsDiff(after as Tensor, ref(await fixture("stdlib-gpt2"), "single/logits"))).toBeLessThan(1e-4);
  });

  it("a client whose connection drops resumes the event stream where it left off", async () => {
    // A proxy that cuts the first event-stream connection after a few of its bytes.
    let cut = false;
    const target = new URL(server.url);
    const proxy = net.createServer((client) => {
      const upstream = net.connect(Number(target.port), target.hostname);
      client.pipe(upstream);
      let seen = 0;
      upstream.on("data", (chunk: Buffer) => {
        const text = chunk.toString("latin1");
        if (!cut && text.includes("text/event-stream")) {
          seen += chunk.length;
          client.write(chunk.subarray(0, Math.min(chunk.length, 600)));
          cut = true;
          client.destroy();
          upstream.destroy();
          return;
        }
        void seen;
        client.write(chunk);
      });
      upstream.on("end", () => client.end());
      upstream.on("error", () => client.destroy());
      client.on("error", () => upstream.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    try {
      const url = `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
      const job = await lm.generate("def __init__(self", { maxNewTokens: 12 }, async () => undefined, { backend: url, apiKey, print: null, blocking: false });
      const seqs: number[] = [];
      const out = await job.wait({ onEvent: (e) => void seqs.push(e.seq) });
      expect(cut).toBe(true);
      expect(out.generated.shape).toEqual([1, 12]);
      // Every event exactly once, in order, across the reconnect.
      const direct: number[] = [];
      for await (const e of new HttpBackend({ url: server.url, apiKey }).events(job.id)) direct.push(e.seq);
      expect(seqs).toEqual(direct);
    } finally {
      proxy.close();
    }
  });

  it("a non-blocking job's result is collected later from another process", async () => {
    const job = await lm.trace("def __init__(self", async (m) => (await m.lm_head.output).index(0, -1).topk(3).indices, { ...remote, blocking: false });
    expect(typeof job.id).toBe("string");
    const script = `
      import { HttpBackend, RemoteJob } from "./packages/tsight/src/client/index.ts";
      const job = RemoteJob.attach(process.argv[2], new HttpBackend({ url: process.env.URL, apiKey: process.env.KEY }));
      console.log(JSON.stringify((await job.result()).toArray()));
    `;
    const file = path.join(process.cwd(), `.attach-${process.pid}.mts`);
    fs.writeFileSync(file, script);
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [path.join("node_modules", "tsx", "dist", "cli.mjs"), file, job.id], { env: { ...process.env, URL: server.url, KEY: apiKey } });
      expect(JSON.parse(stdout)).toEqual((await job.result()).toArray());
      expect(JSON.parse(stdout)).toHaveLength(3);
    } finally {
      fs.rmSync(file, { force: true });
    }
    // Attaching needs the key that created it.
    const stranger = server.keys.create("stranger").key;
    await expect(RemoteJob.attach(job.id, new HttpBackend({ url: server.url, apiKey: stranger })).result()).rejects.toMatchObject({ status: 404 });
  });
});
