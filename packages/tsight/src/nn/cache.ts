/**
 * The key/value cache of generation: per layer, keys and values of every position seen so far, so a decode step
 * runs only the new tokens.
 */
import { Tensor } from "../tensor/index.js";

export class KVCache {
  private readonly layers: ({ keys: Tensor; values: Tensor } | undefined)[] = [];

  /**
   * Positions already processed: the longest layer's. A layer skipped during generation (its module replaced by
   * an intervention) has fewer; attention then cuts the mask to the keys it has (eagerAttention), as Hugging Face does.
   */
  get length(): number {
    let n = 0;
    for (const l of this.layers) if (l) n = Math.max(n, l.keys.shape[2]!);
    return n;
  }

  /**
   * Appends this step's keys and values [B, kvHeads, T, headDim] and returns the whole sequence's. The first step
   * appends to empty ones, so it makes the same ops as every later step (a fused step's graph serves it too).
   */
  update(layer: number, keys: Tensor, values: Tensor): { keys: Tensor; values: Tensor } {
    const prev = this.layers[layer] ?? { keys: empty(keys), values: empty(values) };
    const next = { keys: Tensor.cat([prev.keys, keys], 2), values: Tensor.cat([prev.values, values], 2) };
    this.layers[layer] = next;
    return next;
  }

  /** @internal every layer's entry now (fused decode steps capture against it, then put real tensors back) */
  snapshot(): readonly ({ keys: Tensor; values: Tensor } | undefined)[] {
    return [...this.layers];
  }

  /** @internal sets the layers' entries back to a snapshot */
  restore(entries: readonly ({ keys: Tensor; values: Tensor } | undefined)[]): void {
    this.layers.length = 0;
    this.layers.push(...entries);
  }

  /** Cached keys and values of one layer, if any. */
  get(layer: number): { keys: Tensor; values: Tensor } | undefined {
    return this.layers[layer];
  }
}

/** No positions of `x`'s kind: [B, kvHeads, 0, headDim]. */
function empty(x: Tensor): Tensor {
  const [B, H, , D] = x.shape as [number, number, number, number];
  return Tensor.zeros([B, H, 0, D], x.dtype);
}
