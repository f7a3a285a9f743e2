/**
 * Neural-network functions over tensors (torch.nn.functional's role): the fused kernels models call.
 */
import { apply, apply1 } from "./primitive.js";
import * as P from "./primitives.js";
import { DTypeError, ShapeError } from "./errors.js";
import { fmt, sameShape } from "./shape.js";
import { Tensor } from "./tensor.js";

/** x W^T + b over the last dim of x (weight [out, in]); `transposed` takes GPT-2 Conv1D's [in, out] weight. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null, transposed = false): Tensor {
  const inFeatures = x.shape.at(-1)!;
  const flat = x.ndim === 2 ? x : x.reshape(-1, inFeatures);
  const inputs = bias ? [flat.float(), weight, bias] : [flat.float(), weight];
  const y = apply1(weight.packed ? P.packedLinear : P.linear, inputs, { transposed });
  const out = transposed ? weight.shape[1]! : weight.shape[0]!;
  return x.ndim === 2 ? y : y.reshape([...x.shape.slice(0, -1), out]);
}

export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps: number): Tensor {
  return apply1(P.layerNorm, [x, weight, bias], { eps });
}

export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  return apply1(P.rmsNorm, [x, weight], { eps });
}

/**
 * Rotary position embedding over the last dim of x (even): x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1] of
 * x's halves, with cos and sin broadcast to x (as transformers' apply_rotary_pos_emb). One kernel.
 */
export function rotary(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const d = x.shape.at(-1) ?? 0;
  if (d % 2 !== 0) throw new ShapeError(`rotary: the last dim of ${fmt(x.shape)} must be even (two halves)`);
  return apply1(P.rotary, [x, cos, sin], { half: d / 2 });
}

/** Rows of `weight` for integer `ids` of any shape. */
export function embedding(ids: Tensor, weight: Tensor): Tensor {
  if (ids.dtype !== "int64" && ids.dtype !== "int32") throw new ShapeError(`embedding: ids must be integers, got ${ids.dtype}`);
  const packed = weight.packed;
  if (!packed || packed.transposed || ids.isMeta) return weight.indexSelect(0, ids);
  // A packed table: widen only the rows looked up.
  const [rows, dim] = packed.shape;
  const idList = ids.data;
  const out = new Float32Array(idList.length * dim);
  for (let i = 0; i < idList.length; i++) {
    const id = Number(idList[i]);
    const row = id < 0 ? id + rows : id;
    if (!(row >= 0 && row < rows)) throw new ShapeError(`embedding: id ${id} is out of range for ${rows} rows`);
    out.set(packed.rowsFloat32(row, 1), i * dim);
  }
  return new Tensor("float32", out, [...ids.shape, dim]);
}

/** An attention op's soft cap as its kernel takes it: 0 for none; a cap given must be positive. */
function capOf(softcap: number | null): number {
  if (softcap !== null && !(softcap > 0)) throw new RangeError(`attention: softcap must be positive, got ${softcap}`);
  return softcap ?? 0;
}

/**
 * softmax(cap(q k^T * scale) + mask) v in one kernel, where cap(s) = softcap * tanh(s / softcap) when `softcap`
 * is given (Gemma 2) and the identity otherwise. q [B, H, T, D], k and v [B, KV, S, D] (grouped-query heads
 * allowed), mask [B, 1, T, S] additive. Returns the output with heads merged [B, T, H*D] and the weights.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: number, softcap: number | null = null): [Tensor, Tensor] {
  return apply(P.attention, [q, k, v, mask], { scale, softcap: capOf(softcap) }) as [Tensor, Tensor];
}

/**
 * attention over a layer's cached keys and values as they are kept (buffers [B, KV, C, D] whose first `past`
 * positions are filled; see nn/cache.ts) and this call's k and v, without joining them. Returns what attention over
 * the joined keys returns: the output [B, T, H*D] and the weights [B, H, T, past + T]. Not differentiable: the
 * cache is kept this way only while no gradient is recorded.
 */
export function attentionPast(q: Tensor, k: Tensor, v: Tensor, past: CachedKeys, mask: Tensor, scale: number, softcap: number | null = null): [Tensor, Tensor] {
  return apply(P.attentionPast, [q, k, v, past.keys, past.values, mask], { scale, softcap: capOf(softcap), past: past.length }) as [Tensor, Tensor];
}

/** A layer's cache as attention reads it in place: buffers [B, KV, C, D] whose first `length` positions are filled. */
export interface CachedKeys {
  keys: Tensor;
  values: Tensor;
  length: number;
}

/**
 * attentionPast in steps, each the same numbers as its kernel to the bit (an operation point inside it watched): the
 * scores cap(q k^T * scale) [B, H, T, past + T] over the cache's filled positions and this call's keys...
 */
