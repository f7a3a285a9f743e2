/**
 * Tensor: a dense row-major array with a dtype and a shape, PyTorch's method names, and autograd.
 *
 * Tensors are immutable values: every op returns a new tensor (index assignment too: `put`), so a tensor handed to
 * user code can never change under the model. Data lives in a plain typed array and is garbage-collected; there is
 * no dispose. A meta tensor has a shape and no data: ops on it infer shapes without running kernels.
 */
import { backwardSteps, runBackward, runBackwardAsync, type GradHook, type GradNode } from "./autograd.js";
import { allocate, arrayFrom, checkDType, dtypeOfArray, elementOf, type DType, type TypedArray } from "./dtype.js";
import { releaseWeight, type RawTensor } from "./engine.js";
import type { PackedWeight } from "./packed.js";
import { DTypeError, MetaTensorError, ShapeError } from "./errors.js";
import { apply, apply1, guardAllocation } from "./primitive.js";
import * as F from "./functional.js";
import * as P from "./primitives.js";
import { checkShape, distinctAxes, fmt, inferShape, MAX_LIST_ARRAYS, nestedArrays, normAxes, normAxis, reduceAxes, sizeOf } from "./shape.js";

/** What a JS number in an array and a JS array cost, roughly (for guards on conversions to JS values). */
const JS_NUMBER_BYTES = 8;
const JS_ARRAY_BYTES = 32;
/** Most pieces split() makes. */
const MAX_SPLITS = 2 ** 20;

export type TensorLike = Tensor | number;

/** A slice along one dimension, like Python's `start:stop:step` (negative start/stop count from the end). */
export interface Slice {
  start?: number | null;
  stop?: number | null;
  step?: number;
}
/**
 * One entry of an index: an integer (selects, drops the dim), null (`:`), a Slice, a list of integers or an integer
 * tensor (picks those, at most one such entry), or "...".
 */
export type IndexSpec = number | null | Slice | Tensor | readonly number[] | "...";

export function slice(start?: number | null, stop?: number | null, step?: number): Slice {
  return { start, stop, step };
}

const PROMOTION: Record<DType, number> = { bool: 0, int32: 1, int64: 2, float32: 3 };

/** What reading `.values` or `.indices` of a tensor says (see Tensor.values). */
export const NOT_A_PAIR = (name: "values" | "indices"): string =>
  `a tensor has no .${name}: x.max(dim) and x.min(dim) give the values themselves (as torch.amax and amin); the indices are x.argmax(dim) (argmin), and x.topk(1, dim) gives both as { values, indices }`;

/** Most tensors never get a gradient hook: they share this list rather than each making one. */
const NO_HOOKS: readonly GradHook[] = Object.freeze([]);

