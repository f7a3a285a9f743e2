/**
 * What the rotary decoder-only architectures (Llama and its descendants, Gemma 2/3, Phi-3, OLMo-2, the mixtures
 * of experts) read alike from their configs, and the per-forward inputs their decoder stacks build alike: position
 * ids, one attention mask per layer type, one context per layer.
 */
import { layerContexts, layerTypeNames, resolveForward, type AttentionContext, type ForwardOptions, type LayerType } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { ConfigError, type ConfigReader } from "./config.js";

/** Attention geometry: heads, grouped key/value heads, features per head. */
export interface AttentionShape {
  hiddenSize: number;
  numHeads: number;
  numKVHeads: number;
  headDim: number;
}

export function attentionShape(c: ConfigReader): AttentionShape {
  const hiddenSize = c.int("hidden_size");
  const numHeads = c.int("num_attention_heads");
  const numKVHeads = c.intOr(numHeads, "num_key_value_heads") ?? numHeads;
  if (numHeads % numKVHeads) throw new ConfigError(`${c.modelType} config: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKVHeads}`, "num_key_value_heads");
  const headDim = c.intOr(null, "head_dim") ?? hiddenSize / numHeads;
  if (!Number.isInteger(headDim)) throw new ConfigError(`${c.modelType} config: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}; set head_dim`, "head_dim");
  return { hiddenSize, numHeads, numKVHeads, headDim };
}

/**
 * Each layer's attention type: the config's `layer_types` when present, else `fallback(i)` (how each architecture
 * derived them before configs listed them).
 */
export function readLayerTypes(c: ConfigReader, numLayers: number, fallback: (i: number) => LayerType): LayerType[] {
  const v = c.raw.layer_types;
  if (v === undefined || v === null) return Array.from({ length: numLayers }, (_, i) => fallback(i));
  if (!Array.isArray(v) || v.length !== numLayers) throw new ConfigError(`${c.modelType} config: field "layer_types" must list one type per layer (${numLayers}), got ${JSON.stringify(v)}`, "layer_types");
  for (const t of v) {
    if (!layerTypeNames.includes(t as LayerType)) throw new ConfigError(`${c.modelType} config: field "layer_types" has "${String(t)}"; supported: ${layerTypeNames.join(", ")}`, "layer_types");
  }
  return v as LayerType[];
}

/** The sliding window of "sliding_attention" layers; a ConfigError naming `sliding_window` when one is needed and absent. */
export function slidingWindowFor(c: ConfigReader, layerTypes: readonly LayerType[]): number | null {
  if (!layerTypes.includes("sliding_attention")) return null;
  const w = c.intOr(null, "sliding_window");
  if (w === null) throw new ConfigError(`${c.modelType} config: field "sliding_window" is required by its sliding_attention layers`, "sliding_window");
  return w;
}

/** The per-forward inputs of a decoder stack for `inputIds` [B, T]. */
export function decoderInputs(inputIds: Tensor, options: ForwardOptions, layerTypes: readonly LayerType[], window: number | null): { positions: Tensor; contexts: AttentionContext[] } {
  const { mask, positions } = resolveForward(inputIds, options);
  return { positions, contexts: layerContexts(mask, inputIds.shape[1]!, layerTypes, window, options.cache) };
}
