/**
 * A GPT-2-small-sized model (12 layers, d=768, 12 heads, vocab 50257, 1024 positions) with seeded random weights,
 * for benchmarks: the architecture and sizes of the real thing without a download.
 */
import { buildModel, type CausalLM } from "../packages/tsight/dist/models/index.js";
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
