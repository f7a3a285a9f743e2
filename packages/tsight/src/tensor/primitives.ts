/**
 * Every primitive op, one entry each: shape inference, the ONNX graph it runs, and its gradient rule.
 * Tensor methods (tensor.ts) are composed from these; a composed method needs no gradient rule of its own.
 */
import { allocate, type DType, type TypedArray } from "./dtype.js";
import type { RawTensor } from "./engine.js";
import type { GraphBuilder } from "./onnx.js";
import { DTypeError, ShapeError } from "./errors.js";
import { apply1, type Primitive, type OutSpec } from "./primitive.js";
import { broadcastShapes, fmt, sameShape, sizeOf, stridesOf, type Shape } from "./shape.js";
import { Tensor } from "./tensor.js";
import { isGradEnabled } from "./autograd.js";
import { boxedProduct, paddedSlice, reshapedBoxed } from "./zero-box.js";

const FLOAT_ONLY = new Set<DType>(["float32"]);
const NUMERIC = new Set<DType>(["float32", "int64", "int32"]);

function check(op: string, t: Tensor, allowed: Set<DType>): void {
  if (!allowed.has(t.dtype)) throw new DTypeError(`${op}: does not take ${t.dtype} tensors (takes ${[...allowed].join(", ")}); convert with .to("float32")`);
}
const same = (t: Tensor): OutSpec => ({ dtype: t.dtype, shape: [...t.shape] });

/** Sums a broadcast gradient back down to `shape`. */
export function sumTo(g: Tensor, shape: Shape): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.shape.length - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.shape.length; i++) if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  const s = axes.length ? g.sum(axes, true) : g;
  return s.reshape(shape);
}

/** The sum over `axes`, none summing nothing (Tensor.sum's empty list, as PyTorch's, sums every dim). */
const sumOver = (t: Tensor, axes: number[]): Tensor => (axes.length ? t.sum(axes) : t);

// #region elementwise