export class Tensor implements RawTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Replaced only by a Parameter's optimizer step (see `replaceData`); every other tensor keeps its values. */
  private storage: TypedArray | null;
  /** A weight kept packed (bfloat16/float16 bits, int8/int4 blocks): its values are widened only when read. */
  private packedWeight: PackedWeight | null = null;
  /** @internal the op that produced this tensor, when autograd recorded one */
  gradNode: GradNode | null = null;
  /** Accumulated gradient of a leaf that requires grad, after backward(). */
  grad: Tensor | null = null;
  /** @internal hooks run when this tensor's gradient is complete (a shared empty list until one is registered) */
  gradHooks: readonly GradHook[] = NO_HOOKS;
  private leafRequiresGrad = false;
  /**
   * Makes the values on their first read (a gradient zero outside a box: zero-box.ts sets it, its lazyTensor being
   * internal, not the users' API); null once made, or for others.
   */
  private making: (() => TypedArray) | null = null;

  constructor(dtype: DType, data: TypedArray | null, shape: readonly number[]) {
    this.dtype = dtype;
    this.shape = Object.freeze(checkShape("tensor", shape, data !== null).slice());
    this.storage = data;
    if (data && data.length !== sizeOf(shape)) throw new ShapeError(`tensor: ${data.length} values do not fill shape ${fmt(shape)} (${sizeOf(shape)} elements)`);
  }

  // #region creation

  /** A tensor with a shape and no data; see `isMeta`. */
  static meta(dtype: DType, shape: readonly number[]): Tensor {
    return new Tensor(dtype, null, shape);
  }

  /**
   * A float32 tensor whose values are a packed weight's: linear layers multiply by it in its packed form; any
   * other use (reading `data`, other ops) widens a copy.
   */
  static fromPacked(weight: PackedWeight): Tensor {
    const t = new Tensor("float32", null, weight.shape);
    t.packedWeight = weight;
    return t;
  }

  static scalar(value: number | bigint | boolean, dtype: DType = "float32"): Tensor {
    return new Tensor(dtype, arrayFrom(dtype, [value]), []);
  }

  static zeros(shape: readonly number[], dtype: DType = "float32"): Tensor {
    return new Tensor(dtype, allocate(dtype, sizeOf(checkShape("zeros", shape))), shape);
  }

  static ones(shape: readonly number[], dtype: DType = "float32"): Tensor {
    return Tensor.full(shape, 1, dtype);
  }

  static full(shape: readonly number[], value: number | boolean, dtype: DType = "float32"): Tensor {
    const element = elementOf(dtype, value, "full");
    const t = allocate(dtype, sizeOf(checkShape("full", shape)));
    (t as unknown as { fill(v: number | bigint): void }).fill(element);
    return new Tensor(dtype, t, shape);
  }

  /**
   * The tensors joined along `dim`, as torch.cat: their dtypes promoted to one, and a tensor of shape [0] (PyTorch's
   * legacy empty tensor) taking no part beside tensors of any other shape (all of them join to shape [0], any dim).
   */
  static cat(tensors: readonly Tensor[], dim = 0): Tensor {
    if (tensors.length === 0) throw new ShapeError("cat: needs at least one tensor");
    const scalar = tensors.findIndex((t) => t.ndim === 0);
    if (scalar >= 0) throw new ShapeError(`cat: the tensor at position ${scalar} is 0-d and has no dim to join along; unsqueeze(0) it first`);
    const dtype = tensors.map((t) => t.dtype).reduce((a, b) => (PROMOTION[b] > PROMOTION[a] ? b : a));
    const parts = tensors.map((t) => t.to(dtype));
    const legacy = parts.flatMap((t, i) => (t.ndim === 1 && t.shape[0] === 0 ? [i] : []));
    const first = parts.find((_, i) => !legacy.includes(i));
    if (!first) return parts.length === 1 ? parts[0]! : apply1(P.concat, parts, { axis: 0, skip: [] });
    const axis = normAxis("cat", dim, first.ndim);
    return parts.length === 1 ? parts[0]! : apply1(P.concat, parts, { axis, skip: legacy });
  }

  static stack(tensors: readonly Tensor[], dim = 0): Tensor {
    if (tensors.length === 0) throw new ShapeError("stack: needs at least one tensor");
    const rank = tensors[0]!.shape.length + 1;
    const d = normAxis("stack", dim, rank);
    return Tensor.cat(
      tensors.map((t) => t.unsqueeze(d)),
      d,
    );
  }

  static where(condition: Tensor, a: TensorLike, b: TensorLike): Tensor {
    const dtype = typeof a !== "number" ? a.dtype : typeof b !== "number" ? b.dtype : "float32";
    const [x, y] = promote("where", toTensor(a, dtype), b);
    // ONNX Runtime's Where has no bool kernel: choose between bool branches as int32
    if (x.dtype === "bool") return apply1(P.where, [condition, x.int(), y.int()], undefined).bool();
    return apply1(P.where, [condition, x, y], undefined);
  }

  // #endregion
  // #region properties

  get data(): TypedArray {
    if (this.storage) return this.storage;
    if (this.making) {
      const data = this.making();
      if (data.length !== this.numel()) throw new ShapeError(`tensor: ${data.length} values made for shape ${fmt(this.shape)}`);
      this.making = null;
      return (this.storage = data);
    }
    if (this.packedWeight) {
      guardAllocation(this.numel() * 4);
      return this.packedWeight.toFloat32();
    }
    throw new MetaTensorError(`this is a meta tensor of shape ${fmt(this.shape)}: it has no values (a model loaded with dispatch: false, a scan, a parameter never given values, or what a function edit was given while a generation step was compiled, kept past its call: read a step's values with await m.<module>.output instead; see the README's function edits)`);
  }
  get isMeta(): boolean {
    return this.storage === null && this.packedWeight === null && this.making === null;
  }
  /** The packed weight behind this tensor, or null for a plain one. */
  get packed(): PackedWeight | null {
    return this.packedWeight;
  }
  /** A plain float32 tensor of a packed one's values (itself when not packed). */
  unpacked(): Tensor {
    return this.packedWeight ? new Tensor("float32", this.data, this.shape) : this;
  }
  get ndim(): number {
    return this.shape.length;
  }
  dim(): number {
    return this.shape.length;
  }
  numel(): number {
    return sizeOf(this.shape);
  }
  size(dim?: number): number | readonly number[] {
    return dim === undefined ? this.shape : this.shape[normAxis("size", dim, this.shape.length)]!;
  }

  /** True for leaves marked with requiresGrad_() and for anything computed from them. */
  get requiresGrad(): boolean {
    return this.leafRequiresGrad || this.gradNode !== null;
  }
  requiresGrad_(value = true): this {
    if (this.gradNode) throw new Error("requiresGrad_: only leaf tensors can be marked; use .detach().requiresGrad_() for a new leaf");
    if (value && this.dtype !== "float32") throw new DTypeError(`requiresGrad_: only float32 tensors can require grad, this is ${this.dtype}`);
    if (value && this.packedWeight) throw new DTypeError(`requiresGrad_: a weight kept as ${this.packedWeight.format} cannot require grad (load the model in float32 to train its weights)`);
    this.leafRequiresGrad = value;
    return this;
  }
  /**
   * @internal New values of the same length for this tensor, for optim's Parameter only (an optimizer step). The
   * old array is left as it was, so tensors that shared it (a detach(), a reshape) keep the values they had.
   */
  protected replaceData(data: TypedArray): void {
    if (!this.storage || data.length !== this.storage.length || dtypeOfArray(data) !== this.dtype) throw new ShapeError(`replaceData: ${data.length} values of another kind cannot replace a ${this.dtype} tensor of shape ${fmt(this.shape)}`);
    // Graphs holding the old values as constants (a fused block's weights) are stale now.
    releaseWeight(this.storage);
    this.storage = data;
  }
  /** The same values, cut off from autograd. Shares data (tensors are immutable). */
  detach(): Tensor {
    if (this.packedWeight) return Tensor.fromPacked(this.packedWeight);
    return new Tensor(this.dtype, this.isMeta ? null : this.data, this.shape);
  }

  /** Computes gradients of this tensor (a scalar unless `grad` is given) with respect to leaves that require grad. */
  backward(grad?: Tensor): void {
    runBackward(this, grad ?? this.seedGrad());
  }
  /** backward() for hooks that return promises. */
  backwardAsync(grad?: Tensor): Promise<void> {
    return runBackwardAsync(this, grad ?? this.seedGrad());
  }
  /** @internal the walk itself, for callers that drive hooks their own way */
  backwardSteps(grad?: Tensor): ReturnType<typeof backwardSteps> {
    return backwardSteps(this, grad ?? this.seedGrad());
  }
  private seedGrad(): Tensor {
    if (this.numel() !== 1) throw new ShapeError(`backward: grad can be implied only for a single-element tensor, this has shape ${fmt(this.shape)}; pass a gradient`);
    return Tensor.full(this.shape, 1);
  }
  /** Runs `hook` with this tensor's gradient during backward; a returned tensor replaces the gradient. */
  registerHook(hook: GradHook): () => void {
    this.gradHooks = [...this.gradHooks, hook];
    return () => {
      this.gradHooks = this.gradHooks.filter((h) => h !== hook);
    };
  }

  /** The single value of a one-element tensor. */
  item(): number {
    if (this.numel() !== 1) throw new ShapeError(`item: tensor of shape ${fmt(this.shape)} has ${this.numel()} elements, not one`);
    return Number(this.data[0]);
  }
  /** Values as a flat array of numbers. */
  toArray(): number[] {
    guardAllocation(this.numel() * JS_NUMBER_BYTES);
    return Array.from(this.data as ArrayLike<number | bigint>, Number);
  }
  /** Values as nested arrays (a number for a 0-d tensor). */
  tolist(): unknown {
    // The arrays themselves cost too: shape [1e9, 0] holds no values but would make a billion arrays.
    const arrays = nestedArrays(this.shape);
    if (arrays > MAX_LIST_ARRAYS) throw new ShapeError(`tolist: a tensor of shape ${fmt(this.shape)} would make ${arrays} nested arrays (at most ${MAX_LIST_ARRAYS}); take a slice first`);
    guardAllocation(arrays * JS_ARRAY_BYTES);
    const flat = this.toArray();
    if (this.shape.length === 0) return flat[0];
    const build = (dim: number, offset: number): unknown[] => {
      const n = this.shape[dim]!;
      const step = sizeOf(this.shape.slice(dim + 1));
      return Array.from({ length: n }, (_, i) => (dim === this.shape.length - 1 ? flat[offset + i] : build(dim + 1, offset + i * step)));
    };
    return build(0, 0);
  }
  /** How Node's console and util.inspect show a tensor. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  toString(): string {
    if (this.isMeta) return `tensor(meta, shape=${fmt(this.shape)}, dtype=${this.dtype})`;
    const show = (v: unknown): string => (Array.isArray(v) ? `[${(v.length > 8 ? [...v.slice(0, 3), "...", ...v.slice(-3)] : v).map(show).join(", ")}]` : typeof v === "number" ? String(Number(v.toPrecision(5))) : String(v));
    return `tensor(${show(this.tolist())}, shape=${fmt(this.shape)}, dtype=${this.dtype})`;
  }

  // #endregion
  // #region elementwise

  add(other: TensorLike): Tensor {
    return apply1(P.add, promote("add", this, other), undefined);
  }
  sub(other: TensorLike): Tensor {
    return apply1(P.sub, promote("sub", this, other), undefined);
  }
  mul(other: TensorLike): Tensor {
    return apply1(P.mul, promote("mul", this, other), undefined);
  }
  /** True division: integers are promoted to float32 as in PyTorch. */
  div(other: TensorLike): Tensor {
    const [a, b] = promote("div", this, other);
    return a.dtype === "float32" ? apply1(P.div, [a, b], undefined) : apply1(P.div, [a.to("float32"), b.to("float32")], undefined);
  }
  pow(exponent: TensorLike): Tensor {
    if (exponent === 2) return this.mul(this);
    const [base, e] = promote("pow", this, exponent);
    // PyTorch refuses it too (ONNX Runtime gives 0, the integer part of the fraction).
    if (base.dtype !== "float32" && base.dtype !== "bool" && !e.isMeta && Array.prototype.some.call(e.data, (x: number | bigint) => x < 0)) {
      throw new DTypeError("pow: integers to negative integer powers are not allowed (as in PyTorch); take the base as float32 first (.float())");
    }
    return apply1(P.pow, [base, e], undefined);
  }
  fmod(other: TensorLike): Tensor {
    const [a, b] = promote("fmod", this, other);
    // ONNX Runtime's integer Mod fails on a zero divisor with a message of its own (PyTorch: ZeroDivisionError).
    if (a.dtype !== "float32" && !b.isMeta && Array.prototype.some.call(b.data, (x: number | bigint) => x == 0)) throw new RangeError("fmod: integer division by zero");
    return apply1(P.fmod, [a, b], undefined);
  }
  maximum(other: TensorLike): Tensor {
    return apply1(P.maximum, promote("maximum", this, other), undefined);
  }
  minimum(other: TensorLike): Tensor {
    return apply1(P.minimum, promote("minimum", this, other), undefined);
  }
  clamp(min?: number | null, max?: number | null): Tensor {
    // By where, not maximum: at a bound the gradient passes whole, as in PyTorch's clamp (maximum halves a tie).
    // A NaN bound makes every value NaN, as in PyTorch.
    if (Number.isNaN(min) || Number.isNaN(max)) return this.float().mul(Number.NaN);
    let out: Tensor = this;
    if (min !== undefined && min !== null) {
      const [x, bound] = promote("clamp", out, min);
      out = Tensor.where(x.lt(bound), bound, x);
    }
    if (max !== undefined && max !== null) {
      const [x, bound] = promote("clamp", out, max);
      out = Tensor.where(x.gt(bound), bound, x);
    }
    return out;
  }
  neg(): Tensor {
    return apply1(P.neg, [this], undefined);
  }
  // Float-valued math takes integers and booleans as float32, as PyTorch does.
  exp(): Tensor {
    return apply1(P.exp, [this.float()], undefined);
  }
  log(): Tensor {
    return apply1(P.log, [this.float()], undefined);
  }
  /**
   * log(1 + x), accurate for small x (where log(1 + x) rounds 1 + x first): Kahan's log(u) x / (u - 1) with u = 1 + x,
   * x itself where u rounds to 1. ONNX has no Log1p.
   */
  log1p(): Tensor {
    const x = this.float();
    const u = x.add(1);
    const rounded = u.eq(1);
    // The ratio's other branch is 0 / 0 where u is 1; a where over it would still send NaN into the gradient.
    const ratio = x.div(Tensor.where(rounded, 1, u.sub(1)));
    return Tensor.where(rounded, x, u.log().mul(ratio));
  }
  /** log(1 + exp(beta x)) / beta, and x itself where beta x > threshold, as torch's softplus. */
  softplus(beta = 1, threshold = 20): Tensor {
    if (typeof beta !== "number" || !Number.isFinite(beta) || beta === 0) throw new TypeError(`softplus: beta must be a finite non-zero number, got ${String(beta).slice(0, 40)}`);
    if (typeof threshold !== "number" || Number.isNaN(threshold)) throw new TypeError(`softplus: threshold must be a number, got ${String(threshold).slice(0, 40)}`);
    const bx = this.float().mul(beta);
    const linear = bx.gt(threshold);
    // exp of the linear branch's values is capped, so it neither overflows nor sends NaN into the gradient.
    const smooth = Tensor.where(linear, threshold, bx).exp().log1p().div(beta);
    return Tensor.where(linear, this.float(), smooth);
  }
  sqrt(): Tensor {
    return apply1(P.sqrt, [this.float()], undefined);
  }
  rsqrt(): Tensor {
    return this.sqrt().reciprocal();
  }
  reciprocal(): Tensor {
    return apply1(P.reciprocal, [this.float()], undefined);
  }
  square(): Tensor {
    return this.mul(this);
  }
  abs(): Tensor {
    return apply1(P.abs, [this], undefined);
  }
  sign(): Tensor {
    return apply1(P.sign, [this], undefined);
  }
  floor(): Tensor {
    // Integers are whole already (PyTorch gives them back).
    return this.dtype === "float32" ? apply1(P.floor, [this], undefined) : this;
  }
  ceil(): Tensor {
    // Integers are whole already (PyTorch gives them back).
    return this.dtype === "float32" ? apply1(P.ceil, [this], undefined) : this;
  }
  round(): Tensor {
    // Integers are whole already (PyTorch gives them back).
    return this.dtype === "float32" ? apply1(P.round, [this], undefined) : this;
  }
  tanh(): Tensor {
    return apply1(P.tanh, [this.float()], undefined);
  }
  sigmoid(): Tensor {
    return apply1(P.sigmoid, [this.float()], undefined);
  }
  relu(): Tensor {
    // ONNX Runtime has no int64 Relu kernel
    if (this.dtype === "int64") return this.maximum(0);
    return apply1(P.relu, [this], undefined);
  }
  /** GELU; `approximate: "tanh"` is GPT-2's gelu_new. */
  gelu(approximate: "none" | "tanh" = "none"): Tensor {
    if (approximate !== "none" && approximate !== "tanh") throw new TypeError(`gelu: approximate must be "none" or "tanh", got ${typeof approximate === "string" ? JSON.stringify((approximate as string).slice(0, 40)) : typeof approximate}`);
    return apply1(P.gelu, [this.float()], { approximate });
  }
  silu(): Tensor {
    return apply1(P.silu, [this.float()], undefined);
  }
  erf(): Tensor {
    return apply1(P.erf, [this.float()], undefined);
  }
  sin(): Tensor {
    return apply1(P.sin, [this.float()], undefined);
  }
  cos(): Tensor {
    return apply1(P.cos, [this.float()], undefined);
  }
  isnan(): Tensor {
    // No integer is NaN.
    return this.dtype === "float32" ? apply1(P.isnan, [this], undefined) : Tensor.full(this.shape, false, "bool");
  }
  eq(other: TensorLike): Tensor {
    return apply1(P.eq, promote("eq", this, other), undefined);
  }
  ne(other: TensorLike): Tensor {
    return this.eq(other).logicalNot();
  }
  lt(other: TensorLike): Tensor {
    return apply1(P.lt, promote("lt", this, other), undefined);
  }
  le(other: TensorLike): Tensor {
    return apply1(P.le, promote("le", this, other), undefined);
  }
  gt(other: TensorLike): Tensor {
    return apply1(P.gt, promote("gt", this, other), undefined);
  }
  ge(other: TensorLike): Tensor {
    return apply1(P.ge, promote("ge", this, other), undefined);
  }
  logicalNot(): Tensor {
    return apply1(P.logicalNot, [this.bool()], undefined);
  }
  logicalAnd(other: TensorLike): Tensor {
    return apply1(P.logicalAnd, [this.bool(), toTensor(other, "bool").bool()], undefined);
  }
  logicalOr(other: TensorLike): Tensor {
    return apply1(P.logicalOr, [this.bool(), toTensor(other, "bool").bool()], undefined);
  }
  logicalXor(other: TensorLike): Tensor {
    return apply1(P.logicalXor, [this.bool(), toTensor(other, "bool").bool()], undefined);
  }
  /** torch's `x.where(condition, y)`: x where condition holds, else y. */
  where(condition: Tensor, other: TensorLike): Tensor {
    return Tensor.where(condition, this, other);
  }
  /** A copy with `value` wherever `mask` is true; of this tensor's dtype, as in PyTorch (2.7 fills an int64 one with 2). */
  maskedFill(mask: Tensor, value: number): Tensor {
    return Tensor.where(mask, Tensor.full([], value, this.dtype), this);
  }
  to(dtype: DType): Tensor {
    return dtype === this.dtype ? this : apply1(P.cast, [this], { to: checkDType(dtype, "to") });
  }
  float(): Tensor {
    return this.to("float32");
  }
  long(): Tensor {
    return this.to("int64");
  }
  int(): Tensor {
    return this.to("int32");
  }
  bool(): Tensor {
    return this.to("bool");
  }
  /** A copy with its own data; autograd passes through it. */
  clone(): Tensor {
    return apply1(P.clone, [this], undefined);
  }
  /** Tensors are always contiguous; kept for PyTorch code that calls it. */
  contiguous(): Tensor {
    return this;
  }

  // #endregion
  // #region reductions

  /** Sum over `dim` (all dims when omitted); integers and booleans sum as int64, as in PyTorch. */
  sum(dim?: number | readonly number[], keepdim = false): Tensor {
    return apply1(P.sum, [this.dtype === "bool" || this.dtype === "int32" ? this.long() : this], { axes: reduceAxes("sum", dim, this.ndim), keepdim });
  }
  mean(dim?: number | readonly number[], keepdim = false): Tensor {
    const axes = reduceAxes("mean", dim, this.ndim);
    const out = apply1(P.mean, [floatOnly("mean", this)], { axes, keepdim });
    // The mean of nothing is NaN, as in PyTorch (ONNX Runtime's ReduceMean gives 0).
    return axes.some((a) => this.shape[a] === 0) ? Tensor.full(out.shape, NaN) : out;
  }
  /** Largest values over `dim` (all dims when omitted), like torch.amax. Use argmax for positions. */
  max(dim?: number | readonly number[], keepdim = false): Tensor {
    return apply1(P.amax, [this], { axes: this.extremumAxes("max", dim), keepdim });
  }
  min(dim?: number | readonly number[], keepdim = false): Tensor {
    return apply1(P.amin, [this], { axes: this.extremumAxes("min", dim), keepdim });
  }
  /** An op along a dim of a 0-d tensor, which PyTorch runs as over one element (dims 0 and -1 name it). */
  private onOne(op: string, dim: number, f: (v: Tensor) => Tensor): Tensor {
    reduceAxes(op, dim, 0);
    return f(this.reshape([1])).reshape([]);
  }
  /** A max or min has no value over nothing (PyTorch raises too; ONNX Runtime gives -Infinity). */
  private extremumAxes(op: string, dim: number | readonly number[] | undefined): number[] {
    const axes = reduceAxes(op, dim, this.ndim);
    const empty = axes.find((a) => this.shape[a] === 0);
    if (empty !== undefined) throw new ShapeError(`${op}: dim ${empty} of the tensor of shape ${fmt(this.shape)} is empty: a ${op} over nothing has no value`);
    return axes;
  }
  amax(dim?: number | readonly number[], keepdim = false): Tensor {
    return this.max(dim, keepdim);
  }
  amin(dim?: number | readonly number[], keepdim = false): Tensor {
    return this.min(dim, keepdim);
  }
  /** Whether any value over `dim` (all dims when omitted) is nonzero, as bool (over nothing: false). */
  any(dim?: number | readonly number[], keepdim = false): Tensor {
    // dim=[] reduces nothing here, as torch.any takes it (where torch.sum takes it as every dim).
    if (Array.isArray(dim) && dim.length === 0) return this.ne(0);
    return this.ne(0).long().sum(dim, keepdim).gt(0);
  }
  /** Whether every value over `dim` (all dims when omitted) is nonzero, as bool (over nothing: true). */
  all(dim?: number | readonly number[], keepdim = false): Tensor {
    if (Array.isArray(dim) && dim.length === 0) return this.ne(0);
    return this.eq(0).long().sum(dim, keepdim).eq(0);
  }
  /** Index of the largest value along `dim`, or in the flattened tensor when `dim` is omitted. */
  argmax(dim?: number, keepdim = false): Tensor {
    if (dim === undefined) return apply1(P.argmax, [this.reshape(-1)], { axis: 0, keepdim: false });
    if (this.ndim === 0) return this.onOne("argmax", dim, (v) => v.argmax(0));
    return apply1(P.argmax, [this], { axis: normAxis("argmax", dim, this.ndim), keepdim });
  }
  argmin(dim?: number, keepdim = false): Tensor {
    if (dim === undefined) return apply1(P.argmin, [this.reshape(-1)], { axis: 0, keepdim: false });
    if (this.ndim === 0) return this.onOne("argmin", dim, (v) => v.argmin(0));
    return apply1(P.argmin, [this], { axis: normAxis("argmin", dim, this.ndim), keepdim });
  }
  /** Variance; `correction` 1 (default) is the unbiased estimate, as in PyTorch. */
  var(dim?: number | readonly number[], { correction = 1, keepdim = false } = {}): Tensor {
    const axes = reduceAxes("var", dim, this.ndim);
    const n = axes.reduce((c, a) => c * this.shape[a]!, 1);
    const x = floatOnly("var", this);
    const centered = x.sub(x.mean(axes, true));
    return centered.mul(centered).sum(axes, keepdim).div(Math.max(0, n - correction));
  }
  std(dim?: number | readonly number[], options: { correction?: number; keepdim?: boolean } = {}): Tensor {
    floatOnly("std", this);
    return awayFromZero(this.var(dim, options), (v) => v.sqrt());
  }
  /** p-norm over `dim` (all elements when omitted): p = 0 counts the nonzeros, ±Infinity the largest or smallest |x|. */
  norm(p = 2, dim?: number | readonly number[], keepdim = false): Tensor {
    const x = floatOnly("norm", this);
    if (p === 2) return awayFromZero(x.mul(x).sum(dim, keepdim), (s) => s.sqrt());
    if (p === 1) return x.abs().sum(dim, keepdim);
    if (p === 0) return x.ne(0).float().sum(dim, keepdim);
    if (p === Infinity) return x.abs().max(dim, keepdim);
    if (p === -Infinity) return x.abs().min(dim, keepdim);
    if (p > 0) return awayFromZero(awayFromZero(x.abs(), (a) => a.pow(p)).sum(dim, keepdim), (s) => s.pow(1 / p));
    return x.abs().pow(p).sum(dim, keepdim).pow(1 / p);
  }
  logsumexp(dim: number | readonly number[], keepdim = false): Tensor {
    const x = this.float();
    // Shifted by the largest value, but by 0 where that is infinite (a row of -inf gives -inf, one with inf gives inf,
    // as in PyTorch, not NaN).
    const axes = reduceAxes("logsumexp", dim, this.ndim);
    // Of nothing it is -Infinity, the log of an empty sum, as in PyTorch.
    if (axes.some((a) => this.shape[a] === 0)) return x.sum(axes, keepdim).add(-Infinity);
    const largest = x.max(axes, true).detach();
    const m = Tensor.where(largest.abs().eq(Infinity), 0, largest);
    const out = x.sub(m).exp().sum(axes, true).log().add(m);
    return keepdim ? out : out.squeeze(axes);
  }
  softmax(dim: number): Tensor {
    floatOnly("softmax", this);
    if (this.ndim === 0) return this.onOne("softmax", dim, (v) => v.softmax(0));
    return apply1(P.softmax, [this], { axis: normAxis("softmax", dim, this.ndim) });
  }
  logSoftmax(dim: number): Tensor {
    floatOnly("log_softmax", this);
    if (this.ndim === 0) return this.onOne("log_softmax", dim, (v) => v.logSoftmax(0));
    return apply1(P.logSoftmax, [this], { axis: normAxis("log_softmax", dim, this.ndim) });
  }
  /** Running sums along `dim`; integers and booleans sum as int64, as in PyTorch. */
  cumsum(dim: number, reverse = false): Tensor {
    if (this.ndim === 0) return this.onOne("cumsum", dim, (v) => v.cumsum(0));
    return apply1(P.cumsum, [this.dtype === "bool" || this.dtype === "int32" ? this.long() : this], { axis: normAxis("cumsum", dim, this.ndim), reverse });
  }
  /** The values along `dim` in order (ascending, or descending), and where each was; NaN ranks above every number. */
  sort(dim = -1, descending = false): { values: Tensor; indices: Tensor } {
    const d = normAxis("sort", dim, this.ndim);
    return this.topk(this.ndim === 0 ? 1 : this.shape[d]!, d, descending);
  }
  /** The positions that sort the values along `dim` (see sort). */
  argsort(dim = -1, descending = false): Tensor {
    return this.sort(dim, descending).indices;
  }
  /** The k largest (or smallest) values along `dim`, sorted, and their indices. */
  topk(k: number, dim = -1, largest = true): { values: Tensor; indices: Tensor } {
    const [values, indices] = apply(P.topk, [this], { k, axis: normAxis("topk", dim, this.ndim), largest }) as [Tensor, Tensor];
    return { values, indices };
  }

  // #endregion
  // #region linear algebra

  /** Matrix product with PyTorch's rules for 1-D operands and broadcast batch dims. */
  matmul(other: Tensor): Tensor {
    if (this.ndim === 0 || other.ndim === 0) throw new ShapeError("matmul: both operands need at least one dimension");
    // x @ W^T for a packed [out, in] W (a transposed view): the packed product, as its linear layer computes it.
    if (other.packedWeight?.transposed && other.ndim === 2 && this.ndim >= 2 && this.dtype === "float32") return F.linear(this, other, null, true);
    const a = this.ndim === 1 ? this.unsqueeze(0) : this;
    const b = other.ndim === 1 ? other.unsqueeze(-1) : other;
    const [x, y] = promote("matmul", a, b);
    let out = apply1(P.matmul, [x, y], undefined);
    if (other.ndim === 1) out = out.squeeze(-1);
    if (this.ndim === 1) out = out.squeeze(this.ndim === 1 && other.ndim === 1 ? 0 : -2);
    return out;
  }

  // #endregion
  // #region movement

  reshape(...shape: number[] | [readonly number[]]): Tensor {
    const want = (Array.isArray(shape[0]) ? shape[0] : shape) as readonly number[];
    const out = inferShape("reshape", this.shape, want);
    if (out.length === this.ndim && out.every((d, i) => d === this.shape[i])) return this;
    return apply1(P.reshape, [this], { shape: out });
  }
  view(...shape: number[] | [readonly number[]]): Tensor {
    return this.reshape(...shape);
  }
  flatten(startDim = 0, endDim = -1): Tensor {
    if (this.ndim === 0) return this.reshape(1);
    const s = normAxis("flatten", startDim, this.ndim);
    const e = normAxis("flatten", endDim, this.ndim);
    if (s > e) throw new ShapeError(`flatten: start dim ${startDim} comes after end dim ${endDim}`);
    return this.reshape([...this.shape.slice(0, s), sizeOf(this.shape.slice(s, e + 1)), ...this.shape.slice(e + 1)]);
  }
  /** Removes size-1 dims: the given ones, or all. */
  squeeze(dim?: number | readonly number[]): Tensor {
    const axes = dim === undefined ? this.shape.flatMap((d, i) => (d === 1 ? [i] : [])) : normAxes("squeeze", dim, this.ndim).filter((a) => this.shape[a] === 1);
    return this.reshape(this.shape.filter((_, i) => !axes.includes(i)));
  }
  unsqueeze(dim: number): Tensor {
    const d = normAxis("unsqueeze", dim, this.ndim + 1);
    return this.reshape([...this.shape.slice(0, d), 1, ...this.shape.slice(d)]);
  }
  transpose(dim0: number, dim1: number): Tensor {
    const a = normAxis("transpose", dim0, this.ndim);
    const b = normAxis("transpose", dim1, this.ndim);
    if (a === b) return this;
    // A packed matrix transposed is a view of it (the same storage and kernel), so products by it stay packed.
    if (this.packedWeight && this.ndim === 2) return Tensor.fromPacked(this.packedWeight.transposedView());
    const perm = this.shape.map((_, i) => i);
    perm[a] = b;
    perm[b] = a;
    return apply1(P.transpose, [this], { perm });
  }
  permute(...dims: number[]): Tensor {
    const perm = dims.map((d) => normAxis("permute", d, this.ndim));
    if (perm.length !== this.ndim || new Set(perm).size !== perm.length) throw new ShapeError(`permute: [${dims}] is not a permutation of ${this.ndim} dims`);
    if (perm.every((p, i) => p === i)) return this;
    return apply1(P.transpose, [this], { perm });
  }
  /** Broadcasts to `shape`; -1 keeps a dim. */
  expand(...shape: number[] | [readonly number[]]): Tensor {
    const want = (Array.isArray(shape[0]) ? shape[0] : shape) as readonly number[];
    const lead = want.length - this.ndim;
    want.forEach((d, i) => {
      if (d === -1 && i < lead) throw new ShapeError(`expand: -1 keeps a dim, and dim ${i} of ${fmt(want)} is a new one (the tensor has ${this.ndim}): give its size`);
    });
    const target = want.map((d, i) => (d === -1 ? this.shape[i - lead]! : d));
    if (target.length === this.ndim && target.every((d, i) => d === this.shape[i])) return this;
    return apply1(P.expand, [this], { shape: target });
  }
  expandAs(other: Tensor): Tensor {
    return this.expand(other.shape);
  }
  /**
   * Each entry `repeats` times in a row along `dim` (PyTorch's repeat_interleave with a whole number): a
   * grouped-query model's k or v [B, kv_heads, S, D] as one head per query head is `k.repeatInterleave(H / KV, 1)`.
   */
  repeatInterleave(repeats: number, dim?: number): Tensor {
    if (!Number.isSafeInteger(repeats) || repeats < 0) throw new RangeError(`repeatInterleave: repeats must be a whole number >= 0, got ${String(repeats)}`);
    // No dim: the flattened tensor's entries, as PyTorch's.
    if (dim === undefined) return this.reshape(-1).repeatInterleave(repeats, 0);
    const d = normAxis("repeatInterleave", dim, this.ndim);
    if (repeats === 1) return this;
    if (repeats === 0) return this.narrow(d, 0, 0);
    const shape = [...this.shape];
    const wide = [...shape.slice(0, d + 1), repeats, ...shape.slice(d + 1)];
    shape[d] = shape[d]! * repeats;
    return this.unsqueeze(d + 1).expand(wide).reshape(shape);
  }
  /** The tensor tiled `sizes[i]` times along each dim (PyTorch's repeat; more sizes than dims add leading ones). */
  repeat(...sizes: number[] | [readonly number[]]): Tensor {
    const times = (Array.isArray(sizes[0]) ? sizes[0] : sizes) as readonly number[];
    if (times.length < this.ndim) throw new ShapeError(`repeat: needs a size per dim (${this.ndim}), got ${times.length}`);
    for (const n of times) if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`repeat: sizes must be whole numbers >= 0, got ${String(n)}`);
    let t = this.reshape([...new Array<number>(times.length - this.ndim).fill(1), ...this.shape]);
    // Each dim: a new axis of its count before it, broadcast, then merged into it (a count of 0 leaves it empty).
    for (let d = 0; d < times.length; d++) {
      if (times[d] === 1) continue;
      if (times[d] === 0) {
        t = t.narrow(d, 0, 0);
        continue;
      }
      const shape = [...t.shape];
      const wide = [...shape.slice(0, d), times[d]!, ...shape.slice(d)];
      shape[d] = shape[d]! * times[d]!;
      t = t.unsqueeze(d).expand(wide).reshape(shape);
    }
    return t;
  }
  /** `length` entries of `dim` from `start` (negative start counts from the end). */
  narrow(dim: number, start: number, length: number): Tensor {
    const d = normAxis("narrow", dim, this.ndim);
    const size = this.shape[d]!;
    const s = start < 0 ? start + size : start;
    if (s < 0 || length < 0 || s + length > size) throw new ShapeError(`narrow: [${start}, ${start}+${length}) is out of range for dim ${dim} of size ${size}`);
    if (s === 0 && length === size) return this;
    const starts = this.shape.map(() => 0);
    const stops = [...this.shape];
    starts[d] = s;
    stops[d] = s + length;
    return this.sliceWith({ starts, stops, steps: this.shape.map(() => 1) });
  }
  /** @internal basic slicing with normalised bounds */
  sliceWith(a: P.SliceAttrs): Tensor {
    return apply1(P.slice, [this], a);
  }
  /** @internal copy with a region replaced */
  sliceAssign(a: P.SliceAttrs, value: Tensor): Tensor {
    return apply1(P.sliceAssign, [this, value], a);
  }
  split(sizeOrSizes: number | readonly number[], dim = 0): Tensor[] {
    const d = normAxis("split", dim, this.ndim);
    const n = this.shape[d]!;
    let sizes: number[];
    if (typeof sizeOrSizes === "number") {
      if (!Number.isSafeInteger(sizeOrSizes) || sizeOrSizes <= 0) throw new ShapeError(`split: size must be a positive whole number, got ${sizeOrSizes}`);
      const pieces = Math.ceil(n / sizeOrSizes);
      if (pieces > MAX_SPLITS) throw new ShapeError(`split: ${pieces} pieces of a tensor of shape ${fmt(this.shape)} (at most ${MAX_SPLITS}); split into fewer`);
      // An empty dim is one empty piece, as in PyTorch.
      sizes = n === 0 ? [0] : [];
      for (let at = 0; at < n; at += sizeOrSizes) sizes.push(Math.min(sizeOrSizes, n - at));
    } else sizes = [...sizeOrSizes];
    if (sizes.length === 1 && sizes[0] === n) return [this];
    if (sizes.length > MAX_SPLITS) throw new ShapeError(`split: ${sizes.length} pieces of a tensor of shape ${fmt(this.shape)} (at most ${MAX_SPLITS}); split into fewer`);
    guardAllocation(sizes.length * JS_ARRAY_BYTES);
    return apply(P.split, [this], { axis: d, sizes });
  }
  chunk(chunks: number, dim = 0): Tensor[] {
    if (!Number.isSafeInteger(chunks) || chunks < 1) throw new ShapeError(`chunk: the number of chunks must be a whole number of 1 or more, got ${String(chunks)}`);
    const n = this.shape[normAxis("chunk", dim, this.ndim)]!;
    return n === 0 ? [this] : this.split(Math.ceil(n / chunks), dim);
  }
  tril(k = 0): Tensor {
    return apply1(P.trilu, [this], { upper: false, k });
  }
  triu(k = 0): Tensor {
    return apply1(P.trilu, [this], { upper: true, k });
  }
  /** torch.index_select: slices of `dim` picked by an integer tensor. */
  indexSelect(dim: number, index: Tensor): Tensor {
    // As torch.index_select: a 0-d index picks one row and keeps the dim; a negative one is out of range.
    if (!index.isMeta && (index.dtype === "int64" || index.dtype === "int32")) {
      const data = index.data as ArrayLike<number | bigint>;
      for (let k = 0; k < data.length; k++) if (data[k]! < 0) throw new ShapeError(`index_select: index ${String(data[k])} is negative (index_select takes 0 .. size - 1)`);
    }
    return apply1(P.gather, [this, index.ndim === 0 ? index.reshape([1]) : index], { axis: normAxis("index_select", dim, this.ndim) });
  }
  /** The entries in reverse order along each of `dims` (torch.flip). */
  flip(dims: number | readonly number[]): Tensor {
    const axes = distinctAxes("flip", typeof dims === "number" ? [dims] : dims, this.ndim);
    let out: Tensor = this;
    for (const a of axes) {
      const n = this.shape[a]!;
      if (n > 1) out = apply1(P.gather, [out, new Tensor("int64", BigInt64Array.from({ length: n }, (_, i) => BigInt(n - 1 - i)), [n])], { axis: a });
    }
    return out;
  }
  /** torch.gather: values picked along `dim` by an int64 index of the output's shape. */
  gather(dim: number, index: Tensor): Tensor {
    return apply1(P.gatherElements, [this, index.dtype === "int32" ? index.long() : index], { axis: normAxis("gather", dim, this.ndim) });
  }
  /** torch.scatter_add (out of place). */
  scatterAdd(dim: number, index: Tensor, src: Tensor): Tensor {
    const axis = normAxis("scatter_add", dim, this.ndim);
    // As in PyTorch, src may be larger than index in any dim: its part the index covers is what is added.
    if (src.ndim === index.ndim && index.ndim === this.ndim) {
      index.shape.forEach((d, i) => {
        if (d > src.shape[i]!) throw new ShapeError(`scatter_add: index ${fmt(index.shape)} is larger than src ${fmt(src.shape)} in dim ${i}`);
        if (i !== axis && d > this.shape[i]!) throw new ShapeError(`scatter_add: index ${fmt(index.shape)} is larger than the tensor ${fmt(this.shape)} in dim ${i}`);
      });
      if (index.shape.some((d, i) => d < src.shape[i]!)) src = src.index(...index.shape.map((d) => slice(0, d)));
    }
    return apply1(P.scatterAdd, [this, index, src], { axis });
  }
  /** @internal rows of this plus updates at indices[..., 0] (ScatterND add) */
  indexAdd(indices: Tensor, updates: Tensor): Tensor {
    return apply1(P.indexAdd, [this, indices, updates], undefined);
  }

  /**
   * PyTorch-style indexing: `t.index(0, null, -1)` is `t[0, :, -1]`, `t.index("...", slice(0, 3))` is
   * `t[..., 0:3]`, an integer tensor or a list of integers picks slices of its dim (one such index at most):
   * `t.index(0, [1, 3])` is `t[0, [1, 3]]`.
   */
  index(...specs: IndexSpec[]): Tensor {
    const plan = planIndex(this.shape, specs);
    let out: Tensor = this;
    if (plan.slice) out = out.sliceWith(plan.slice);
    if (plan.tensor) out = apply1(P.gather, [out, plan.tensor.index], { axis: plan.tensor.dim });
    return plan.drop.length ? out.reshape(plan.resultShape(out.shape)) : out;
  }

  /** A copy with `t[specs] = value` applied (value broadcasts to the region), e.g. `h.put([null, -1], v)`. */
  put(specs: IndexSpec[], value: TensorLike): Tensor {
    const plan = planIndex(this.shape, specs);
    if (plan.tensor) throw new ShapeError("put: integer-tensor indices are not supported in assignment; use scatterAdd or build the tensor with cat");
    const a = plan.slice ?? { starts: this.shape.map(() => 0), stops: [...this.shape], steps: this.shape.map(() => 1) };
    const region = this.shape.map((_, i) => Math.max(0, Math.ceil((a.stops[i]! - a.starts[i]!) / a.steps[i]!)));
    const kept = region.filter((_, i) => !plan.drop.includes(i));
    let v = toTensor(value, this.dtype);
    if (v.dtype !== this.dtype) v = v.to(this.dtype);
    v = v.expand(broadcastTo("put", v.shape, kept)).reshape(region);
    return this.sliceAssign(a, v);
  }

  // #endregion
}

