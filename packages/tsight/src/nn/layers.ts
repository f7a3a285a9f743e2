/**
 * The leaf modules models are built from. Names, parameter names and shapes follow torch / Hugging Face, so
 * weights load key by key.
 */
import { functional as F, type Tensor } from "../tensor/index.js";
import { Module } from "./module.js";

/** y = x W^T + b, weight [out, in] (torch.nn.Linear). */
export class Linear extends Module {
  weight: Tensor;
  bias: Tensor | null;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    bias = true,
  ) {
    super();
    this.weight = this.param("weight", [outFeatures, inFeatures]);
    this.bias = bias ? this.param("bias", [outFeatures]) : null;
  }
  override async forward(x: Tensor): Promise<Tensor> {
    return F.linear(x, this.weight, this.bias);
  }
}

/** GPT-2's Conv1D: a linear layer whose weight is stored [in, out]. */
export class Conv1D extends Module {
  weight: Tensor;
  bias: Tensor;
  constructor(
    readonly outFeatures: number,
    readonly inFeatures: number,
  ) {
    super();
    this.weight = this.param("weight", [inFeatures, outFeatures]);
    this.bias = this.param("bias", [outFeatures]);
  }
  override async forward(x: Tensor): Promise<Tensor> {
    return F.linear(x, this.weight, this.bias, true);
  }
}

/** Token embedding; `scale` multiplies the rows inside the module (Gemma's scaled word embedding). */
export class Embedding extends Module {
  weight: Tensor;
  constructor(
    readonly numEmbeddings: number,
    readonly embeddingDim: number,
    readonly scale: number | null = null,
  ) {
    super();
    this.weight = this.param("weight", [numEmbeddings, embeddingDim]);
  }
  override async forward(ids: Tensor): Promise<Tensor> {
    const rows = F.embedding(ids, this.weight);
    return this.scale === null ? rows : rows.mul(this.scale);
  }
}

export class LayerNorm extends Module {
  weight: Tensor;
  bias: Tensor;
  constructor(
    readonly dim: number,
    /** PyTorch's default. */
    readonly eps = 1e-5,
  ) {
    super();
    this.weight = this.param("weight", [dim]);
    this.bias = this.param("bias", [dim]);
  }
  override async forward(x: Tensor): Promise<Tensor> {
    return F.layerNorm(x, this.weight, this.bias, this.eps);
  }
}

/**
 * RMSNorm (Llama, Qwen, Mistral). `offset` 1 gives Gemma's variant, which scales by (1 + weight).
 */
export class RMSNorm extends Module {
  weight: Tensor;
  constructor(
    readonly dim: number,
    /** Hugging Face Llama's default. */
    readonly eps = 1e-6,
    readonly offset = 0,
  ) {
    super();
    this.weight = this.param("weight", [dim]);
  }
  override async forward(x: Tensor): Promise<Tensor> {
    return F.rmsNorm(x, this.offset ? this.weight.add(this.offset) : this.weight, this.eps);
  }
}

/** Dropout at inference is the identity; the module exists (and is called) so its path can be hooked. */
export class Dropout extends Module {
  constructor(readonly p: number) {
    super();
  }
  override async forward(x: Tensor): Promise<Tensor> {
    return x;
  }
}

/** Activation functions by their Hugging Face config names. */
export type ActivationName = "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "silu" | "swish" | "relu" | "tanh" | "sigmoid";
const activations: Record<ActivationName, (x: Tensor) => Tensor> = {
  gelu: (x) => x.gelu(),
  gelu_new: (x) => x.gelu("tanh"),
  gelu_pytorch_tanh: (x) => x.gelu("tanh"),
  gelu_fast: (x) => x.gelu("tanh"),
  silu: (x) => x.silu(),
  swish: (x) => x.silu(),
  relu: (x) => x.relu(),
  tanh: (x) => x.tanh(),
  sigmoid: (x) => x.sigmoid(),
};
export const activationNames = Object.keys(activations) as ActivationName[];

export class Activation extends Module {
  private readonly fn: (x: Tensor) => Tensor;
  constructor(readonly kind: ActivationName) {
    super();
    this.fn = activations[kind];
  }
  override async forward(x: Tensor): Promise<Tensor> {
    return this.fn(x);
  }
}
