/**
 * Options in the wrong place are errors that say where they belong, before anything runs or is sent: a remote
 * option inside the generation options used to run the generation locally (and fail on a meta model with a
 * MetaTensorError that said nothing about the mistake).
 */
import { describe, expect, it } from "vitest";
import { OptionsError } from "../intervention/options.js";
import { LanguageModel } from "./language-model.js";

const meta = await LanguageModel.load("stdlib-gpt2", { dispatch: false });
const fn = async () => 1;

/** The OptionsError a call fails with (or a note that it did not). */
async function mistake(call: () => Promise<unknown>): Promise<string> {
  const e = await call().then(
    () => new Error("no error"),
    (x: unknown) => x as Error,
  );
  expect(e).toBeInstanceOf(OptionsError);
  return e.message;
}

describe("misplaced and unknown options", () => {
  it("a remote option among the generation options names where it goes", async () => {
    const message = await mistake(() => meta.generate("def f(", { maxNewTokens: 4, remote: true } as never));
    expect(message).toMatch(/generate: "remote" is an option of the run, not of the generation: pass it after them, lm\.generate\(input, \{ maxNewTokens: 8 \}, \{ remote: \.\.\. \}\)/);
    expect(await mistake(() => meta.generate("def f(", { maxNewTokens: 4, backend: "http://127.0.0.1:1" } as never, fn))).toMatch(/"backend" is an option of the run/);
  });

  it("a generation option given to a trace, or among the run options of generate", async () => {
    expect(await mistake(() => meta.trace("def f(", fn, { maxNewTokens: 3 } as never))).toMatch(/trace: "maxNewTokens" is a generation option; trace runs one forward pass\. To generate: lm\.generate\(input, \{ maxNewTokens: \.\.\. \}, fn\)/);
    expect(await mistake(() => meta.generate("def f(", { maxNewTokens: 4 }, fn, { temperature: 0.5 } as never))).toMatch(/generate: "temperature" is a generation option: put it in the second argument/);
  });

  it("options where the intervention function belongs", async () => {
    expect(await mistake(() => meta.trace("def f(", { remote: true } as never))).toMatch(/trace\(input, fn, options\): the intervention function is missing \(got an options object in its place\); call trace\(input, async \(m, tr\) => \.\.\., options\)/);
    expect(await mistake(() => meta.scan("def f(", undefined as never))).toMatch(/scan\(input, fn, options\): the intervention function is missing;/);
    expect(await mistake(() => meta.trace(fn as never, fn as never))).toMatch(/trace\(fn\) takes one function/);
    expect(await mistake(() => meta.session({ remote: true } as never))).toMatch(/session\(fn, options\): the session function is missing/);
    expect(await mistake(() => meta.generate("def f(", undefined as never))).toMatch(/generate\(input, options, \.\.\.\): the generation options are missing/);
  });

  it("unknown names, with the nearest known one (Python's spelling too)", async () => {
    expect(await mistake(() => meta.generate("def f(", { max_new_tokens: 4 } as never))).toMatch(/generate: unknown option "max_new_tokens" \(did you mean "maxNewTokens"\?\); the options of a generation are: maxNewTokens, doSample/);
    expect(await mistake(() => meta.trace("def f(", fn, { remtoe: true } as never))).toMatch(/trace: unknown option "remtoe" \(did you mean "remote"\?\)/);
    expect(await mistake(() => meta.trace("def f(", fn, { verbose: true } as never))).toMatch(/trace: unknown option "verbose"; the options of trace are: vars, grad, .*remote, backend, blocking/);
    expect(await mistake(() => meta.trace("def f(", fn, "remote" as never))).toMatch(/trace: the options must be an object, got the string "remote"/);
  });

  it("load and fromServer check their option names too", async () => {
    const e = (await LanguageModel.load("stdlib-gpt2", { device_map: "auto" } as never).catch((x: unknown) => x)) as Error;
    expect(e).toBeInstanceOf(OptionsError);
    expect(e.message).toMatch(/LanguageModel\.load: unknown option "device_map"; its options are: dispatch, tokenizer, rename, architecture, revision/);
    expect(((await LanguageModel.load("stdlib-gpt2", { dipsatch: false } as never).catch((x: unknown) => x)) as Error).message).toMatch(/unknown option "dipsatch" \(did you mean "dispatch"\?\)/);
    const f = (await LanguageModel.fromServer("stdlib-gpt2", { host: "http://127.0.0.1:1" } as never).catch((x: unknown) => x)) as Error;
    expect(f).toBeInstanceOf(OptionsError);
    expect(f.message).toMatch(/LanguageModel\.fromServer: unknown option "host"; its options are: backend, apiKey, architecture/);
  });

  it("checks happen before anything runs: a correct call still works", async () => {
    expect(await meta.scan("def f(", async (m) => (await m.lm_head.output).shape, { vars: {} })).toEqual([1, 3, 4096]);
  });
});
