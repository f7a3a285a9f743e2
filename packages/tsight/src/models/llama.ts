/**
 * The Llama family (transformers' modeling_llama and its descendants): RMSNorm, rotary positions, grouped-query
 * attention, gated MLP. One implementation with the options that tell the members apart:
 *
 * | model_type | differences from llama                                                        |
 * |------------|-------------------------------------------------------------------------------|
 * | mistral    | sliding-window attention                                                      |
 * | qwen2      | biases on q/k/v (not o), tied embeddings by default, sliding layers by config  |
 * | qwen3      | RMSNorm on each head's queries and keys (q_norm, k_norm), explicit head_dim    |
 * | gemma      | embed_tokens scales by sqrt(hidden), RMSNorm by (1 + weight), GeGLU (tanh)     |
 *
 * Every member takes any rope type (`llama3`, `linear`, `yarn`, `longrope`, `dynamic`; see nn/rotary.ts). The
 * attention and MLP here are shared by OLMo 2 (olmo2.ts) and the mixtures of experts (mixtral.ts, qwen3_moe.ts).
 */
import { Activation, activationNames, AttentionPoints, Embedding, Linear, MlpPoints, Module, ModuleList, RMSNorm, RotaryEmbedding, rotaryAttention } from "../nn/index.js";
import type { ActivationName, AttentionContext, ForwardOptions, LayerType, RopeSpec } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { CausalLM, commonConfig, type BaseModelOutput, type ModelConfig, type WeightRules } from "./causal-lm.js";
import { ConfigReader, type RawConfig } from "./config.js";
import { attentionShape, readLayerTypes, runDecoder } from "./decoder.js";

export type LlamaFamily = "llama" | "mistral" | "qwen2" | "qwen3" | "gemma";

export interface LlamaConfig extends ModelConfig {
  family: LlamaFamily;
  intermediateSize: number;
  eps: number;
  activation: ActivationName;
  rope: RopeSpec;
  qkvBias: boolean;
  outputBias: boolean;
  mlpBias: boolean;
  /** RMSNorm of queries and keys: per head (Qwen 3, q_norm [head_dim]) or over the whole projection (OLMo 2). */
  qkNorm: "head" | "projection" | null;
  normOffset: number;
  embedScale: number | null;
  /** Each layer's attention; "sliding_attention" layers see the last `slidingWindow` positions only. */
  layerTypes: LayerType[];
  slidingWindow: number | null;
}

/** What LlamaAttention reads; other families (OLMo 2, the mixtures of experts) provide it too. */
export type LlamaAttentionConfig = Pick<LlamaConfig, "hiddenSize" | "numHeads" | "numKVHeads" | "headDim" | "qkvBias" | "outputBias" | "qkNorm" | "eps">;

/** What a gated MLP needs (LlamaConfig has it; other families pass their own sizes). */
export interface GatedMLPConfig {
  hiddenSize: number;
  intermediateSize: number;
  activation: ActivationName;
  mlpBias: boolean;
}

/** Layer types and window: Mistral slides everywhere when it has a window; Qwen 2/3 from layer max_window_layers on. */
function slidingLayers(c: ConfigReader, family: LlamaFamily, numLayers: number): { layerTypes: LayerType[]; slidingWindow: number | null } {
  const full = (): LayerType[] => Array.from({ length: numLayers }, () => "full_attention");
  if (family === "mistral") {
    const w = c.intOr(null, "sliding_window");
    return { layerTypes: w === null ? full() : Array.from({ length: numLayers }, () => "sliding_attention"), slidingWindow: w };
  }
  if (family === "qwen2" || family === "qwen3") {
    const w = c.bool("use_sliding_window", false) ? c.intOr(null, "sliding_window") : null;
    const from = c.intOr(28, "max_window_layers") ?? 28;
    const types = readLayerTypes(c, numLayers, (i) => (w !== null && i >= from ? "sliding_attention" : "full_attention"));
    // Without a window (use_sliding_window false) a sliding layer attends like a full one, as in transformers.
    return w === null ? { layerTypes: full(), slidingWindow: null } : { layerTypes: types, slidingWindow: w };
  }
  return { layerTypes: full(), slidingWindow: null };
}

