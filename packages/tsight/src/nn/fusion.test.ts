/**
 * Fused decoder blocks are invisible: for every fixture the logits equal the op-by-op forward's, with far fewer
 * kernel calls; a block with a watched value inside runs op by op and gives that value exactly; a block that
 * cannot be captured (a mixture of experts, which routes by reading data) runs op by op; generation steps, whose
 * KV cache grows, run fused too (one graph for every length).
 */
import { afterEach, describe, expect, it } from "vitest";
import { fixture, fixtureModel, hfFixtures, maxAbsDiff, ref, stdlibModels } from "../../../../test/fixtures.js";
import { LanguageModel } from "../intervention/index.js";
import { generate } from "../models/index.js";
import { engineStats, setFusion, Tensor } from "../tensor/index.js";

/** Runs `work` with fusion on or off, counting kernel calls. */
async function withFusion<T>(on: boolean, work: () => Promise<T>): Promise<{ value: T; kernels: number }> {
  setFusion(on);
  try {
    const runs = engineStats().runs;
    const value = await work();
    return { value, kernels: engineStats().runs - runs };
  } finally {
    setFusion(null);
  }
}

afterEach(() => setFusion(null));

describe("fused decoder blocks", () => {
  it.each([...hfFixtures, ...stdlibModels])("%s: fused logits equal the op-by-op forward's", async (name) => {
    const model = await fixtureModel(name);
    const f = await fixture(name);
    const ids = ref(f, name.startsWith("stdlib") ? "probe0/input_ids" : "input_ids");
    const eager = await withFusion(false, () => model.call(ids));
    await withFusion(true, () => model.call(ids)); // captures and compiles
    const fused = await withFusion(true, () => model.call(ids));
    expect(maxAbsDiff(fused.value.logits, eager.value.logits)).toBeLessThanOrEqual(1e-6);
    if (name === "mixtral" || name === "qwen3_moe") expect(fused.kernels).toBe(eager.kernels); // routing reads data
    else expect(fused.kernels).toBeLessThan(eager.kernels / 3);
  });

  it.each(["stdlib-gpt2", "llama", "gemma2", "phi3"] as const)("%s: generation steps (a KV cache growing each step) run fused, token for token as op by op", async (name) => {
    const model = await fixtureModel(name);
    const f = await fixture(name);
    const ids = ref(f, name.startsWith("stdlib") ? "probe0/input_ids" : "input_ids");
    const run = () => generate(model, ids, undefined, { maxNewTokens: 8, eosTokenId: null });
    const eager = await withFusion(false, run);
    const fused = await withFusion(true, run);
    expect(fused.value.sequences.tolist()).toEqual(eager.value.sequences.tolist());
    expect(fused.kernels).toBeLessThan(eager.kernels / 3);
  });

  it("a block with a watched value inside runs op by op and gives it exactly; the others stay fused", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const read = () =>
      lm.trace("def __init__(self", async (m) => ({
        fc: (await m.transformer.h[1].mlp.c_fc.output) as Tensor,
        h2: (await m.transformer.h[2].output) as Tensor,
        logits: (await m.lm_head.output) as Tensor,
      }));
    const eager = await withFusion(false, read);
    await withFusion(true, read);
    const fused = await withFusion(true, read);
    expect(maxAbsDiff(fused.value.fc, eager.value.fc)).toBe(0);
    expect(maxAbsDiff(fused.value.h2, eager.value.h2)).toBe(0);
    expect(maxAbsDiff(fused.value.logits, eager.value.logits)).toBe(0);
    // Three of the four blocks fused (block 1 op by op).
    expect(fused.kernels).toBeLessThan(eager.kernels * 0.6);
    // A cache of every module watches everything: nothing fuses, every value is recorded.
    const cached = await withFusion(true, () => lm.trace("def __init__(self", async (m, tr) => {
      const c = tr.cache();
      await m.lm_head.output;
      return c.keys().length;
    }));
    expect(cached.value).toBeGreaterThan(40);
  });

  it("numbering of calls stays right around fused blocks: a later trace reads what a trace without fusion reads", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const run = () =>
      lm.trace(async (tr) => {
        const a = tr.invoke("def f(", async (m) => (await m.transformer.h[3].attn.c_attn.output) as Tensor);
        const b = tr.invoke("import os", async (m) => (await m.transformer.h[0].mlp.output) as Tensor);
        return Promise.all([a, b]);
      });
    const [eager, fused] = [await withFusion(false, run), await withFusion(true, run)];
    expect(maxAbsDiff(fused.value[0], eager.value[0])).toBe(0);
    expect(maxAbsDiff(fused.value[1], eager.value[1])).toBe(0);
  });
});
