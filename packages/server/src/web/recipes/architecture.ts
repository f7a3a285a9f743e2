/**
 * Where the views' modules are in each architecture's tree (Hugging Face's names). The recipes address modules
 * by these dotted paths (`m["transformer.h"][2]`), so one intervention serves every served model.
 */
import type { LanguageModel } from "tsight/client";

export interface ModelPaths {
  /** The list of blocks, whose outputs are the residual stream. */
  layers: string;
  /** The attention module's name inside a block; its output is [out, attention probabilities]. */
  attention: string;
  /** The final norm, applied before the head (the logit lens reads every layer through both). */
  norm: string;
  head: string;
}

const LLAMA_LIKE: ModelPaths = { layers: "model.layers", attention: "self_attn", norm: "model.norm", head: "lm_head" };

/** Every model_type tsight builds (models/registry.ts); a test checks none is missing. */
export const ARCHITECTURE_PATHS: Readonly<Record<string, ModelPaths>> = {
  gpt2: { layers: "transformer.h", attention: "attn", norm: "transformer.ln_f", head: "lm_head" },
  llama: LLAMA_LIKE,
  mistral: LLAMA_LIKE,
  qwen2: LLAMA_LIKE,
  qwen3: LLAMA_LIKE,
  gemma: LLAMA_LIKE,
  gemma2: LLAMA_LIKE,
  gemma3_text: LLAMA_LIKE,
  phi3: LLAMA_LIKE,
  olmo2: LLAMA_LIKE,
  mixtral: LLAMA_LIKE,
  qwen3_moe: LLAMA_LIKE,
  gpt_neox: { layers: "gpt_neox.layers", attention: "attention", norm: "gpt_neox.final_layer_norm", head: "lm_head" },
};

export function modelPaths(lm: LanguageModel): ModelPaths {
  const type = String(lm.config.model_type);
  const paths = ARCHITECTURE_PATHS[type];
  if (!paths) throw new Error(`the workbench does not know where the layers of a "${type}" model are`);
  return paths;
}

/** How many blocks the model has. */
export function layerCount(lm: LanguageModel): number {
  return lm.model.layerPaths().length;
}

/** How many attention heads each block has (config names differ: n_head for GPT-2). */
export function headCount(lm: LanguageModel): number {
  const c = lm.config as Record<string, unknown>;
  return Number(c.n_head ?? c.num_attention_heads);
}
