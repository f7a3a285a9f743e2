/**
 * GPT-NeoX / Pythia (transformers' modeling_gpt_neox): LayerNorm, fused per-head query_key_value, partial rotary
 * (rotary_pct of each head), and, by default, the parallel residual: attention and MLP both read the layer input.
 */
import { Activation, activationNames, attentionMask, Dropout, Embedding, LayerNorm, Linear, MlpPoints, Module, ModuleList, resolveForward, RotaryEmbedding, rotaryAttention, AttentionPoints } from "../nn/index.js";
import type { ActivationName, AttentionContext, ForwardOptions, RopeSpec } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { CausalLM, commonConfig, type BaseModelOutput, type ModelConfig, type WeightRules } from "./causal-lm.js";
import { ConfigError, ConfigReader, type RawConfig } from "./config.js";

export interface GPTNeoXConfig extends ModelConfig {
  intermediateSize: number;
  eps: number;
  activation: ActivationName;
  rope: RopeSpec;
  parallelResidual: boolean;
  attentionBias: boolean;
}

export function gptNeoXConfig(raw: RawConfig): GPTNeoXConfig {
  const c = new ConfigReader(raw, "gpt_neox");
  const hidden = c.int("hidden_size");
  const heads = c.int("num_attention_heads");
  if (hidden % heads) throw new ConfigError(`gpt_neox config: hidden_size ${hidden} is not divisible by num_attention_heads ${heads}`, "num_attention_heads");
  const headDim = hidden / heads;
  return {
    ...commonConfig(c, { vocabSize: c.int("vocab_size"), hiddenSize: hidden, numLayers: c.int("num_hidden_layers"), numHeads: heads, numKVHeads: heads, headDim, maxPositions: c.intOr(null, "max_position_embeddings") }, false),
    intermediateSize: c.int("intermediate_size"),
    eps: c.number("layer_norm_eps", 1e-5),
    activation: c.string("hidden_act", activationNames, "gelu"),
    rope: c.rope({ headDim, defaultTheta: c.number("rotary_emb_base", 10000) }),
    parallelResidual: c.bool("use_parallel_residual", true),
    attentionBias: c.bool("attention_bias", true),
  };
}