function unary(name: string, onnx: string, dtypes: Set<DType>, grad?: (g: Tensor, x: Tensor, y: Tensor) => Tensor, outDtype?: DType): Primitive {
  return {
    name,
    infer: ([x]) => {
      check(name, x!, dtypes);
      return [{ dtype: outDtype ?? x!.dtype, shape: [...x!.shape] }];
    },
    graph: (g, [x]) => [g.op(onnx, [x!])],
    grad: grad && (([g], n) => [grad(g!, n.inputs[0]!, n.outputs[0]!)]),
  };
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
export const neg = unary("neg", "Neg", NUMERIC, (g) => g.neg());
export const exp = unary("exp", "Exp", FLOAT_ONLY, (g, _x, y) => g.mul(y));
export const log = unary("log", "Log", FLOAT_ONLY, (g, x) => g.div(x));
export const sqrt = unary("sqrt", "Sqrt", FLOAT_ONLY, (g, _x, y) => g.div(y.mul(2)));
export const tanh = unary("tanh", "Tanh", FLOAT_ONLY, (g, _x, y) => g.mul(y.mul(y).neg().add(1)));
export const sigmoid = unary("sigmoid", "Sigmoid", FLOAT_ONLY, (g, _x, y) => g.mul(y.mul(y.neg().add(1))));
export const erf = unary("erf", "Erf", FLOAT_ONLY, (g, x) => g.mul(x.mul(x).neg().exp().mul(2 / Math.sqrt(Math.PI))));
export const abs = unary("abs", "Abs", NUMERIC, (g, x) => g.mul(x.sign()));
export const sin = unary("sin", "Sin", FLOAT_ONLY, (g, x) => g.mul(x.cos()));
export const cos = unary("cos", "Cos", FLOAT_ONLY, (g, x) => g.mul(x.sin().neg()));
// Zero only where x <= 0, so a NaN passes the gradient whole, as PyTorch's threshold_backward does.
export const relu = unary("relu", "Relu", NUMERIC, (g, x) => Tensor.where(x.le(0), 0, g));
export const reciprocal = unary("reciprocal", "Reciprocal", FLOAT_ONLY, (g, _x, y) => g.mul(y.mul(y)).neg());
// Steps: their gradient is 0 everywhere (as in PyTorch, where the result still requires grad and backward passes zeros).
const flat = (g: Tensor): Tensor => Tensor.zeros(g.shape, g.dtype);
/** The sign, 0 for NaN as PyTorch's (ONNX's Sign gives NaN): abs's gradient, g * sign(x), is then PyTorch's 0 there. */
export const sign: Primitive = {
  ...unary("sign", "Sign", NUMERIC, flat),
  graph: (g, [x], _a, [input]) => {
    const s = g.op("Sign", [x!]);
    return [input?.dtype === "float32" ? g.op("Where", [g.op("IsNaN", [x!]), g.scalar("float32", 0), s]) : s];
  },
};
export const floor = unary("floor", "Floor", FLOAT_ONLY, flat);
export const ceil = unary("ceil", "Ceil", FLOAT_ONLY, flat);
export const round = unary("round", "Round", FLOAT_ONLY, flat);
export const isnan = unary("isnan", "IsNaN", FLOAT_ONLY, undefined, "bool");
export const logicalNot = unary("logical_not", "Not", new Set<DType>(["bool"]));

/** x * sigmoid(x), one kernel. */
export const silu: Primitive = {
  name: "silu",
  infer: ([x]) => (check("silu", x!, FLOAT_ONLY), [same(x!)]),
  graph: (g, [x]) => [g.op("Mul", [x!, g.op("Sigmoid", [x!])])],
  grad: ([g], n) => {
    const x = n.inputs[0]!;
    const s = x.sigmoid();
    return [g!.mul(s.mul(x.mul(s.neg().add(1)).add(1)))];
  },
};

/** GELU; `tanh` is the approximation GPT-2 calls gelu_new and Gemma gelu_pytorch_tanh. */
export const gelu: Primitive<{ approximate: "none" | "tanh" }> = {
  name: "gelu",
  infer: ([x]) => (check("gelu", x!, FLOAT_ONLY), [same(x!)]),
  key: (a) => a.approximate,
  graph: (g, [x], a) => [g.op("Gelu", [x!], { approximate: a.approximate })],
  grad: ([g], n) => [apply1(geluGrad, [g!, n.inputs[0]!], n.attrs as { approximate: "none" | "tanh" })],
};

/**
 * GELU's gradient g * gelu'(x) as one kernel: as a dozen elementwise ops, each a call handing back a tensor the
 * size of the MLP's activations, it took 11% of GPT-2-small's backward kernel time at 128 tokens.
 */
export const geluGrad: Primitive<{ approximate: "none" | "tanh" }> = {
  name: "gelu_grad",
  infer: ([g, x]) => {
    check("gelu_grad", x!, FLOAT_ONLY);
    if (!sameShape(g!.shape, x!.shape) || g!.dtype !== x!.dtype) throw new ShapeError(`gelu_grad: the gradient ${fmt(g!.shape)} ${g!.dtype} must be like the input ${fmt(x!.shape)} ${x!.dtype}`);
    return [same(x!)];
  },
  key: (a) => a.approximate,
  graph: (g, [grad, x], a) => {
    const k = (v: number) => g.scalar("float32", v);
    const mul = (p: string, q: string) => g.op("Mul", [p, q]);
    const add = (p: string, q: string) => g.op("Add", [p, q]);
    if (a.approximate === "tanh") {
      // 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 c x^2), t = tanh(sqrt(2/pi) (x + c x^3))
      const t = g.op("Tanh", [mul(add(x!, mul(g.op("Pow", [x!, k(3)]), k(0.044715))), k(SQRT_2_OVER_PI))]);
      const dInner = mul(add(mul(mul(x!, x!), k(3 * 0.044715)), k(1)), k(SQRT_2_OVER_PI));
      const slope = add(mul(add(t, k(1)), k(0.5)), mul(mul(mul(x!, k(0.5)), add(g.op("Neg", [mul(t, t)]), k(1))), dInner));
      return [mul(grad!, slope)];
    }
    // Phi(x) + x phi(x)
    const cdf = mul(add(g.op("Erf", [mul(x!, k(Math.SQRT1_2))]), k(1)), k(0.5));
    const pdf = mul(g.op("Exp", [mul(mul(x!, x!), k(-0.5))]), k(1 / Math.sqrt(2 * Math.PI)));
    return [mul(grad!, add(cdf, mul(x!, pdf)))];
  },
};

/**
 * An elementwise op of two tensors. Its gradient rule is told which inputs need a gradient (`need`, as PyTorch's
 * needs_input_grad): the other's is not computed, nor summed over its broadcast axes (an attention mask added to
 * every head's scores, a rotary table, a scale: each was a sum over the scores' size per layer, thrown away).
 */
function binary(name: string, onnx: string, dtypes: Set<DType>, grad?: (g: Tensor, a: Tensor, b: Tensor, y: Tensor, need: readonly [boolean, boolean]) => [Tensor | null, Tensor | null], outDtype?: DType, attrs?: Record<string, number>): Primitive {
  return {
    name,
    infer: ([a, b]) => {
      check(name, a!, dtypes);
      if (a!.dtype !== b!.dtype) throw new DTypeError(`${name}: dtypes ${a!.dtype} and ${b!.dtype} differ`);
      return [{ dtype: outDtype ?? a!.dtype, shape: broadcastShapes(name, a!.shape, b!.shape) }];
    },
    graph: (g, [a, b]) => [g.op(onnx, [a!, b!], attrs)],
    grad:
      grad &&
      (([g], n) => {
        const [a, b] = n.inputs as [Tensor, Tensor];
        const need = [a.requiresGrad, b.requiresGrad] as const;
        const [ga, gb] = grad(g!, a, b, n.outputs[0]!, need);
        return [need[0] && ga ? sumTo(ga, a.shape) : null, need[1] && gb ? sumTo(gb, b.shape) : null];
      }),
  };
}

const ALL = new Set<DType>(["float32", "int64", "int32", "bool"]);
const BOOL = new Set<DType>(["bool"]);
export const add = binary("add", "Add", NUMERIC, (g) => [g, g]);
export const sub = binary("sub", "Sub", NUMERIC, (g, _a, _b, _y, need) => [g, need[1] ? g.neg() : null]);
export const mul = binary("mul", "Mul", NUMERIC, (g, a, b, _y, need) => [need[0] ? g.mul(b) : null, need[1] ? g.mul(a) : null]);
export const div = binary("div", "Div", NUMERIC, (g, a, b, _y, need) => [need[0] ? g.div(b) : null, need[1] ? g.mul(a).div(b.mul(b)).neg() : null]);
// As PyTorch takes them at a 0 base: 0 for the base where the exponent is 0 (not 0 * 0^-1), and 0 for the exponent
// where the base is 0 and the exponent is not negative (not 0 * log 0).
export const pow = binary("pow", "Pow", NUMERIC, (g, a, b, y, need) => [
  need[0] ? Tensor.where(b.eq(0), 0, g.mul(b).mul(a.pow(b.sub(1)))) : null,
  need[1] ? Tensor.where(a.eq(0).logicalAnd(b.ge(0)), 0, g.mul(y).mul(a.log())) : null,
]);
/** A tie splits the gradient in halves, and a NaN (whose result is NaN) passes it whole to both, as in PyTorch. */
function extremumPicks(g: Tensor, a: Tensor, b: Tensor, winsA: Tensor, winsB: Tensor): [Tensor, Tensor] {
  const nan = a.isnan().logicalOr(b.isnan()).to(g.dtype);
  const shared = a.eq(b).to(g.dtype).mul(0.5).add(nan);
  return [g.mul(winsA.to(g.dtype).add(shared)), g.mul(winsB.to(g.dtype).add(shared))];
}
export const maximum = binary("maximum", "Max", NUMERIC, (g, a, b) => extremumPicks(g, a, b, a.gt(b), b.gt(a)));
export const minimum = binary("minimum", "Min", NUMERIC, (g, a, b) => extremumPicks(g, a, b, a.lt(b), b.lt(a)));
// fmod(a, b) = a - trunc(a / b) * b, and trunc(a / b) = (a - y) / b
export const fmod = binary("fmod", "Mod", NUMERIC, (g, a, b, y, need) => [g, need[1] ? g.mul(a.sub(y).div(b)).neg() : null], undefined, { fmod: 1 });
export const eq = binary("eq", "Equal", ALL, undefined, "bool");
export const lt = binary("lt", "Less", NUMERIC, undefined, "bool");
export const le = binary("le", "LessOrEqual", NUMERIC, undefined, "bool");
export const gt = binary("gt", "Greater", NUMERIC, undefined, "bool");
export const ge = binary("ge", "GreaterOrEqual", NUMERIC, undefined, "bool");
export const logicalAnd = binary("logical_and", "And", BOOL);
export const logicalOr = binary("logical_or", "Or", BOOL);
export const logicalXor = binary("logical_xor", "Xor", BOOL);

export const where: Primitive = {
  name: "where",
  infer: ([c, a, b]) => {
    if (c?.dtype !== "bool") throw new DTypeError(`where: the condition must be a bool tensor, got ${c?.dtype ?? `a ${typeof c}`}`);
    if (a!.dtype !== b!.dtype) throw new DTypeError(`where: dtypes ${a!.dtype} and ${b!.dtype} differ`);
    return [{ dtype: a!.dtype, shape: broadcastShapes("where", c!.shape, a!.shape, b!.shape) }];
  },
  graph: (g, [c, a, b]) => [g.op("Where", [c!, a!, b!])],
  grad: ([g], n) => {
    const [c, a, b] = n.inputs as [Tensor, Tensor, Tensor];
    const zero = Tensor.scalar(0, g!.dtype);
    return [null, a.requiresGrad ? sumTo(Tensor.where(c, g!, zero), a.shape) : null, b.requiresGrad ? sumTo(Tensor.where(c, zero, g!), b.shape) : null];
  },
};

export const cast: Primitive<{ to: DType }> = {
  name: "cast",
  infer: ([x], a) => [{ dtype: a.to, shape: [...x!.shape] }],
  key: (a) => a.to,
  graph: (g, [x], a) => [g.op("Cast", [x!], { to: { float32: 1, int32: 6, int64: 7, bool: 9 }[a.to] })],
  grad: ([g], n) => [n.inputs[0]!.dtype === "float32" && g!.dtype === "float32" ? g : null],
};

/** A copy that autograd sees as identity. */
export const clone: Primitive = {
  name: "clone",
  infer: ([x]) => [same(x!)],
  js: ([x]) => [new Tensor(x!.dtype, x!.data.slice(), x!.shape)],
  grad: ([g]) => [g],
};

// #endregion
// #region linear algebra

/** Batched matrix product of rank >= 2 tensors (Tensor.matmul handles 1-D operands around it). */
export const matmul: Primitive = {
  name: "matmul",
  infer: ([a, b]) => {
    check("matmul", a!, NUMERIC);
    if (a!.dtype !== b!.dtype) throw new DTypeError(`matmul: dtypes ${a!.dtype} and ${b!.dtype} differ`);
    const [n, k] = a!.shape.slice(-2) as [number, number];
    const [k2, m] = b!.shape.slice(-2) as [number, number];
    if (k !== k2) throw new ShapeError(`matmul: ${fmt(a!.shape)} @ ${fmt(b!.shape)}: inner dimensions ${k} and ${k2} differ`);
    const batch = broadcastShapes("matmul (batch dims)", a!.shape.slice(0, -2), b!.shape.slice(0, -2));
    return [{ dtype: a!.dtype, shape: [...batch, n, m] }];
  },
  weightInput: 1,
  graph: (g, [a, b]) => [g.op("MatMul", [a!, b!])],
  flops: ([a], [out]) => 2 * sizeOf(out!.shape) * a!.shape.at(-1)! * PRODUCT_WORK[a!.dtype],
  grad: ([g], n) => {
    const [a, b] = n.inputs as [Tensor, Tensor];
    // Only the inputs that need one (a frozen weight's gradient is a whole matrix product).
    return [a.requiresGrad ? sumTo(matmulT(g!, b, false, true), a.shape) : null, b.requiresGrad ? sumTo(matmulT(a, g!, true, false), b.shape) : null];
  },
};

/**
 * op(a) @ op(b) of float32 tensors of rank >= 2, op transposing the last two axes where `a` or `b` says, without
 * making the transposed copy: a backward pass multiplies by every weight matrix transposed, and transposing
 * GPT-2-small's [3072, 768] matrices took 3.7 ms each (a third of a backward's kernel time at 32 tokens), where the
 * matrix kernel reads them transposed as it packs them. Rank 2: one Gemm; higher: MatMul of Transpose nodes, which
 * ONNX Runtime fuses into one FusedMatMul.
 */
export const matmulTransposed: Primitive<{ a: boolean; b: boolean; ranks: readonly [number, number] }> = {
  name: "matmul",
  // The ranks make the graph (a Gemm, or where the Transposes swap), as the transpositions do.
  key: (t) => `T${t.a ? 1 : 0}${t.b ? 1 : 0}|${t.ranks.join(",")}`,
  infer: ([a, b], t) => {
    check("matmul", a!, FLOAT_ONLY);
    if (a!.dtype !== b!.dtype) throw new DTypeError(`matmul: dtypes ${a!.dtype} and ${b!.dtype} differ`);
    if (a!.shape.length < 2 || b!.shape.length < 2) throw new ShapeError(`matmul: transposed operands need 2 or more dimensions, got ${fmt(a!.shape)} and ${fmt(b!.shape)}`);
    const [r, c] = a!.shape.slice(-2) as [number, number];
    const [r2, c2] = b!.shape.slice(-2) as [number, number];
    const [n, k] = t.a ? [c, r] : [r, c];
    const [k2, m] = t.b ? [c2, r2] : [r2, c2];
    if (k !== k2) throw new ShapeError(`matmul: ${fmt(a!.shape)}${t.a ? "^T" : ""} @ ${fmt(b!.shape)}${t.b ? "^T" : ""}: inner dimensions ${k} and ${k2} differ`);
    const batch = broadcastShapes("matmul (batch dims)", a!.shape.slice(0, -2), b!.shape.slice(0, -2));
    return [{ dtype: a!.dtype, shape: [...batch, n, m] }];
  },
  graph: (g, [a, b], t) => {
    const [rankA, rankB] = t.ranks;
    if (rankA === 2 && rankB === 2) return [g.op("Gemm", [a!, b!], { transA: t.a ? 1 : 0, transB: t.b ? 1 : 0 })];
    const swapped = (name: string, rank: number) => g.op("Transpose", [name], { perm: [...Array.from({ length: rank - 2 }, (_, i) => i), rank - 1, rank - 2] });
    return [g.op("MatMul", [t.a ? swapped(a!, rankA) : a!, t.b ? swapped(b!, rankB) : b!])];
  },
  flops: ([a], [out], t) => 2 * sizeOf(out!.shape) * a!.shape.at(t.a ? -2 : -1)!,
  grad: ([g], n) => {
    const [a, b] = n.inputs as [Tensor, Tensor];
    const t = n.attrs as { a: boolean; b: boolean };
    // With A = op(a), B = op(b): dA = g B^T and dB = A^T g, each transposed back where op transposed.
    const ga = !a.requiresGrad ? null : t.a ? matmulT(b, g!, t.b, true) : matmulT(g!, b, false, !t.b);
    const gb = !b.requiresGrad ? null : t.b ? matmulT(g!, a, true, t.a) : matmulT(a, g!, !t.a, false);
    return [ga && sumTo(ga, a.shape), gb && sumTo(gb, b.shape)];
  },
};

/** op(a) @ op(b) (see matmulTransposed); a plain matmul where neither is transposed. */
export function matmulT(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Tensor {
  // A gradient zero but for a few rows and columns (a slice's: see zero-box.ts) multiplies only those.
  if (!transA && !(isGradEnabled() && (a.requiresGrad || b.requiresGrad))) {
    const boxed = boxedProduct(a, b, transB, (x, y) => matmulT(x, y, false, transB));
    if (boxed) return boxed;
  }
  if (!transA && !transB) return a.matmul(b);
  if (a.dtype !== "float32" || b.dtype !== "float32" || a.ndim < 2 || b.ndim < 2 || a.packed || b.packed) {
    return (transA ? a.transpose(-1, -2) : a).matmul(transB ? b.transpose(-1, -2) : b);
  }
  return apply1(matmulTransposed, [a, b], { a: transA, b: transB, ranks: [a.ndim, b.ndim] });
}

/**
 * y = x W^T + b for 2-D x (Hugging Face Linear, weight [out, in]) or, with `transposed`, y = x W + b (GPT-2's
 * Conv1D, weight [in, out]). One Gemm kernel, which is what makes linear layers fast.
 */
export const linear: Primitive<{ transposed: boolean }> = {
  name: "linear",
  infer: ([x, w, b], a) => {
    check("linear", x!, FLOAT_ONLY);
    if (x!.shape.length !== 2 || w!.shape.length !== 2) throw new ShapeError(`linear: expects 2-D input and weight, got ${fmt(x!.shape)} and ${fmt(w!.shape)}`);
    const [inW, out] = a.transposed ? w!.shape : [w!.shape[1]!, w!.shape[0]!];
    if (x!.shape[1] !== inW) throw new ShapeError(`linear: input has ${x!.shape[1]} features but the weight ${fmt(w!.shape)} expects ${inW}`);
    if (b && (b.shape.length !== 1 || b.shape[0] !== out)) throw new ShapeError(`linear: bias ${fmt(b.shape)} does not match ${out} outputs`);
    return [{ dtype: "float32", shape: [x!.shape[0]!, out!] }];
  },
  key: (a) => (a.transposed ? "N" : "T"),
  weightInput: 1,
  graph: (g, ins, a) => [g.op("Gemm", ins, { transB: a.transposed ? 0 : 1 })],
  flops: ([x], [out]) => 2 * sizeOf(out!.shape) * x!.shape.at(-1)!,
  grad: ([g], n) => {
    const [x, w, b] = n.inputs as [Tensor, Tensor, Tensor | undefined];
    const t = (n.attrs as { transposed: boolean }).transposed;
    const gx = matmulT(g!, w, false, t);
    const gw = !w.requiresGrad ? null : t ? matmulT(x, g!, true, false) : matmulT(g!, x, true, false);
    return [gx, gw, b && b.requiresGrad ? g!.sum(0) : null];
  },
};

/**
 * `linear` with a packed weight (bfloat16/float16 bits or int8/int4 blocks): the weight's own kernel, then the bias.
 * Only the input's gradient flows (packed weights do not train).
 */
export const packedLinear: Primitive<{ transposed: boolean }> = {
  name: "linear",
  packed: true,
  infer: (inputs, a) => linear.infer(inputs, a),
  js: ([x, w, b], _a, [out]) => {
    const packed = w!.packed!;
    const y = packed.matmul(x!.data as Float32Array, x!.shape[0]!);
    if (b) {
      const bias = b.data as Float32Array;
      const n = bias.length;
      for (let i = 0; i < y.length; i++) y[i]! += bias[i % n]!;
    }
    return [new Tensor("float32", y, out!.shape)];
  },
  flops: ([x], [out]) => 2 * sizeOf(out!.shape) * x!.shape.at(-1)!,
  grad: ([g], n) => {
    const [, w, b] = n.inputs as [Tensor, Tensor, Tensor | undefined];
    const t = (n.attrs as { transposed: boolean }).transposed;
    return [t ? g!.matmul(w.transpose(0, 1)) : g!.matmul(w), null, b && b.requiresGrad ? g!.sum(0) : null];
  },
};

// #endregion
// #region reductions

type ReduceAttrs = { axes: number[]; keepdim: boolean };
function reducedShape(shape: Shape, axes: number[], keepdim: boolean): number[] {
  return keepdim ? shape.map((d, i) => (axes.includes(i) ? 1 : d)) : shape.filter((_, i) => !axes.includes(i));
}
/** The gradient of a reduction, broadcast back over the reduced axes. */
function unreduce(g: Tensor, inShape: Shape, a: ReduceAttrs): Tensor {
  const kept = a.keepdim ? g : g.reshape(reducedShape(inShape, a.axes, true));
  return kept.expand(inShape);
}
function reduce(name: string, onnx: string, grad?: (g: Tensor, x: Tensor, y: Tensor, a: ReduceAttrs) => Tensor, nanPropagates = false): Primitive<ReduceAttrs> {
  return {
    name,
    infer: ([x], a) => {
      check(name, x!, NUMERIC);
      return [{ dtype: x!.dtype, shape: reducedShape(x!.shape, a.axes, a.keepdim) }];
    },
    key: (a) => `${a.axes}|${a.keepdim}`,
    // empty axes reduce nothing (as inferred), not everything (ONNX's default)
    graph: (g, [x], a, [input]) => {
      const attrs = { keepdims: a.keepdim ? 1 : 0, noop_with_empty_axes: 1 };
      const y = g.op(onnx, [x!, g.ints(a.axes)], attrs);
      if (!nanPropagates || input?.dtype !== "float32") return [y];
      // ONNX Runtime's ReduceMax and ReduceMin skip NaN; PyTorch's max and min give NaN where a NaN was reduced.
      // Counted (a sum: over nothing it is 0, where a max would be -Infinity, which casts to true).
      const nans = g.op("ReduceSum", [g.op("Cast", [g.op("IsNaN", [x!])], { to: TO_FLOAT }), g.ints(a.axes)], attrs);
      return [g.op("Where", [g.op("Cast", [nans], { to: TO_BOOL }), g.scalar("float32", NaN), y])];
    },
    grad: grad && (([g], n) => [grad(g!, n.inputs[0]!, n.outputs[0]!, n.attrs as ReduceAttrs)]),
  };
}
/** ONNX's element type numbers, for Cast. */
const TO_FLOAT = 1;
const TO_BOOL = 9;
const countOf = (shape: Shape, axes: number[]): number => axes.reduce((c, i) => c * shape[i]!, 1);
function extremumGrad(g: Tensor, x: Tensor, y: Tensor, a: ReduceAttrs): Tensor {
  const hit = x.eq(unreduce(y, x.shape, a)).to(g.dtype);
  return unreduce(g, x.shape, a).mul(hit).div(hit.sum(a.axes, true));
}
export const sum = reduce("sum", "ReduceSum", (g, x, _y, a) => unreduce(g, x.shape, a));
export const mean = reduce("mean", "ReduceMean", (g, x, _y, a) => unreduce(g, x.shape, a).div(countOf(x.shape, a.axes)));
export const amax = reduce("amax", "ReduceMax", extremumGrad, true);
export const amin = reduce("amin", "ReduceMin", extremumGrad, true);

type ArgAttrs = { axis: number; keepdim: boolean };
function argReduce(name: string, onnx: string): Primitive<ArgAttrs> {
  return {
    name,
    infer: ([x], a) => {
      check(name, x!, NUMERIC);
      if (x!.shape[a.axis] === 0) throw new ShapeError(`${name}: dim ${a.axis} of ${fmt(x!.shape)} is empty: there is no position to give`);
      return [{ dtype: "int64", shape: reducedShape(x!.shape, [a.axis], a.keepdim) }];
    },
    key: (a) => `${a.axis}|${a.keepdim}`,
    graph: (g, [x], a, [input]) => {
      const attrs = { axis: a.axis, keepdims: a.keepdim ? 1 : 0 };
      const found = g.op(onnx, [x!], attrs);
      if (input?.dtype !== "float32") return [found];
      // PyTorch gives a NaN's position (the first), as its max and min give NaN; ONNX Runtime's ArgMax and ArgMin do
      // not say (its answer changed with the tensor's shape).
      const isNan = g.op("Cast", [g.op("IsNaN", [x!])], { to: TO_FLOAT });
      const anyNan = g.op("Cast", [g.op("ReduceSum", [isNan, g.ints([a.axis])], { keepdims: a.keepdim ? 1 : 0 })], { to: TO_BOOL });
      return [g.op("Where", [anyNan, g.op("ArgMax", [isNan], attrs), found])];
    },
  };
}
export const argmax = argReduce("argmax", "ArgMax");
export const argmin = argReduce("argmin", "ArgMin");

export const softmax: Primitive<{ axis: number }> = {
  name: "softmax",
  infer: ([x]) => (check("softmax", x!, FLOAT_ONLY), [same(x!)]),
  key: (a) => `${a.axis}`,
  graph: (g, [x], a) => [g.op("Softmax", [x!], { axis: a.axis })],
  grad: ([g], n) => {
    const y = n.outputs[0]!;
    const axis = (n.attrs as { axis: number }).axis;
    return [y.mul(g!.sub(g!.mul(y).sum(axis, true)))];
  },
};

export const logSoftmax: Primitive<{ axis: number }> = {
  name: "log_softmax",
  infer: ([x]) => (check("log_softmax", x!, FLOAT_ONLY), [same(x!)]),
  key: (a) => `${a.axis}`,
  graph: (g, [x], a) => [g.op("LogSoftmax", [x!], { axis: a.axis })],
  grad: ([g], n) => {
    const axis = (n.attrs as { axis: number }).axis;
    return [g!.sub(n.outputs[0]!.exp().mul(g!.sum(axis, true)))];
  },
};

export const cumsum: Primitive<{ axis: number; reverse: boolean }> = {
  name: "cumsum",
  infer: ([x]) => (check("cumsum", x!, NUMERIC), [same(x!)]),
  key: (a) => `${a.axis}|${a.reverse}`,
  graph: (g, [x], a) => [g.op("CumSum", [x!, g.ints([a.axis])], { reverse: a.reverse ? 1 : 0 })],
  grad: ([g], n) => {
    const a = n.attrs as { axis: number; reverse: boolean };
    return [g!.cumsum(a.axis, !a.reverse)];
  },
};

export const topk: Primitive<{ k: number; axis: number; largest: boolean }> = {
  name: "topk",
  infer: ([x], a) => {
    check("topk", x!, NUMERIC);
    if (a.k < 0 || a.k > x!.shape[a.axis]!) throw new ShapeError(`topk: k=${a.k} is out of range for dim ${a.axis} of size ${x!.shape[a.axis]}`);
    const shape = x!.shape.map((d, i) => (i === a.axis ? a.k : d));
    return [
      { dtype: x!.dtype, shape },
      { dtype: "int64", shape: [...shape] },
    ];
  },
  key: (a) => `${a.axis}|${a.largest}`,
  feeds: (_x, a) => [{ dtype: "int64", shape: [1], data: BigInt64Array.of(BigInt(a.k)) }],
  // ONNX Runtime's TopK divides by a zero extent when its input has a 0-sized dim (other than k = 0 along it): the
  // process dies of SIGFPE, which nothing catches (a job's `zeros([0, 5]).topk(2)` took a whole server down). An
  // empty result needs no kernel, and such a call is never captured into a graph.
  view: ([x], a, [values, indices]) => {
    if (sizeOf(values!.shape) === 0) return [new Tensor(values!.dtype, allocate(values!.dtype, 0), values!.shape), new Tensor("int64", new BigInt64Array(0), indices!.shape)];
    // ONNX Runtime's TopK orders NaN anyhow (a NaN among the values could push out larger ones); PyTorch takes NaN
    // as larger than any number. A tensor holding NaN is ranked here, as PyTorch ranks it.
    return x!.dtype === "float32" && (x!.data as Float32Array).some(Number.isNaN) ? topkWithNaN(x!, a, values!.shape) : null;
  },
  graphs: ([x]) => sizeOf(x!.shape) > 0,
  graph: (g, [x, k], a) => g.node("TopK", [x!, k!], { axis: a.axis, largest: a.largest ? 1 : 0, sorted: 1 }, 2),
  // A selection and sort of k of each row: about 8 ns per element and doubling of k here (a full sort, sort(), of 2^21
  // floats 351 ms, of 2e7 7.4 s), counted as 1000 operations (20 ns at the rate the sandbox's budget assumes). A
  // tensor holding NaN is ranked in JavaScript (see topkWithNaN), which sorts whole rows whatever k: 35 ns per element
  // and doubling of the row (2^19 floats 353 ms, their top 10 433 ms), counted as 2500 (50 ns).
  flops: ([x], _out, a) => {
    const n = sizeOf(x!.shape);
    const nan = x!.dtype === "float32" && !x!.isMeta && (x!.data as Float32Array).some(Number.isNaN);
    return nan ? n * (Math.log2(x!.shape[a.axis]! + 1) + 1) * 2500 : n * (Math.log2(a.k + 1) + 1) * 1000;
  },
  grad: ([g], n) => {
    const x = n.inputs[0]!;
    const axis = (n.attrs as { axis: number }).axis;
    return [g ? Tensor.zeros(x.shape, g.dtype).scatterAdd(axis, n.outputs[1]!, g) : null];
  },
};

/** topk of a float32 tensor holding NaN, NaN ranking above every number (PyTorch's order); ties lowest index first. */
function topkWithNaN(x: Tensor, a: { k: number; axis: number; largest: boolean }, shape: number[]): Tensor[] {
  const data = x.data as Float32Array;
  const n = x.shape[a.axis]!;
  const inner = sizeOf(x.shape.slice(a.axis + 1));
  const outer = sizeOf(x.shape.slice(0, a.axis));
  const values = new Float32Array(sizeOf(shape));
  const indices = new BigInt64Array(values.length);
  // NaN above all numbers; largest first, or smallest first; equal values by position.
  const rank = (u: number, v: number): number => (Number.isNaN(u) ? (Number.isNaN(v) ? 0 : 1) : Number.isNaN(v) ? -1 : u - v);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const at = (j: number) => data[(o * n + j) * inner + i]!;
      order.sort((p, q) => (a.largest ? rank(at(q), at(p)) : rank(at(p), at(q))) || p - q);
      for (let j = 0; j < a.k; j++) {
        const out = (o * a.k + j) * inner + i;
        values[out] = at(order[j]!);
        indices[out] = BigInt(order[j]!);
      }
    }
  }
  return [new Tensor("float32", values, shape), new Tensor("int64", indices, [...shape])];
}

