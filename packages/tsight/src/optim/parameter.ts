/**
 * Parameter: a float32 leaf tensor that requires grad and whose values an optimizer replaces at each step.
 *
 * Tensors are immutable; a Parameter is the one exception, and only through `Optimizer.step()`. A step gives it a
 * new array of values rather than writing into the old one, so what was computed from it before (a detach(), a
 * reshape, a cached activation) keeps the values it had. As in PyTorch, step after backward: the graph recorded
 * before a step holds the Parameter itself, so a backward run after the step would see the new values.
 */
import { DTypeError, MetaTensorError, Tensor, tensor, type TypedArray } from "../tensor/index.js";

export class Parameter extends Tensor {
  /** A new parameter holding a copy of `init`'s values (float32, with the same shape). */
  constructor(init: Tensor) {
    if (!(init instanceof Tensor)) throw new TypeError("Parameter: expected a tensor of initial values");
    if (init.isMeta) throw new MetaTensorError(`Parameter: a meta tensor of shape [${init.shape}] has no values to start from`);
    if (init.dtype !== "float32") throw new DTypeError(`Parameter: parameters are float32, this is ${init.dtype}; convert it with .float()`);
    super("float32", new Float32Array(init.data as Float32Array), init.shape);
    this.requiresGrad_();
  }

  /** @internal the optimizer's new values (a fresh array of the same length) */
  assign(values: Float32Array): void {
    this.replaceData(values as TypedArray);
  }

  /** The values now, as a tensor that no later step changes. */
  snapshot(): Tensor {
    return this.detach();
  }
}

/** A trainable parameter from a tensor (its values are copied) or from nested arrays of numbers. */
export function parameter(init: Tensor | readonly unknown[]): Parameter {
  return new Parameter(init instanceof Tensor ? init : tensor(init as never, "float32"));
}
