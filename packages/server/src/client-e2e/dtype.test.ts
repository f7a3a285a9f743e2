/**
 * A server that keeps its model's weights quantized (`tsight serve --dtype int4`), over a real socket: it says so
 * in /v1/models and the meta (and so does the client's model), and remote traces, with and without interventions,
 * give exactly what the same int4 model gives in process. In distributed mode, /v1/models tells what the workers
 * load. Bad dtypes stop a server before it starts.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { maxAbsDiff } from "../../../../test/fixtures.js";
import { clearPrefix, testRedis, uniquePrefix, TEST_REDIS } from "../../../../test/server/redis.js";
import { sink } from "../../../../test/streams.js";
import { LanguageModel } from "../../../tsight/src/client/language-model.js";
import { main } from "../../../tsight/src/cli/main.js";
import { toModelKey } from "../../../tsight/src/protocol/model-key.js";
import type { ModelInfo, ModelMeta } from "../../../tsight/src/protocol/wire.js";
import { tensor, type Tensor } from "../../../tsight/src/tensor/index.js";
import { parseDTypes, runServe, UsageError } from "../cli/serve.js";
import { startApiNode, startServer, startWorkerNode } from "../server/index.js";

const GPT2 = toModelKey("LanguageModel", "stdlib-gpt2", null);
const PROMPT = "    for i in range(";
const CHOICES = /choose "float32", "bfloat16", "float16", "int8", "int4"/;
const tempDir = () => fs.mkdtempSync(path.join(os.tmpdir(), "tsight-dtype-"));

const logits = async (m: any) => (await m.lm_head.output) as Tensor;
/** Zeroes layer 0's MLP output and adds a steering vector (a job variable) to layer 1's output. */
const edited = async (m: any, tr: any) => {
  m.transformer.h[0].mlp.output = (o: Tensor) => o.mul(0);
  m.transformer.h[1].output = (h: Tensor) => h.add(tr.vars.steer);
  return (await m.lm_head.output) as Tensor;
};
const steer = tensor(Array.from({ length: 256 }, (_, i) => Math.sin(i) * 2));

async function getJson<T>(url: string, apiKey: string): Promise<T> {
  const res = await fetch(url, { headers: { "tsight-protocol": "1", authorization: `Bearer ${apiKey}` } });
  expect(res.status).toBe(200);
  return (await res.json()) as T;
}

describe("tsight serve --dtype int4", () => {
  let url: string;
  let apiKey: string;
  const stop = new AbortController();
  let done: Promise<number>;
  const err = sink();
  let local: LanguageModel;

  beforeAll(async () => {
    const out = sink();
    done = runServe(["--port", "0", "--data-dir", tempDir(), "--model", "stdlib-gpt2", "--dtype", "int4"], out, err, stop.signal);
    [, url] = await out.waitFor(/tsight server on (http:\S+),/);
    apiKey = /^TSIGHT_API_KEY=(\S+)$/m.exec(out.text)![1]!;
    expect(out.text).toContain("serving stdlib-gpt2 (int4)");
    local = await LanguageModel.load("stdlib-gpt2", { dtype: "int4" });
  }, 60_000);
  afterAll(async () => {
    stop.abort();
    await done;
  });

  it("reports int4 in /v1/models, in the meta and in the client's model; stderr has one line about the load and no bar", async () => {
    const { models } = await getJson<{ models: ModelInfo[] }>(`${url}/v1/models`, apiKey);
    expect(models).toEqual([expect.objectContaining({ key: GPT2, state: "loaded", dtype: "int4" })]);
    const meta = await getJson<ModelMeta>(`${url}/v1/models/${encodeURIComponent(GPT2)}/meta`, apiKey);
    expect(meta.dtype).toBe("int4");
    const remote = await LanguageModel.fromServer("stdlib-gpt2", { backend: url, apiKey });
    expect(remote.dtype).toBe("int4");
    // Not a terminal: no bar, no escape codes, one line with what was read.
    expect(err.text).toMatch(/^tsight serve: loaded stdlib-gpt2 \(int4\): \d+ tensors, [\d.]+ MB in [\d.]+ s\n$/);
  });

  it("a remote trace gives exactly the int4 model's logits in process, not the float32 model's", async () => {
    const remote = await LanguageModel.fromServer("stdlib-gpt2", { backend: url, apiKey });
    const there = await remote.trace(PROMPT, logits, { backend: url, apiKey });
    const here = await local.trace(PROMPT, logits);
    expect(there.shape).toEqual([1, 6, 4096]);
    expect(maxAbsDiff(there, here)).toBe(0);
    const float32 = await (await LanguageModel.load("stdlib-gpt2")).trace(PROMPT, logits);
    expect(maxAbsDiff(there, float32)).toBeGreaterThan(1e-3);
  });

  it("an intervention (an MLP zeroed, a steering vector added) gives remotely exactly what it gives in process, and changes the output", async () => {
    const remote = await LanguageModel.fromServer("stdlib-gpt2", { backend: url, apiKey });
    const there = await remote.trace(PROMPT, edited, { backend: url, apiKey, vars: { steer } });
    const here = await local.trace(PROMPT, edited, { vars: { steer } });
    expect(maxAbsDiff(there, here)).toBe(0);
    const plain = await local.trace(PROMPT, logits);
    expect(maxAbsDiff(there, plain)).toBeGreaterThan(1e-2);
  });
});