// #endregion
// #region movement

/** A new shape over the same data: no copy. */
export const reshape: Primitive<{ shape: number[] }> = {
  name: "reshape",
  infer: ([x], a) => [{ dtype: x!.dtype, shape: a.shape }],
  // A gradient zero outside a box stays so (see zero-box.ts), its values not made.
  js: ([x], _a, [spec]) => [reshapedBoxed(x!, spec!.shape) ?? new Tensor(x!.dtype, x!.data, spec!.shape)],
  grad: ([g], n) => [g!.reshape(n.inputs[0]!.shape)],
};

/**
 * How much slower ONNX Runtime multiplies in each dtype than in float32 (its integer matrix products have no MLAS
 * kernels), with room to spare: 512^3 on one AMD EPYC here, float32 174 GFLOP/s, int32 16, int64 5.1 (and 1.3 at
 * 4500^3, which ran 37.6 s where float32's rate made it 3.6 s).
 */
export const PRODUCT_WORK: Readonly<Record<DType, number>> = { float32: 1, int32: 8, int64: 40, bool: 40 };

/**
 * The work of permuting a tensor of `shape`, in floating-point operations: linear in its elements, but at many
 * nanoseconds an element, more the higher the rank (ONNX Runtime 1.30 on one AMD EPYC core, 2^24 floats reversed:
 * 7.6 ns an element at rank 2, 24 at rank 6, 52 at rank 24), counted at 50 operations a nanosecond (the rate the
 * sandbox's budget assumes) with room to spare: a permute of a high rank is not started when it would end past a
 * job's deadline (counted as no work, a rank-26 one ran 7.5 s past one).
 */
