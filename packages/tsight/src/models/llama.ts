/**
 * The Llama family (transformers' modeling_llama and its descendants): RMSNorm, rotary positions, grouped-query
 * attention, gated MLP. One implementation with the options that tell the members apart:
 *
 * | model_type | differences from llama                                                        |
 * |------------|-------------------------------------------------------------------------------|
 * | mistral    | sliding-window attention                                                      |
 * | qwen2      | biases on q/k/v (not o), tied embeddings by default                           |
 * | qwen3      | RMSNorm on each head's queries and keys (q_norm, k_norm), explicit head_dim    |
 * | gemma      | embed_tokens scales by sqrt(hidden), RMSNorm by (1 + weight), GeGLU (tanh)     |
 */
import { Activation, activationNames, applyRotary, attentionMask, eagerAttention, Embedding, Linear, Module, ModuleList, resolveForward, RMSNorm, RotaryEmbedding } from "../nn/index.js";
import type { ActivationName, AttentionContext, ForwardOptions } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { CausalLM, commonConfig, type BaseModelOutput, type ModelConfig, type WeightRules } from "./causal-lm.js";
import { ConfigError, ConfigReader, type RawConfig } from "./config.js";

export type LlamaFamily = "llama" | "mistral" | "qwen2" | "qwen3" | "gemma";

export interface LlamaConfig extends ModelConfig {
  family: LlamaFamily;
  intermediateSize: number;
  eps: number;
  activation: ActivationName;
  ropeTheta: number;
  qkvBias: boolean;
  outputBias: boolean;
  mlpBias: boolean;
  qkNorm: boolean;
  normOffset: number;
  embedScale: number | null;
  slidingWindow: number | null;
}

export function llamaConfig(raw: RawConfig, family: LlamaFamily): LlamaConfig {
  const c = new ConfigReader(raw, family);
  const hidden = c.int("hidden_size");
  const heads = c.int("num_attention_heads");
  const kvHeads = c.intOr(heads, "num_key_value_heads") ?? heads;
  if (heads % kvHeads) throw new ConfigError(`${family} config: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`, "num_key_value_heads");
  const headDim = c.intOr(null, "head_dim") ?? hidden / heads;
  if (!Number.isInteger(headDim)) throw new ConfigError(`${family} config: hidden_size ${hidden} is not divisible by num_attention_heads ${heads}; set head_dim`, "head_dim");
  const attentionBias = c.bool("attention_bias", false);
  const window = family === "mistral" || (family === "qwen2" && c.bool("use_sliding_window", false)) ? c.intOr(null, "sliding_window") : null;
  return {
    ...commonConfig(c, { vocabSize: c.int("vocab_size"), hiddenSize: hidden, numLayers: c.int("num_hidden_layers"), numHeads: heads, numKVHeads: kvHeads, headDim, maxPositions: c.intOr(null, "max_position_embeddings") }, family === "qwen2" || family === "qwen3" || family === "gemma"),
    family,
    intermediateSize: c.int("intermediate_size"),
    eps: c.number("rms_norm_eps", 1e-6),
    activation: c.string("hidden_act", activationNames, family === "gemma" ? "gelu_pytorch_tanh" : "silu"),
    ropeTheta: c.ropeTheta(),
    qkvBias: family === "qwen2" ? true : attentionBias,
    outputBias: family === "qwen2" ? false : attentionBias,
    mlpBias: c.bool("mlp_bias", false),
    qkNorm: family === "qwen3",
    normOffset: family === "gemma" ? 1 : 0,
    embedScale: family === "gemma" ? Math.fround(Math.sqrt(hidden)) : null,
    slidingWindow: window,
  };
}

