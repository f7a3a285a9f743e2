/** Envoy trees are typed from the model classes: paths autocomplete and values have their modules' types. */
import { describe, expectTypeOf, it } from "vitest";
import type { CausalLMOutput, GPT2LMHeadModel, LlamaForCausalLM } from "../models/index.js";
import type { Tensor } from "../tensor/index.js";
import type { AnyEnvoy, EnvoyOf, EnvoyTree } from "./envoy-types.js";
import type { LanguageModel } from "./language-model.js";

describe("envoy types", () => {
  it("follow the GPT-2 module tree", () => {
    type M = EnvoyOf<GPT2LMHeadModel>;
    expectTypeOf<M["transformer"]["h"]>().toBeArray();
    expectTypeOf<Awaited<M["transformer"]["h"][number]["output"]>>().toEqualTypeOf<Tensor>();
    expectTypeOf<Awaited<M["transformer"]["h"][number]["attn"]["output"]>>().toEqualTypeOf<[Tensor, Tensor]>();
    expectTypeOf<Awaited<M["lm_head"]["output"]>>().toEqualTypeOf<Tensor>();
    expectTypeOf<Awaited<M["output"]>>().toEqualTypeOf<CausalLMOutput>();
    expectTypeOf<M>().not.toHaveProperty("model");
    expectTypeOf<M["transformer"]>().not.toHaveProperty("layers");
  });

  it("follow the Llama module tree, optional children included", () => {
    type L = EnvoyOf<LlamaForCausalLM>;
    expectTypeOf<Awaited<L["model"]["layers"][number]["mlp"]["down_proj"]["output"]>>().toEqualTypeOf<Tensor>();
    expectTypeOf<L["model"]["layers"][number]["self_attn"]>().toHaveProperty("q_norm");
    expectTypeOf<Awaited<L["model"]["rotary_emb"]["output"]>>().toEqualTypeOf<[Tensor, Tensor]>();
  });

  it("are open for a model of unknown class, and LanguageModel.load picks the embedded models' classes", () => {
    expectTypeOf<EnvoyTree<import("../models/index.js").CausalLM>>().toEqualTypeOf<AnyEnvoy>();
    // Type-level only: the function is never called.
    const typed = (lm: LanguageModel<GPT2LMHeadModel>) =>
      lm.trace("x", async (m) => {
        expectTypeOf(m).toEqualTypeOf<EnvoyOf<GPT2LMHeadModel>>();
        return m.lm_head.output;
      });
    expectTypeOf(typed).returns.resolves.toEqualTypeOf<Tensor>();
    expectTypeOf<ReturnType<typeof LanguageModel.load<LlamaForCausalLM>>>().toEqualTypeOf<Promise<LanguageModel<LlamaForCausalLM>>>();
    // A typed model fits where any model is wanted.
    expectTypeOf<LanguageModel<GPT2LMHeadModel>>().toMatchTypeOf<LanguageModel>();
  });
});
