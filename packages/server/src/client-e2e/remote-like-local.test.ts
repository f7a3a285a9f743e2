/**
 * A remote call behaves like the same call in process, over a real server on a loopback port: generate streams
 * tokens to onToken, console.log in job code reaches the caller, errors point at the user's file, and a job is
 * picked up again from its id and the server's URL.
 */
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GPT2LMHeadModel } from "../../../tsight/src/models/index.js";
import { ClientError, type RemoteError } from "../../../tsight/src/protocol/errors.js";
import { toModelKey } from "../../../tsight/src/protocol/model-key.js";
import { OptionsError } from "../../../tsight/src/intervention/index.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import { RemoteJob } from "../../../tsight/src/client/job.js";
import { LanguageModel, type RemoteOptions } from "../../../tsight/src/client/language-model.js";
import { startServer, type RunningServer } from "../server/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
let server: RunningServer;
let apiKey: string;
let lm: LanguageModel<GPT2LMHeadModel>;
let remote: RemoteOptions;

beforeAll(async () => {
  server = await startServer({ port: 0, dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "tsight-like-local-")), models: ["stdlib-gpt2"], log: () => undefined });
  apiKey = server.keys.create("like-local").key;
  remote = { backend: server.url, apiKey, print: null, logs: null };
  lm = await LanguageModel.fromServer("stdlib-gpt2", { backend: server.url, apiKey });
}, 60_000);
afterAll(() => server?.close());