/** Python-style index normalisation: which slice to take, which dims to drop, which tensor index to apply. */
function planIndex(shape: readonly number[], specs: IndexSpec[]) {
  const ellipses = specs.filter((s) => s === "...").length;
  if (ellipses > 1) throw new ShapeError("index: at most one '...' is allowed");
  const explicit = specs.length - ellipses;
  if (explicit > shape.length) throw new ShapeError(`index: ${explicit} indices for a tensor of rank ${shape.length}`);
  const full: CheckedSpec[] = [];
  specs.forEach((s, at) => {
    if (s === "...") for (let i = 0; i < shape.length - explicit; i++) full.push(null);
    else full.push(checkedSpec(s, at));
  });
  while (full.length < shape.length) full.push(null);
  const starts: number[] = [],
    stops: number[] = [],
    steps: number[] = [],
    drop: number[] = [];
  let tensor: { dim: number; index: Tensor } | undefined;
  let sliced = false;
  full.forEach((s, dim) => {
    const n = shape[dim]!;
    let start = 0,
      stop = n,
      step = 1;
    if (typeof s === "number") {
      if (s < -n || s >= n) throw new ShapeError(`index ${s} is out of bounds for dim ${dim} with size ${n}`);
      start = s < 0 ? s + n : s;
      stop = start + 1;
      drop.push(dim);
    } else if (s instanceof Tensor) {
      if (tensor) throw new ShapeError("index: only one integer-tensor index is supported; apply them one at a time");
      if (s.dtype !== "int64" && s.dtype !== "int32") throw new DTypeError(`index: a tensor index must be int64 or int32, got ${s.dtype}`);
      tensor = { dim, index: s };
    } else if (s !== null && typeof s === "object") {
      step = s.step ?? 1;
      if (!Number.isInteger(step) || step <= 0) throw new ShapeError(`index: slice step must be a positive integer, got ${step}`);
      const clampEnd = (v: number) => Math.min(Math.max(v < 0 ? v + n : v, 0), n);
      start = s.start === undefined || s.start === null ? 0 : clampEnd(s.start);
      stop = s.stop === undefined || s.stop === null ? n : clampEnd(s.stop);
      if (stop < start) stop = start;
    }
    if (start !== 0 || stop !== n || step !== 1) sliced = true;
    starts.push(start);
    stops.push(stop);
    steps.push(step);
  });
  return {
    slice: sliced ? { starts, stops, steps } : undefined,
    tensor: tensor && { dim: tensor.dim, index: tensor.index },
    drop,
    resultShape: (current: readonly number[]): number[] => {
      // A tensor index replaced its dim by the index's dims (kept); dropped dims are size 1 and are removed.
      const ni = tensor ? tensor.index.ndim : 1;
      return current.filter((_, i) => {
        if (tensor && i >= tensor.dim && i < tensor.dim + ni) return true;
        const orig = tensor && i >= tensor.dim + ni ? i - (ni - 1) : i;
        return !drop.includes(orig);
      });
    },
  };
}

