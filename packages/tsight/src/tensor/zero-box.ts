/**
 * Gradients known to be zero outside a box. The gradient of a slice (`logits.index(0, -1, 5)`: one logit of
 * [1, 128, 50257]) is zero but for the slice's own values, and attribution patching's backward spent about a sixth of
 * its time on those zeros (GPT-2-small at 128 tokens): two 25 MB tensors filled, their sum, and the output layer's
 * [128, 50257] @ [50257, 768] product, all but one row of it zeros. A tensor made here holds where it can be nonzero,
 * and the two places that meet such gradients first use it: the backward pass's sum of gradients and a matrix
 * product by a weight (the output layer's, or any linear layer's input gradient).
 *
 * A box is a range of rows and one of columns of the tensor seen as a matrix [elements / last dim, last dim], which a
 * reshape keeping the last dim keeps. Every element outside it is +0. A slice's gradient and a sum of two boxed ones
 * are the dense ops' values bit for bit; a product leaves out terms that are exact zeros (0 x w, for a finite w), so
 * it differs from the dense product only in the order its terms are summed (a few units in the last place). Such a
 * tensor holds the box's values only, and makes its whole array when something reads it (lazyTensor): the two 25 MB
 * arrays of a logit difference's gradient are never made. Tensors never change (but a Parameter's, which is never
 * boxed), so a box stays true.
 */
import { guardAllocation } from "./primitive.js";
import { checkShape, sameShape, sizeOf, stridesOf } from "./shape.js";
import type { TypedArray } from "./dtype.js";
import { Tensor } from "./tensor.js";

/** Rows [r0, r1) and columns [c0, c1) of the tensor seen as [rows, last dim]. */
export interface ZeroBox {
  readonly r0: number;
  readonly r1: number;
  readonly c0: number;
  readonly c1: number;
}

/** A boxed tensor's box and the values inside it, row by row ([r1 - r0, c1 - c0]). */
interface Boxed {
  box: ZeroBox;
  values: Float32Array;
}

const boxes = new WeakMap<Tensor, Boxed>();

/** Where `t` may be nonzero, if known. */
export function boxOf(t: Tensor): ZeroBox | undefined {
  return boxes.get(t)?.box;
}

const lastDim = (shape: readonly number[]): number => (shape.length === 0 ? 1 : shape[shape.length - 1]!);
const area = (b: ZeroBox): number => Math.max(0, b.r1 - b.r0) * Math.max(0, b.c1 - b.c0);

/** A box pays where it covers at most this share of its tensor (else the dense ops, which use every core, do better). */
const SPARSE_SHARE = 1 / 8;

/** Only boxes of tensors this large are worth the bookkeeping. */
const MIN_ELEMENTS = 1 << 14;

/** A tensor whose values `make` gives when they are first read (Tensor's `making`, set here: not users' API). */
function lazyTensor(dtype: "float32", shape: readonly number[], make: () => TypedArray): Tensor {
  checkShape("tensor", shape);
  const t = new Tensor(dtype, null, shape);
  t["making"] = make;
  return t;
}

/**
 * A float32 tensor of `shape`, zero but for `box`, which holds `values`: made whole only when read, by `whole` where
 * given (a reshape's: its source's array, shared as a reshape shares it).
 */
function boxed(shape: readonly number[], box: ZeroBox, values: Float32Array, whole?: () => Float32Array): Tensor {
  const cols = lastDim(shape);
  const width = box.c1 - box.c0;
  const made = () => {
    const size = sizeOf(shape);
    guardAllocation(size * 4);
    const out = new Float32Array(size);
    for (let r = box.r0; r < box.r1; r++) out.set(values.subarray((r - box.r0) * width, (r - box.r0 + 1) * width), r * cols + box.c0);
    return out;
  };
  const t = lazyTensor("float32", shape, whole ?? made);
  boxes.set(t, { box, values });
  return t;
}

/** `t` reshaped to `shape`, still boxed where the last dim stays (the reshape primitive's), or null. */
export function reshapedBoxed(t: Tensor, shape: readonly number[]): Tensor | null {
  const known = boxes.get(t);
  if (!known || lastDim(t.shape) !== lastDim(shape)) return null;
  return boxed(shape, known.box, known.values, () => t.data as Float32Array);
}

/**
 * A float32 tensor of `shape`, zero but for the region `starts`/`stops`/`steps` (normalised, as a slice's), which
 * holds `value`: the gradient of that slice, boxed where it is a small part of a large tensor, else null.
 */