export const permuteWork = (shape: Shape): number => sizeOf(shape) * 50 * (10 + 4 * shape.length);

export const transpose: Primitive<{ perm: number[] }> = {
  name: "transpose",
  infer: ([x], a) => [{ dtype: x!.dtype, shape: a.perm.map((p) => x!.shape[p]!) }],
  key: (a) => `${a.perm}`,
  graph: (g, [x], a) => [g.op("Transpose", [x!], { perm: a.perm })],
  flops: ([x]) => permuteWork(x!.shape),
  grad: ([g], n) => {
    const perm = (n.attrs as { perm: number[] }).perm;
    const inverse = perm.map((_, i) => perm.indexOf(i));
    return [g!.permute(...inverse)];
  },
};

export const expand: Primitive<{ shape: number[] }> = {
  name: "expand",
  infer: ([x], a) => {
    const out = broadcastShapes("expand", x!.shape, a.shape);
    if (out.length !== a.shape.length || out.some((d, i) => d !== a.shape[i])) throw new ShapeError(`expand: cannot expand ${fmt(x!.shape)} to ${fmt(a.shape)}`);
    return [{ dtype: x!.dtype, shape: out }];
  },
  feeds: (_x, a) => [ints(a.shape)],
  graph: (g, [x, s]) => [g.op("Expand", [x!, s!])],
  grad: ([g], n) => [sumTo(g!, n.inputs[0]!.shape)],
};

/** Basic slicing: per axis start, stop, step (already normalised, step > 0). */
export type SliceAttrs = { starts: number[]; stops: number[]; steps: number[] };
const sliceLen = (start: number, stop: number, step: number): number => Math.max(0, Math.ceil((stop - start) / step));
export const slice: Primitive<SliceAttrs> = {
  name: "slice",
  infer: ([x], a) => [{ dtype: x!.dtype, shape: x!.shape.map((_, i) => sliceLen(a.starts[i]!, a.stops[i]!, a.steps[i]!)) }],
  // A region that is one run of memory (single indices, then one range, then whole dims: w[e], h[:, -1] of [B, 1, D],
  // rows of a matrix) is a view: tensors are immutable, so sharing the data is safe and picks an expert's weights
  // out of a [E, 2I, D] stack without copying it.
  view: ([x], a, [out]) => {
    const shape = x!.shape;
    let d = 0;
    while (d < shape.length && sliceLen(a.starts[d]!, a.stops[d]!, a.steps[d]!) === 1 && d < shape.length - 1) d++;
    if (d < shape.length && a.steps[d] !== 1) return null;
    for (let i = d + 1; i < shape.length; i++) if (a.starts[i] !== 0 || a.stops[i] !== shape[i] || a.steps[i] !== 1) return null;
    const strides = stridesOf(shape);
    const offset = shape.reduce((o, _, i) => o + a.starts[i]! * strides[i]!, 0);
    return [new Tensor(x!.dtype, x!.data.subarray(offset, offset + sizeOf(out!.shape)), out!.shape)];
  },
  feeds: (_x, a) => [ints(a.starts), ints(a.stops), ints(a.starts.map((_, i) => i)), ints(a.steps)],
  graph: (g, ins) => [g.op("Slice", ins)],
  grad: ([g], n) => [paddedSlice(n.inputs[0]!.shape, n.attrs as SliceAttrs, g!) ?? Tensor.zeros(n.inputs[0]!.shape, g!.dtype).sliceAssign(n.attrs as SliceAttrs, g!)],
};

/** A copy of `base` with the slice region replaced by `value` (already broadcast to the region's shape). */
export const sliceAssign: Primitive<SliceAttrs> = {
  name: "slice_assign",
  infer: ([base, value], a) => {
    const region = base!.shape.map((_, i) => sliceLen(a.starts[i]!, a.stops[i]!, a.steps[i]!));
    if (value!.dtype !== base!.dtype) throw new DTypeError(`index assignment: value dtype ${value!.dtype} differs from the tensor's ${base!.dtype}`);
    if (value!.shape.length !== region.length || value!.shape.some((d, i) => d !== region[i])) {
      throw new ShapeError(`index assignment: value of shape ${fmt(value!.shape)} does not fit the region ${fmt(region)}`);
    }
    return [same(base!)];
  },
  // As a graph (a function edit at a generation step; see nn/fusion.ts): the value padded out to the base's shape,
  // taken where a mask padded alike is set. The pads are fed, so one graph serves every length; unit steps only.
  feeds: ([base], a) => [ints([...a.starts, ...base!.shape.map((n, i) => n - a.stops[i]!)])],
  graphs: ([base], a) => base!.dtype !== "bool" && a.steps.every((s, i) => s === 1 && a.stops[i]! >= a.starts[i]!),
  graph: (g, [base, value, pads]) => {
    const ones = g.op("ConstantOfShape", [g.op("Shape", [value!])], { value: { dtype: "float32", dims: [1], data: Float32Array.of(1) } });
    const mask = g.op("Cast", [g.op("Pad", [ones, pads!])], { to: 9 });
    return [g.op("Where", [mask, g.op("Pad", [value!, pads!]), base!])];
  },
  js: ([base, value], a) => {
    const out = base!.data.slice();
    const src = value!.data;
    const strides = stridesOf(base!.shape);
    const region = value!.shape;
    const rank = region.length;
    const idx = new Array<number>(rank).fill(0);
    const total = sizeOf(region);
    for (let i = 0; i < total; i++) {
      let off = 0;
      for (let d = 0; d < rank; d++) off += (a.starts[d]! + idx[d]! * a.steps[d]!) * strides[d]!;
      (out as Float32Array)[off] = (src as Float32Array)[i]!;
      for (let d = rank - 1; d >= 0; d--) {
        if (++idx[d]! < region[d]!) break;
        idx[d] = 0;
      }
    }
    return [new Tensor(base!.dtype, out, base!.shape)];
  },
  grad: ([g], n) => {
    const a = n.attrs as SliceAttrs;
    const value = n.inputs[1]!;
    return [g!.sliceAssign(a, Tensor.zeros(value.shape, g!.dtype)), g!.sliceWith(a)];
  },
};

/** The most runs of memory a concatenation copies in JS (see concat's view). */
const MAX_JS_RUNS = 1024;

/**
 * Joins tensors along `axis`. `skip` lists inputs of shape [0] (torch.cat's legacy empty tensors) that take no part:
 * Tensor.cat chooses them, as PyTorch does; they get an empty gradient.
 */
