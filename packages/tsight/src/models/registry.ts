/**
 * model_type -> architecture. A model is built only through this table (never from a class name in a request).
 */
import { RotaryEmbedding } from "../nn/index.js";
import type { CausalLM } from "./causal-lm.js";
import { ConfigError, type RawConfig } from "./config.js";
import { gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM } from "./gemma2.js";
import { gpt2Config, GPT2LMHeadModel } from "./gpt2.js";
import { gptNeoXConfig, GPTNeoXForCausalLM } from "./gpt_neox.js";
import { llamaConfig, LlamaForCausalLM } from "./llama.js";
import { mixtralConfig, MixtralForCausalLM } from "./mixtral.js";
import { olmo2Config, Olmo2ForCausalLM } from "./olmo2.js";
import { phi3Config, Phi3ForCausalLM } from "./phi3.js";
import { qwen3MoeConfig, Qwen3MoeForCausalLM } from "./qwen3_moe.js";

const architectures: Record<string, (raw: RawConfig) => CausalLM> = {
  gpt2: (raw) => new GPT2LMHeadModel(gpt2Config(raw)),
  llama: (raw) => new LlamaForCausalLM(llamaConfig(raw, "llama")),
  mistral: (raw) => new LlamaForCausalLM(llamaConfig(raw, "mistral")),
  qwen2: (raw) => new LlamaForCausalLM(llamaConfig(raw, "qwen2")),
  qwen3: (raw) => new LlamaForCausalLM(llamaConfig(raw, "qwen3")),
  gemma: (raw) => new LlamaForCausalLM(llamaConfig(raw, "gemma")),
  gemma2: (raw) => new Gemma2ForCausalLM(gemma2Config(raw, "gemma2")),
  gemma3_text: (raw) => new Gemma3ForCausalLM(gemma2Config(raw, "gemma3_text")),
  gpt_neox: (raw) => new GPTNeoXForCausalLM(gptNeoXConfig(raw)),
  phi3: (raw) => new Phi3ForCausalLM(phi3Config(raw)),
  olmo2: (raw) => new Olmo2ForCausalLM(olmo2Config(raw)),
  mixtral: (raw) => new MixtralForCausalLM(mixtralConfig(raw)),
  qwen3_moe: (raw) => new Qwen3MoeForCausalLM(qwen3MoeConfig(raw)),
};

export const supportedModelTypes = Object.keys(architectures);

/** The module tree for a Hugging Face config, with meta (shape-only) parameters until weights are loaded. */
export function buildModel(raw: RawConfig): CausalLM {
  const type = raw.model_type;
  if (typeof type !== "string") throw new ConfigError('config: field "model_type" is required (a string such as "llama")', "model_type");
  const build = architectures[type];
  if (!build) throw new ConfigError(`config: model_type "${type}" is not supported; supported: ${supportedModelTypes.join(", ")}`, "model_type");
  const model = build(raw).finalize();
  // Decoder blocks run as fused graphs (nn/fusion.ts); a small model also as a whole (its graph holds a copy of every
  // weight, so only small ones: see WHOLE_MODEL_BYTES), unless its rotary tables cannot be taken by a graph (rope
  // types that depend on the sequence length: RotaryEmbedding.capturable).
  for (const path of model.layerPaths()) model.get(path)!.fusible = true;
  const rotaryFixed = model.namedModules().every(([, m]) => !(m instanceof RotaryEmbedding) || m.capturable);
  if (rotaryFixed && parameterBytes(model) <= WHOLE_MODEL_BYTES) model.fusible = "whole";
  return model;
}

/**
 * The largest model (float32 parameters) run as one graph when nothing in it is watched: one kernel call instead
 * of one per block and per op between them, which is most of a small model's forward (stdlib-gpt2 at 5 tokens).
 * Larger models gain little from it and would hold a fifth copy of their weights (see tensor/packing.ts).
 */
export const WHOLE_MODEL_BYTES = 64 * 2 ** 20;

function parameterBytes(model: CausalLM): number {
  let bytes = 0;
  for (const { shape } of model.namedParameters().values()) bytes += 4 * shape.reduce((a, b) => a * b, 1);
  return bytes;
}