/**
 * An index entry as planIndex takes it, or a ShapeError naming it: JavaScript lets anything through (an array, a
 * string, undefined), and each of those read as a slice of the whole dim before, so `t.index(0, [1, 3])` gave all of
 * row 0. A list of whole numbers is taken as PyTorch takes it (`t[0, [1, 3]]`): an int64 tensor index.
 */
type CheckedSpec = number | null | Slice | Tensor;

function checkedSpec(s: unknown, at: number): CheckedSpec {
  const where = `index entry ${at}`;
  if (s === null || s instanceof Tensor) return s;
  if (typeof s === "number") {
    if (!Number.isInteger(s)) throw new ShapeError(`${where}: ${s} is not a whole number`);
    return s;
  }
  if (Array.isArray(s)) {
    if (s.length > MAX_INDEX_LIST || !s.every((i) => Number.isSafeInteger(i))) {
      throw new ShapeError(`${where}: a list of indices must hold whole numbers (at most ${MAX_INDEX_LIST}); for more, or nested lists, give an int64 tensor`);
    }
    return new Tensor("int64", BigInt64Array.from(s as number[], BigInt), [s.length]);
  }
  if (typeof s === "object" && Object.getPrototypeOf(s) === Object.prototype) {
    const keys = Object.keys(s);
    const bound = (v: unknown) => v === undefined || v === null || Number.isInteger(v);
    const { start, stop, step } = s as Slice;
    if (keys.every((k) => k === "start" || k === "stop" || k === "step") && bound(start) && bound(stop) && bound(step)) return s as Slice;
    throw new ShapeError(`${where}: a slice is slice(start, stop, step) of whole numbers (or null), got {${keys.join(", ")}}`);
  }
  const got = s === undefined ? "undefined" : typeof s === "string" ? JSON.stringify(s) : typeof s;
  throw new ShapeError(`${where}: ${got} is not an index; an entry is a whole number, null (the whole dim), slice(start, stop, step), "...", a list of whole numbers or an integer tensor`);
}

