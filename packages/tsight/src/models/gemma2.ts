/**
 * Gemma 2 and Gemma 3's text model (transformers' modeling_gemma2 and modeling_gemma3, which derives from it):
 * Gemma's scaled embeddings and (1 + weight) RMSNorms, plus norms after attention and after the MLP, layers that
 * alternate between a sliding window and full attention (`layer_types`), and scores scaled by
 * query_pre_attn_scalar^-0.5 instead of head_dim^-0.5.
 *
 * | model_type  | differences from gemma2                                                                       |
 * |-------------|-----------------------------------------------------------------------------------------------|
 * | gemma2      | attention logits soft-capped at 50, final logits at 30; sliding window on every other layer    |
 * | gemma3_text | no soft-capping by default; per-head q/k RMSNorm; a rope table per layer type (local base for  |
 * |             | sliding layers, global base and scaling for full ones); five sliding layers per full one       |
 */
import { activationNames, AttentionPoints, Embedding, Linear, Module, ModuleList, RMSNorm, RotaryEmbedding, rotaryAttention } from "../nn/index.js";
import type { ActivationName, AttentionContext, ForwardOptions, LayerType, RopeSpec } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { CausalLM, commonConfig, type BaseModelOutput, type ModelConfig, type WeightRules } from "./causal-lm.js";
import { ConfigError, ConfigReader, type RawConfig } from "./config.js";
import { attentionShape, runDecoder, readLayerTypes, slidingWindowFor } from "./decoder.js";
import { LlamaMLP } from "./llama.js";

export type Gemma2Family = "gemma2" | "gemma3_text";

export interface Gemma2Config extends ModelConfig {
  family: Gemma2Family;
  intermediateSize: number;
  eps: number;
  activation: ActivationName;
  mlpBias: false;
  attentionBias: boolean;
  /** Scores are scaled by queryPreAttnScalar^-0.5. */
  queryPreAttnScalar: number;
  /** cap * tanh(x / cap) on attention scores (before the mask) and on the final logits; null: none. */
  attnSoftcap: number | null;
  finalSoftcap: number | null;
  qkNorm: boolean;
  layerTypes: LayerType[];
  slidingWindow: number | null;
  /** One rope table for every layer (gemma2), or one per layer type in sorted order (gemma3_text). */
  rope: RopeSpec | Partial<Record<LayerType, RopeSpec>>;
}

/** Gemma 3's rope parameters per layer type, from either config form (older files: rope_scaling for full layers). */
function gemma3RopeSource(c: ConfigReader): { field: string; params: Record<string, unknown> } {
  const given = c.raw.rope_parameters as Record<string, unknown> | null | undefined;
  const nested = given && typeof given === "object" && ("full_attention" in given || "sliding_attention" in given);
  const params: Record<string, Record<string, unknown>> = {
    full_attention: { ...((nested ? given.full_attention : null) ?? { rope_type: "default" }) },
    sliding_attention: { ...((nested ? given.sliding_attention : null) ?? { rope_type: "default" }) },
  };
  const scaling = c.raw.rope_scaling;
  if (scaling && typeof scaling === "object") Object.assign(params.full_attention!, scaling);
  params.full_attention!.rope_theta ??= c.raw.rope_theta ?? 1_000_000;
  params.sliding_attention!.rope_theta ??= c.raw.rope_local_base_freq ?? 10_000;
  return { field: scaling ? "rope_scaling" : "rope_parameters", params };
}

export function gemma2Config(raw: RawConfig, family: Gemma2Family): Gemma2Config {
  const c = new ConfigReader(raw, family);
  const shape = attentionShape(c);
  const numLayers = c.int("num_hidden_layers");
  const softcap = (field: string, fallback: number | null): number | null => (field in raw ? (raw[field] === null ? null : c.number(field)) : fallback);
  const gemma3 = family === "gemma3_text";
  if (gemma3 && c.bool("use_bidirectional_attention", false)) throw new ConfigError(`${family} config: use_bidirectional_attention (EmbeddingGemma) is not supported; tsight runs causal language models`, "use_bidirectional_attention");
  const pattern = c.intOr(6, "sliding_window_pattern", "_sliding_window_pattern") ?? 6;
  const layerTypes = readLayerTypes(c, numLayers, (i) => ((gemma3 ? (i + 1) % pattern : (i + 1) % 2) ? "sliding_attention" : "full_attention"));
  let rope: Gemma2Config["rope"];
  if (gemma3) {
    const source = gemma3RopeSource(c);
    rope = Object.fromEntries([...new Set(layerTypes)].sort().map((t) => [t, c.rope({ headDim: shape.headDim, layerType: t, source })]));
  } else rope = c.rope({ headDim: shape.headDim });
  return {
    ...commonConfig(c, { vocabSize: c.int("vocab_size"), ...shape, numLayers, maxPositions: c.intOr(null, "max_position_embeddings") }, true),
    family,
    intermediateSize: c.int("intermediate_size"),
    eps: c.number("rms_norm_eps", 1e-6),
    activation: c.string("hidden_activation", activationNames, "gelu_pytorch_tanh"),
    mlpBias: false,
    attentionBias: c.bool("attention_bias", false),
    queryPreAttnScalar: c.number("query_pre_attn_scalar", 256),
    // Gemma 3 keeps attn_logit_softcapping in its config, but Hugging Face's Gemma3Attention never applies it
    // (transformers 5.18 passes no softcap to its attention): a config setting it gives the same numbers as HF's.
    attnSoftcap: gemma3 ? null : softcap("attn_logit_softcapping", 50),
    finalSoftcap: softcap("final_logit_softcapping", gemma3 ? null : 30),
    qkNorm: gemma3,
    layerTypes,
    slidingWindow: slidingWindowFor(c, layerTypes, 4096),
    rope,
  };
}

