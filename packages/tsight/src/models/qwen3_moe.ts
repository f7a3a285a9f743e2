/**
 * Qwen3-MoE (transformers' modeling_qwen3_moe): Qwen 3's decoder (per-head q/k RMSNorm, explicit head_dim) with a
 * sparse mixture of experts as the MLP (see moe.ts), registered experts-then-gate; the top-k weights are
 * renormalised only with `norm_topk_prob`. Layers listed in `mlp_only_layers`, or off the `decoder_sparse_step`
 * grid, keep a dense gated MLP of `intermediate_size`.
 */
import { activationNames, Embedding, Linear, Module, ModuleList, RMSNorm, RotaryEmbedding } from "../nn/index.js";
import type { ActivationName, AttentionContext, ForwardOptions, LayerType, RopeSpec } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { CausalLM, commonConfig, type BaseModelOutput, type ModelConfig, type WeightRules } from "./causal-lm.js";
import { ConfigReader, type RawConfig } from "./config.js";
import { attentionShape, runDecoder } from "./decoder.js";
import { LlamaAttention, LlamaMLP, type GatedMLPConfig, type LlamaAttentionConfig } from "./llama.js";
import { expertWeightRules, MoeExperts, sparseMoeForward, TopKRouter, type MoeConfig } from "./moe.js";

export interface Qwen3MoeConfig extends ModelConfig, LlamaAttentionConfig, MoeConfig, GatedMLPConfig {
  eps: number;
  activation: ActivationName;
  rope: RopeSpec;
  /** Which layers route through experts; the others use a dense MLP of `intermediateSize`. */
  sparseLayers: boolean[];
  layerTypes: LayerType[];
  slidingWindow: number | null;
}

export function qwen3MoeConfig(raw: RawConfig): Qwen3MoeConfig {
  const c = new ConfigReader(raw, "qwen3_moe");
  const shape = attentionShape(c);
  const numLayers = c.int("num_hidden_layers");
  const window = c.bool("use_sliding_window", false) ? c.intOr(null, "sliding_window") : null;
  const numExperts = c.intOr(128, "num_local_experts", "num_experts") ?? 128;
  const topK = c.intOr(8, "num_experts_per_tok") ?? 8;
  if (topK > numExperts) c.invalid("num_experts_per_tok", `at most num_local_experts (${numExperts})`);
  const step = c.intOr(1, "decoder_sparse_step") ?? 1;
  const mlpOnly = raw.mlp_only_layers ?? [];
  if (!Array.isArray(mlpOnly) || mlpOnly.some((i) => !Number.isInteger(i))) c.invalid("mlp_only_layers", "a list of layer numbers");
  return {
    ...commonConfig(c, { vocabSize: c.int("vocab_size"), ...shape, numLayers, maxPositions: c.intOr(null, "max_position_embeddings") }, false),
    eps: c.number("rms_norm_eps", 1e-6),
    activation: c.string("hidden_act", activationNames, "silu"),
    qkvBias: c.bool("attention_bias", false),
    outputBias: c.bool("attention_bias", false),
    qkNorm: "head",
    intermediateSize: c.int("intermediate_size"),
    mlpBias: false,
    numExperts,
    topK,
    expertIntermediateSize: c.int("moe_intermediate_size"),
    normTopK: c.bool("norm_topk_prob", false),
    sparseLayers: Array.from({ length: numLayers }, (_, i) => !(mlpOnly as number[]).includes(i) && (i + 1) % step === 0),
    rope: c.rope({ headDim: shape.headDim }),
    layerTypes: Array.from({ length: numLayers }, () => (window === null ? "full_attention" : "sliding_attention")),
    slidingWindow: window,
  };
}

/** Llama's attention with Qwen 3's per-head q_norm and k_norm. */
export class Qwen3MoeAttention extends LlamaAttention {}

/** The dense MLP of layers that do not route (mlp_only_layers). */
export class Qwen3MoeMLP extends LlamaMLP {}

/** mlp.experts runs the experts mlp.gate chose for each token. */
export class Qwen3MoeSparseMoeBlock extends Module {
  experts: MoeExperts;
  gate: TopKRouter;
  constructor(cfg: Qwen3MoeConfig) {
    super();
    this.experts = new MoeExperts(cfg);
    this.gate = new TopKRouter(cfg);
  }
  override async forward(hidden: Tensor): Promise<Tensor> {
    return sparseMoeForward(this, hidden); // (B, T, D) -> tokens (B*T, D) -> gate, experts -> (B, T, D)
  }
}

export class Qwen3MoeDecoderLayer extends Module {
  self_attn: Qwen3MoeAttention;
  mlp: Qwen3MoeSparseMoeBlock | Qwen3MoeMLP;
  input_layernorm: RMSNorm;
  post_attention_layernorm: RMSNorm;
  constructor(cfg: Qwen3MoeConfig, layerIdx: number) {
    super();
    this.self_attn = new Qwen3MoeAttention(cfg, layerIdx);
    this.mlp = cfg.sparseLayers[layerIdx] ? new Qwen3MoeSparseMoeBlock(cfg) : new Qwen3MoeMLP(cfg);
    this.input_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps);
    this.post_attention_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps);
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<Tensor> {
    const [attnOut] = await this.self_attn.call(await this.input_layernorm.call(hidden), rope, ctx);
    const h = hidden.add(attnOut);
    const normed = await this.post_attention_layernorm.call(h);
    return h.add(await (this.mlp instanceof Qwen3MoeSparseMoeBlock ? this.mlp.call(normed) : this.mlp.call(normed)));
  }
}

export class Qwen3MoeModel extends Module {
  embed_tokens: Embedding;
  layers: ModuleList<Qwen3MoeDecoderLayer>;
  norm: RMSNorm;
  rotary_emb: RotaryEmbedding;
  constructor(private readonly cfg: Qwen3MoeConfig) {
    super();
    this.embed_tokens = new Embedding(cfg.vocabSize, cfg.hiddenSize);
    this.layers = new ModuleList(Array.from({ length: cfg.numLayers }, (_, i) => new Qwen3MoeDecoderLayer(cfg, i)));
    this.norm = new RMSNorm(cfg.hiddenSize, cfg.eps);
    this.rotary_emb = new RotaryEmbedding(cfg.rope, cfg.maxPositions);
  }
  /** embed_tokens, rotary_emb, each layer, norm (see runDecoder). */
  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<BaseModelOutput> {
    return runDecoder(this, inputIds, options, this.cfg.layerTypes, this.cfg.slidingWindow);
  }
}

export class Qwen3MoeForCausalLM extends CausalLM {
  model: Qwen3MoeModel;
  lm_head: Linear;
  constructor(readonly config: Qwen3MoeConfig) {
    super();
    this.model = new Qwen3MoeModel(config);
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
  /** Hub checkpoints store each expert apart: mlp.experts.E.gate_proj/up_proj/down_proj. */
  weightRules(): WeightRules {
    const sparse = this.layerPaths().filter((_, i) => this.config.sparseLayers[i]);
    return {
      tied: this.config.tieWordEmbeddings ? { "lm_head.weight": "model.embed_tokens.weight" } : {},
      basePrefix: "model.",
      ignore: [/rotary_emb\..*inv_freq$/],
      ...expertWeightRules(sparse, this.config.numExperts, { block: "mlp", gate: "gate_proj", up: "up_proj", down: "down_proj" }),
    };
  }
}