/** Most entries of a plain list of indices (a longer one is a tensor). */
const MAX_INDEX_LIST = 1 << 20;

function broadcastTo(op: string, from: readonly number[], to: readonly number[]): readonly number[] {
  if (from.length > to.length || from.some((d, i) => d !== 1 && d !== to[to.length - from.length + i])) {
    throw new ShapeError(`${op}: value of shape ${fmt(from)} cannot be broadcast to ${fmt(to)}`);
  }
  return to;
}

/**
 * torch's `x.max(dim).values` / `.indices` read a (values, indices) pair; here max and min give the values
 * themselves: reading either from a tensor in JavaScript says so, rather than give undefined. Defined outside the
 * class, so that TypeScript still refuses both at compile time.
 */
for (const name of ["values", "indices"] as const) {
  Object.defineProperty(Tensor.prototype, name, {
    get(): never {
      throw new TypeError(NOT_A_PAIR(name));
    },
  });
}

/** A number as a 0-d tensor of `dtype` (float32 when the number is not an integer). */
export function toTensor(value: TensorLike, dtype: DType): Tensor {
  if (value instanceof Tensor) return value;
  if (typeof value !== "number") throw new TypeError(`expected a Tensor or a number, got ${typeof value}`);
  const d = !Number.isInteger(value) && dtype !== "float32" ? "float32" : dtype === "bool" ? "int64" : dtype;
  return Tensor.scalar(value, d);
}