export const concat: Primitive<{ axis: number; skip: readonly number[] }> = {
  name: "concat",
  infer: (all, a) => {
    for (const i of a.skip) if (all[i]!.ndim !== 1 || all[i]!.shape[0] !== 0) throw new ShapeError(`cat: internal: input ${i} of shape ${fmt(all[i]!.shape)} cannot be skipped`);
    const xs = all.filter((_, i) => !a.skip.includes(i));
    const first = xs[0]!;
    let total = 0;
    for (const x of all) if (x.dtype !== first.dtype) throw new DTypeError(`cat: dtypes ${first.dtype} and ${x.dtype} differ`);
    for (const x of xs) {
      if (x.shape.length !== first.shape.length || x.shape.some((d, i) => i !== a.axis && d !== first.shape[i])) {
        throw new ShapeError(`cat: shapes ${xs.map((t) => fmt(t.shape)).join(", ")} differ outside dim ${a.axis}`);
      }
      total += x.shape[a.axis]!;
    }
    return [{ dtype: first.dtype, shape: first.shape.map((d, i) => (i === a.axis ? total : d)) }];
  },
  key: (a) => `${a.axis}|${a.skip}`,
  // A copy in JS where the parts are few runs of memory (a kernel call costs more than such a copy, and gives its
  // result copied again); many short runs (rotary's halves joined along the last axis) copy faster in the kernel.
  view: (all, a, [out]) => {
    const xs = all.filter((_, i) => !a.skip.includes(i));
    const outer = sizeOf(out!.shape.slice(0, a.axis));
    if (outer * xs.length > MAX_JS_RUNS) return null;
    const data = new (xs[0]!.data.constructor as new (n: number) => TypedArray)(sizeOf(out!.shape));
    const row = sizeOf(out!.shape.slice(a.axis));
    let at = 0;
    for (const x of xs) {
      const part = sizeOf(x.shape.slice(a.axis));
      const from = x.data;
      for (let o = 0; o < outer; o++) (data as Float32Array).set(from.subarray(o * part, (o + 1) * part) as Float32Array, o * row + at);
      at += part;
    }
    return [new Tensor(out!.dtype, data, out!.shape)];
  },
  graph: (g, ins, a) => [g.op("Concat", ins.filter((_, i) => !a.skip.includes(i)), { axis: a.axis })],
  grad: ([g], n) => {
    const a = n.attrs as { axis: number; skip: readonly number[] };
    let at = 0;
    return n.inputs.map((x, i) => {
      if (a.skip.includes(i)) return Tensor.zeros([0], g!.dtype);
      const part = g!.narrow(a.axis, at, x.shape[a.axis]!);
      at += x.shape[a.axis]!;
      return part;
    });
  },
};

