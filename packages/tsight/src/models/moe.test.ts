/**
 * The experts' matrices are used as views of the stacked weights (no copy per call, see MoeExperts.expertViews): the
 * views follow a stacked weight that is replaced, and give what slicing the stacked weight gives.
 */
import { describe, expect, it } from "vitest";
import { fixtureDir, maxAbsDiff } from "../../../../test/fixtures.js";
import { LanguageModel } from "../intervention/index.js";
import { Tensor } from "../tensor/index.js";

const IDS = [[5, 9, 33, 2, 100, 7]];

describe("MoE experts as views of the stacked weights", () => {
  it("follow a stacked weight replaced with setParameter, and equal the experts sliced out by ops", async () => {
    const lm = await LanguageModel.load(fixtureDir("mixtral"));
    const experts = lm.model.get("model.layers.0.mlp.experts")!;
    const read = () => lm.trace(IDS, async (m: any) => [(await m.model.layers[0].mlp.experts.output) as Tensor, (await m.lm_head.output) as Tensor]);
    const [before, logits] = await read();
    expect(before.abs().max().item()).toBeGreaterThan(0);
    // Slices taken by ops (the path while gradients are recorded through the weights) give the same numbers.
    const name = "model.layers.0.mlp.experts.down_proj";
    const down = experts.getParam("down_proj");
    lm.model.setParameter(name, down.detach().requiresGrad_());
    expect(maxAbsDiff((await read())[0], before)).toBeLessThan(1e-6);
    // A replaced stacked weight is what the next forward multiplies by: every expert's down projection zero.
    lm.model.setParameter(name, Tensor.zeros(down.shape));
    const [zeroed, changed] = await read();
    expect(zeroed.abs().max().item()).toBe(0);
    expect(maxAbsDiff(changed, logits)).toBeGreaterThan(1e-4);
    lm.model.setParameter(name, down);
    expect(maxAbsDiff((await read())[1], logits)).toBe(0);
  });
});

describe("the router's logits in a trace taking gradients", () => {
  // The top-k weights are renormalised probabilities of the logits: w = v / sum(v), v = softmax(logits)[top k]. Their
  // gradient reaches the logits through that, as PyTorch's autograd takes it (Hugging Face's router is the same).
  const throughRouter = (logits: number[], picked: number[], gw: number[]): number[] => {
    const top = Math.max(...logits);
    const e = logits.map((l) => Math.exp(l - top));
    const z = e.reduce((a, b) => a + b, 0);
    const p = e.map((x) => x / z);
    const v = picked.map((i) => p[i]!);
    const s = v.reduce((a, b) => a + b, 0);
    const w = v.map((x) => x / s);
    const dot = gw.reduce((a, g, j) => a + g * w[j]!, 0);
    const dp = p.map(() => 0);
    picked.forEach((i, j) => (dp[i] = (gw[j]! - dot) / s));
    const pdp = p.reduce((a, pi, k) => a + pi * dp[k]!, 0);
    return p.map((pi, k) => pi * (dp[k]! - pdp));
  };

  for (const name of ["mixtral", "qwen3_moe"] as const) {
    it(`${name}: get the gradient that comes through the top-k weights (it was refused: the logits were cut off)`, async () => {
      const lm = await LanguageModel.load(fixtureDir(name));
      const got = await lm.trace(
        IDS,
        async (m: any, tr) => {
          const [logits, weights, index] = (await m.model.layers[1].mlp.gate.output) as Tensor[];
          const loss = ((await m.output).logits as Tensor).index(0, -1).logSoftmax(-1).index(5);
          const out: Record<string, number[]> = { logits: logits!.index(-1).toArray() as number[], index: (index!.index(-1).toArray() as number[]).map(Number) };
          await tr.backward(loss, async (g) => {
            out.gw = (await g.grad(weights!)).index(-1).toArray() as number[];
            out.gl = (await g.grad(logits!)).index(-1).toArray() as number[];
          });
          return out;
        },
        { grad: true },
      );
      const want = throughRouter(got.logits!, got.index!, got.gw!);
      expect(Math.max(...want.map(Math.abs))).toBeGreaterThan(1e-4);
      got.gl!.forEach((g, k) => expect(Math.abs(g - want[k]!), `expert ${k}`).toBeLessThan(1e-6));
    });
  }
});