/**
 * `t` when it is float32: PyTorch's mean, var, std, norm, softmax and log_softmax refuse integer and bool tensors (a
 * mean "could not infer output dtype"), where its exp or sqrt promote them; so do these, rather than choose a dtype
 * for the caller.
 */
function floatOnly(op: string, t: Tensor): Tensor {
  if (t.dtype !== "float32") throw new DTypeError(`${op}: takes float32 tensors, not ${t.dtype} (as in PyTorch); call .float() first`);
  return t;
}

/** Both operands in one dtype, following PyTorch's order bool < int32 < int64 < float32. */
function promote(op: string, a: Tensor, b: TensorLike): [Tensor, Tensor] {
  if (!(a instanceof Tensor)) throw new TypeError(`${op}: expected a Tensor`);
  const B = toTensor(b, a.dtype);
  if (a.dtype === B.dtype) return [a, B];
  const to = PROMOTION[a.dtype] >= PROMOTION[B.dtype] ? a.dtype : B.dtype;
  return [a.to(to), B.to(to)];
}

// #region creation functions

type Nested = number | boolean | bigint | readonly Nested[];

/** A tensor from nested arrays or a typed array; the dtype is inferred (float32 for numbers) unless given. */
export function tensor(values: Nested | TypedArray | ArrayBufferView, dtype?: DType, shape?: readonly number[]): Tensor {
  const fromArray = dtypeOfArray(values);
  if (fromArray && ArrayBuffer.isView(values)) {
    const d = dtype ?? fromArray;
    const arr = d === fromArray ? (values as TypedArray) : arrayFrom(d, Array.from(values as ArrayLike<number>));
    return new Tensor(d, arr, shape ?? [arr.length]);
  }
  if (ArrayBuffer.isView(values)) {
    // Another typed array (Float64Array, Int8Array, Uint16Array, ...): its numbers, as a list would give them.
    if (values instanceof DataView) throw new TypeError("tensor: a DataView has no element type: pass a typed array (Float32Array, Int32Array, ...) or nested arrays of numbers");
    guardAllocation((values as unknown as ArrayLike<number>).length * 8);
    return tensor(Array.from(values as unknown as ArrayLike<number | bigint>) as Nested, dtype ?? (values instanceof BigInt64Array || values instanceof BigUint64Array ? "int64" : undefined), shape);
  }
  const dims: number[] = [];
  for (let v: Nested = values as Nested; Array.isArray(v); v = (v as readonly Nested[])[0]!) dims.push((v as readonly Nested[]).length);
  const flat: (number | boolean | bigint)[] = [];
  // Every array at depth d holds dims[d] entries, and values sit only at the last depth (as nested lists must).
  const walk = (v: Nested, depth: number): void => {
    if (Array.isArray(v)) {
      if (depth >= dims.length || v.length !== dims[depth]) throw new ShapeError(`tensor: nested arrays are ragged (expected shape ${fmt(dims)})`);
      for (const x of v as readonly Nested[]) walk(x, depth + 1);
    } else if (depth !== dims.length) throw new ShapeError(`tensor: nested arrays are ragged (expected shape ${fmt(dims)})`);
    else if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") flat.push(v);
    else throw new TypeError(`tensor: values must be numbers, booleans or bigints (in nested arrays) or a typed array, got ${v === null ? "null" : typeof v === "object" ? `an object (${(v as object).constructor?.name ?? "no class"})` : typeof v}`);
  };
  guardAllocation(sizeOf(dims) * 8);
  walk(values as Nested, 0);
  const d = dtype ?? (typeof flat[0] === "boolean" ? "bool" : typeof flat[0] === "bigint" ? "int64" : "float32");
  if (shape !== undefined) checkShape("tensor", shape);
  return new Tensor(d, arrayFrom(d, flat), shape ?? dims);
}

