/**
 * OLMo 2 (transformers' modeling_olmo2): Llama's attention and MLP, but the norms sit after each block instead of
 * before it (h + norm(attn(h)), then h + norm(mlp(h))), and queries and keys are RMS-normed over the whole
 * projection (q_norm [heads x head_dim]) before being split into heads.
 */
import { activationNames, Embedding, Linear, Module, ModuleList, RMSNorm, RotaryEmbedding } from "../nn/index.js";
import type { ActivationName, AttentionContext, ForwardOptions, LayerType, RopeSpec } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { CausalLM, commonConfig, type BaseModelOutput, type ModelConfig, type WeightRules } from "./causal-lm.js";
import { ConfigReader, type RawConfig } from "./config.js";
import { attentionShape, runDecoder } from "./decoder.js";
import { LlamaAttention, LlamaMLP, type GatedMLPConfig, type LlamaAttentionConfig } from "./llama.js";

export interface Olmo2Config extends ModelConfig, LlamaAttentionConfig, GatedMLPConfig {
  intermediateSize: number;
  eps: number;
  activation: ActivationName;
  rope: RopeSpec;
  layerTypes: LayerType[];
}

export function olmo2Config(raw: RawConfig): Olmo2Config {
  const c = new ConfigReader(raw, "olmo2");
  const shape = attentionShape(c);
  const numLayers = c.int("num_hidden_layers");
  const bias = c.bool("attention_bias", false);
  return {
    ...commonConfig(c, { vocabSize: c.int("vocab_size"), ...shape, numLayers, maxPositions: c.intOr(null, "max_position_embeddings") }, false),
    intermediateSize: c.int("intermediate_size"),
    eps: c.number("rms_norm_eps", 1e-5),
    activation: c.string("hidden_act", activationNames, "silu"),
    mlpBias: false,
    qkvBias: bias,
    outputBias: bias,
    qkNorm: "projection",
    rope: c.rope({ headDim: shape.headDim }),
    layerTypes: Array.from({ length: numLayers }, () => "full_attention"),
  };
}

/** Llama's attention with q_norm and k_norm over the whole projections. */
export class Olmo2Attention extends LlamaAttention {}

/** down(act(gate(x)) * up(x)), as in Llama. */
export class Olmo2MLP extends LlamaMLP {}

export class Olmo2DecoderLayer extends Module {
  self_attn: Olmo2Attention;
  mlp: Olmo2MLP;
  post_attention_layernorm: RMSNorm;
  post_feedforward_layernorm: RMSNorm;
  constructor(cfg: Olmo2Config, layerIdx: number) {
    super();
    this.self_attn = new Olmo2Attention(cfg, layerIdx);
    this.mlp = new Olmo2MLP(cfg);
    this.post_attention_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps);
    this.post_feedforward_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps);
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<Tensor> {
    const [attnOut] = await this.self_attn.call(hidden, rope, ctx);
    const h = hidden.add(await this.post_attention_layernorm.call(attnOut));
    return h.add(await this.post_feedforward_layernorm.call(await this.mlp.call(h)));
  }
}

export class Olmo2Model extends Module {
  embed_tokens: Embedding;
  layers: ModuleList<Olmo2DecoderLayer>;
  norm: RMSNorm;
  rotary_emb: RotaryEmbedding;
  constructor(private readonly cfg: Olmo2Config) {
    super();
    this.embed_tokens = new Embedding(cfg.vocabSize, cfg.hiddenSize);
    this.layers = new ModuleList(Array.from({ length: cfg.numLayers }, (_, i) => new Olmo2DecoderLayer(cfg, i)));
    this.norm = new RMSNorm(cfg.hiddenSize, cfg.eps);
    this.rotary_emb = new RotaryEmbedding(cfg.rope, cfg.maxPositions);
  }
  /** embed_tokens, rotary_emb, each layer, norm (see runDecoder). */
  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<BaseModelOutput> {
    return runDecoder(this, inputIds, options, this.cfg.layerTypes, null);
  }
}

export class Olmo2ForCausalLM extends CausalLM {
  model: Olmo2Model;
  lm_head: Linear;
  constructor(readonly config: Olmo2Config) {
    super();
    this.model = new Olmo2Model(config);
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
      ignore: [/rotary_emb\..*inv_freq$/],
    };
  }
}
