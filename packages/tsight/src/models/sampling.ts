/**
 * Choosing the next token from one row of logits: greedy, or sampling with temperature, top-k and top-p applied in
 * Hugging Face's order (temperature, then top-k, then top-p), drawn from a seeded generator so runs repeat.
 */
import type { Generator } from "../tensor/index.js";

export interface SamplingOptions {
  /** Sample instead of taking the most likely token. Implied by temperature/topK/topP. */
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
}

export function isSampling(o: SamplingOptions): boolean {
  return o.doSample ?? (o.temperature !== undefined || o.topK !== undefined || o.topP !== undefined);
}

export function validateSampling(o: SamplingOptions): void {
  if (o.temperature !== undefined && !(o.temperature > 0)) throw new RangeError(`temperature must be > 0, got ${o.temperature}`);
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK > 0)) throw new RangeError(`topK must be a positive integer, got ${o.topK}`);
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${o.topP}`);
}

/** Index of the largest value (the first one on ties, as torch.argmax). */
export function argmaxRow(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

export function sampleRow(row: Float32Array, o: SamplingOptions, rng: Generator): number {
  const t = o.temperature ?? 1;
  // Candidates sorted by logit, descending; top-k keeps the first k.
  let order = Array.from(row.keys()).sort((a, b) => row[b]! - row[a]!);
  if (o.topK !== undefined) order = order.slice(0, Math.min(o.topK, order.length));
  const max = row[order[0]!]! / t;
  let probs = order.map((i) => Math.exp(row[i]! / t - max));
  let total = probs.reduce((s, p) => s + p, 0);
  if (o.topP !== undefined && o.topP < 1) {
    // Keep the smallest prefix whose mass reaches topP (always at least one token).
    let mass = 0,
      keep = 0;
    while (keep < probs.length && mass / total < o.topP) mass += probs[keep++]!;
    order = order.slice(0, Math.max(1, keep));
    probs = probs.slice(0, order.length);
    total = probs.reduce((s, p) => s + p, 0);
  }
  let r = rng.random() * total;
  for (let i = 0; i < order.length; i++) {
    r -= probs[i]!;
    if (r < 0) return order[i]!;
  }
  return order[order.length - 1]!;
}
