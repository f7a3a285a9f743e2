/**
 * Adam and AdamW, as PyTorch's torch.optim.Adam / AdamW (single-tensor kernels), with t the parameter's own step:
 *
 *   Adam:   g = grad + weightDecay * p                 (L2 penalty through the gradient)
 *   AdamW:  p = p * (1 - lr * weightDecay)             (decoupled weight decay, before the update)
 *   m = beta1 * m + (1 - beta1) * g
 *   v = beta2 * v + (1 - beta2) * g^2
 *   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 */
import type { Tensor } from "../tensor/index.js";
import { OptimizerError } from "./errors.js";
import { checkKeys, checkNumber, MAX_RATE, Optimizer, type OptimizerOptions } from "./optimizer.js";

export interface AdamOptions extends OptimizerOptions {
  /** [beta1, beta2], each in [0, 1) ([0.9, 0.999] by default). */
  betas?: readonly [number, number];
  /** Added to the denominator, above 0 and at most 1 (1e-8 by default). */
  eps?: number;
  /** Adam: L2 penalty added to the gradient (0 by default). AdamW: decoupled decay (0.01 by default). */
  weightDecay?: number;
}

const KEYS = ["lr", "schedule", "betas", "eps", "weightDecay"];

class AdamBase extends Optimizer {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private readonly t: number[];

  constructor(
    name: string,
    private readonly decoupled: boolean,
    params: readonly Tensor[],
    options: AdamOptions,
  ) {
    const o = checkKeys(name, options, KEYS);
    super(name, params, options);
    const betas = o.betas ?? [0.9, 0.999];
    if (!Array.isArray(betas) || betas.length !== 2) throw new OptimizerError(`${name}: betas must be two numbers [beta1, beta2], got ${String(betas)}`);
    this.beta1 = checkNumber(name, "betas[0]", betas[0], 0, 1 - 1e-12);
    this.beta2 = checkNumber(name, "betas[1]", betas[1], 0, 1 - 1e-12);
    this.eps = checkNumber(name, "eps", o.eps ?? 1e-8, 0, 1, true);
    this.weightDecay = checkNumber(name, "weightDecay", o.weightDecay ?? (decoupled ? 0.01 : 0), 0, MAX_RATE);
    this.m = this.params.map((p) => new Float32Array(p.numel()));
    this.v = this.params.map((p) => new Float32Array(p.numel()));
    this.t = this.params.map(() => 0);
  }

  get stateBytes(): number {
    return this.m.reduce((n, a) => n + 2 * a.byteLength, 0);
  }

  protected update(i: number, p: Float32Array, grad: Float32Array, lr: number): void {
    const { beta1, beta2, eps, weightDecay, decoupled } = this;
    const m = this.m[i]!;
    const v = this.v[i]!;
    const t = ++this.t[i]!;
    const stepSize = lr / (1 - beta1 ** t);
    const correction2 = Math.sqrt(1 - beta2 ** t);
    const decay = decoupled ? 1 - lr * weightDecay : 1;
    for (let j = 0; j < p.length; j++) {
      const g = decoupled ? grad[j]! : grad[j]! + weightDecay * p[j]!;
      if (decoupled) p[j] = p[j]! * decay;
      m[j] = beta1 * m[j]! + (1 - beta1) * g;
      v[j] = beta2 * v[j]! + (1 - beta2) * g * g;
      p[j] = p[j]! - (stepSize * m[j]!) / (Math.sqrt(v[j]!) / correction2 + eps);
    }
  }
}

/** Adam (Kingma & Ba); `weightDecay` is an L2 penalty through the gradient, as in torch.optim.Adam. */
export class Adam extends AdamBase {
  constructor(params: readonly Tensor[], options: AdamOptions) {
    super("Adam", false, params, options);
  }
}

/** AdamW (Loshchilov & Hutter): weight decay applied to the parameters directly, 0.01 by default. */
export class AdamW extends AdamBase {
  constructor(params: readonly Tensor[], options: AdamOptions) {
    super("AdamW", true, params, options);
  }
}
