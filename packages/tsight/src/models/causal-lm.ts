/**
 * What every architecture provides: a module tree rooted at a causal language model, a normalised config, and
 * the rules for loading its weights from Hugging Face files.
 */
import { Module, type ForwardOptions, type KVCache } from "../nn/index.js";
import { activeCapture, type Tensor } from "../tensor/index.js";
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
  /**
   * Parameters checkpoints store split, one tensor per expert and projection (Hub MoE checkpoints): per expert,
   * the keys whose tensors are concatenated along dim 0; the experts are then stacked (transformers 5 fuses them
   * the same way on load). Used when the parameter's own key is absent.
   */
  stacked?: Record<string, string[][]>;
}

/** The output of a decoder stack (Hugging Face's BaseModelOutputWithPast). */
export interface BaseModelOutput {
  last_hidden_state: Tensor;
  past_key_values?: KVCache;
}

/** A module that maps token ids to hidden states (the `transformer` / `model` / `gpt_neox` child). */
export interface DecoderStack extends Module {
  forward(inputIds: Tensor, options?: ForwardOptions): Promise<BaseModelOutput>;
}

/**
 * A causal LM is a decoder stack plus an output head, named by each architecture (`base` and `head` give them).
 * Its forward is the same for all: the stack, the last `logitsToKeep` positions, the head.
 */
export abstract class CausalLM extends Module {
  abstract readonly config: ModelConfig;
  protected abstract base(): DecoderStack;
  protected abstract head(): Module & { forward(hidden: Tensor): Promise<Tensor> };
  /** Paths of the decoder layers, in order (`transformer.h.0`, `model.layers.0`, ...). */
  abstract layerPaths(): string[];
  abstract weightRules(): WeightRules;

  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<CausalLMOutput> {
    const total = (options.cache?.length ?? 0) + inputIds.shape[1]!;
    const out = await this.base().call(inputIds, options);
    // The positions are taken even when the stack was skipped (an intervention gave its output): see resolveForward.
    if (!activeCapture()) options.cache?.advance(total);
    const keep = options.logitsToKeep;
    const hidden = keep ? out.last_hidden_state.narrow(1, -keep, keep) : out.last_hidden_state;
    return { logits: this.finalLogits(await this.head().call(hidden)), past_key_values: out.past_key_values };
  }

  /** What happens to the head's output before it is returned (Gemma 2's final soft-capping); nothing by default. */
  protected finalLogits(logits: Tensor): Tensor {
    return logits;
  }
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
