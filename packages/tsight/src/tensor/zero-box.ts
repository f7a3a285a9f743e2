/**
 * Gradients known to be zero outside a box. The gradient of a slice (`logits.index(0, -1, 5)`: one logit of
 * [1, 128, 50257]) is zero but for the slice's own values, and attribution patching's backward spent about a sixth of
 * its time on those zeros (GPT-2-small at 128 tokens): two 25 MB tensors filled, their sum, and the output layer's
 * [128, 50257] @ [50257, 768] product, all but one row of it zeros. A tensor made here holds where it can be nonzero,
 * and the two places that meet such gradients first use it: the backward pass's sum of gradients and a matrix
 * product by a weight (the output layer's, or any linear layer's input gradient).
 *
 * A box is a range of rows and one of columns of the tensor seen as a matrix [elements / last dim, last dim], which a
 * reshape keeping the last dim keeps. Every element outside it is +0 (a sum or product over those matches the dense
 * op's bit for bit); inside it the values are as the dense op computes them. Tensors never change (but a
 * Parameter's, which is never boxed), so a box stays true.
 */
import { guardAllocation } from "./primitive.js";
import { Tensor } from "./tensor.js";

/** Rows [r0, r1) and columns [c0, c1) of the tensor seen as [rows, last dim]. */
export interface ZeroBox {
  readonly r0: number;
  readonly r1: number;
  readonly c0: number;
  readonly c1: number;
}

const boxes = new WeakMap<Tensor, ZeroBox>();

/** Where `t` may be nonzero, if known. */
export function boxOf(t: Tensor): ZeroBox | undefined {
  return boxes.get(t);
}

/** `t`'s box, kept by a reshape to `out` where the last dim stays (see the reshape primitive). */
export function keepBox(t: Tensor, out: Tensor): void {
  const box = boxes.get(t);
  if (box && lastDim(t) === lastDim(out)) boxes.set(out, box);
}

const lastDim = (t: Tensor): number => (t.ndim === 0 ? 1 : t.shape[t.ndim - 1]!);
const rowsOf = (t: Tensor): number => (t.ndim <= 1 ? 1 : t.numel() / lastDim(t));
const area = (b: ZeroBox): number => Math.max(0, b.r1 - b.r0) * Math.max(0, b.c1 - b.c0);

/** A box pays where it covers at most this share of its tensor (else the dense ops, which use every core, do better). */
const SPARSE_SHARE = 1 / 8;

/** Only boxes of tensors this large are worth the bookkeeping. */
const MIN_ELEMENTS = 1 << 14;

/**
 * A float32 tensor of `shape`, zero but for the region `starts`/`stops`/`steps` (normalised, as a slice's), which
 * holds `value`: the gradient of that slice, boxed where it is a small part of a large tensor.
 */
export function paddedSlice(shape: readonly number[], a: { starts: readonly number[]; stops: readonly number[]; steps: readonly number[] }, value: Tensor): Tensor | null {
  const size = shape.reduce((n, d) => n * d, 1);
  if (value.dtype !== "float32" || size < MIN_ELEMENTS || shape.length === 0) return null;
  const region = shape.map((_, i) => Math.max(0, Math.ceil((a.stops[i]! - a.starts[i]!) / a.steps[i]!)));
  if (region.some((d, i) => d !== value.shape[i]) || value.shape.length !== shape.length) return null;
  guardAllocation(size * 4);
  const out = new Float32Array(size);
  const src = value.data as Float32Array;
  const rank = shape.length;
  const strides = new Array<number>(rank);
  for (let d = rank - 1, s = 1; d >= 0; s *= shape[d]!, d--) strides[d] = s;
  const total = src.length;
  const idx = new Array<number>(rank).fill(0);
  let lo = Infinity;
  let hi = -1;
  for (let i = 0; i < total; i++) {
    let off = 0;
    for (let d = 0; d < rank; d++) off += (a.starts[d]! + idx[d]! * a.steps[d]!) * strides[d]!;
    out[off] = src[i]!;
    lo = Math.min(lo, off);
    hi = Math.max(hi, off);
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d]! < region[d]!) break;
      idx[d] = 0;
    }
  }
  const t = new Tensor("float32", out, shape);
  const cols = shape[rank - 1]!;
  const last = rank - 1;
  const box: ZeroBox =
    total === 0
      ? { r0: 0, r1: 0, c0: 0, c1: 0 }
      : { r0: Math.floor(lo / cols), r1: Math.floor(hi / cols) + 1, c0: a.starts[last]!, c1: a.starts[last]! + (region[last]! - 1) * a.steps[last]! + 1 };
  if (area(box) <= size * SPARSE_SHARE) boxes.set(t, box);
  return t;
}