export function llamaConfig(raw: RawConfig, family: LlamaFamily): LlamaConfig {
  const c = new ConfigReader(raw, family);
  const shape = attentionShape(c);
  const attentionBias = c.bool("attention_bias", false);
  const numLayers = c.int("num_hidden_layers");
  return {
    ...commonConfig(c, { vocabSize: c.int("vocab_size"), ...shape, numLayers, maxPositions: c.intOr(null, "max_position_embeddings") }, family === "qwen2" || family === "qwen3" || family === "gemma"),
    family,
    intermediateSize: c.int("intermediate_size"),
    eps: c.number("rms_norm_eps", 1e-6),
    activation: c.string("hidden_act", activationNames, family === "gemma" ? "gelu_pytorch_tanh" : "silu"),
    rope: c.rope({ headDim: shape.headDim }),
    qkvBias: family === "qwen2" ? true : attentionBias,
    outputBias: family === "qwen2" ? false : attentionBias,
    mlpBias: c.bool("mlp_bias", false),
    qkNorm: family === "qwen3" ? "head" : null,
    normOffset: family === "gemma" ? 1 : 0,
    embedScale: family === "gemma" ? Math.fround(Math.sqrt(shape.hiddenSize)) : null,
    ...slidingLayers(c, family, numLayers),
  };
}

/** Grouped-query attention with rotary positions; the attention of every Llama-style family here. */
export class LlamaAttention extends Module {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  q_norm?: RMSNorm;
  k_norm?: RMSNorm;
  /** q, k, v, scores, pattern, z (see AttentionPoints). */
  source = new AttentionPoints();
  constructor(
    private readonly cfg: LlamaAttentionConfig,
    private readonly layerIdx: number,
  ) {
    super();
    const { hiddenSize, numHeads, numKVHeads, headDim } = cfg;
    this.q_proj = new Linear(hiddenSize, numHeads * headDim, cfg.qkvBias);
    this.k_proj = new Linear(hiddenSize, numKVHeads * headDim, cfg.qkvBias);
    this.v_proj = new Linear(hiddenSize, numKVHeads * headDim, cfg.qkvBias);
    this.o_proj = new Linear(numHeads * headDim, hiddenSize, cfg.outputBias);
    if (cfg.qkNorm) {
      const whole = cfg.qkNorm === "projection";
      this.q_norm = new RMSNorm(whole ? numHeads * headDim : headDim, cfg.eps);
      this.k_norm = new RMSNorm(whole ? numKVHeads * headDim : headDim, cfg.eps);
    }
  }
  override async forward(hidden: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext): Promise<[Tensor, Tensor]> {
    const [B, T] = hidden.shape as [number, number];
    const { numHeads: H, numKVHeads: KV, headDim: D } = this.cfg;
    const whole = this.cfg.qkNorm === "projection";
    let q = await this.q_proj.call(hidden); // (B, T, H*D)
    if (this.q_norm && whole) q = await this.q_norm.call(q);
    q = q.reshape(B, T, H, D);
    if (this.q_norm && !whole) q = await this.q_norm.call(q);
    let k = await this.k_proj.call(hidden); // (B, T, KV*D)
    if (this.k_norm && whole) k = await this.k_norm.call(k);
    k = k.reshape(B, T, KV, D);
    if (this.k_norm && !whole) k = await this.k_norm.call(k);
    const v = (await this.v_proj.call(hidden)).reshape(B, T, KV, D).transpose(1, 2); // (B, KV, T, D)
    const [out, weights] = await rotaryAttention(this.source, q.transpose(1, 2), k.transpose(1, 2), v, rope, ctx, this.layerIdx, { scale: 1 / Math.sqrt(D) });
    return [await this.o_proj.call(out), weights];
  }
}

/** down(act(gate(x)) * up(x)). */
export class LlamaMLP extends Module {
  gate_proj: Linear;
  up_proj: Linear;
  down_proj: Linear;
  act_fn: Activation;
  /** pre: gate_proj's output, the activation's input; post: act(gate) * up, down_proj's input. */
  source = new MlpPoints();
  constructor(cfg: GatedMLPConfig) {
    super();
    this.gate_proj = new Linear(cfg.hiddenSize, cfg.intermediateSize, cfg.mlpBias);
    this.up_proj = new Linear(cfg.hiddenSize, cfg.intermediateSize, cfg.mlpBias);
    this.down_proj = new Linear(cfg.intermediateSize, cfg.hiddenSize, cfg.mlpBias);
    this.act_fn = new Activation(cfg.activation);
  }
  override async forward(x: Tensor): Promise<Tensor> {
    const gate = await this.act_fn.call(await this.source.pre.at(await this.gate_proj.call(x)));
    return this.down_proj.call(await this.source.post.at(gate.mul(await this.up_proj.call(x))));
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
    this.rotary_emb = new RotaryEmbedding(cfg.rope, cfg.maxPositions);
  }
  /** embed_tokens, rotary_emb, each layer, norm (see runDecoder). */
  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<BaseModelOutput> {
    return runDecoder(this, inputIds, options, this.cfg.layerTypes, this.cfg.slidingWindow);
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
