/**
 * What every architecture provides: a module tree rooted at a causal language model, a normalised config, and
 * the rules for loading its weights from Hugging Face files.
 */
import { Module, type ForwardOptions, type KVCache } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import type { ConfigReader, RawConfig } from "./config.js";

/** The fields tsight needs from any architecture's config, under one set of names. */
export interface ModelConfig {
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKVHeads: number;
  headDim: number;
  maxPositions: number | null;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
  padTokenId: number | null;
  raw: RawConfig;
}

export interface CausalLMOutput {
  logits: Tensor;
  past_key_values?: KVCache;
}

/** How parameter names map to file keys beyond the identity. */
export interface WeightRules {
  /** Parameters that share another's tensor when absent from the file (tied output head). */
  tied: Record<string, string>;
  /** Other keys a parameter may be stored under (e.g. GPT-NeoX's `embed_out.weight` for `lm_head.weight`). */
  aliases: Record<string, string[]>;
  /** Prefix old checkpoints omit (`transformer.` in the original GPT-2 files). */
  basePrefix: string;
  /** File keys that are buffers, not parameters, and are skipped (regexes). */
  ignore: RegExp[];
}

export abstract class CausalLM extends Module {
  abstract readonly config: ModelConfig;
  abstract override forward(inputIds: Tensor, options?: ForwardOptions): Promise<CausalLMOutput>;
  /** Paths of the decoder layers, in order (`transformer.h.0`, `model.layers.0`, ...). */
  abstract layerPaths(): string[];
  abstract weightRules(): WeightRules;
}

/** Reads the config fields common to all architectures. */
export function commonConfig(c: ConfigReader, fields: Omit<ModelConfig, "modelType" | "raw" | "bosTokenId" | "eosTokenId" | "padTokenId" | "tieWordEmbeddings">, tieDefault: boolean): ModelConfig {
  const id = (n: string): number | null => (typeof c.raw[n] === "number" ? (c.raw[n] as number) : null);
  const eos = c.raw.eos_token_id;
  return {
    ...fields,
    modelType: c.modelType,
    raw: c.raw,
    tieWordEmbeddings: c.bool("tie_word_embeddings", tieDefault),
    bosTokenId: id("bos_token_id"),
    eosTokenId: Array.isArray(eos) ? (eos as number[]) : typeof eos === "number" ? eos : null,
    padTokenId: id("pad_token_id"),
  };
}
