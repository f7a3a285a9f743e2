/**
 * Phi-3 (transformers' modeling_phi3): a Llama-style decoder whose attention projects queries, keys and values
 * with one fused `qkv_proj` and whose MLP projects gate and up with one `gate_up_proj`; a dropout module (identity
 * at inference, but hookable) on each residual branch. Long-context checkpoints use LongRoPE (rope type
 * `longrope`, also read from the older names "su" and "yarn", as transformers does for Phi-3), optionally partial
 * rotary (Phi-4-mini), and optionally a sliding window on every layer.
 */
import { Activation, activationNames, AttentionPoints, Dropout, Embedding, Linear, MlpPoints, Module, ModuleList, RMSNorm, RotaryEmbedding, rotaryAttention } from "../nn/index.js";
import type { ActivationName, AttentionContext, ForwardOptions, LayerType, RopeSpec } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { CausalLM, commonConfig, type BaseModelOutput, type ModelConfig, type WeightRules } from "./causal-lm.js";
import { ConfigReader, type RawConfig } from "./config.js";
import { attentionShape, runDecoder } from "./decoder.js";

export interface Phi3Config extends ModelConfig {
  intermediateSize: number;
  eps: number;
  activation: ActivationName;
  rope: RopeSpec;
  layerTypes: LayerType[];
  slidingWindow: number | null;
}

export function phi3Config(raw: RawConfig): Phi3Config {
  const c = new ConfigReader(raw, "phi3");
  const shape = attentionShape(c);
  const numLayers = c.int("num_hidden_layers");
  const window = c.intOr(null, "sliding_window");
  return {
    ...commonConfig(c, { vocabSize: c.int("vocab_size"), ...shape, numLayers, maxPositions: c.intOr(null, "max_position_embeddings") }, false),
    intermediateSize: c.int("intermediate_size"),
    eps: c.number("rms_norm_eps", 1e-5),
    activation: c.string("hidden_act", activationNames, "silu"),
    rope: c.rope({ headDim: shape.headDim, aliases: { su: "longrope", yarn: "longrope" }, originalMaxDefault: 4096 }),
    layerTypes: Array.from({ length: numLayers }, () => (window === null ? "full_attention" : "sliding_attention")),
    slidingWindow: window,
  };
}

export class Phi3Attention extends Module {
  o_proj: Linear;
  qkv_proj: Linear;
  /** q, k, v, scores, pattern, z (see AttentionPoints). */
  source = new AttentionPoints();
  constructor(
    private readonly cfg: Phi3Config,
    private readonly layerIdx: number,
  ) {
    super();
    const { hiddenSize, numHeads, numKVHeads, headDim } = cfg;
    this.o_proj = new Linear(numHeads * headDim, hiddenSize, false);
    this.qkv_proj = new Linear(hiddenSize, (numHeads + 2 * numKVHeads) * headDim, false);
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<[Tensor, Tensor]> {
    const [B, T] = hidden.shape as [number, number];
    const { numHeads: H, numKVHeads: KV, headDim: D } = this.cfg;
    // The fused projection is [all queries | all keys | all values] along the features: (B, T, (H + 2 KV) D).
    const [q, k, v] = (await this.qkv_proj.call(hidden)).split([H * D, KV * D, KV * D], -1) as [Tensor, Tensor, Tensor];
    const heads = (x: Tensor, n: number) => x.reshape(B, T, n, D).transpose(1, 2); // (B, n, T, D)
    const [out, weights] = await rotaryAttention(this.source, heads(q, H), heads(k, KV), heads(v, KV), rope, ctx, this.layerIdx, { scale: 1 / Math.sqrt(D) });
    return [await this.o_proj.call(out), weights];
  }
}

export class Phi3MLP extends Module {
  gate_up_proj: Linear;
  down_proj: Linear;
  activation_fn: Activation;
  /** pre: the gate half of gate_up_proj, the activation's input; post: up * act(gate), down_proj's input. */
  source = new MlpPoints();
  constructor(cfg: Phi3Config) {
    super();
    this.gate_up_proj = new Linear(cfg.hiddenSize, 2 * cfg.intermediateSize, false);
    this.down_proj = new Linear(cfg.intermediateSize, cfg.hiddenSize, false);
    this.activation_fn = new Activation(cfg.activation);
  }
  override async forward(x: Tensor): Promise<Tensor> {
    const [gate, up] = (await this.gate_up_proj.call(x)).chunk(2, -1) as [Tensor, Tensor]; // (B, T, I) each
    return this.down_proj.call(await this.source.post.at(up.mul(await this.activation_fn.call(await this.source.pre.at(gate)))));
  }
}

export class Phi3DecoderLayer extends Module {
  self_attn: Phi3Attention;
  mlp: Phi3MLP;
  input_layernorm: RMSNorm;
  post_attention_layernorm: RMSNorm;
  resid_attn_dropout = new Dropout(0);
  resid_mlp_dropout = new Dropout(0);
  constructor(cfg: Phi3Config, layerIdx: number) {
    super();
    this.self_attn = new Phi3Attention(cfg, layerIdx);
    this.mlp = new Phi3MLP(cfg);
    this.input_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps);
    this.post_attention_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps);
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<Tensor> {
    const [attnOut] = await this.self_attn.call(await this.input_layernorm.call(hidden), rope, ctx);
    const h = hidden.add(await this.resid_attn_dropout.call(attnOut));
    const mlpOut = await this.mlp.call(await this.post_attention_layernorm.call(h));
    return h.add(await this.resid_mlp_dropout.call(mlpOut));
  }
}

export class Phi3Model extends Module {
  embed_tokens: Embedding;
  layers: ModuleList<Phi3DecoderLayer>;
  norm: RMSNorm;
  rotary_emb: RotaryEmbedding;
  constructor(private readonly cfg: Phi3Config) {
    super();
    this.embed_tokens = new Embedding(cfg.vocabSize, cfg.hiddenSize);
    this.layers = new ModuleList(Array.from({ length: cfg.numLayers }, (_, i) => new Phi3DecoderLayer(cfg, i)));
    this.norm = new RMSNorm(cfg.hiddenSize, cfg.eps);
    this.rotary_emb = new RotaryEmbedding(cfg.rope, cfg.maxPositions);
  }
  /** embed_tokens, rotary_emb (LongRoPE picks its factors by the batch's longest position), each layer, norm (see runDecoder). */
  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<BaseModelOutput> {
    return runDecoder(this, inputIds, options, this.cfg.layerTypes, this.cfg.slidingWindow);
  }
}

export class Phi3ForCausalLM extends CausalLM {
  model: Phi3Model;
  lm_head: Linear;
  constructor(readonly config: Phi3Config) {
    super();
    this.model = new Phi3Model(config);
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