export class GPTNeoXAttention extends Module {
  query_key_value: Linear;
  dense: Linear;
  /** q, k, v, scores, pattern, z (see AttentionPoints). */
  source = new AttentionPoints();
  constructor(
    private readonly cfg: GPTNeoXConfig,
    private readonly layerIdx: number,
  ) {
    super();
    this.query_key_value = new Linear(cfg.hiddenSize, 3 * cfg.hiddenSize, cfg.attentionBias);
    this.dense = new Linear(cfg.hiddenSize, cfg.hiddenSize, cfg.attentionBias);
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<[Tensor, Tensor]> {
    const [B, T] = hidden.shape as [number, number];
    const { numHeads: H, headDim: D } = this.cfg;
    // The fused projection is laid out per head: [q_h, k_h, v_h] for each head h.
    const qkv = (await this.query_key_value.call(hidden)).reshape(B, T, H, 3 * D).transpose(1, 2); // (B, H, T, 3D)
    const [q, k, v] = qkv.split(D, -1) as [Tensor, Tensor, Tensor];
    const [out, weights] = await rotaryAttention(this.source, q, k, v, rope, ctx, this.layerIdx, { scale: 1 / Math.sqrt(D) });
    return [await this.dense.call(out), weights];
  }
}

export class GPTNeoXMLP extends Module {
  dense_h_to_4h: Linear;
  dense_4h_to_h: Linear;
  act: Activation;
  /** pre: the activation's input; post: its output. */
  source = new MlpPoints();
  constructor(cfg: GPTNeoXConfig) {
    super();
    this.dense_h_to_4h = new Linear(cfg.hiddenSize, cfg.intermediateSize);
    this.dense_4h_to_h = new Linear(cfg.intermediateSize, cfg.hiddenSize);
    this.act = new Activation(cfg.activation);
  }
  override async forward(x: Tensor): Promise<Tensor> {
    return this.dense_4h_to_h.call(await this.source.post.at(await this.act.call(await this.source.pre.at(await this.dense_h_to_4h.call(x)))));
  }
}

export class GPTNeoXLayer extends Module {
  input_layernorm: LayerNorm;
  post_attention_layernorm: LayerNorm;
  post_attention_dropout = new Dropout(0);
  post_mlp_dropout = new Dropout(0);
  attention: GPTNeoXAttention;
  mlp: GPTNeoXMLP;
  constructor(
    private readonly cfg: GPTNeoXConfig,
    layerIdx: number,
  ) {
    super();
    this.input_layernorm = new LayerNorm(cfg.hiddenSize, cfg.eps);
    this.post_attention_layernorm = new LayerNorm(cfg.hiddenSize, cfg.eps);
    this.attention = new GPTNeoXAttention(cfg, layerIdx);
    this.mlp = new GPTNeoXMLP(cfg);
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<Tensor> {
    const [attnRaw] = await this.attention.call(await this.input_layernorm.call(hidden), rope, ctx);
    const attnOut = await this.post_attention_dropout.call(attnRaw);
    if (this.cfg.parallelResidual) {
      const mlpOut = await this.post_mlp_dropout.call(await this.mlp.call(await this.post_attention_layernorm.call(hidden)));
      return mlpOut.add(attnOut).add(hidden);
    }
    const h = attnOut.add(hidden);
    const mlpOut = await this.post_mlp_dropout.call(await this.mlp.call(await this.post_attention_layernorm.call(h)));
    return mlpOut.add(h);
  }
}

export class GPTNeoXModel extends Module {
  embed_in: Embedding;
  emb_dropout = new Dropout(0);
  layers: ModuleList<GPTNeoXLayer>;
  final_layer_norm: LayerNorm;
  rotary_emb: RotaryEmbedding;
  constructor(cfg: GPTNeoXConfig) {
    super();
    this.embed_in = new Embedding(cfg.vocabSize, cfg.hiddenSize);
    this.layers = new ModuleList(Array.from({ length: cfg.numLayers }, (_, i) => new GPTNeoXLayer(cfg, i)));
    this.final_layer_norm = new LayerNorm(cfg.hiddenSize, cfg.eps);
    this.rotary_emb = new RotaryEmbedding(cfg.rope, cfg.maxPositions);
  }
  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<BaseModelOutput> {
    const { mask, positions } = resolveForward(inputIds, options);
    const ctx: AttentionContext = { mask: attentionMask(mask, inputIds.shape[1]!), cache: options.cache };
    let hidden = await this.emb_dropout.call(await this.embed_in.call(inputIds));
    const rope = await this.rotary_emb.call(hidden, positions);
    for (const layer of this.layers) hidden = await layer.call(hidden, rope, ctx);
    hidden = await this.final_layer_norm.call(hidden);
    return { last_hidden_state: hidden, past_key_values: options.cache };
  }
}

export class GPTNeoXForCausalLM extends CausalLM {
  gpt_neox: GPTNeoXModel;
  lm_head: Linear;
  constructor(readonly config: GPTNeoXConfig) {
    super();
    this.gpt_neox = new GPTNeoXModel(config);
    this.lm_head = new Linear(config.hiddenSize, config.vocabSize, false);
  }
  protected base() {
    return this.gpt_neox;
  }
  protected head() {
    return this.lm_head;
  }
  layerPaths(): string[] {
    return Array.from({ length: this.config.numLayers }, (_, i) => `gpt_neox.layers.${i}`);
  }
  weightRules(): WeightRules {
    return {
      tied: this.config.tieWordEmbeddings ? { "lm_head.weight": "gpt_neox.embed_in.weight" } : {},
      aliases: { "lm_head.weight": ["embed_out.weight"] },
      basePrefix: "gpt_neox.",
      ignore: [/\.attention\.(bias|masked_bias)$/, /rotary_emb\.inv_freq$/],
    };
  }
}
