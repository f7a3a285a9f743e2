/**
 * What the rotary decoder-only architectures (Llama and its descendants, Gemma 2/3, Phi-3, OLMo-2, the mixtures
 * of experts) read alike from their configs, and the per-forward inputs their decoder stacks build alike: position
 * ids, one attention mask per layer type, one context per layer.
 */
import { layerContexts, layerTypeNames, resolveForward, type AttentionContext, type ForwardOptions, type LayerType, type Module, type ModuleList, type RotaryEmbedding } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import type { BaseModelOutput } from "./causal-lm.js";
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

/**
 * The sliding window of "sliding_attention" layers: `sliding_window`, else `fallback` when the field is absent (the
 * architecture's default); a ConfigError naming `sliding_window` when one is needed and there is none.
 */
export function slidingWindowFor(c: ConfigReader, layerTypes: readonly LayerType[], fallback: number | null = null): number | null {
  if (!layerTypes.includes("sliding_attention")) return null;
  const w = c.raw.sliding_window === undefined ? fallback : c.intOr(null, "sliding_window");
  if (w === null) throw new ConfigError(`${c.modelType} config: field "sliding_window" is required by its sliding_attention layers`, "sliding_window");
  return w;
}

/** The per-forward inputs of a decoder stack for `inputIds` [B, T]. */
export function decoderInputs(inputIds: Tensor, options: ForwardOptions, layerTypes: readonly LayerType[], window: number | null): { positions: Tensor; contexts: AttentionContext[] } {
  const { mask, positions } = resolveForward(inputIds, options);
  return { positions, contexts: layerContexts(mask, inputIds.shape[1]!, layerTypes, window, options.cache) };
}

/** The children a rotary decoder stack (`model` in Hugging Face's trees) calls, under Hugging Face's names. */
export interface RotaryDecoderStack {
  embed_tokens: Module & { forward(ids: Tensor): Promise<Tensor> };
  layers: ModuleList<Module & { forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<Tensor> }>;
  norm: Module & { forward(hidden: Tensor): Promise<Tensor> };
  rotary_emb: RotaryEmbedding;
}

/**
 * The forward every rotary decoder stack here shares: embed the ids, compute cos and sin (once, or once per layer
 * type in sorted order where rotary_emb has a table per type, as Gemma 3 does), run each layer with its rope and
 * its layer type's mask, apply the final norm.
 */
export async function runDecoder(stack: RotaryDecoderStack, inputIds: Tensor, options: ForwardOptions, layerTypes: readonly LayerType[], window: number | null): Promise<BaseModelOutput> {
  const { positions, contexts } = decoderInputs(inputIds, options, layerTypes, window);
  let hidden = await stack.embed_tokens.call(inputIds); // (B, T, hidden)
  const ropes = new Map<string, [Tensor, Tensor]>(); // cos, sin (B, T, rotary dim) per table
  for (const type of stack.rotary_emb.layerTypes) ropes.set(type, await (type ? stack.rotary_emb.call(hidden, positions, type) : stack.rotary_emb.call(hidden, positions)));
  const ropeOf = (i: number) => ropes.get(ropes.has("") ? "" : layerTypes[i]!)!;
  for (const [i, layer] of [...stack.layers].entries()) hidden = await layer.call(hidden, ropeOf(i), contexts[i]!);
  hidden = await stack.norm.call(hidden);
  return { last_hidden_state: hidden, past_key_values: options.cache };
}
