/**
 * Every architecture against Hugging Face transformers' own outputs (../shared/fixtures): module names, call
 * order, every recorded module input/output, logits, padded batches, greedy generation, and the layer-0 gradient.
 */
import { describe, expect, it } from "vitest";
import { fixture, fixtureModel, fixtureWeights, hfFixtures, maxAbsDiff, recordForward, ref, stdlibModels, type FixtureName } from "../../../../test/fixtures.js";
import { Model } from "../intervention/index.js";
import { isPoint } from "../nn/index.js";
import { Tensor } from "../tensor/index.js";
import { generate } from "./generate.js";
import { buildModel } from "./registry.js";
import { loadWeights } from "./weights.js";

const TOL = 1e-4;

/** Rope types whose frequencies depend on the batch's longest sequence (so padding a short prompt can change them). */
function longContextRope(config: Record<string, unknown>): boolean {
  const params = (config.rope_scaling ?? config.rope_parameters) as Record<string, unknown> | undefined;
  return params?.rope_type === "longrope" || params?.rope_type === "dynamic";
}
/** Runs one forward recording call order and the first input/output of every module. */
async function record(name: FixtureName, ids: Tensor, mask?: Tensor) {
  const model = await fixtureModel(name);
  return { model, ...(await recordForward(model, ids, mask ? { attentionMask: mask } : {})) };
}

describe.each([...hfFixtures, ...stdlibModels])("%s matches Hugging Face", (name) => {
  const inputKey = name.startsWith("stdlib") ? "probe0/input_ids" : "input_ids";

  it("has Hugging Face's module names, in registration order", async () => {
    const f = await fixture(name);
    const model = await fixtureModel(name);
    // Operation points (attn.source.q, ...) are tsight's own; the rest is Hugging Face's tree.
    expect(model.namedModules().flatMap(([p, m]) => (isPoint(m) ? [] : [p]))).toEqual(f.manifest.modules);
    if (f.manifest.parameters) {
      // Hugging Face lists a tied head once, under the embedding; tsight's head shares that tensor.
      const tied = new Set(Object.keys(model.weightRules().tied));
      const mine = [...model.namedParameters()].filter(([n]) => !tied.has(n)).map(([n, p]) => [n, [...p.shape]]);
      expect(mine).toEqual(Object.entries(f.manifest.parameters));
    }
  });

  it("calls modules in Hugging Face's order and reproduces every recorded input, output and the logits", async () => {
    const f = await fixture(name);
    const run = await record(name, ref(f, inputKey));
    expect(run.pre).toEqual(f.manifest.single.pre_order);
    expect(run.post).toEqual(f.manifest.single.post_order);
    const keys = [...f.reference.keys()].filter((k) => k.startsWith("single/") && k !== "single/logits");
    expect(keys.length).toBeGreaterThan(20);
    for (const key of keys) {
      const mine = run.values.get(key.slice("single/".length));
      expect(mine, key).toBeDefined();
      expect(maxAbsDiff(mine!, ref(f, key)), key).toBeLessThan(TOL);
    }
    expect(maxAbsDiff(run.logits, ref(f, "single/logits"))).toBeLessThan(TOL);
  });

  if (name.startsWith("stdlib")) {
    it("continues each probe with exactly the reference's 24 greedy tokens", async () => {
      const f = await fixture(name);
      const model = await fixtureModel(name);
      for (let i = 0; i < f.manifest.probes!.length; i++) {
        const g = await generate(model, ref(f, `probe${i}/input_ids`), undefined, { maxNewTokens: 24 });
        expect(g.sequences.tolist(), `probe ${i}`).toEqual(ref(f, `probe${i}/generate`).tolist());
      }
    });
    return;
  }

  it("matches the unpadded row of a padded batch, and the padded row equals the prompt run alone", async () => {
    const f = await fixture(name);
    let ids = ref(f, "batch_ids");
    let mask = ref(f, "batch_mask");
    const run = await record(name, ids, mask);
    expect(maxAbsDiff(run.logits.index(1), ref(f, "batch/logits").index(1))).toBeLessThan(TOL);
    if (longContextRope(f.config)) {
      // LongRoPE picks its factors by the longest sequence of the whole batch (as Hugging Face does): the fixture's
      // 4-token padded row gets long factors in the batch and short ones alone (PyTorch differs by 0.019 there
      // too). Past the original context both pick the long factors: pad input_ids (6 tokens) beside 8 tokens.
      const prompt = ref(f, "input_ids");
      ids = Tensor.cat([Tensor.cat([Tensor.zeros([1, 2], "int64"), prompt], 1), Tensor.cat([prompt, prompt.narrow(1, 0, 2)], 1)], 0);
      mask = Tensor.cat([Tensor.cat([Tensor.zeros([1, 2], "int64"), Tensor.full([1, 6], 1, "int64")], 1), Tensor.full([1, 8], 1, "int64")], 0);
    }
    const padded = await record(name, ids, mask);
    // Row 0 is left-padded; positions come from the mask, so its real tokens see what they would see alone.
    const real = mask.index(0).toArray().filter((m) => m === 1).length;
    const T = ids.shape[1]!;
    const alone = await record(name, ids.index(0).narrow(0, T - real, real).unsqueeze(0));
    expect(maxAbsDiff(padded.logits.index(0).narrow(0, T - real, real), alone.logits.index(0))).toBeLessThan(TOL);
  });

  it("generates exactly Hugging Face's greedy tokens, alone and in a padded batch", async () => {
    const f = await fixture(name);
    const model = await fixtureModel(name);
    const single = await generate(model, ref(f, "input_ids"), undefined, { maxNewTokens: 8, padTokenId: 0 });
    expect(single.sequences.tolist()).toEqual(ref(f, "generate/single").tolist());
    const batch = await generate(model, ref(f, "batch_ids"), ref(f, "batch_mask"), { maxNewTokens: 8, padTokenId: 0 });
    expect(batch.sequences.tolist()).toEqual(ref(f, "generate/batch").tolist());
  });

  it("gives the gradient of a log-probability with respect to layer 0's output", async () => {
    const f = await fixture(name);
    const model = await fixtureModel(name);
    const layer0 = model.layerPaths()[0];
    let h: Tensor | undefined;
    model.tree.hooks = {
      async call(m, args, forward) {
        const out = await forward(args);
        if (m.path !== layer0) return out;
        h = (out as Tensor).detach().requiresGrad_();
        return h;
      },
    };
    const { logits } = await model.call(ref(f, "input_ids"));
    const logProb = logits.index(0, -1).logSoftmax(-1).index(5);
    logProb.backward();
    expect(Math.abs(logProb.item() - ref(f, "intervention/grad_l0/value").item())).toBeLessThan(TOL);
    expect(maxAbsDiff(h!.grad!, ref(f, "intervention/grad_l0/grad"))).toBeLessThan(TOL);
  });
});