describe("remote like local", () => {
  it("a remote job's warnings reach its client with its log lines, not the server's stderr", async () => {
    const lines: string[] = [];
    const out = await lm.generate("x", { maxNewTokens: 2, eosTokenId: null }, async (m, tr) => {
      const got: number[] = [];
      for await (const _ of tr.iter(0, 3)) got.push((await m.lm_head.output).shape[1]!);
      return got;
    }, { ...remote, logs: (line: string) => void lines.push(line) }).catch((e: unknown) => e);
    expect(String(out)).toMatch(/MissedProviderError/);
    expect(lines.some((l) => /TsightWarning: tr\.iter: step 2 never came \(the generation ended after 2 steps\)/.test(l)), lines.join("\n")).toBe(true);
    // Several steps past the end are named as a range.
    await lm.generate("x", { maxNewTokens: 2, eosTokenId: null }, async (_m, tr) => {
      for await (const _ of tr.iter(0, 5));
    }, { ...remote, logs: (line: string) => void lines.push(line) });
    expect(lines.some((l) => /TsightWarning: tr\.iter: steps 2 to 4 never came \(the generation ended after 2 steps\); values asked for in them/.test(l)), lines.join("\n")).toBe(true);
  });

  it("a non-blocking job's result() answers its hybrid steps, as a blocking call does", async () => {
    const job = (await lm.trace("x", async (_m, tr) => await tr.local((v: number) => v * 2, 21), { ...remote, blocking: false })) as unknown as RemoteJob<number>;
    expect(await job.result()).toBe(42);
  });

  it("timeout bounds a job on the server as with remote: \"local\" (seconds; a TIMEOUT error), and is checked before anything is sent", async () => {
    const spin = async () => {
      for (;;);
    };
    const local = await LanguageModel.load("stdlib-gpt2");
    for (const [model, where] of [[lm, remote], [local, { remote: "local" as const, print: null, logs: null }]] as const) {
      const e = await model.trace("x", spin, { ...where, timeout: 1 }).catch((x: unknown) => x as RemoteError);
      expect((e as { code?: string }).code, String(e)).toBe("TIMEOUT");
      for (const bad of ["3s", 0, -1, Infinity]) await expect(model.trace("x", async () => 1, { ...where, timeout: bad as never })).rejects.toThrow(OptionsError);
    }
  });

  it("generate streams each step's tokens and text to onToken, as in process", async () => {
    const local = await LanguageModel.load("stdlib-gpt2");
    const collect = async (model: LanguageModel<GPT2LMHeadModel>, options?: RemoteOptions) => {
      const steps: { tokens: number[]; text: string[]; step: number }[] = [];
      const settings = { maxNewTokens: 6, onToken: (s: { tokens: number[]; text: string[]; step: number }) => void steps.push(s) };
      const out = options ? await model.generate(["def __init__(self", "import os"], settings, options) : await model.generate(["def __init__(self", "import os"], settings);
      return { steps, text: out.text };
    };
    const here = await collect(local);
    expect(here.steps.length).toBe(6);
    expect(await collect(lm, remote)).toEqual(here);
    const sandboxed = await collect(local, { remote: "local", print: null, logs: null });
    expect(sandboxed).toEqual(here);
    // With an intervention too: the streamed text is the continuation.
    const steps: string[] = [];
    const out = await lm.generate("def __init__(self", { maxNewTokens: 4, onToken: ({ text }) => void steps.push(text[0]!) }, async (m) => void (await m.transformer.h[0].output), remote);
    expect(steps.join("")).toBe(out.text[0]);
    // Hugging Face's repetition penalty and min_new_tokens travel in the job's settings, and are checked there.
    const settings = { maxNewTokens: 12, repetitionPenalty: 1.5, minNewTokens: 12 };
    const penalised = await local.generate("def __init__(self", settings);
    expect(penalised.text).not.toEqual((await local.generate("def __init__(self", { maxNewTokens: 12, minNewTokens: 12 })).text);
    expect((await lm.generate("def __init__(self", settings, remote)).text).toEqual(penalised.text);
    // A setting out of range is refused at the call, as in process (an OptionsError at the caller's line).
    const refused = await lm.generate("x", { maxNewTokens: 2, repetitionPenalty: -1 }, remote).catch((e) => e);
    expect(refused).toBeInstanceOf(OptionsError);
    expect(refused.message).toMatch(/generate: repetitionPenalty must be a number > 0, got -1/);
    expect(refused.userLine).toContain("remote-like-local.test.ts");
    // So do stop strings and returned sequences: the same rows as in process.
    const more = { maxNewTokens: 8, doSample: true, seed: 5, numReturnSequences: 3, stopStrings: ["\n"] };
    const sampled = await local.generate(["def f(x):", "import os"], more);
    expect(sampled.generated.shape).toEqual([6, 8]);
    const far = await lm.generate(["def f(x):", "import os"], more, remote);
    expect(far.generated.tolist()).toEqual(sampled.generated.tolist());
    expect(far.text).toEqual(sampled.text);
    await expect(lm.generate("x", { maxNewTokens: 2, doSample: true, numReturnSequences: 5000 }, remote)).rejects.toThrow(/numReturnSequences must be a whole number from 1 to 1024, got 5000/);
    await expect(lm.generate("x", { maxNewTokens: 2, stopStrings: ["a".repeat(300)] }, remote)).rejects.toThrow(/generate: stopStrings must be a string or a list of at most 64/);
    // The server checks them itself (a client that does not): a VALIDATION error for the request.
    const backend = new HttpBackend({ url: server.url, apiKey });
    const raw = (generate: Record<string, unknown>) => backend.submit({ model: toModelKey("LanguageModel", "stdlib-gpt2", null), kind: "generate", form: "invoke", source: "async () => 1", input: "x", generate: { maxNewTokens: 2, ...generate } } as never).catch((e) => e);
    for (const [generate, message] of [
      [{ repetitionPenalty: -1 }, /"generate.repetitionPenalty" must be a number > 0, got -1/],
      [{ doSample: true, numReturnSequences: 5000 }, /"generate.numReturnSequences" must be a whole number from 1 to 1024, got 5000/],
      [{ stopStrings: ["a".repeat(300)] }, /"generate.stopStrings" must be a string or a list of at most 64/],
    ] as const) {
      const e = await raw(generate);
      expect(e.code).toBe("VALIDATION");
      expect(e.message).toMatch(message);
    }
  });

  it("console.log in job code reaches the logs option, and the job's events when nobody waits", async () => {
    const lines: string[] = [];
    const value = await lm.trace("def f(", async (m) => {
      console.log("layer 0 norm", (await m.transformer.h[0].output).norm().item() > 0);
      return 1;
    }, { ...remote, logs: (line) => lines.push(line) });
    expect([value, lines]).toEqual([1, ["layer 0 norm true"]]);
    const job = await lm.trace("def f(", async () => void console.log("from a job nobody waits for"), { ...remote, blocking: false });
    const logs: string[] = [];
    for await (const { event } of job.events()) if (event.type === "log") logs.push(event.text);
    expect(logs).toEqual(["from a job nobody waits for"]);
  });

  it("a submission after seconds of synchronous work (the server closed the idle connection) is sent again", async () => {
    const jobsBefore = (await new HttpBackend({ url: server.url, apiKey }).list({ limit: 100 })).length;
    expect(await lm.trace("def f(", async () => 1, remote)).toBe(1);
    // Longer than the server's keep-alive (Node's 5 s): the pooled connection is closed under the busy client.
    const until = Date.now() + 6_000;
    while (Date.now() < until);
    expect(await lm.trace("def f(", async () => 2, remote)).toBe(2);
    expect((await new HttpBackend({ url: server.url, apiKey }).list({ limit: 100 })).length).toBe(jobsBefore + 2);
  }, 30_000);

  it("RemoteJob.attach takes the server's URL with a key, or a Backend, and refuses anything else at once", async () => {
    const job = await lm.trace("def f(", async (m) => (await m.lm_head.output).shape, { ...remote, blocking: false });
    expect(await RemoteJob.attach(job.id, server.url, { apiKey }).result()).toEqual([1, 3, 4096]);
    expect(await RemoteJob.attach(job.id, new HttpBackend({ url: server.url, apiKey })).result()).toEqual([1, 3, 4096]);
    for (const bad of [42, {}, { events: () => undefined }, null]) {
      expect(() => RemoteJob.attach(job.id, bad as never)).toThrow(ClientError);
    }
    expect(() => RemoteJob.attach(job.id, {} as never)).toThrow(/server must be the server's URL \(with \{ apiKey \}, or TSIGHT_API_KEY set\) or a Backend such as an HttpBackend, got an object with no properties/);
    expect(() => RemoteJob.attach("", server.url, { apiKey })).toThrow(/the job id must be a non-empty string/);
    expect(() => RemoteJob.attach(job.id, "not a url", { apiKey })).toThrow(/not a url/);
  });
});

describe("remote errors and logs in a user's script (plain .mjs in a child process)", () => {
  it("point at the user's file, line and column, and print job logs on stderr", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-user-script-"));
    const file = path.join(dir, "user.mjs");
    const tsight = pathToFileURL(path.join(root, "packages/tsight/dist/index.js")).href;
    // One-line functions in a file of their own, imported by the script (its call names the script's line).
    const helpers = `export const probe = async (m) => (await m.transformer.h[0].output).matmul(await m.transformer.h[1].output); // SHAPE-4
export const lens = async (m) => await m.transformer.h[9].output; // RANGE-2
`;
    fs.writeFileSync(path.join(dir, "helpers.mjs"), helpers);
    const text = `import { LanguageModel } from ${JSON.stringify(tsight)};
import { probe, lens } from "./helpers.mjs";
const lm = await LanguageModel.fromServer("stdlib-gpt2");
const report = (what, e) => console.log(JSON.stringify({ what, name: e.name, userLine: e.userLine, frame: e.stack.split("\\n").find((l) => l.startsWith("    at ")) }));

// A function defined above the call that uses it.
const misfit = async (m) => {
  const h = await m.transformer.h[0].output;
  return h.matmul(h); // SHAPE-1
};
await lm.trace("def f(", misfit, { remote: true }).catch((e) => report("above", e));

await lm.trace("def f(", async (m) => {
  const h = await m.transformer.h[1].output;
  return h.matmul(h); // SHAPE-2
}, { remote: true }).catch((e) => report("inline", e));

const scale = 2;
await lm.trace("def f(", async (m) => (await m.lm_head.output).mul(scale) /* FREE */, { remote: true }).catch((e) => report("free", e));

// Raised inside the job's isolate (not by the host): pointed at all the same.
await lm.trace("def f(", async (m) => await m.transformer.h[9].output /* RANGE */, { remote: true }).catch((e) => report("range", e));
// Refused by the host at a tracer call (no gradients recorded): pointed at the call.
await lm.trace("def f(", async (m, tr) => {
  const logits = await m.lm_head.output;
  await tr.backward(logits.sum()); // NOGRAD
}, { remote: true }).catch((e) => report("nograd", e));
// Defined in another file: pointed at there.
await lm.trace("def f(", probe, { remote: true }).catch((e) => report("helper", e));
await lm.trace("def f(", lens, { remote: true }).catch((e) => report("helperRange", e));
// A function whose text is not in any file: the message names the position in the text sent.
const built = new Function("return async (m) => await m.transformer." + "nope.output")();
await lm.trace("def f(", built, { remote: true }).catch((e) => console.log(JSON.stringify({ what: "built", message: e.message, userLine: e.userLine ?? null })));

await lm.trace("def f(", async () => void console.log("hello from the job"), { remote: true });
await lm.trace("def f(", async () => void console.log("not shown"), { remote: true, logs: null });
console.log("end");
`;
    fs.writeFileSync(file, text);
    const where = (marker: string, token: string, inFile = file, content = text) => {
      const lines = content.split("\n");
      const line = lines.findIndex((l) => l.includes(marker));
      return `${inFile}:${line + 1}:${lines[line]!.indexOf(token) + 1}`;
    };
    const inHelpers = (marker: string, token: string) => where(marker, token, path.join(dir, "helpers.mjs"), helpers);
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [file], { env: { ...process.env, TSIGHT_HOST: server.url, TSIGHT_API_KEY: apiKey }, timeout: 60_000 });
    const reports = Object.fromEntries(stdout.trim().split("\n").slice(0, -1).map((l) => [JSON.parse(l).what, JSON.parse(l)]));
    expect(reports.above).toMatchObject({ name: "ShapeError", userLine: where("SHAPE-1", "matmul"), frame: `    at ${where("SHAPE-1", "matmul")}` });
    expect(reports.inline).toMatchObject({ name: "ShapeError", userLine: where("SHAPE-2", "matmul"), frame: `    at ${where("SHAPE-2", "matmul")}` });
    expect(reports.free).toMatchObject({ name: "FreeVariableError", userLine: where("FREE", "scale"), frame: `    at ${where("FREE", "scale")}` });
    expect(reports.range).toMatchObject({ name: "TraceError", userLine: where("RANGE", "[9]"), frame: `    at ${where("RANGE", "[9]")}` });
    expect(reports.nograd).toMatchObject({ name: "TraceError", userLine: where("NOGRAD", "backward"), frame: `    at ${where("NOGRAD", "backward")}` });
    expect(reports.helper).toMatchObject({ name: "ShapeError", userLine: inHelpers("SHAPE-4", "matmul"), frame: `    at ${inHelpers("SHAPE-4", "matmul")}` });
    expect(reports.helperRange).toMatchObject({ name: "TraceError", userLine: inHelpers("RANGE-2", "[9]") });
    expect(reports.built.message).toMatch(/^transformer \(GPT2Model\) has no module "nope"; its modules are: wte, wpe, drop, h, ln_f\n    at intervention\.js:1:\d+$/);
    expect(reports.built.userLine).toBeNull();
    expect(stdout.trim().split("\n").at(-1)).toBe("end");
    // stderr is a pipe here, not a terminal: log lines are printed all the same, and only those not silenced.
    expect(stderr).toContain("hello from the job\n");
    expect(stderr).not.toContain("not shown");
  }, 90_000);
});
