/** Sampling is reproducible with a seed and reduces to greedy at its limits. */
import { describe, expect, it } from "vitest";
import { fixtureModel, fixture, ref } from "../../../../test/fixtures.js";
import { Generator } from "../tensor/index.js";
import { generate } from "./generate.js";
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