export class LlamaAttention extends Module {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  q_norm?: RMSNorm;
  k_norm?: RMSNorm;
  constructor(
    private readonly cfg: LlamaConfig,
    private readonly layerIdx: number,
  ) {
    super();
    const { hiddenSize, numHeads, numKVHeads, headDim } = cfg;
    this.q_proj = new Linear(hiddenSize, numHeads * headDim, cfg.qkvBias);
    this.k_proj = new Linear(hiddenSize, numKVHeads * headDim, cfg.qkvBias);
    this.v_proj = new Linear(hiddenSize, numKVHeads * headDim, cfg.qkvBias);
    this.o_proj = new Linear(numHeads * headDim, hiddenSize, cfg.outputBias);
    if (cfg.qkNorm) {
      this.q_norm = new RMSNorm(headDim, cfg.eps);
      this.k_norm = new RMSNorm(headDim, cfg.eps);
    }
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<[Tensor, Tensor]> {
    const [B, T] = hidden.shape as [number, number];
    const { numHeads: H, numKVHeads: KV, headDim: D } = this.cfg;
    let q = (await this.q_proj.call(hidden)).reshape(B, T, H, D); // (B, T, H, D)
    if (this.q_norm) q = await this.q_norm.call(q);
    let k = (await this.k_proj.call(hidden)).reshape(B, T, KV, D);
    if (this.k_norm) k = await this.k_norm.call(k);
    const v = (await this.v_proj.call(hidden)).reshape(B, T, KV, D).transpose(1, 2); // (B, KV, T, D)
    const [cos, sin] = rope;
    const qr = applyRotary(q.transpose(1, 2), cos, sin);
    const kr = applyRotary(k.transpose(1, 2), cos, sin);
    const kv = ctx.cache ? ctx.cache.update(this.layerIdx, kr, v) : { keys: kr, values: v };
    const [out, weights] = eagerAttention(qr, kv.keys, kv.values, ctx.mask, 1 / Math.sqrt(D));
    return [await this.o_proj.call(out), weights];
  }
}

export class LlamaMLP extends Module {
  gate_proj: Linear;
  up_proj: Linear;
  down_proj: Linear;
  act_fn: Activation;
  constructor(cfg: LlamaConfig) {
    super();
    this.gate_proj = new Linear(cfg.hiddenSize, cfg.intermediateSize, cfg.mlpBias);
    this.up_proj = new Linear(cfg.hiddenSize, cfg.intermediateSize, cfg.mlpBias);
    this.down_proj = new Linear(cfg.intermediateSize, cfg.hiddenSize, cfg.mlpBias);
    this.act_fn = new Activation(cfg.activation);
  }
  override async forward(x: Tensor): Promise<Tensor> {
    const gate = await this.act_fn.call(await this.gate_proj.call(x));
    return this.down_proj.call(gate.mul(await this.up_proj.call(x)));
  }
}

export class LlamaDecoderLayer extends Module {
  self_attn: LlamaAttention;
  mlp: LlamaMLP;
  input_layernorm: RMSNorm;
  post_attention_layernorm: RMSNorm;
  constructor(cfg: LlamaConfig, layerIdx: number) {
    super();
    this.self_attn = new LlamaAttention(cfg, layerIdx);
    this.mlp = new LlamaMLP(cfg);
    this.input_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps, cfg.normOffset);
    this.post_attention_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps, cfg.normOffset);
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<Tensor> {
    const [attnOut] = await this.self_attn.call(await this.input_layernorm.call(hidden), rope, ctx);
    const h = hidden.add(attnOut);
    return h.add(await this.mlp.call(await this.post_attention_layernorm.call(h)));
  }
}

export class LlamaModel extends Module {
  embed_tokens: Embedding;
  layers: ModuleList<LlamaDecoderLayer>;
  norm: RMSNorm;
  rotary_emb: RotaryEmbedding;
  constructor(private readonly cfg: LlamaConfig) {
    super();
    this.embed_tokens = new Embedding(cfg.vocabSize, cfg.hiddenSize, cfg.embedScale);
    this.layers = new ModuleList(Array.from({ length: cfg.numLayers }, (_, i) => new LlamaDecoderLayer(cfg, i)));
    this.norm = new RMSNorm(cfg.hiddenSize, cfg.eps, cfg.normOffset);
    this.rotary_emb = new RotaryEmbedding(cfg.headDim, cfg.ropeTheta);
  }
  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<BaseModelOutput> {
    const { mask, positions } = resolveForward(inputIds, options);
    const ctx: AttentionContext = { mask: attentionMask(mask, inputIds.shape[1]!, this.cfg.slidingWindow), cache: options.cache };
    let hidden = await this.embed_tokens.call(inputIds);
    const rope = await this.rotary_emb.call(hidden, positions);
    for (const layer of this.layers) hidden = await layer.call(hidden, rope, ctx);
    hidden = await this.norm.call(hidden);
    return { last_hidden_state: hidden, past_key_values: options.cache };
  }
}

export class LlamaForCausalLM extends CausalLM {
  model: LlamaModel;
  lm_head: Linear;
  constructor(readonly config: LlamaConfig) {
    super();
    this.model = new LlamaModel(config);
    this.lm_head = new Linear(config.hiddenSize, config.vocabSize, false);
  }
  protected base() {
    return this.model;
  }
  protected head() {
    return this.lm_head;
  }
  layerPaths(): string[] {
    return Array.from({ length: this.config.numLayers }, (_, i) => `model.layers.${i}`);
  }
  weightRules(): WeightRules {
    return {
      tied: this.config.tieWordEmbeddings ? { "lm_head.weight": "model.embed_tokens.weight" } : {},
      aliases: {},
      basePrefix: "model.",
      ignore: [/rotary_emb\.inv_freq$/],
    };
  }
  override get typeName(): string {
    return { llama: "LlamaForCausalLM", mistral: "MistralForCausalLM", qwen2: "Qwen2ForCausalLM", qwen3: "Qwen3ForCausalLM", gemma: "GemmaForCausalLM" }[this.config.family];
  }
}