export function attentionPastScores(q: Tensor, k: Tensor, past: CachedKeys, scale: number, softcap: number | null = null): Tensor {
  return apply1(P.attentionPastScores, [q, k, past.keys], { scale, softcap: capOf(softcap), past: past.length });
}
/** ...the weights of masked scores (softmax over the last axis, as the kernel takes it)... */
export function attentionPastSoftmax(scores: Tensor, past: CachedKeys): Tensor {
  return apply1(P.attentionPastSoftmax, [scores], { past: past.length, capacity: past.keys.shape[2]! });
}
/** ...and the weights times the cache's values and this call's, per head [B, H, T, D]. */
export function attentionPastValues(pattern: Tensor, v: Tensor, past: CachedKeys): Tensor {
  return apply1(P.attentionPastValues, [pattern, v, past.values], { past: past.length });
}

/**
 * attention's two matrix products alone, as its kernel computes them (the same numbers to the bit): the scores
 * cap(q k^T * scale) [B, H, T, S] for q [B, H, T, D] and k [B, KV, S, D], and the heads' outputs pattern v [B, H, T, D].
 */
export function attentionScores(q: Tensor, k: Tensor, scale: number, softcap: number | null = null): Tensor {
  return apply1(P.attentionScores, [q, k], { scale, softcap: capOf(softcap) });
}
export function attentionValues(pattern: Tensor, v: Tensor): Tensor {
  return apply1(P.attentionValues, [pattern, v], undefined);
}

/**
 * The mean negative log-likelihood of integer class `targets` [N] under `logits` [N, C], as torch's cross_entropy:
 * targets equal to `ignoreIndex` (-100 by default) count for nothing; any other outside 0..C-1 is an error.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, { ignoreIndex = -100 }: { ignoreIndex?: number } = {}): Tensor {
  if (logits.ndim !== 2 || targets.ndim !== 1 || targets.shape[0] !== logits.shape[0]) {
    throw new ShapeError(`cross_entropy: expects logits [N, C] and targets [N], got ${fmt(logits.shape)} and ${fmt(targets.shape)}`);
  }
  if (targets.dtype !== "int64" && targets.dtype !== "int32") throw new DTypeError(`cross_entropy: targets must be class indices (int64 or int32), got ${targets.dtype}`);
  if (!Number.isSafeInteger(ignoreIndex)) throw new ShapeError(`cross_entropy: ignoreIndex must be a whole number, got ${String(ignoreIndex)}`);
  const classes = logits.shape[1]!;
  if (!targets.isMeta) {
    for (const v of targets.data as Iterable<number | bigint>) {
      const c = Number(v);
      if (c !== ignoreIndex && (c < 0 || c >= classes)) throw new ShapeError(`cross_entropy: target ${c} is out of range for ${classes} classes (and is not ignoreIndex, ${ignoreIndex})`);
    }
  }
  const t = targets.long();
  const kept = t.ne(ignoreIndex);
  const picked = logits.logSoftmax(-1).gather(1, Tensor.where(kept, t, 0).unsqueeze(1)).squeeze(1);
  // Over no kept target the mean is 0 / 0, NaN, as in PyTorch.
  return Tensor.where(kept, picked, 0).sum().div(kept.sum()).neg();
}

/** How a loss of many elements is summed up, as torch's `reduction`. */
export type Reduction = "mean" | "sum" | "none";

function reduce(loss: Tensor, reduction: Reduction, name: string): Tensor {
  if (reduction === "mean") return loss.mean();
  if (reduction === "sum") return loss.sum();
  if (reduction === "none") return loss;
  throw new TypeError(`${name}: reduction must be "mean", "sum" or "none", got ${JSON.stringify(String(reduction).slice(0, 40))}`);
}

function checkSameShape(a: Tensor, b: Tensor, name: string, what: string): void {
  if (!sameShape(a.shape, b.shape)) throw new ShapeError(`${name}: ${what} must have one shape, got ${fmt(a.shape)} and ${fmt(b.shape)}`);
}

/**
 * torch's binary_cross_entropy_with_logits: -[w t log σ(x) + (1 - t) log(1 - σ(x))] per element, computed stably as
 * (1 - t) x + (1 + (w - 1) t) softplus(-x), whose gradient σ(x) - t (weighted) has no kink at 0; `targets` are
 * probabilities (0 to 1) of `logits`' shape; `posWeight` (w) weighs the positive term, broadcast over the last axis
 * as torch's pos_weight.
 */
export function binaryCrossEntropyWithLogits(logits: Tensor, targets: Tensor, { reduction = "mean", posWeight }: { reduction?: Reduction; posWeight?: Tensor } = {}): Tensor {
  checkSameShape(logits, targets, "binary_cross_entropy_with_logits", "logits and targets");
  const x = logits.float();
  const t = targets.float();
  const weight = posWeight ? posWeight.float().sub(1).mul(t).add(1) : 1;
  return reduce(t.neg().add(1).mul(x).add(x.neg().softplus().mul(weight)), reduction, "binary_cross_entropy_with_logits");
}

/** torch's mse_loss: the squared difference per element, averaged (or summed, or kept). */
export function mseLoss(input: Tensor, target: Tensor, { reduction = "mean" }: { reduction?: Reduction } = {}): Tensor {
  checkSameShape(input, target, "mse_loss", "input and target");
  return reduce(input.float().sub(target.float()).square(), reduction, "mse_loss");
}