/** a + b where both are boxed tensors of one shape (the backward pass's sum of two gradients), or null. */
export function sumOfBoxed(a: Tensor, b: Tensor): Tensor | null {
  const ba = boxes.get(a);
  const bb = boxes.get(b);
  if (!ba || !bb || a.dtype !== "float32" || b.dtype !== "float32" || a.ndim !== b.ndim || a.shape.some((d, i) => d !== b.shape[i])) return null;
  const box = { r0: Math.min(ba.r0, bb.r0), r1: Math.max(ba.r1, bb.r1), c0: Math.min(ba.c0, bb.c0), c1: Math.max(ba.c1, bb.c1) };
  const size = a.numel();
  const cols = lastDim(a);
  guardAllocation(size * 4);
  const out = new Float32Array(size);
  const x = a.data as Float32Array;
  const y = b.data as Float32Array;
  // Outside the union both are +0, as is the new array; inside, each element is summed as the dense add sums it.
  for (let r = box.r0; r < box.r1; r++) for (let i = r * cols + box.c0, end = r * cols + box.c1; i < end; i++) out[i] = x[i]! + y[i]!;
  const t = new Tensor("float32", out, a.shape);
  if (area(box) <= size * SPARSE_SHARE) boxes.set(t, box);
  return t;
}

/**
 * a @ op(b) for a boxed `a` of rank >= 2 and a matrix `b` (op: transposed where `transB`), multiplying only a's box by
 * the rows of op(b) it meets (`multiply`, the dense product on those parts), or null where `a` is not boxed. The
 * result is boxed to the box's rows. Where `b` holds an infinity or NaN, the dense product gives NaN in every row
 * (0 x inf) and this gives zeros outside the box, which is the gradient's true value.
 */
export function boxedProduct(a: Tensor, b: Tensor, transB: boolean, multiply: (x: Tensor, y: Tensor) => Tensor): Tensor | null {
  const box = boxes.get(a);
  if (!box || a.ndim < 2 || b.ndim !== 2 || a.dtype !== "float32" || b.dtype !== "float32" || b.packed) return null;
  const k = lastDim(a);
  const rows = rowsOf(a);
  const m = transB ? b.shape[0]! : b.shape[1]!;
  if ((transB ? b.shape[1] : b.shape[0]) !== k) return null;
  const [R, C] = [box.r1 - box.r0, box.c1 - box.c0];
  // The box's part of a, copied out: [R, C].
  const part = new Float32Array(R * C);
  const x = a.data as Float32Array;
  for (let r = 0; r < R; r++) part.set(x.subarray((box.r0 + r) * k + box.c0, (box.r0 + r) * k + box.c1), r * C);
  const y = multiply(new Tensor("float32", part, [R, C]), transB ? b.narrow(1, box.c0, C) : b.narrow(0, box.c0, C));
  guardAllocation(rows * m * 4);
  const out = new Float32Array(rows * m);
  out.set(y.data as Float32Array, box.r0 * m);
  const t = new Tensor("float32", out, [...a.shape.slice(0, -1), m]);
  if (R * m <= rows * m * SPARSE_SHARE) boxes.set(t, { r0: box.r0, r1: box.r1, c0: 0, c1: m });
  return t;
}
