/**
 * GPT-2 (transformers' modeling_gpt2): learned positions, pre-LayerNorm blocks, fused qkv Conv1D, gelu_new MLP,
 * output head tied to the token embedding. Module names and call order are Hugging Face's.
 */
import { Activation, activationNames, attend, attentionMask, AttentionPoints, Conv1D, Dropout, Embedding, LayerNorm, Linear, MlpPoints, Module, ModuleList, resolveForward } from "../nn/index.js";
import type { ActivationName, AttentionContext, ForwardOptions } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import { CausalLM, commonConfig, type BaseModelOutput, type ModelConfig, type WeightRules } from "./causal-lm.js";
import { ConfigError, ConfigReader, type RawConfig } from "./config.js";

export interface GPT2Config extends ModelConfig {
  nInner: number;
  eps: number;
  activation: ActivationName;
  scaleByInverseLayer: boolean;
  /** Hugging Face's scale_attn_weights: false leaves q kᵀ unscaled by 1/sqrt(head_dim). */
  scaleWeights: boolean;
}

export function gpt2Config(raw: RawConfig): GPT2Config {
  const c = new ConfigReader(raw, "gpt2");
  const hidden = c.int("n_embd", "hidden_size");
  const heads = c.int("n_head", "num_attention_heads");
  if (hidden % heads) throw new ConfigError(`gpt2 config: n_embd ${hidden} is not divisible by n_head ${heads}`, "n_head");
  return {
    ...commonConfig(c, { vocabSize: c.int("vocab_size"), hiddenSize: hidden, numLayers: c.int("n_layer", "num_hidden_layers"), numHeads: heads, numKVHeads: heads, headDim: hidden / heads, maxPositions: c.int("n_positions", "max_position_embeddings") }, true),
    nInner: c.intOr(4 * hidden, "n_inner") ?? 4 * hidden,
    eps: c.number("layer_norm_epsilon", 1e-5),
    activation: c.string("activation_function", activationNames, "gelu_new"),
    scaleByInverseLayer: c.bool("scale_attn_by_inverse_layer_idx", false),
    scaleWeights: c.bool("scale_attn_weights", true),
  };
}

export class GPT2Attention extends Module {
  c_attn: Conv1D;
  c_proj: Conv1D;
  attn_dropout = new Dropout(0);
  resid_dropout = new Dropout(0);
  /** q, k, v, scores, pattern, z (see AttentionPoints). */
  source = new AttentionPoints();
  constructor(
    private readonly cfg: GPT2Config,
    private readonly layerIdx: number,
  ) {
    super();
    this.c_attn = new Conv1D(3 * cfg.hiddenSize, cfg.hiddenSize);
    this.c_proj = new Conv1D(cfg.hiddenSize, cfg.hiddenSize);
  }
  override async forward(hidden: Tensor, ctx: AttentionContext): Promise<[Tensor, Tensor]> {
    const [B, T, C] = hidden.shape as [number, number, number];
    const { numHeads: H, headDim: D } = this.cfg;
    const qkv = await this.c_attn.call(hidden);
    const [q, k, v] = qkv.split(C, 2).map((t) => t.reshape(B, T, H, D).transpose(1, 2)) as [Tensor, Tensor, Tensor]; // (B, H, T, D)
    let scale = this.cfg.scaleWeights ? 1 / Math.sqrt(D) : 1;
    if (this.cfg.scaleByInverseLayer) scale /= this.layerIdx + 1;
    const [out, weights] = await attend(this.source, q, k, v, ctx, this.layerIdx, scale);
    const projected = await this.resid_dropout.call(await this.c_proj.call(out));
    return [projected, weights];
  }
}

export class GPT2MLP extends Module {
  c_fc: Conv1D;
  c_proj: Conv1D;
  act: Activation;
  dropout = new Dropout(0);
  /** pre: c_fc's output, the activation's input; post: the activation's output. */
  source = new MlpPoints();
  constructor(cfg: GPT2Config) {
    super();
    this.c_fc = new Conv1D(cfg.nInner, cfg.hiddenSize);
    this.c_proj = new Conv1D(cfg.hiddenSize, cfg.nInner);
    this.act = new Activation(cfg.activation);
  }
  override async forward(x: Tensor): Promise<Tensor> {
    const h = await this.source.post.at(await this.act.call(await this.source.pre.at(await this.c_fc.call(x))));
    return this.dropout.call(await this.c_proj.call(h));
  }
}

export class GPT2Block extends Module {
  ln_1: LayerNorm;
  attn: GPT2Attention;
  ln_2: LayerNorm;
  mlp: GPT2MLP;
  constructor(cfg: GPT2Config, layerIdx: number) {
    super();
    this.ln_1 = new LayerNorm(cfg.hiddenSize, cfg.eps);
    this.attn = new GPT2Attention(cfg, layerIdx);
    this.ln_2 = new LayerNorm(cfg.hiddenSize, cfg.eps);
    this.mlp = new GPT2MLP(cfg);
  }
  override async forward(hidden: Tensor, ctx: AttentionContext): Promise<Tensor> {
    const [attnOut] = await this.attn.call(await this.ln_1.call(hidden), ctx);
    const h = attnOut.add(hidden);
    return h.add(await this.mlp.call(await this.ln_2.call(h)));
  }
}

export class GPT2Model extends Module {
  wte: Embedding;
  wpe: Embedding;
  drop = new Dropout(0);
  h: ModuleList<GPT2Block>;
  ln_f: LayerNorm;
  constructor(cfg: GPT2Config) {
    super();
    this.wte = new Embedding(cfg.vocabSize, cfg.hiddenSize);
    this.wpe = new Embedding(cfg.maxPositions!, cfg.hiddenSize);
    this.h = new ModuleList(Array.from({ length: cfg.numLayers }, (_, i) => new GPT2Block(cfg, i)));
    this.ln_f = new LayerNorm(cfg.hiddenSize, cfg.eps);
  }
  override async forward(inputIds: Tensor, options: ForwardOptions = {}): Promise<BaseModelOutput> {
    const { mask, positions } = resolveForward(inputIds, options);
    const ctx: AttentionContext = { mask: attentionMask(mask, inputIds.shape[1]!), cache: options.cache };
    const tokens = await this.wte.call(inputIds);
    const pos = await this.wpe.call(positions);
    let hidden = await this.drop.call(tokens.add(pos));
    for (const block of this.h) hidden = await block.call(hidden, ctx);
    hidden = await this.ln_f.call(hidden);
    return { last_hidden_state: hidden, past_key_values: options.cache };
  }
}

export class GPT2LMHeadModel extends CausalLM {
  transformer: GPT2Model;
  lm_head: Linear;
  constructor(readonly config: GPT2Config) {
    super();
    this.transformer = new GPT2Model(config);
    this.lm_head = new Linear(config.hiddenSize, config.vocabSize, false);
  }
  protected base() {
    return this.transformer;
  }
  protected head() {
    return this.lm_head;
  }
  layerPaths(): string[] {
    return Array.from({ length: this.config.numLayers }, (_, i) => `transformer.h.${i}`);
  }
  weightRules(): WeightRules {
    return {
      tied: this.config.tieWordEmbeddings ? { "lm_head.weight": "transformer.wte.weight" } : {},
      aliases: {},
      basePrefix: "transformer.",
      ignore: [/\.attn\.(masked_)?bias$/],
    };
  }
}