export const zeros = (shape: readonly number[], dtype: DType = "float32"): Tensor => Tensor.zeros(shape, dtype);
/** A tensor of the shape with unspecified values (zeros here: tensors are never uninitialised memory). */
export const empty = (shape: readonly number[], dtype: DType = "float32"): Tensor => Tensor.zeros(shape, dtype);
export const ones = (shape: readonly number[], dtype: DType = "float32"): Tensor => Tensor.ones(shape, dtype);
export const full = (shape: readonly number[], value: number, dtype: DType = "float32"): Tensor => Tensor.full(shape, value, dtype);
export const zerosLike = (t: Tensor): Tensor => Tensor.zeros(t.shape, t.dtype);
export const onesLike = (t: Tensor): Tensor => Tensor.full(t.shape, 1, t.dtype);
export const cat = Tensor.cat;
export const stack = Tensor.stack;
export const where = Tensor.where;

/** 0, 1, ... end-1 (or start..end by step); int64 unless a bound or the step is fractional. */
export function arange(startOrEnd: number, end?: number, step = 1, dtype?: DType): Tensor {
  const [start, stop] = end === undefined ? [0, startOrEnd] : [startOrEnd, end];
  if (![start, stop, step].every(Number.isFinite) || step === 0) throw new ShapeError(`arange: start, end and step must be finite numbers and step not 0, got ${start}, ${stop}, ${step}`);
  const n = Math.max(0, Math.ceil((stop - start) / step));
  checkShape("arange", [n]);
  // Its loop's time counted as work (about 7 ns a value here), as an op's is (see primitive.ts's flops).
  guardAllocation(n * 8, n * 500);
  const d = dtype ?? ([start, stop, step].every(Number.isInteger) ? "int64" : "float32");
  // Written straight into the tensor's array: a list of the values first (and, for int64, a BigInt each) took
  // several times the tensor's bytes (6.7e7 values: 1.2 GB where 536 MB was charged).
  const data = allocate(d, n);
  // An integer range that does not fit its dtype is refused (its ends tell: it is monotonic).
  if (n > 0 && (d === "int32" || d === "int64")) for (const v of [start, start + (n - 1) * step]) elementOf(d, v, "arange");
  if (data instanceof BigInt64Array) {
    if ([start, step].every(Number.isSafeInteger)) {
      const s = BigInt(step);
      let v = BigInt(start);
      for (let i = 0; i < n; i++, v += s) data[i] = v;
    } else for (let i = 0; i < n; i++) data[i] = BigInt(Math.trunc(start + i * step));
  } else if (data instanceof Uint8Array) {
    for (let i = 0; i < n; i++) data[i] = start + i * step !== 0 ? 1 : 0;
  } else {
    for (let i = 0; i < n; i++) data[i] = start + i * step;
  }
  return new Tensor(d, data, [n]);
}