export const split: Primitive<{ axis: number; sizes: number[] }> = {
  name: "split",
  infer: ([x], a) => {
    if (a.sizes.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new ShapeError(`split: sizes must be whole numbers of 0 or more, got [${a.sizes}]`);
    const total = a.sizes.reduce((s, d) => s + d, 0);
    if (total !== x!.shape[a.axis]) throw new ShapeError(`split: sizes [${a.sizes}] add up to ${total}, not dim ${a.axis}'s ${x!.shape[a.axis]}`);
    return a.sizes.map((s) => ({ dtype: x!.dtype, shape: x!.shape.map((d, i) => (i === a.axis ? s : d)) }));
  },
  key: (a) => `${a.axis}|${a.sizes.length}`,
  feeds: (_x, a) => [ints(a.sizes)],
  graph: (g, [x, s], a) => g.node("Split", [x!, s!], { axis: a.axis }, a.sizes.length),
  grad: (grads, n) => {
    const axis = (n.attrs as { axis: number }).axis;
    const parts = grads.map((g, i) => g ?? Tensor.zeros(n.outputs[i]!.shape, n.outputs[i]!.dtype));
    return [Tensor.cat(parts, axis)];
  },
};

/** torch.index_select: whole slices along `axis` picked by an integer tensor of any shape. */
export const gather: Primitive<{ axis: number }> = {
  name: "gather",
  infer: ([x, idx], a) => {
    if (idx!.dtype !== "int64" && idx!.dtype !== "int32") throw new DTypeError(`index_select: indices must be int64 or int32, got ${idx!.dtype}`);
    checkIndices("index_select", idx!, x!.shape, a.axis);
    return [{ dtype: x!.dtype, shape: [...x!.shape.slice(0, a.axis), ...idx!.shape, ...x!.shape.slice(a.axis + 1)] }];
  },
  key: (a) => `${a.axis}`,
  graph: (g, [x, i], a) => [g.op("Gather", [x!, i!], { axis: a.axis })],
  grad: ([g], n) => {
    const [x, idx] = n.inputs as [Tensor, Tensor];
    const axis = (n.attrs as { axis: number }).axis;
    // Move the index dims to the front, scatter-add rows into zeros, move the axis back.
    const pre = axis,
      ni = idx.shape.length,
      post = x.shape.length - axis - 1;
    const order = [...range(pre, pre + ni), ...range(0, pre), ...range(pre + ni, pre + ni + post)];
    const moved = g!.permute(...order);
    const rest = [...x.shape.slice(0, axis), ...x.shape.slice(axis + 1)];
    const target = Tensor.zeros([x.shape[axis]!, ...rest], g!.dtype);
    const summed = target.indexAdd(idx.to("int64").unsqueeze(-1), moved);
    const back = [...range(1, pre + 1), 0, ...range(pre + 1, pre + 1 + post)];
    return [summed.permute(...back), null];
  },
};

/** ScatterND with add: rows of `data` at `indices[..., 0]` plus `updates`. Backs gather's gradient. */
export const indexAdd: Primitive = {
  name: "index_add",
  infer: ([data]) => [same(data!)],
  graph: (g, [d, i, u]) => [g.op("ScatterND", [d!, i!, u!], { reduction: "add" })],
  grad: ([g], n) => [g, null, g!.indexSelect(0, n.inputs[1]!.squeeze(-1))],
};

/** torch.gather: elementwise pick along `axis`; index has the output's shape. */
export const gatherElements: Primitive<{ axis: number }> = {
  name: "gather_elements",
  infer: ([x, idx], a) => {
    if (idx!.dtype !== "int64") throw new DTypeError(`gather: index must be int64, got ${idx!.dtype}`);
    if (idx!.shape.length !== x!.shape.length) throw new ShapeError(`gather: index rank ${idx!.shape.length} differs from input rank ${x!.shape.length}`);
    idx!.shape.forEach((d, i) => {
      if (i !== a.axis && d > x!.shape[i]!) throw new ShapeError(`gather: index ${fmt(idx!.shape)} is larger than the input ${fmt(x!.shape)} in dim ${i}`);
    });
    checkIndices("gather", idx!, x!.shape, a.axis);
    return [{ dtype: x!.dtype, shape: [...idx!.shape] }];
  },
  key: (a) => `${a.axis}`,
  graph: (g, [x, i], a) => [g.op("GatherElements", [x!, i!], { axis: a.axis })],
  grad: ([g], n) => {
    const [x, idx] = n.inputs as [Tensor, Tensor];
    const axis = (n.attrs as { axis: number }).axis;
    return [Tensor.zeros(x.shape, g!.dtype).scatterAdd(axis, idx, g!), null];
  },
};

/** torch.scatter_add: data plus updates added at index along `axis`. */
export const scatterAdd: Primitive<{ axis: number }> = {
  name: "scatter_add",
  infer: ([data, idx, upd], a) => {
    if (idx!.dtype !== "int64") throw new DTypeError(`scatter_add: index must be int64, got ${idx!.dtype}`);
    if (upd!.dtype !== data!.dtype) throw new DTypeError(`scatter_add: updates dtype ${upd!.dtype} differs from ${data!.dtype}`);
    checkIndices("scatter_add", idx!, data!.shape, a.axis);
    if (idx!.shape.length !== upd!.shape.length || idx!.shape.some((d, i) => d !== upd!.shape[i])) throw new ShapeError(`scatter_add: index ${fmt(idx!.shape)} and src ${fmt(upd!.shape)} differ in shape`);
    return [same(data!)];
  },
  key: (a) => `${a.axis}`,
  graph: (g, [d, i, u], a) => [g.op("ScatterElements", [d!, i!, u!], { axis: a.axis, reduction: "add" })],
  grad: ([g], n) => {
    const axis = (n.attrs as { axis: number }).axis;
    return [g, null, g!.gather(axis, n.inputs[1]!)];
  },
};

export const trilu: Primitive<{ upper: boolean; k: number }> = {
  name: "trilu",
  infer: ([x]) => {
    if (x!.shape.length < 2) throw new ShapeError(`tril/triu: needs a tensor of rank >= 2, got ${fmt(x!.shape)}`);
    return [same(x!)];
  },
  key: (a) => `${a.upper}`,
  feeds: (_x, a) => [{ dtype: "int64", shape: [], data: BigInt64Array.of(BigInt(a.k)) }],
  graph: (g, [x, k], a) => [g.op("Trilu", [x!, k!], { upper: a.upper ? 1 : 0 })],
  grad: ([g], n) => {
    const a = n.attrs as { upper: boolean; k: number };
    return [a.upper ? g!.triu(a.k) : g!.tril(a.k)];
  },
};

// #endregion
// #region attention

/** q [B, H, T, D] and k [B, KV, S, D] fit attention (H a multiple of KV): their sizes, and the group size. */
function attentionShapes(op: string, q: Tensor, k: Tensor): { B: number; H: number; T: number; D: number; KV: number; S: number; G: number } {
  check(op, q, FLOAT_ONLY);
  check(op, k, FLOAT_ONLY);
  const [B, H, T, D] = q.shape as [number, number, number, number];
  const [Bk, KV, S, Dk] = k.shape as [number, number, number, number];
  if (q.ndim !== 4 || k.ndim !== 4 || Bk !== B || Dk !== D || H % KV) throw new ShapeError(`${op}: q ${fmt(q.shape)} and k ${fmt(k.shape)} do not fit ([B, H, T, D] and [B, KV, S, D] with H a multiple of KV)`);
  return { B, H, T, D, KV, S, G: H / KV };
}

/** Keys or values [B, KV, S, D] with each head repeated for the `G` query heads it serves: [B, KV * G, S, D]. */
function repeatHeads(x: Tensor, G: number): Tensor {
  if (G === 1) return x;
  const [B, KV, S, D] = x.shape as [number, number, number, number];
  return x.unsqueeze(2).expand(B, KV, G, S, D).reshape(B, KV * G, S, D);
}

/** The gradient of repeatHeads: [B, KV * G, S, D] summed over each group of `G` heads, [B, KV, S, D]. */
function foldHeads(x: Tensor, G: number): Tensor {
  if (G === 1) return x;
  const [B, H, S, D] = x.shape as [number, number, number, number];
  return x.reshape(B, H / G, G, S, D).sum(2);
}

/**
 * The attention kernel's first half as graph nodes: cap(q k^T * scale) on grouped rows, [B, KV, G*T, S] (q viewed as
 * [B, KV, G*T, D] by `qGrouped`). attention and attentionScores build it alike, so they give the same numbers.
 */
function scoresGraph(g: GraphBuilder, q: string, k: string, qGrouped: string, a: { scale: number; softcap: number }): string {
  const qg = g.op("Reshape", [q, qGrouped]);
  const kt = g.op("Transpose", [k], { perm: [0, 1, 3, 2] });
  return capped(g, g.op("MatMul", [qg, kt]), a);
}

/**
 * The gradients of scores cap(q k^T * scale) (`scores`, the op's output) with respect to q [B, H, T, D] and the keys
 * [B, KV, S, D] they were taken over (heads grouped by `G`): attention_scores' rule, and attention_past_scores' over
 * the joined keys.
 */
function scoresGrads(gS: Tensor, scores: Tensor, q: Tensor, keys: Tensor, a: { scale: number; softcap: number }, G: number): [Tensor, Tensor] {
  let g = gS;
  if (a.softcap > 0) {
    // d/ds cap * tanh(s / cap) = 1 - tanh(s / cap)^2, and tanh(s / cap) is the output over cap.
    const t = scores.div(a.softcap);
    g = g.mul(t.mul(t).neg().add(1));
  }
  g = g.mul(a.scale);
  return [g.matmul(repeatHeads(keys, G)), foldHeads(matmulT(g, q, true, false), G)];
}

/** The gradients of the heads' outputs `w` v with respect to the pattern `w` and the values [B, KV, S, D] (attention_values', attention_past_values'). */
function valuesGrads(gZ: Tensor, w: Tensor, values: Tensor, G: number): [Tensor, Tensor] {
  return [matmulT(gZ, repeatHeads(values, G), false, true), foldHeads(matmulT(w, gZ, true, false), G)];
}

/** The kernel's second half as graph nodes: the weights (viewed as [B, KV, G*T, S] by `wGrouped`) times v, grouped. */
function valuesGraph(g: GraphBuilder, w: string, v: string, wGrouped: string): string {
  return g.op("MatMul", [g.op("Reshape", [w, wGrouped]), v]);
}

/**
 * Scaled dot-product attention in one kernel: softmax(cap(q k^T * scale) + mask) v, with grouped-query heads
 * handled by viewing q as [B, KV, G*T, D] (no copies of k and v). cap(s) = softcap * tanh(s / softcap) when
 * softcap > 0 (Gemma 2's attention logit soft-capping), else the identity. q [B, H, T, D], k and v [B, KV, S, D],
 * mask [B, 1, T, S] (additive). Outputs: the attended values with heads merged, [B, T, H*D], and the weights
 * [B, H, T, S].
 */
export const attention: Primitive<{ scale: number; softcap: number }> = {
  name: "attention",
  infer: ([q, k, v, mask]) => {
    for (const t of [v!, mask!]) check("attention", t, FLOAT_ONLY);
    const { B, H, T, D, S } = attentionShapes("attention", q!, k!);
    if (v!.ndim !== 4 || v!.shape.some((d, i) => d !== k!.shape[i])) throw new ShapeError(`attention: v ${fmt(v!.shape)} differs from k ${fmt(k!.shape)}`);
    if (mask!.ndim !== 4 || mask!.shape[0] !== B || mask!.shape[2] !== T || mask!.shape[3] !== S) throw new ShapeError(`attention: mask ${fmt(mask!.shape)} does not fit [${B}, 1, ${T}, ${S}]`);
    return [
      { dtype: "float32", shape: [B, T, H * D] },
      { dtype: "float32", shape: [B, H, T, S] },
    ];
  },
  key: (a) => `${a.scale}|${a.softcap}`,
  feeds: ([q, k]) => {
    const { B, H, T, D, KV, S, G } = attentionShapes("attention", q!, k!);
    return [ints([B, KV, G * T, D]), ints([B, H, T, S]), ints([B, KV, G * T, S]), ints([B, H, T, D]), ints([B, T, H * D])];
  },
  // q @ k^T, then the weights @ v: each 2 * [scores] * head_dim.
  flops: ([q], out) => 4 * sizeOf(out[1]!.shape) * q!.shape.at(-1)!,
  graph: (g, [q, k, v, mask, qGrouped, scoresShape, weightsGrouped, outShape, merged], a) => {
    const scores = g.op("Reshape", [scoresGraph(g, q!, k!, qGrouped!, a), scoresShape!]);
    const weights = g.op("Softmax", [g.op("Add", [scores, mask!])], { axis: -1 });
    const out = g.op("Reshape", [valuesGraph(g, weights, v!, weightsGrouped!), outShape!]);
    return [g.op("Reshape", [g.op("Transpose", [out], { perm: [0, 2, 1, 3] }), merged!]), weights];
  },
  grad: ([gOut, gWeights], n) => {
    const [q, k, v, mask] = n.inputs as [Tensor, Tensor, Tensor, Tensor];
    const w = n.outputs[1]!;
    const { scale, softcap } = n.attrs as { scale: number; softcap: number };
    const { B, H, T, D, G } = attentionShapes("attention", q, k);
    const gO = gOut ? gOut.reshape(B, T, H, D).transpose(1, 2) : Tensor.zeros([B, H, T, D]);
    let gW = matmulT(gO, repeatHeads(v, G), false, true);
    if (gWeights) gW = gW.add(gWeights);
    let gS = w.mul(gW.sub(gW.mul(w).sum(-1, true)));
    // The mask is added to the capped scores: it gets their gradient, summed over the heads it is broadcast to.
    const gMask = mask.requiresGrad ? sumTo(gS, mask.shape) : null;
    if (softcap > 0) {
      // d/ds cap * tanh(s / cap) = 1 - tanh(s / cap)^2, at the scaled scores s (recomputed; not an output).
      const t = q.matmul(repeatHeads(k, G).transpose(2, 3)).mul(scale).div(softcap).tanh();
      gS = gS.mul(t.mul(t).neg().add(1));
    }
    gS = gS.mul(scale);
    return [gS.matmul(repeatHeads(k, G)), foldHeads(matmulT(gS, q, true, false), G), foldHeads(matmulT(w, gO, true, false), G), gMask];
  },
};

/** cap(raw * scale): the scores from q k^T (scoresGraph's and pastScoresGraph's). */
function capped(g: GraphBuilder, raw: string, a: { scale: number; softcap: number }): string {
  const scaled = g.op("Mul", [raw, g.scalar("float32", a.scale)]);
  return a.softcap > 0 ? g.op("Mul", [g.op("Tanh", [g.op("Div", [scaled, g.scalar("float32", a.softcap)])]), g.scalar("float32", a.softcap)]) : scaled;
}

/** Attributes of attention over a layer's cache kept in place: the scores' scale and cap, and the filled positions. */
type PastAttrs = { scale: number; softcap: number; past: number };

/** Checks past keys or values [B, KV, C, D] against this call's k [B, KV, T, D] and `past` <= C; gives C. */
function pastShapes(op: string, k: Tensor, pastK: Tensor, pastV: Tensor, past: number): number {
  for (const t of [pastK, pastV]) check(op, t, FLOAT_ONLY);
  const [B, KV, , D] = k.shape as [number, number, number, number];
  if (pastK.ndim !== 4 || pastK.shape[0] !== B || pastK.shape[1] !== KV || pastK.shape[3] !== D || pastV.shape.some((d, i) => d !== pastK.shape[i])) {
    throw new ShapeError(`${op}: past keys ${fmt(pastK.shape)} and values ${fmt(pastV.shape)} do not fit [${B}, ${KV}, C, ${D}]`);
  }
  const C = pastK.shape[2]!;
  if (!Number.isSafeInteger(past) || past < 0 || past > C) throw new ShapeError(`${op}: ${past} past positions do not fit a cache of ${C}`);
  return C;
}

/**
 * Where a row over the cache and the new positions [.., C + T] and one over the filled past and the new positions
 * [.., past + T] meet along the last axis: bounds 0, past, C, C + T, past + T, and the pad [.., C - past] of the
 * cache's room. Fed, so one kernel serves every step.
 */
function pastBounds(past: number, C: number, T: number): RawTensor[] {
  return [ints([0, past, C, C + T, past + T]), ints([0, 0, 0, 0, 0, 0, 0, C - past])];
}

/** Bound indices in pastBounds' vector. */
const ZERO = 0,
  PAST = 1,
  CAP = 2,
  END = 3,
  FILLED_END = 4;

/** Graph helpers over pastBounds' feeds: slices along the last axis between bounds, and the room put in or taken out. */
function pastSlicing(g: GraphBuilder, bounds: string, pads: string) {
  const at = [0, 1, 2, 3, 4].map((i) => g.op("Slice", [bounds, g.ints([i]), g.ints([i + 1])]));
  const axis = g.ints([3]);
  const slice = (x: string, from: number, to: number) => g.op("Slice", [x, at[from]!, at[to]!, axis]);
  return {
    slice,
    /** [.., past + T] (or wider: its first past + T columns) as [.., C + T], the room after the past filled with `value`. */
    withRoom: (x: string, value: number) => g.op("Concat", [slice(x, ZERO, PAST), g.op("Pad", [slice(x, ZERO, ZERO), pads, g.scalar("float32", value)]), slice(x, PAST, FILLED_END)], { axis: 3 }),
    /** [.., C + T] as [.., past + T]: the room taken out. */
    withoutRoom: (x: string) => g.op("Concat", [slice(x, ZERO, PAST), slice(x, CAP, END)], { axis: 3 }),
  };
}

/**
 * The scores over the cache and the new keys, [B, KV, G*T, C + T]: cap(q k^T * scale) for the cache's C positions
 * (filled or not) then the T new ones. attentionPast and attentionPastScores build them alike.
 */
function pastScoresGraph(g: GraphBuilder, q: string, k: string, pastK: string, qGrouped: string, a: { scale: number; softcap: number }): string {
  const qg = g.op("Reshape", [q, qGrouped]);
  const scoresOf = (keys: string) => capped(g, g.op("MatMul", [qg, g.op("Transpose", [keys], { perm: [0, 1, 3, 2] })]), a);
  return g.op("Concat", [scoresOf(pastK), scoresOf(k)], { axis: 3 });
}

/**
 * Weights over the cache and the new positions [B, H, T, C + T] (viewed grouped by `weightsGrouped`) times the
 * cache's values and the new ones: [B, KV, G*T, D]. attentionPast and attentionPastValues build it alike.
 */
function pastValuesGraph(g: GraphBuilder, weights: string, v: string, pastV: string, weightsGrouped: string, slice: (x: string, from: number, to: number) => string): string {
  const wg = g.op("Reshape", [weights, weightsGrouped]);
  return g.op("Add", [g.op("MatMul", [slice(wg, ZERO, CAP), pastV]), g.op("MatMul", [slice(wg, CAP, END), v])]);
}

/**
 * attention of this call's tokens over a layer's cached keys and values kept where they are, in buffers with room to
 * grow (see nn/cache.ts): past keys and values [B, KV, C, D] of which the first `past` positions are filled (the
 * rest are never attended), this call's q [B, H, T, D] and its k and v [B, KV, T, D], and the mask [B, 1, T, M]
 * whose first past + T columns are those of the keys (M >= past + T). softmax(cap(q k^T * scale) + mask) v over the
 * past and new keys, as attention over them joined gives (the same numbers within float rounding: the products are
 * summed in two parts), without joining them: a decode step reads the cache in place and copies nothing of it. Outputs as attention's: [B, T, H*D]
 * and the weights [B, H, T, past + T]. `past` is fed, not baked in: one kernel serves every step. Computed step by
 * step (an operation point watched), attentionPastScores, attentionPastSoftmax and attentionPastValues give the
 * same numbers to the bit.
 */
export const attentionPast: Primitive<PastAttrs> = {
  name: "attention_past",
  infer: ([q, k, v, pastK, pastV, mask], a) => {
    const { B, H, T, D } = attentionShapes("attention_past", q!, k!);
    for (const t of [v!, mask!]) check("attention_past", t, FLOAT_ONLY);
    if (v!.ndim !== 4 || v!.shape.some((d, i) => d !== k!.shape[i])) throw new ShapeError(`attention_past: v ${fmt(v!.shape)} differs from k ${fmt(k!.shape)}`);
    pastShapes("attention_past", k!, pastK!, pastV!, a.past);
    if (mask!.ndim !== 4 || mask!.shape[0] !== B || mask!.shape[2] !== T || mask!.shape[3]! < a.past + T) throw new ShapeError(`attention_past: mask ${fmt(mask!.shape)} does not fit [${B}, 1, ${T}, >= ${a.past + T}]`);
    return [
      { dtype: "float32", shape: [B, T, H * D] },
      { dtype: "float32", shape: [B, H, T, a.past + T] },
    ];
  },
  key: (a) => `${a.scale}|${a.softcap}`,
  feeds: ([q, k, , pastK], a) => {
    const { B, H, T, D, KV, G } = attentionShapes("attention_past", q!, k!);
    const C = pastK!.shape[2]!;
    return [ints([B, KV, G * T, D]), ints([B, H, T, C + T]), ints([B, KV, G * T, C + T]), ints([B, H, T, D]), ints([B, T, H * D]), ...pastBounds(a.past, C, T)];
  },
  flops: ([q, , , pastK], out) => 4 * sizeOf(out[0]!.shape) * (pastK!.shape[2]! + q!.shape[2]!),
  graph: (g, [q, k, v, pastK, pastV, mask, qGrouped, scoresShape, weightsGrouped, outShape, merged, bounds, pads], a) => {
    const { slice, withRoom, withoutRoom } = pastSlicing(g, bounds!, pads!);
    const scores = g.op("Reshape", [pastScoresGraph(g, q!, k!, pastK!, qGrouped!, a), scoresShape!]);
    // The mask's first past + T columns, with the cache's room after the past never attended (-inf: weights of
    // exactly 0, even in a row every real key of which is masked).
    const weights = g.op("Softmax", [g.op("Add", [scores, withRoom(mask!, -Infinity)])], { axis: -1 });
    const out = g.op("Reshape", [pastValuesGraph(g, weights, v!, pastV!, weightsGrouped!, slice), outShape!]);
    return [g.op("Reshape", [g.op("Transpose", [out], { perm: [0, 2, 1, 3] }), merged!]), withoutRoom(weights)];
  },
};

/**
 * attentionPast's scores alone, over the filled past and the new keys: cap(q k^T * scale) [B, H, T, past + T], as
 * its kernel computes them (the same numbers to the bit; the mask is added after, as attention step by step does).
 */
export const attentionPastScores: Primitive<PastAttrs> = {
  name: "attention_past_scores",
  infer: ([q, k, pastK], a) => {
    const { B, H, T } = attentionShapes("attention_past_scores", q!, k!);
    pastShapes("attention_past_scores", k!, pastK!, pastK!, a.past);
    return [{ dtype: "float32", shape: [B, H, T, a.past + T] }];
  },
  key: (a) => `${a.scale}|${a.softcap}`,
  feeds: ([q, k, pastK], a) => {
    const { B, H, T, D, KV, G } = attentionShapes("attention_past_scores", q!, k!);
    const C = pastK!.shape[2]!;
    return [ints([B, KV, G * T, D]), ints([B, H, T, C + T]), ...pastBounds(a.past, C, T)];
  },
  flops: ([q, , pastK], out) => 2 * sizeOf(out[0]!.shape.slice(0, 3)) * (pastK!.shape[2]! + q!.shape[2]!) * q!.shape[3]!,
  graph: (g, [q, k, pastK, qGrouped, scoresShape, bounds, pads], a) => [pastSlicing(g, bounds!, pads!).withoutRoom(g.op("Reshape", [pastScoresGraph(g, q!, k!, pastK!, qGrouped!, a), scoresShape!]))],
  // As attention_scores' over the joined keys; the cache itself records no gradient (it is kept only while its keys
  // record none), so only q and this call's k get one.
  grad: ([gS], n) => {
    const [q, k, pastK] = n.inputs as [Tensor, Tensor, Tensor];
    const a = n.attrs as PastAttrs;
    const { G, T } = attentionShapes("attention_past_scores", q, k);
    const [gq, gKeys] = scoresGrads(gS!, n.outputs[0]!, q, Tensor.cat([pastK.narrow(2, 0, a.past), k], 2), a, G);
    return [gq, gKeys.narrow(2, a.past, T), null];
  },
};

/**
 * attentionPast's softmax alone: the weights [B, H, T, past + T] of masked scores over the filled past and the new
 * positions, computed over the cache's whole row as its kernel does (the room after the past at -inf), so the
 * numbers are its to the bit.
 */
export const attentionPastSoftmax: Primitive<{ past: number; capacity: number }> = {
  name: "attention_past_softmax",
  infer: ([s], a) => {
    check("attention_past_softmax", s!, FLOAT_ONLY);
    if (s!.ndim !== 4 || s!.shape[3]! < a.past || a.past > a.capacity) throw new ShapeError(`attention_past_softmax: scores ${fmt(s!.shape)} do not fit ${a.past} past positions in a cache of ${a.capacity}`);
    return [same(s!)];
  },
  feeds: ([s], a) => pastBounds(a.past, a.capacity, s!.shape[3]! - a.past),
  graph: (g, [s, bounds, pads]) => {
    const { withRoom, withoutRoom } = pastSlicing(g, bounds!, pads!);
    return [withoutRoom(g.op("Softmax", [withRoom(s!, -Infinity)], { axis: -1 }))];
  },
  // A softmax's over the row (the room's weights are 0 and take no part).
  grad: ([gW], n) => {
    const w = n.outputs[0]!;
    return [w.mul(gW!.sub(gW!.mul(w).sum(-1, true)))];
  },
};

/**
 * attentionPast's second half alone: the weights [B, H, T, past + T] times the cache's values [B, KV, C, D] and the
 * new ones [B, KV, T, D], per head [B, H, T, D], as its kernel computes them (the same numbers to the bit).
 */
export const attentionPastValues: Primitive<{ past: number }> = {
  name: "attention_past_values",
  infer: ([w, v, pastV], a) => {
    check("attention_past_values", w!, FLOAT_ONLY);
    check("attention_past_values", v!, FLOAT_ONLY);
    const [B, H, T, S] = w!.shape as [number, number, number, number];
    const [Bv, KV, Tv, D] = v!.shape as [number, number, number, number];
    if (w!.ndim !== 4 || v!.ndim !== 4 || Bv !== B || Tv !== T || H % KV || S !== a.past + T) throw new ShapeError(`attention_past_values: pattern ${fmt(w!.shape)} and values ${fmt(v!.shape)} do not fit ${a.past} past positions`);
    pastShapes("attention_past_values", v!, pastV!, pastV!, a.past);
    return [{ dtype: "float32", shape: [B, H, T, D] }];
  },
  feeds: ([w, v, pastV], a) => {
    const [B, H, T] = w!.shape as [number, number, number, number];
    const [, KV, , D] = v!.shape as [number, number, number, number];
    const C = pastV!.shape[2]!;
    return [ints([B, KV, (H / KV) * T, C + T]), ints([B, H, T, D]), ...pastBounds(a.past, C, T)];
  },
  flops: ([w, , pastV], out) => 2 * sizeOf(out[0]!.shape) * (pastV!.shape[2]! + w!.shape[2]!),
  graph: (g, [w, v, pastV, weightsGrouped, outShape, bounds, pads]) => {
    const { slice, withRoom } = pastSlicing(g, bounds!, pads!);
    // Zeros where the cache has room: the weights the kernel's softmax gives there.
    return [g.op("Reshape", [pastValuesGraph(g, withRoom(w!, 0), v!, pastV!, weightsGrouped!, slice), outShape!])];
  },
  // As attention_values' over the joined values; the cache records no gradient (see attention_past_scores).
  grad: ([gZ], n) => {
    const [w, v, pastV] = n.inputs as [Tensor, Tensor, Tensor];
    const { past } = n.attrs as { past: number };
    const [gw, gValues] = valuesGrads(gZ!, w, Tensor.cat([pastV.narrow(2, 0, past), v], 2), w.shape[1]! / v.shape[1]!);
    return [gw, gValues.narrow(2, past, v.shape[2]!), null];
  },
};

/**
 * The first half of the attention kernel, alone: cap(q k^T * scale) [B, H, T, S] (see attention), built as the
 * kernel builds it (scoresGraph), so that attention computed step by step (an operation point watched) gives the
 * fused kernel's numbers to the bit. A matrix product of one row is summed otherwise when the transpose and scale
 * are separate kernels (a decode step's scores differed in the last bits).
 */
export const attentionScores: Primitive<{ scale: number; softcap: number }> = {
  name: "attention_scores",
  infer: ([q, k]) => {
    const { B, H, T, S } = attentionShapes("attention_scores", q!, k!);
    return [{ dtype: "float32", shape: [B, H, T, S] }];
  },
  key: (a) => `${a.scale}|${a.softcap}`,
  feeds: ([q, k]) => {
    const { B, H, T, D, KV, S, G } = attentionShapes("attention_scores", q!, k!);
    return [ints([B, KV, G * T, D]), ints([B, H, T, S])];
  },
  flops: ([q], out) => 2 * sizeOf(out[0]!.shape) * q!.shape.at(-1)!,
  graph: (g, [q, k, qGrouped, scoresShape], a) => [g.op("Reshape", [scoresGraph(g, q!, k!, qGrouped!, a), scoresShape!])],
  grad: ([gS], n) => {
    const [q, k] = n.inputs as [Tensor, Tensor];
    const { G } = attentionShapes("attention_scores", q, k);
    return scoresGrads(gS!, n.outputs[0]!, q, k, n.attrs as { scale: number; softcap: number }, G);
  },
};

/**
 * The second half of the attention kernel, alone: each head's pattern [B, H, T, S] times the values [B, KV, S, D],
 * per head [B, H, T, D], built as the kernel builds it (valuesGraph), for the same numbers.
 */
export const attentionValues: Primitive = {
  name: "attention_values",
  infer: ([w, v]) => {
    check("attention_values", w!, FLOAT_ONLY);
    check("attention_values", v!, FLOAT_ONLY);
    const [B, H, T, S] = w!.shape as [number, number, number, number];
    const [Bv, KV, Sv, D] = v!.shape as [number, number, number, number];
    if (w!.ndim !== 4 || v!.ndim !== 4 || Bv !== B || Sv !== S || H % KV) throw new ShapeError(`attention_values: pattern ${fmt(w!.shape)} and values ${fmt(v!.shape)} do not fit ([B, H, T, S] and [B, KV, S, D] with H a multiple of KV)`);
    return [{ dtype: "float32", shape: [B, H, T, D] }];
  },
  feeds: ([w, v]) => {
    const [B, H, T, S] = w!.shape as [number, number, number, number];
    const [, KV, , D] = v!.shape as [number, number, number, number];
    return [ints([B, KV, (H / KV) * T, S]), ints([B, H, T, D])];
  },
  flops: ([w], out) => 2 * sizeOf(out[0]!.shape) * w!.shape.at(-1)!,
  graph: (g, [w, v, wGrouped, outShape]) => [g.op("Reshape", [valuesGraph(g, w!, v!, wGrouped!), outShape!])],
  grad: ([gZ], n) => {
    const [w, v] = n.inputs as [Tensor, Tensor];
    return valuesGrads(gZ!, w, v, w.shape[1]! / v.shape[1]!);
  },
};

// #endregion
// #region normalisation

/** LayerNorm over the last axis with weight and bias, one kernel. */
export const layerNorm: Primitive<{ eps: number }> = {
  name: "layer_norm",
  infer: ([x, w, b]) => {
    check("layer_norm", x!, FLOAT_ONLY);
    const d = x!.shape.at(-1);
    if (w!.shape.length !== 1 || w!.shape[0] !== d || b!.shape[0] !== d) throw new ShapeError(`layer_norm: weight ${fmt(w!.shape)} / bias ${fmt(b!.shape)} do not match the last dim of ${fmt(x!.shape)}`);
    return [same(x!)];
  },
  key: (a) => `${a.eps}`,
  graph: (g, [x, w, b], a) => [g.op("LayerNormalization", [x!, w!, b!], { axis: -1, epsilon: { float: a.eps } })],
  grad: ([g], n) => {
    const [x, w, b] = n.inputs as [Tensor, Tensor, Tensor];
    const eps = (n.attrs as { eps: number }).eps;
    const gx = apply1(normGrad, [g!, x, w], { eps, centered: true });
    // The weight's and bias's gradients only where they are trained (a frozen model's norms are not).
    if (!w.requiresGrad && !b.requiresGrad) return [gx, null, null];
    const xc = x.sub(x.mean(-1, true));
    const xhat = xc.mul(xc.mul(xc).mean(-1, true).add(eps).rsqrt());
    const batch = range(0, x.shape.length - 1);
    return [gx, w.requiresGrad ? sumOver(g!.mul(xhat), batch) : null, b.requiresGrad ? sumOver(g!, batch) : null];
  },
};

/** RMSNorm over the last axis (x / sqrt(mean(x^2) + eps) * w), one kernel. */
export const rmsNorm: Primitive<{ eps: number }> = {
  name: "rms_norm",
  infer: ([x, w]) => {
    check("rms_norm", x!, FLOAT_ONLY);
    if (w!.shape.length !== 1 || w!.shape[0] !== x!.shape.at(-1)) throw new ShapeError(`rms_norm: weight ${fmt(w!.shape)} does not match the last dim of ${fmt(x!.shape)}`);
    return [same(x!)];
  },
  key: (a) => `${a.eps}`,
  graph: (g, [x, w], a) => [g.op("SimplifiedLayerNormalization", [x!, w!], { axis: -1, epsilon: { float: a.eps } })],
  grad: ([g], n) => {
    const [x, w] = n.inputs as [Tensor, Tensor];
    const eps = (n.attrs as { eps: number }).eps;
    const gx = apply1(normGrad, [g!, x, w], { eps, centered: false });
    if (!w.requiresGrad) return [gx, null];
    const xhat = x.mul(x.mul(x).mean(-1, true).add(eps).rsqrt());
    return [gx, sumOver(g!.mul(xhat), range(0, x.shape.length - 1))];
  },
};

/**
 * The input gradient of layer_norm (`centered`) or rms_norm over the last axis, as one kernel (inputs: the gradient,
 * x, the weight): the rule written as tensor ops made a dozen kernel calls a norm, half of a GPT-2 backward pass's
 * calls. The same ops in the same order as those, so the values are theirs.
 */
export const normGrad: Primitive<{ eps: number; centered: boolean }> = {
  name: "norm_grad",
  infer: ([g, x, w]) => {
    check("norm_grad", x!, FLOAT_ONLY);
    if (!sameShape(g!.shape, x!.shape) || g!.dtype !== x!.dtype || w!.shape.length !== 1 || w!.shape[0] !== x!.shape.at(-1)) {
      throw new ShapeError(`norm_grad: the gradient ${fmt(g!.shape)} and weight ${fmt(w!.shape)} must fit the input ${fmt(x!.shape)}`);
    }
    return [same(x!)];
  },
  key: (a) => `${a.centered ? "layer" : "rms"}|${a.eps}`,
  graph: (g, [grad, x, w], a) => {
    const mean = (t: string) => g.op("ReduceMean", [t, g.ints([-1])], { keepdims: 1 });
    const mul = (p: string, q: string) => g.op("Mul", [p, q]);
    const sub = (p: string, q: string) => g.op("Sub", [p, q]);
    const xc = a.centered ? sub(x!, mean(x!)) : x!;
    const rstd = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [mean(mul(xc, xc)), g.scalar("float32", a.eps)])])]);
    const xhat = mul(xc, rstd);
    const gxh = mul(grad!, w!);
    return [mul(sub(a.centered ? sub(gxh, mean(gxh)) : gxh, mul(xhat, mean(mul(gxh, xhat)))), rstd)];
  },
};

