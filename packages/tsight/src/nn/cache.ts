/**
 * The key/value cache of generation: per layer, keys and values of every position seen so far, so a decode step
 * runs only the new tokens.
 */
import { Tensor } from "../tensor/index.js";

export class KVCache {
  private readonly layers: ({ keys: Tensor; values: Tensor } | undefined)[] = [];

  /** Positions already cached (those of layer 0). */
  get length(): number {
    return this.layers[0]?.keys.shape[2] ?? 0;
  }

  /** Appends this step's keys and values [B, kvHeads, T, headDim] and returns the whole sequence's. */
  update(layer: number, keys: Tensor, values: Tensor): { keys: Tensor; values: Tensor } {
    const prev = this.layers[layer];
    const next = prev ? { keys: Tensor.cat([prev.keys, keys], 2), values: Tensor.cat([prev.values, values], 2) } : { keys, values };
    this.layers[layer] = next;
    return next;
  }

  /** Cached keys and values of one layer, if any. */
  get(layer: number): { keys: Tensor; values: Tensor } | undefined {
    return this.layers[layer];
  }
}