/** `steps` evenly spaced values from start to end (both included), float32. */
export function linspace(start: number, end: number, steps: number): Tensor {
  if (!Number.isFinite(start) || !Number.isFinite(end)) throw new ShapeError(`linspace: start and end must be finite numbers, got ${start} and ${end}`);
  if (!Number.isSafeInteger(steps) || steps < 0) throw new ShapeError(`linspace: steps must be a whole number of 0 or more, got ${steps}`);
  checkShape("linspace", [steps]);
  guardAllocation(steps * 4, steps * 500);
  const data = new Float32Array(steps);
  for (let i = 0; i < steps; i++) data[i] = steps === 1 ? start : start + ((end - start) * i) / (steps - 1);
  return new Tensor("float32", data, [steps]);
}

/** `steps` values base^x for x evenly spaced from start to end, float32. */
export function logspace(start: number, end: number, steps: number, base = 10): Tensor {
  if (!Number.isFinite(base)) throw new ShapeError(`logspace: base must be a finite number, got ${base}`);
  // In place over linspace's values (Float32Array.from with a function made a list of them first: 7x the tensor's bytes).
  // A power a value: about 50 ns here (6.7e7 of them 3.4 s), counted as work.
  guardAllocation(0, steps * 2500);
  const x = linspace(start, end, steps).data as Float32Array;
  for (let i = 0; i < x.length; i++) x[i] = base ** x[i]!;
  return new Tensor("float32", x, [steps]);
}

export function eye(n: number, dtype: DType = "float32"): Tensor {
  if (!Number.isSafeInteger(n) || n < 0) throw new ShapeError(`eye: n must be a whole number of 0 or more, got ${String(n)}`);
  const out = Tensor.zeros([n, n], dtype);
  const data = out.data as Float32Array;
  for (let i = 0; i < n; i++) (data as unknown as (number | bigint)[])[i * n + i] = dtype === "int64" ? 1n : 1;
  return out;
}

// #endregion

/**
 * f(x) for an f with f(0) = 0 and an infinite slope there (a root, a power below 1), whose gradient is 0 where x is
 * 0, as PyTorch's norm and std give it: the chain rule's 0 * Infinity would be NaN.
 */
function awayFromZero(x: Tensor, f: (x: Tensor) => Tensor): Tensor {
  const zero = x.eq(0);
  return Tensor.where(zero, 0, f(Tensor.where(zero, 1, x)));
}