describe("bad dtypes", () => {
  it("tsight serve --dtype takes [MODEL=]DTYPE: a bare one for every model, MODEL= for one", () => {
    expect(parseDTypes(["int4", "stdlib-llama=bfloat16"], ["stdlib-gpt2", "stdlib-llama"])).toEqual({ dtype: "int4", dtypes: { "stdlib-llama": "bfloat16" } });
    expect(parseDTypes([], ["stdlib-gpt2"])).toEqual({ dtypes: {} });
    expect(() => parseDTypes(["int3"], ["stdlib-gpt2"])).toThrow(UsageError);
    expect(() => parseDTypes(["int3"], ["stdlib-gpt2"])).toThrow(CHOICES);
    expect(() => parseDTypes(["stdlib-gpt2=q4"], ["stdlib-gpt2"])).toThrow(CHOICES);
    expect(() => parseDTypes(["other=int8"], ["stdlib-gpt2"])).toThrow(/"other" is not a served model \(stdlib-gpt2\)/);
    expect(() => parseDTypes(["int8", "int4"], ["stdlib-gpt2"])).toThrow(/given twice/);
    expect(() => parseDTypes(["stdlib-gpt2=int8", "stdlib-gpt2=int4"], ["stdlib-gpt2"])).toThrow(/has a dtype already/);
  });

  it("an invalid --dtype is a usage error (exit code 2) naming the choices, before any model loads", async () => {
    const errors: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((s: string) => (errors.push(String(s)), true)) as typeof process.stderr.write;
    try {
      expect(await main(["serve", "--model", "stdlib-gpt2", "--dtype", "int3", "--data-dir", tempDir()])).toBe(2);
    } finally {
      process.stderr.write = write;
    }
    const text = errors.join("");
    expect(text).toMatch(/^tsight serve: UsageError: --dtype int3: dtype "int3" is not one weights can be kept as; /);
    expect(text).toMatch(CHOICES);
    expect(text).toContain("--dtype [MODEL=]D"); // the usage follows
    expect(text).not.toContain("loaded");
  });

  it("startServer refuses a bad dtype (DTypeError) and a dtype for a model it does not serve", async () => {
    const dataDir = tempDir();
    await expect(startServer({ port: 0, dataDir, models: ["stdlib-gpt2"], dtype: "int3" as never, log: () => undefined })).rejects.toMatchObject({ name: "DTypeError", message: expect.stringMatching(CHOICES) });
    await expect(startServer({ port: 0, dataDir, models: ["stdlib-gpt2"], dtypes: { "stdlib-gpt2": "q8" as never }, log: () => undefined })).rejects.toThrow(CHOICES);
    await expect(startServer({ port: 0, dataDir, models: ["stdlib-gpt2"], dtypes: { "stdlib-llama": "int8" }, log: () => undefined })).rejects.toThrow(/"stdlib-llama", which is not a served model/);
  });
});

describe("a distributed deployment", () => {
  it("reports the dtype its workers load, and warns of a worker that loads the model another way", async () => {
    const redis = await testRedis();
    const prefix = uniquePrefix("dtype");
    const common = { redis: TEST_REDIS, prefix, models: ["stdlib-gpt2"], presenceMs: 300, log: () => undefined };
    const api = await startApiNode({ ...common, port: 0, dataDir: tempDir() });
    const stopCli = new AbortController();
    let cli: Promise<number> | undefined;
    let second: Awaited<ReturnType<typeof startWorkerNode>> | undefined;
    try {
      const { key } = await api.keys.create("dtype");
      // Before any worker, the API process's own setting (float32 by default).
      expect((await getJson<{ models: ModelInfo[] }>(`${api.url}/v1/models`, key)).models[0]!.dtype).toBe("float32");
      // A worker process as the CLI starts one.
      const out = sink();
      const err = sink();
      cli = runServe(["--role", "worker", "--redis", TEST_REDIS, "--prefix", prefix, "--heartbeat", "300ms", "-m", "stdlib-gpt2", "--dtype", "int4"], out, err, stopCli.signal);
      await out.waitFor(/tsight worker \S+ .*running stdlib-gpt2 \(ready\)/);
      expect(err.text).toMatch(/^tsight serve: loaded stdlib-gpt2 \(int4\): \d+ tensors, [\d.]+ MB in [\d.]+ s\n$/);
      const listed = await getJson<{ models: ModelInfo[] }>(`${api.url}/v1/models`, key);
      expect(listed.models[0]).toMatchObject({ state: "loaded", dtype: "int4" });
      expect((await getJson<ModelMeta>(`${api.url}/v1/models/${encodeURIComponent(GPT2)}/meta`, key)).dtype).toBe("int4");
      const logged: string[] = [];
      const progress: number[] = [];
      second = await startWorkerNode({ ...common, dataDir: tempDir(), dtype: "int8", log: (line) => logged.push(line), onLoadProgress: (_model, p) => progress.push(p.tensors) });
      expect(progress.at(-1)).toBeGreaterThan(10);
      expect(logged.join("\n")).toMatch(/stdlib-gpt2 is loaded as int8 here but as int4 by \S+; .*same --dtype/);
    } finally {
      stopCli.abort();
      await cli;
      await second?.close();
      await api.close();
      await clearPrefix(redis, prefix);
      await redis.quit();
    }
  }, 60_000);
});
