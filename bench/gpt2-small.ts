/**
 * A GPT-2-small-sized model (12 layers, d=768, 12 heads, vocab 50257, 1024 positions) with seeded random weights,
 * for benchmarks: the architecture and sizes of the real thing without a download.
 */
import { Tokenizer } from "../packages/tsight/dist/hub/index.js";
import { LanguageModel } from "../packages/tsight/dist/intervention/index.js";
import { buildModel, type CausalLM, type GPT2LMHeadModel } from "../packages/tsight/dist/models/index.js";
import { Generator, Tensor } from "../packages/tsight/dist/tensor/index.js";

export const gpt2SmallConfig = {
  model_type: "gpt2",
  vocab_size: 50257,
  n_embd: 768,
  n_head: 12,
  n_layer: 12,
  n_positions: 1024,
  layer_norm_epsilon: 1e-5,
  activation_function: "gelu_new",
  tie_word_embeddings: true,
};

export function randomGpt2Small(seed = 0): CausalLM {
  const model = buildModel(gpt2SmallConfig);
  const rng = new Generator(seed);
  for (const [name, p] of model.namedParameters()) {
    const data = new Float32Array(p.shape.reduce((a, b) => a * b, 1));
    if (name.endsWith(".weight") && p.shape.length === 1) data.fill(1); // LayerNorm gains
    else if (!name.endsWith(".bias")) for (let i = 0; i < data.length; i++) data[i] = rng.normal() * 0.02;
    p.module.setParam(p.name, new Tensor("float32", data, p.shape));
  }
  const wte = model.get("transformer.wte")!.getParam("weight");
  model.get("lm_head")!.setParam("weight", wte);
  return model;
}

/** The same model as a LanguageModel taking token ids (for interventions in generation). */
export function randomGpt2SmallLm(seed = 0): LanguageModel<GPT2LMHeadModel> {
  const model = randomGpt2Small(seed);
  const config = { ...gpt2SmallConfig, eos_token_id: 50256 };
  const tokenizer = Tokenizer.idsOnlyFor(config, "a random-weight model for benchmarks takes token ids only");
  return new LanguageModel<GPT2LMHeadModel>("gpt2-small-sized (random weights)", { source: { kind: "folder", name: "random", path: "" }, config, generationConfig: null, model, tokenizer, dispatched: true, dtype: "float32" });
}