// #endregion

/**
 * Rotary position embedding: x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1] (x's halves along the last axis,
 * `half` features each), cos and sin broadcast to x. One kernel where the ops made six for each of a layer's queries
 * and keys, and eight more in a backward pass; the same ops in the same order, so the values are theirs.
 */
export const rotary: Primitive<{ half: number }> = {
  name: "rotary",
  infer: ([x, c, s], a) => {
    check("rotary", x!, FLOAT_ONLY);
    if (x!.shape.at(-1) !== 2 * a.half) throw new ShapeError(`rotary: the last dim of ${fmt(x!.shape)} is not twice ${a.half}`);
    const out = broadcastShapes("rotary", broadcastShapes("rotary", x!.shape, c!.shape), s!.shape);
    if (!sameShape(out, x!.shape)) throw new ShapeError(`rotary: the tables ${fmt(c!.shape)} and ${fmt(s!.shape)} do not broadcast to ${fmt(x!.shape)}`);
    return [same(x!)];
  },
  key: (a) => `${a.half}`,
  graph: (g, [x, c, s], a) => {
    const [x1, x2] = g.node("Split", [x!, g.ints([a.half, a.half])], { axis: -1 }, 2) as [string, string];
    const rotated = g.op("Concat", [g.op("Neg", [x2]), x1], { axis: -1 });
    return [g.op("Add", [g.op("Mul", [x!, c!]), g.op("Mul", [rotated, s!])])];
  },
  grad: ([g], n) => {
    const [x, c, s] = n.inputs as [Tensor, Tensor, Tensor];
    const half = (n.attrs as { half: number }).half;
    const gx = x.requiresGrad ? apply1(rotaryGrad, [g!, c, s], { half }) : null;
    // The tables' own gradients (a rope nobody trains, mostly), as the ops give them.
    const rotated = () => {
      const [x1, x2] = x.split(half, -1) as [Tensor, Tensor];
      return Tensor.cat([x2.neg(), x1], -1);
    };
    return [gx, c.requiresGrad ? sumTo(g!.mul(x), c.shape) : null, s.requiresGrad ? sumTo(g!.mul(rotated()), s.shape) : null];
  },
};

