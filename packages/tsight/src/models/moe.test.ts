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