describe("GPT-2's attention scale settings, as Hugging Face's GPT2Attention reads them", () => {
  it("scale_attn_weights: false leaves q kᵀ unscaled; scale_attn_by_inverse_layer_idx divides layer N's by N + 1", async () => {
    const f = await fixture("gpt2");
    const scoresOf = async (config: Record<string, unknown>) => {
      const model = buildModel({ ...f.config, ...config });
      loadWeights(model, await fixtureWeights("gpt2"));
      const lm = new Model(model);
      return lm.trace([ref(f, "input_ids")], async (m: any) => {
        const attn = m.transformer.h[1].attn.source;
        const [q, k, scores] = [await attn.q.output, await attn.k.output, await attn.scores.output] as Tensor[];
        return { qk: q!.matmul(k!.transpose(-2, -1)), scores: scores! };
      });
    };
    // Compared where the causal mask leaves the scores alone (the lower triangle, diagonal included).
    const lower = (t: Tensor) => t.index(0, 0).tolist() as number[][];
    const expectScaled = ({ qk, scores }: { qk: Tensor; scores: Tensor }, by: number) =>
      lower(qk).forEach((row, i) => row.slice(0, i + 1).forEach((v, j) => expect(lower(scores)[i]![j]!).toBeCloseTo(v * by, 5)));
    const D = (f.config.n_embd as number) / (f.config.n_head as number);
    expectScaled(await scoresOf({}), 1 / Math.sqrt(D));
    expectScaled(await scoresOf({ scale_attn_weights: false }), 1);
    expectScaled(await scoresOf({ scale_attn_by_inverse_layer_idx: true }), 1 / Math.sqrt(D) / 2);
    expectScaled(await scoresOf({ scale_attn_weights: false, scale_attn_by_inverse_layer_idx: true }), 1 / 2);
  });
});

describe("Gemma's attention soft-capping, as Hugging Face applies it", () => {
  it("Gemma 3 ignores attn_logit_softcapping (HF's Gemma3Attention passes no softcap); Gemma 2 caps its scores", async () => {
    const logitsWith = async (name: "gemma2" | "gemma3_text", config: Record<string, unknown>) => {
      const f = await fixture(name);
      const model = buildModel({ ...f.config, ...config });
      loadWeights(model, await fixtureWeights(name));
      return { f, logits: firstLogits(await model.call(ref(f, "input_ids"))) };
    };
    // A cap of 0.05 would change every score of these weights: HF's Gemma 3 logits stay those of no cap.
    const gemma3 = await logitsWith("gemma3_text", { attn_logit_softcapping: 0.05 });
    expect(maxAbsDiff(gemma3.logits, ref(gemma3.f, "single/logits"))).toBeLessThan(TOL);
    const gemma2 = await logitsWith("gemma2", { attn_logit_softcapping: 0.05 });
    expect(maxAbsDiff(gemma2.logits, ref(gemma2.f, "single/logits"))).toBeGreaterThan(1e-3);
  });
});

const firstLogits = (out: unknown): Tensor => (out as { logits: Tensor }).logits;
