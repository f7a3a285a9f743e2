/** Envoy trees are typed from the model classes: paths autocomplete and values have their modules' types. */
import { describe, expectTypeOf, it } from "vitest";
import type { CausalLMOutput, Gemma2ForCausalLM, Gemma3ForCausalLM, GPT2LMHeadModel, LlamaForCausalLM, MixtralForCausalLM, MoeExperts, Olmo2ForCausalLM, Phi3ForCausalLM, Qwen3MoeForCausalLM, Qwen3MoeMLP, Qwen3MoeSparseMoeBlock } from "../models/index.js";
import type { Module } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import type { AnyEnvoy, EnvoyOf, EnvoyTree } from "./envoy-types.js";
import { LanguageModel } from "./language-model.js";

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

  it("give operation points values but no skip or call that compiles, and their holder no values", () => {
    type Attn = EnvoyOf<GPT2LMHeadModel>["transformer"]["h"][number]["attn"];
    expectTypeOf<Awaited<Attn["source"]["pattern"]["output"]>>().toEqualTypeOf<Tensor>();
    expectTypeOf<Attn["source"]["pattern"]>().toHaveProperty("next");
    expectTypeOf<Awaited<Attn["source"]["output"]>>().toBeNever();
    expectTypeOf<Attn["source"]>().toHaveProperty("z");
    expectTypeOf<EnvoyOf<LlamaForCausalLM>["model"]["layers"][number]["mlp"]["source"]>().toHaveProperty("post");
    // Type-level only: never called.
    const uses = (a: Attn, t: Tensor) => {
      // @ts-expect-error a point is a value: it is not skipped
      a.source.pattern.skip(t);
      // @ts-expect-error nor called
      void a.source.pattern.call(t);
      // @ts-expect-error the holder is never called
      void a.source.call();
      // @ts-expect-error nor given a value
      a.source.output = t;
      a.skip([t, t]);
      a.source.pattern.output = (p) => p.mul(2);
      // A point's envoy still fits where any envoy does.
      const any: AnyEnvoy = a.source.pattern;
      return any;
    };
    expectTypeOf(uses).toBeFunction();
    // Code generic over the module class reads values.
    const generic = <M extends Module>(e: EnvoyOf<M>) => [e.output, e.path, e.next()];
    expectTypeOf(generic).toBeFunction();
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

  it("follow the newer trees: Gemma 2/3, Phi-3, OLMo 2", () => {
    type G2 = EnvoyOf<Gemma2ForCausalLM>["model"]["layers"][number];
    expectTypeOf<Awaited<G2["pre_feedforward_layernorm"]["output"]>>().toEqualTypeOf<Tensor>();
    expectTypeOf<Awaited<G2["post_feedforward_layernorm"]["output"]>>().toEqualTypeOf<Tensor>();
    expectTypeOf<EnvoyOf<Gemma3ForCausalLM>["model"]["layers"][number]["self_attn"]>().toHaveProperty("q_norm");
    expectTypeOf<Awaited<EnvoyOf<Gemma3ForCausalLM>["model"]["rotary_emb"]["inputs"]>>().toEqualTypeOf<[_x: Tensor, positions: Tensor, layerType?: string]>();
    type P = EnvoyOf<Phi3ForCausalLM>["model"]["layers"][number];
    expectTypeOf<Awaited<P["self_attn"]["qkv_proj"]["output"]>>().toEqualTypeOf<Tensor>();
    expectTypeOf<Awaited<P["mlp"]["gate_up_proj"]["output"]>>().toEqualTypeOf<Tensor>();
    expectTypeOf<P>().toHaveProperty("resid_attn_dropout");
    expectTypeOf<P["mlp"]>().not.toHaveProperty("up_proj");
    type O = EnvoyOf<Olmo2ForCausalLM>["model"]["layers"][number];
    expectTypeOf<O>().toHaveProperty("post_feedforward_layernorm");
    expectTypeOf<O>().not.toHaveProperty("input_layernorm");
  });

  it("follow the mixtures of experts: the router's 3-tuple, the experts' three inputs", () => {
    type Moe = EnvoyOf<MixtralForCausalLM>["model"]["layers"][number]["mlp"];
    expectTypeOf<Awaited<Moe["gate"]["output"]>>().toEqualTypeOf<[Tensor, Tensor, Tensor]>();
    expectTypeOf<Awaited<Moe["experts"]["inputs"]>>().toEqualTypeOf<[hidden: Tensor, topKIndex: Tensor, topKWeights: Tensor]>();
    expectTypeOf<Awaited<Moe["experts"]["act_fn"]["output"]>>().toEqualTypeOf<Tensor>();
    expectTypeOf<Awaited<Moe["output"]>>().toEqualTypeOf<Tensor>();
    // Qwen3-MoE keeps dense MLPs on mlp_only_layers, so a layer's mlp is either kind.
    type QMlp = EnvoyOf<Qwen3MoeForCausalLM>["model"]["layers"][number]["mlp"];
    expectTypeOf<QMlp>().toEqualTypeOf<EnvoyOf<Qwen3MoeSparseMoeBlock> | EnvoyOf<Qwen3MoeMLP>>();
    expectTypeOf<EnvoyOf<Qwen3MoeSparseMoeBlock>["experts"]>().toEqualTypeOf<EnvoyOf<MoeExperts>>();
  });

  it("come from the architecture class given to LanguageModel.load for a folder or repo", () => {
    expectTypeOf<ReturnType<typeof LanguageModel.load<MixtralForCausalLM>>>().toEqualTypeOf<Promise<LanguageModel<MixtralForCausalLM>>>();
    const load = (dir: string) => LanguageModel.load(dir, { architecture: null as unknown as typeof Phi3ForCausalLM });
    expectTypeOf(load).returns.resolves.toEqualTypeOf<LanguageModel<Phi3ForCausalLM>>();
  });
});