/** rotary's input gradient, g cos + [(g sin)2, -(g sin)1], as one kernel (inputs: the gradient, cos, sin). */
export const rotaryGrad: Primitive<{ half: number }> = {
  name: "rotary_grad",
  infer: ([g, c, s], a) => rotary.infer([g!, c!, s!], a),
  key: (a) => `${a.half}`,
  graph: (g, [grad, c, s], a) => {
    const [y1, y2] = g.node("Split", [g.op("Mul", [grad!, s!]), g.ints([a.half, a.half])], { axis: -1 }, 2) as [string, string];
    return [g.op("Add", [g.op("Mul", [grad!, c!]), g.op("Concat", [y2, g.op("Neg", [y1])], { axis: -1 })])];
  },
};

/** Index values must lie in [-size, size) of `axis`; checked in JS so the error is a ShapeError naming the op. */
function checkIndices(op: string, idx: Tensor, shape: Shape, axis: number): void {
  if (idx.isMeta) return;
  const size = shape[axis]!;
  const data = idx.data as ArrayLike<number | bigint>;
  for (let k = 0; k < data.length; k++) {
    const i = Number(data[k]);
    if (i < -size || i >= size) throw new ShapeError(`${op}: index ${i} is out of range for dim ${axis} of size ${size} in a tensor of shape ${fmt(shape)}`);
  }
}

function ints(values: readonly number[]): { dtype: "int64"; shape: number[]; data: BigInt64Array } {
  return { dtype: "int64", shape: [values.length], data: BigInt64Array.from(values, (v) => BigInt(v)) };
}
function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}
