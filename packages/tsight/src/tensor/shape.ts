/** Shape arithmetic shared by the ops: sizes, strides, broadcasting, axis normalisation. */
import { ShapeError } from "./errors.js";

export type Shape = readonly number[];

// Indexed loops, here and in checkShape: shapes come frozen and not (other element kinds), and `for...of` over them
// allocated an iterator per call wherever V8 had not optimized the caller (a tensor made: 2-3 of them).
export function sizeOf(shape: Shape): number {
  let n = 1;
  for (let i = 0; i < shape.length; i++) n *= shape[i]!;
  return n;
}

export function stridesOf(shape: Shape): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i]!;
  }
  return strides;
}

export const fmt = (shape: Shape): string => (shape.length > 16 ? `[${shape.slice(0, 16).join(", ")}, … (${shape.length} dims)]` : `[${shape.join(", ")}]`);

/** Most dimensions a tensor may have. */
export const MAX_RANK = 32;
/** Most elements a tensor with data may have (V8's typed arrays stop at 2^32 - 1). */
export const MAX_ELEMENTS = 2 ** 32 - 1;

/**
 * Checks a shape before anything is allocated for it: a list of at most MAX_RANK whole numbers, none negative, and
 * (for a tensor with data) at most MAX_ELEMENTS elements. Numbers from user code or the network pass here first.
 */
export function checkShape(op: string, shape: unknown, withData = true): readonly number[] {
  if (!Array.isArray(shape)) throw new ShapeError(`${op}: a shape is a list of whole numbers, got ${typeof shape}`);
  if (shape.length > MAX_RANK) throw new ShapeError(`${op}: a tensor has at most ${MAX_RANK} dimensions, this shape has ${shape.length}`);
  for (let i = 0; i < shape.length; i++) {
    const d: unknown = shape[i];
    if (!Number.isSafeInteger(d) || (d as number) < 0) throw new ShapeError(`${op}: shape ${fmt(shape.map(String) as unknown as number[])}: every dimension must be a whole number of 0 or more, got ${String(d)}`);
  }
  if (withData && sizeOf(shape) > MAX_ELEMENTS) throw new ShapeError(`${op}: shape ${fmt(shape)} has ${sizeOf(shape)} elements, more than a tensor can hold (${MAX_ELEMENTS})`);
  return shape as readonly number[];
}

export function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Most nested arrays `tolist()` makes. */
export const MAX_LIST_ARRAYS = 2 ** 24;

/** The arrays `tolist()` makes of a tensor of `shape`: one per row at every level above the values. */
export function nestedArrays(shape: Shape): number {
  let arrays = 0;
  for (let i = 0, rows = 1; i < shape.length - 1; i++) arrays += rows *= shape[i]!;
  return arrays;
}

/** NumPy broadcasting of several shapes, or a ShapeError naming `op` and the shapes. */
export function broadcastShapes(op: string, ...shapes: Shape[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const o = rank - s.length + i;
      const d = s[i]!;
      if (d === out[o] || d === 1) continue;
      if (out[o] === 1) out[o] = d;
      else throw new ShapeError(`${op}: shapes ${shapes.map(fmt).join(" and ")} cannot be broadcast together (dim ${i - s.length} is ${d} vs ${out[o]})`);
    }
  }
  return out;
}

/** A possibly negative axis made non-negative, checked against `rank`. */
export function normAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(axis) || a < 0 || a >= rank) throw new ShapeError(`${op}: dim ${axis} is out of range for a tensor of rank ${rank} (valid: ${-rank}..${rank - 1})`);
  return a;
}

export function normAxes(op: string, axes: number | readonly number[] | undefined, rank: number): number[] {
  if (axes === undefined) return Array.from({ length: rank }, (_, i) => i);
  const list = typeof axes === "number" ? [axes] : [...axes];
  const out = [...new Set(list.map((a) => normAxis(op, a, rank)))].sort((x, y) => x - y);
  return out;
}

/**
 * The dims a reduction runs over, sorted: every dim when `dims` is omitted or empty (PyTorch's `dim=[]`); a 0-d
 * tensor has dims 0 and -1 to name (none to reduce), as in PyTorch; a dim named twice is an error.
 */
export function reduceAxes(op: string, dims: number | readonly number[] | undefined, rank: number): number[] {
  const list = dims === undefined ? [] : typeof dims === "number" ? [dims] : [...dims];
  if (list.length === 0) return Array.from({ length: rank }, (_, i) => i);
  if (rank === 0) {
    const bad = list.find((d) => d !== 0 && d !== -1);
    if (bad !== undefined) throw new ShapeError(`${op}: dim ${String(bad)} is out of range for a 0-d tensor (valid: -1 and 0)`);
    return [];
  }
  return distinctAxes(op, list, rank).sort((x, y) => x - y);
}

/** The dims `dims` name, in their order; a dim named twice is an error (normAxes lets it through once). */
export function distinctAxes(op: string, dims: readonly number[], rank: number): number[] {
  const axes = dims.map((d) => normAxis(op, d, rank));
  if (new Set(axes).size !== axes.length) throw new ShapeError(`${op}: dims ${fmt(dims)} name one dim more than once`);
  return axes;
}

/** Resolves one -1 in a requested shape against `size` elements. */
export function inferShape(op: string, from: Shape, shape: readonly number[]): number[] {
  const size = sizeOf(from);
  const unknown = shape.filter((d) => d === -1).length;
  if (unknown > 1) throw new ShapeError(`${op}: only one dimension can be -1, got ${fmt(shape)}`);
  const known = shape.reduce((n, d) => (d === -1 ? n : n * d), 1);
  if (unknown === 1 && known === 0) throw new ShapeError(`${op}: cannot view a tensor of shape ${fmt(from)} as ${fmt(shape)}: with another dim 0, the -1 could be any size`);
  const out = shape.map((d) => (d === -1 ? (known === 0 ? 0 : size / known) : d));
  if (out.some((d) => !Number.isInteger(d) || d < 0) || sizeOf(out) !== size) {
    throw new ShapeError(`${op}: cannot view a tensor of shape ${fmt(from)} (${size} elements) as ${fmt(shape)}`);
  }
  return out;
}