export function paddedSlice(shape: readonly number[], a: { starts: readonly number[]; stops: readonly number[]; steps: readonly number[] }, value: Tensor): Tensor | null {
  const rank = shape.length;
  const size = sizeOf(shape);
  if (value.dtype !== "float32" || value.isMeta || size < MIN_ELEMENTS || rank === 0 || value.shape.length !== rank) return null;
  const region = shape.map((_, i) => Math.max(0, Math.ceil((a.stops[i]! - a.starts[i]!) / a.steps[i]!)));
  if (region.some((d, i) => d !== value.shape[i]) || region.some((d) => d === 0)) return null;
  // The box: the rows of the region's first and last elements, and its columns from first to last.
  const cols = shape[rank - 1]!;
  const strides = stridesOf(shape);
  const first = a.starts.reduce((o, st, d) => o + st * strides[d]!, 0);
  const last = region.reduce((o, n, d) => o + (a.starts[d]! + (n - 1) * a.steps[d]!) * strides[d]!, 0);
  const box: ZeroBox = { r0: Math.floor(first / cols), r1: Math.floor(last / cols) + 1, c0: a.starts[rank - 1]!, c1: a.starts[rank - 1]! + (region[rank - 1]! - 1) * a.steps[rank - 1]! + 1 };
  if (area(box) > size * SPARSE_SHARE) return null;
  const width = box.c1 - box.c0;
  const values = new Float32Array(area(box));
  const src = value.data as Float32Array;
  const idx = new Array<number>(rank).fill(0);
  for (let i = 0; i < src.length; i++) {
    let off = 0;
    for (let d = 0; d < rank; d++) off += (a.starts[d]! + idx[d]! * a.steps[d]!) * strides[d]!;
    const r = Math.floor(off / cols);
    values[(r - box.r0) * width + (off - r * cols) - box.c0] = src[i]!;
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d]! < region[d]!) break;
      idx[d] = 0;
    }
  }
  return boxed(shape, box, values);
}

/** The box's values of `known` spread over the larger box `into` (+0 elsewhere). */
function spread(known: Boxed, into: ZeroBox): Float32Array {
  const { box, values } = known;
  const [width, wide] = [box.c1 - box.c0, into.c1 - into.c0];
  const out = new Float32Array(area(into));
  for (let r = box.r0; r < box.r1; r++) out.set(values.subarray((r - box.r0) * width, (r - box.r0 + 1) * width), (r - into.r0) * wide + box.c0 - into.c0);
  return out;
}

/** a + b where both are boxed tensors of one shape (the backward pass's sum of two gradients), or null. */
export function sumOfBoxed(a: Tensor, b: Tensor): Tensor | null {
  const ka = boxes.get(a);
  const kb = boxes.get(b);
  if (!ka || !kb || !sameShape(a.shape, b.shape)) return null;
  const box = { r0: Math.min(ka.box.r0, kb.box.r0), r1: Math.max(ka.box.r1, kb.box.r1), c0: Math.min(ka.box.c0, kb.box.c0), c1: Math.max(ka.box.c1, kb.box.c1) };
  if (area(box) > a.numel() * SPARSE_SHARE) return null;
  // Each element summed as the dense add sums it (+0 where a tensor's box does not reach).
  const [x, y] = [spread(ka, box), spread(kb, box)];
  for (let i = 0; i < x.length; i++) x[i] = x[i]! + y[i]!;
  return boxed(a.shape, box, x);
}

/** Per array: whether every value is finite (a weight is checked once; its array never changes). */
const finite = new WeakMap<object, boolean>();

function allFinite(t: Tensor): boolean {
  const data = t.data as Float32Array;
  let known = finite.get(data);
  if (known === undefined) {
    known = true;
    for (let i = 0; i < data.length; i++) {
      const v = data[i]!;
      // NaN and the infinities, and nothing else, give NaN here.
      if (v - v !== 0) {
        known = false;
        break;
      }
    }
    finite.set(data, known);
  }
  return known;
}

/**
 * a @ op(b) for a boxed `a` of rank >= 2 and a matrix `b` (op: transposed where `transB`), multiplying only a's box by
 * the rows of op(b) it meets (`multiply`, the dense product on those parts), or null where `a` is not boxed. The
 * result is boxed to the box's rows. Not where `b` holds an infinity or NaN: the dense product (PyTorch's too) has NaN
 * in every row there (0 x inf), which a box would hide.
 */
export function boxedProduct(a: Tensor, b: Tensor, transB: boolean, multiply: (x: Tensor, y: Tensor) => Tensor): Tensor | null {
  const known = boxes.get(a);
  if (!known || a.ndim < 2 || b.ndim !== 2 || b.dtype !== "float32" || b.packed || b.isMeta) return null;
  const { box, values } = known;
  // Shapes that do not fit are the dense product's to refuse; the weight's values are scanned last (once per array).
  if ((transB ? b.shape[1] : b.shape[0]) !== lastDim(a.shape) || !allFinite(b)) return null;
  const m = transB ? b.shape[0]! : b.shape[1]!;
  const [R, C] = [box.r1 - box.r0, box.c1 - box.c0];
  const y = multiply(new Tensor("float32", values, [R, C]), transB ? b.narrow(1, box.c0, C) : b.narrow(0, box.c0, C));
  const shape = [...a.shape.slice(0, -1), m];
  const rows = sizeOf(shape) / m;
  const out: ZeroBox = { r0: box.r0, r1: box.r1, c0: 0, c1: m };
  const product = boxed(shape, out, y.data as Float32Array);
  // Most rows of the product nonzero: a plain tensor (the ops after it read it whole).
  return R <= rows * SPARSE_SHARE ? product : new Tensor("float32", product.data, shape);
}
