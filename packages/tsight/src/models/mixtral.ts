/**
 * Mixtral (transformers' modeling_mixtral): Llama's decoder (Mistral's optional sliding window) with a sparse
 * mixture of experts in place of the MLP: `mlp.gate` routes each token to its top-k experts (weights renormalised
 * over the k), `mlp.experts` holds every expert's weights as 3-D tensors (see moe.ts).
 */
import { activationNames, Embedding, Linear, Module, ModuleList, RMSNorm, RotaryEmbedding } from "../nn/index.js";
import type { ActivationName, AttentionContext, ForwardOptions, LayerType, RopeSpec } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { CausalLM, commonConfig, type BaseModelOutput, type ModelConfig, type WeightRules } from "./causal-lm.js";
import { ConfigReader, type RawConfig } from "./config.js";
import { attentionShape, runDecoder } from "./decoder.js";
import { LlamaAttention, type LlamaAttentionConfig } from "./llama.js";
import { expertWeightRules, MoeExperts, sparseMoeForward, TopKRouter, type MoeConfig } from "./moe.js";

export interface MixtralConfig extends ModelConfig, LlamaAttentionConfig, MoeConfig {
  eps: number;
  activation: ActivationName;
  rope: RopeSpec;
  layerTypes: LayerType[];
  slidingWindow: number | null;
}

export function mixtralConfig(raw: RawConfig): MixtralConfig {
  const c = new ConfigReader(raw, "mixtral");
  const shape = attentionShape(c);
  const numLayers = c.int("num_hidden_layers");
  const window = c.intOr(null, "sliding_window");
  const numExperts = c.intOr(8, "num_local_experts", "num_experts") ?? 8;
  const topK = c.intOr(2, "num_experts_per_tok") ?? 2;
  if (topK > numExperts) c.invalid("num_experts_per_tok", `at most num_local_experts (${numExperts})`);
  return {
    ...commonConfig(c, { vocabSize: c.int("vocab_size"), ...shape, numLayers, maxPositions: c.intOr(null, "max_position_embeddings") }, false),
    eps: c.number("rms_norm_eps", 1e-5),
    activation: c.string("hidden_act", activationNames, "silu"),
    qkvBias: false,
    outputBias: false,
    qkNorm: null,
    numExperts,
    topK,
    expertIntermediateSize: c.int("intermediate_size"),
    normTopK: true,
    rope: c.rope({ headDim: shape.headDim, defaultTheta: 1_000_000 }),
    layerTypes: Array.from({ length: numLayers }, () => (window === null ? "full_attention" : "sliding_attention")),
    slidingWindow: window,
  };
}

/** Llama's attention (no biases). */
export class MixtralAttention extends LlamaAttention {}

/** mlp.gate routes each token to its top-k experts; mlp.experts runs them. */
export class MixtralSparseMoeBlock extends Module {
  gate: TopKRouter;
  experts: MoeExperts;
  constructor(cfg: MixtralConfig) {
    super();
    this.gate = new TopKRouter(cfg);
    this.experts = new MoeExperts(cfg);
  }
  override async forward(hidden: Tensor): Promise<Tensor> {
    return sparseMoeForward(this, hidden); // (B, T, D) -> tokens (B*T, D) -> gate, experts -> (B, T, D)
  }
}

export class MixtralDecoderLayer extends Module {
  self_attn: MixtralAttention;
  mlp: MixtralSparseMoeBlock;
  input_layernorm: RMSNorm;
  post_attention_layernorm: RMSNorm;
  constructor(cfg: MixtralConfig, layerIdx: number) {
    super();
    this.self_attn = new MixtralAttention(cfg, layerIdx);
    this.mlp = new MixtralSparseMoeBlock(cfg);
    this.input_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps);
    this.post_attention_layernorm = new RMSNorm(cfg.hiddenSize, cfg.eps);
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<Tensor> {
    const [attnOut] = await this.self_attn.call(await this.input_layernorm.call(hidden), rope, ctx);
    const h = hidden.add(attnOut);
    return h.add(await this.mlp.call(await this.post_attention_layernorm.call(h)));
  }
}

export class MixtralModel extends Module {
  embed_tokens: Embedding;
  layers: ModuleList<MixtralDecoderLayer>;
  norm: RMSNorm;
  rotary_emb: RotaryEmbedding;
  constructor(private readonly cfg: MixtralConfig) {
    super();
    this.embed_tokens = new Embedding(cfg.vocabSize, cfg.hiddenSize);
    this.layers = new ModuleList(Array.from({ length: cfg.numLayers }, (_, i) => new MixtralDecoderLayer(cfg, i)));
    this.norm = new RMSNorm(cfg.hiddenSize, cfg.eps);
    this.rotary_emb = new RotaryEmbedding(cfg.rope, cfg.maxPositions);
  }
  /** embed_tokens, rotary_emb, each layer, norm (see runDecoder). */
  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<BaseModelOutput> {
    return runDecoder(this, inputIds, options, this.cfg.layerTypes, this.cfg.slidingWindow);
  }
}

export class MixtralForCausalLM extends CausalLM {
  model: MixtralModel;
  lm_head: Linear;
  constructor(readonly config: MixtralConfig) {
    super();
    this.model = new MixtralModel(config);
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
  /** Hub checkpoints keep Mixtral's original layout: block_sparse_moe.gate, block_sparse_moe.experts.E.w1/w3/w2. */
  weightRules(): WeightRules {
    return {
      tied: this.config.tieWordEmbeddings ? { "lm_head.weight": "model.embed_tokens.weight" } : {},
      basePrefix: "model.",
      ignore: [/rotary_emb\..*inv_freq$/],
      ...expertWeightRules(this.layerPaths(), this.config.numExperts, { block: "block_sparse_moe", gate: "w1", up: "w3", down: "w2" }),
    };
  }
}
