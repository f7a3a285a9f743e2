/**
 * SGD with optional momentum (heavy-ball or Nesterov), dampening and L2 weight decay, PyTorch's torch.optim.SGD:
 *
 *   g = grad + weightDecay * p
 *   buf = g (first step), else momentum * buf + (1 - dampening) * g
 *   g = nesterov ? g + momentum * buf : buf          (with momentum)
 *   p = p - lr * g
 */
import type { Tensor } from "../tensor/index.js";
import { OptimizerError } from "./errors.js";
import { checkKeys, checkNumber, MAX_RATE, Optimizer, type OptimizerOptions } from "./optimizer.js";

export interface SGDOptions extends OptimizerOptions {
  /** 0 to 1 (0 by default: plain SGD). */
  momentum?: number;
  /** 0 to 1 (0 by default). */
  dampening?: number;
  /** Nesterov momentum (needs momentum above 0 and no dampening). */
  nesterov?: boolean;
  /** L2 penalty added to the gradient, 0 to MAX_RATE. */
  weightDecay?: number;
}

export class SGD extends Optimizer {
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;
  readonly weightDecay: number;
  private readonly buffers: (Float32Array | null)[];
  private readonly started: boolean[];

  constructor(params: readonly Tensor[], options: SGDOptions) {
    const o = checkKeys("SGD", options, ["lr", "schedule", "momentum", "dampening", "nesterov", "weightDecay"]);
    super("SGD", params, options);
    this.momentum = checkNumber("SGD", "momentum", o.momentum ?? 0, 0, 1);
    this.dampening = checkNumber("SGD", "dampening", o.dampening ?? 0, 0, 1);
    this.weightDecay = checkNumber("SGD", "weightDecay", o.weightDecay ?? 0, 0, MAX_RATE);
    if (o.nesterov !== undefined && typeof o.nesterov !== "boolean") throw new OptimizerError(`SGD: nesterov must be true or false, got ${String(o.nesterov)}`);
    this.nesterov = o.nesterov === true;
    if (this.nesterov && (this.momentum === 0 || this.dampening !== 0)) throw new OptimizerError("SGD: nesterov momentum needs momentum above 0 and dampening 0");
    this.buffers = this.params.map((p) => (this.momentum > 0 ? new Float32Array(p.numel()) : null));
    this.started = this.params.map(() => false);
  }

  get stateBytes(): number {
    return this.buffers.reduce((n, b) => n + (b ? b.byteLength : 0), 0);
  }

  protected update(i: number, p: Float32Array, grad: Float32Array, lr: number): void {
    const { momentum, dampening, nesterov, weightDecay } = this;
    const buf = this.buffers[i];
    const first = !this.started[i];
    this.started[i] = true;
    for (let j = 0; j < p.length; j++) {
      let g = grad[j]! + weightDecay * p[j]!;
      if (buf) {
        const b = first ? g : momentum * buf[j]! + (1 - dampening) * g;
        buf[j] = b;
        g = nesterov ? g + momentum * buf[j]! : buf[j]!;
      }
      p[j] = p[j]! - lr * g;
    }
  }
}
