/** Sampling is reproducible with a seed and reduces to greedy at its limits. */
import { describe, expect, it } from "vitest";
import { fixtureModel, fixture, maxAbsDiff, ref } from "../../../../test/fixtures.js";
import { LanguageModel } from "../intervention/index.js";
import { Generator, Tensor } from "../tensor/index.js";
import { generate, type GenerateOptions } from "./generate.js";
import { argmaxRow, sampleRow } from "./sampling.js";

describe("sampling", () => {
  it("repeats with the same seed and differs with another", async () => {
    const model = await fixtureModel("stdlib-gpt2");
    const ids = ref(await fixture("stdlib-gpt2"), "probe0/input_ids");
    const run = (seed: number) => generate(model, ids, undefined, { maxNewTokens: 16, temperature: 1.2, topK: 50, seed, eosTokenId: null });
    const a = await run(7);
    const b = await run(7);
    const c = await run(8);
    expect(a.sequences.tolist()).toEqual(b.sequences.tolist());
    expect(a.sequences.tolist()).not.toEqual(c.sequences.tolist());
  });

  it("equals greedy with topK 1 or a tiny topP", async () => {
    const model = await fixtureModel("stdlib-llama");
    const f = await fixture("stdlib-llama");
    const ids = ref(f, "probe0/input_ids");
    const greedy = ref(f, "probe0/generate").narrow(1, 0, ids.shape[1]! + 10).tolist();
    for (const opts of [{ topK: 1 }, { topP: 1e-6 }, { temperature: 1e-3 }]) {
      const g = await generate(model, ids, undefined, { maxNewTokens: 10, seed: 1, ...opts });
      expect(g.sequences.tolist(), JSON.stringify(opts)).toEqual(greedy);
    }
  });

  it("draws tokens in proportion to their probability", () => {
    const logits = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
    const rng = new Generator(123);
    const counts = [0, 0, 0];
    for (let i = 0; i < 20000; i++) counts[sampleRow(logits, {}, rng)]!++;
    expect(counts[0]! / 20000).toBeCloseTo(0.5, 1);
    expect(counts[1]! / 20000).toBeCloseTo(0.3, 1);
    expect(counts[2]! / 20000).toBeCloseTo(0.2, 1);
    // topP 0.7 keeps {0.5, 0.3}: the third token is never drawn.
    for (let i = 0; i < 2000; i++) expect(sampleRow(logits, { topP: 0.7 }, rng)).not.toBe(2);
    expect(argmaxRow(Float32Array.from([1, 3, 3]))).toBe(1);
  });

  it("refuses bad sampling settings", async () => {
    const model = await fixtureModel("stdlib-gpt2");
    const ids = ref(await fixture("stdlib-gpt2"), "probe0/input_ids");
    await expect(generate(model, ids, undefined, { maxNewTokens: 2, temperature: 0 })).rejects.toThrow(/temperature/);
    await expect(generate(model, ids, undefined, { maxNewTokens: 2, topK: 0 })).rejects.toThrow(/topK/);
    await expect(generate(model, ids, undefined, { maxNewTokens: 2, topP: 1.5 })).rejects.toThrow(/topP/);
    await expect(generate(model, ids, undefined, { maxNewTokens: -1 })).rejects.toThrow(/maxNewTokens/);
  });
});

describe("repetitionPenalty and minNewTokens, as Hugging Face's logits processors (tokens from transformers 5.18's generate)", () => {
  const prompt = () => new Tensor("int64", BigInt64Array.of(324n, 615n, 638n, 636n, 284n), [1, 5]);
  const tokens = async (options: Partial<GenerateOptions>, ids = prompt(), mask?: Tensor) =>
    (await generate(await fixtureModel("stdlib-gpt2"), ids, mask, { maxNewTokens: 12, eosTokenId: null, padTokenId: 0, ...options })).generated.tolist();

  it("repetitionPenalty divides seen tokens' positive logits and multiplies negative ones, prompt and left padding included", async () => {
    expect(await tokens({})).toEqual([[12, 883, 26, 579, 539, 914, 12, 883, 26, 579, 539, 914]]);
    expect(await tokens({ repetitionPenalty: 1.5 })).toEqual([[12, 883, 26, 579, 539, 914, 9, 384, 358, 26, 265, 1236]]);
    expect(await tokens({ repetitionPenalty: 0.7 })).toEqual([[12, 883, 12, 883, 12, 883, 12, 883, 12, 883, 12, 883]]);
    const padded = new Tensor("int64", BigInt64Array.of(0n, 0n, 324n, 615n, 638n, 324n, 615n, 638n, 636n, 284n), [2, 5]);
    const mask = new Tensor("int64", BigInt64Array.of(0n, 0n, 1n, 1n, 1n, 1n, 1n, 1n, 1n, 1n), [2, 5]);
    expect(await tokens({ maxNewTokens: 8, repetitionPenalty: 1.3 }, padded, mask)).toEqual([
      [636, 284, 12, 883, 26, 579, 539, 914],
      [12, 883, 26, 579, 539, 914, 9, 384],
    ]);
  });

  it("minNewTokens rules the eos tokens out until that many came", async () => {
    expect(await tokens({ eosTokenId: 883 })).toEqual([[12, 883]]);
    expect(await tokens({ eosTokenId: 883, minNewTokens: 4 })).toEqual([[12, 426, 452, 12, 733, 635, 320, 265, 309, 14, 452, 275]]);
  });

  it("a bad value is a RangeError, and the logits an intervention holds are not changed", async () => {
    await expect(tokens({ repetitionPenalty: 0 })).rejects.toThrow(/repetitionPenalty must be a number > 0, got 0/);
    await expect(tokens({ minNewTokens: 1.5 })).rejects.toThrow(/minNewTokens must be a non-negative integer, got 1.5/);
    // Through LanguageModel (its option names), with the prompt's logits read at step 0: those of a plain trace.
    const lm = await LanguageModel.load("stdlib-gpt2");
    const { value, generated } = await lm.generate(prompt(), { maxNewTokens: 12, repetitionPenalty: 1.5, eosTokenId: null }, async (m) => (await m.lm_head.output) as Tensor);
    expect(generated.tolist()).toEqual([[12, 883, 26, 579, 539, 914, 9, 384, 358, 26, 265, 1236]]);
    const traced = await lm.trace(prompt(), async (m) => (await m.lm_head.output) as Tensor);
    expect(maxAbsDiff(value.index(0, -1), traced.index(0, -1))).toBeLessThan(1e-5);
  });
});