export class Gemma2Attention extends Module {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  q_norm?: RMSNorm;
  k_norm?: RMSNorm;
  /** q, k, v, scores, pattern, z (see AttentionPoints). */
  source = new AttentionPoints();
  constructor(
    private readonly cfg: Gemma2Config,
    private readonly layerIdx: number,
  ) {
    super();
    const { hiddenSize, numHeads, numKVHeads, headDim } = cfg;
    this.q_proj = new Linear(hiddenSize, numHeads * headDim, cfg.attentionBias);
    this.k_proj = new Linear(hiddenSize, numKVHeads * headDim, cfg.attentionBias);
    this.v_proj = new Linear(hiddenSize, numKVHeads * headDim, cfg.attentionBias);
    this.o_proj = new Linear(numHeads * headDim, hiddenSize, cfg.attentionBias);
    if (cfg.qkNorm) {
      this.q_norm = new RMSNorm(headDim, cfg.eps, 1);
      this.k_norm = new RMSNorm(headDim, cfg.eps, 1);
    }
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<[Tensor, Tensor]> {
    const [B, T] = hidden.shape as [number, number];
    const { numHeads: H, numKVHeads: KV, headDim: D } = this.cfg;
    let q = (await this.q_proj.call(hidden)).reshape(B, T, H, D).transpose(1, 2); // (B, H, T, D)
    let k = (await this.k_proj.call(hidden)).reshape(B, T, KV, D).transpose(1, 2); // (B, KV, T, D)
    const v = (await this.v_proj.call(hidden)).reshape(B, T, KV, D).transpose(1, 2);
    if (this.q_norm) q = await this.q_norm.call(q);
    if (this.k_norm) k = await this.k_norm.call(k);
    const scores = { scale: Math.pow(this.cfg.queryPreAttnScalar, -0.5), softcap: this.cfg.attnSoftcap };
    const [out, weights] = await rotaryAttention(this.source, q, k, v, rope, ctx, this.layerIdx, scores);
    return [await this.o_proj.call(out), weights];
  }
}

/** down(act(gate(x)) * up(x)), as in Llama. */
export class Gemma2MLP extends LlamaMLP {}

export class Gemma2DecoderLayer extends Module {
  self_attn: Gemma2Attention;
  mlp: Gemma2MLP;
  input_layernorm: RMSNorm;
  post_attention_layernorm: RMSNorm;
  pre_feedforward_layernorm: RMSNorm;
  post_feedforward_layernorm: RMSNorm;
  constructor(cfg: Gemma2Config, layerIdx: number) {
    super();
    this.self_attn = new Gemma2Attention(cfg, layerIdx);
    this.mlp = new Gemma2MLP(cfg);
    this.input_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps, 1);
    this.post_attention_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps, 1);
    this.pre_feedforward_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps, 1);
    this.post_feedforward_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps, 1);
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<Tensor> {
    const [attnOut] = await this.self_attn.call(await this.input_layernorm.call(hidden), rope, ctx);
    const h = hidden.add(await this.post_attention_layernorm.call(attnOut));
    const mlpOut = await this.mlp.call(await this.pre_feedforward_layernorm.call(h));
    return h.add(await this.post_feedforward_layernorm.call(mlpOut));
  }
}

export class Gemma2Model extends Module {
  embed_tokens: Embedding;
  layers: ModuleList<Gemma2DecoderLayer>;
  norm: RMSNorm;
  rotary_emb: RotaryEmbedding;
  constructor(private readonly cfg: Gemma2Config) {
    super();
    this.embed_tokens = new Embedding(cfg.vocabSize, cfg.hiddenSize, Math.fround(Math.sqrt(cfg.hiddenSize)));
    this.layers = new ModuleList(Array.from({ length: cfg.numLayers }, (_, i) => new Gemma2DecoderLayer(cfg, i)));
    this.norm = new RMSNorm(cfg.hiddenSize, cfg.eps, 1);
    this.rotary_emb = new RotaryEmbedding(cfg.rope as RopeSpec | Record<string, RopeSpec>, cfg.maxPositions);
  }
  /** embed_tokens (times sqrt(hidden)), rotary_emb (Gemma 3: once per layer type), each layer, norm (see runDecoder). */
  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<BaseModelOutput> {
    return runDecoder(this, inputIds, options, this.cfg.layerTypes, this.cfg.slidingWindow);
  }
}

export class Gemma2ForCausalLM extends CausalLM {
  model: Gemma2Model;
  lm_head: Linear;
  constructor(readonly config: Gemma2Config) {
    super();
    this.model = new Gemma2Model(config);
    this.lm_head = new Linear(config.hiddenSize, config.vocabSize, false);
  }
  protected base() {
    return this.model;
  }
  protected head() {
    return this.lm_head;
  }
  /** Final logit soft-capping: cap * tanh(logits / cap); lm_head's own output is the uncapped one. */
  protected override finalLogits(logits: Tensor): Tensor {
    const cap = this.config.finalSoftcap;
    return cap === null ? logits : logits.div(cap).tanh().mul(cap);
  }
  layerPaths(): string[] {
    return Array.from({ length: this.config.numLayers }, (_, i) => `model.layers.${i}`);
  }
  weightRules(): WeightRules {
    return {
      tied: this.config.tieWordEmbeddings ? { "lm_head.weight": "model.embed_tokens.weight" } : {},
      aliases: {},
      basePrefix: "model.",
      ignore: [/rotary_emb\..*inv_freq$/, /embed_tokens\.embed_scale$/],
    };
  }
}

/** Gemma 3's text model: the Gemma 2 tree with q_norm and k_norm in every attention. */
export class Gemma3ForCausalLM extends Gemma2ForCausalLM {}