describe("stopStrings and numReturnSequences, as Hugging Face's generate", () => {
  const prompt = () => new Tensor("int64", BigInt64Array.of(324n, 615n, 638n, 636n, 284n), [1, 5]);

  it("a row ends at the token completing a stop string: transformers 5.18's tokens for each way one can be met", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    // Greedy from the prompt: ", config: ModelType, config: ModelType, **kwargs)" as [",", " config", ":", " M", "odel", "Type", ...].
    const all = [12, 883, 26, 579, 539, 914, 12, 883, 26, 579, 539, 914, 12, 733, 635, 9];
    const stopped = async (stopStrings: string | string[]) => ((await lm.generate(prompt(), { maxNewTokens: 16, eosTokenId: null, stopStrings })).generated.tolist() as number[][])[0];
    // Tokens from transformers 5.18: generate(..., stop_strings=..., tokenizer=tok), greedy, 16 new tokens.
    const hf: [string | string[], number][] = [
      ["Type", 6], // a whole token
      [["odelT"], 6], // across two tokens
      [["Mod"], 5], // ending inside the last token
      [["del"], 5], // inside the last token, not at its start
      [["self,"], 1], // starting in the prompt
      [[" config", "zzz"], 2], // the first of several met
      [["**k"], 15],
      [["Type, config: ModelType, **"], 14], // spanning many tokens
      [["kwargs)"], 16], // met at the last token
      [["ModelType"], 6], // the first time it occurs
    ];
    for (const [stops, n] of hf) expect(await stopped(stops), JSON.stringify(stops)).toEqual(all.slice(0, n));
    // A row that stops gets the pad token after it, as at eos, while the others go on.
    const batch = await lm.generate(["def __init__(self", "import os"], { maxNewTokens: 6, eosTokenId: null, padTokenId: 0, stopStrings: "config" });
    const rows = batch.generated.tolist() as number[][];
    expect(rows[0]).toEqual([12, 883, 0, 0, 0, 0]);
    expect(rows[1]).toEqual(((await lm.generate("import os", { maxNewTokens: 6, eosTokenId: null })).generated.tolist() as number[][])[0]);
    await expect(stopped([""])).rejects.toThrow(/stopStrings must be a string or a list of at most 64, each of 1 to 256 characters/);
    await expect(generate(await fixtureModel("stdlib-gpt2"), prompt(), undefined, { maxNewTokens: 2, stopStrings: "x" })).rejects.toThrow(/stopStrings needs the tokenizer/);
  });

  it("numReturnSequences repeats each prompt's row, sampled as the repeated rows are; greedy is refused", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const settings = { maxNewTokens: 6, doSample: true, seed: 3 };
    const out = await lm.generate(["def f(x):", "import os"], { ...settings, numReturnSequences: 3 });
    const repeated = await lm.generate(["def f(x):", "def f(x):", "def f(x):", "import os", "import os", "import os"], settings);
    expect(out.generated.shape).toEqual([6, 6]);
    expect(out.generated.tolist()).toEqual(repeated.generated.tolist());
    expect(new Set(out.text.slice(0, 3)).size).toBeGreaterThan(1);
    // An intervention sees the repeated rows.
    const { value } = await lm.generate("def f(x):", { ...settings, numReturnSequences: 2 }, async (m) => (await m.transformer.h[0].output).shape);
    expect(value).toEqual([2, 5, 256]);
    await expect(lm.generate("x", { maxNewTokens: 2, numReturnSequences: 2 })).rejects.toThrow(/numReturnSequences of 2 needs sampling/);
    await expect(lm.generate("x", { ...settings, numReturnSequences: 0 })).rejects.toThrow(/numReturnSequences must be a whole number from 1 to 1024, got 0/);
    await expect(lm.generate(async () => 1, { ...settings, numReturnSequences: 2 })).rejects.toThrow(/numReturnSequences takes an input/);
    await expect(lm.generate("x", { ...settings, numReturnSequences: 50 }, async () => 1, { maxInputTokens: 100 })).rejects.toThrow(/1 row × 50 sequences of 7 tokens \(350\), more than the 100 tokens/);
  });
});
