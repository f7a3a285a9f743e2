import { describe, expect, it } from "vitest";
import {
  DTypeError,
  Generator,
  MetaTensorError,
  ShapeError,
  Tensor,
  arange,
  logspace,
  cat,
  eye,
  full,
  manualSeed,
  ones,
  onesLike,
  rand,
  randn,
  slice,
  stack,
  tensor,
  zeros,
  zerosLike,
  functional as F,
} from "./index.js";
import { apply, apply1 } from "./primitive.js";
import * as P from "./primitives.js";
import {
  alongAxis,
  at,
  build,
  checkOp,
  distinctT,
  erfRef,
  expectTensor,
  expectThrows,
  fromTensor,
  map,
  matmulNd,
  nd,
  randT,
  reduce,
  transposeNd,
  zip,
  type Nd,
} from "../../../../test/op-helpers.js";

const i64 = (values: unknown, shape?: number[]) => tensor(values as number[], "int64", shape);
const sum = (v: number[]) => v.reduce((s, x) => s + x, 0);
const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
const geluRef = (x: number) => 0.5 * x * (1 + erfRef(x / Math.SQRT2));
const geluTanhRef = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
const softmaxVec = (v: number[]) => {
  const m = Math.max(...v);
  const e = v.map((x) => Math.exp(x - m));
  const s = sum(e);
  return e.map((x) => x / s);
};
const logSoftmaxVec = (v: number[]) => {
  const m = Math.max(...v);
  const lse = m + Math.log(sum(v.map((x) => Math.exp(x - m))));
  return v.map((x) => x - lse);
};

describe("creation", () => {
  it("tensor infers shape and dtype from nested arrays", () => {
    const t = tensor([[1, 2, 3], [4, 5, 6]]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe("float32");
    expect(t.tolist()).toEqual([[1, 2, 3], [4, 5, 6]]);
    expect(tensor([true, false]).dtype).toBe("bool");
    expect(tensor([1n, 2n]).dtype).toBe("int64");
    expect(tensor(5).shape).toEqual([]);
    expect(tensor([]).shape).toEqual([0]);
    expect(tensor([1.9, -1.9], "int64").toArray()).toEqual([1, -1]);
  });

  it("tensor takes a typed array with an optional shape, and refuses ragged input", () => {
    const t = tensor(Int32Array.of(1, 2, 3, 4), undefined, [2, 2]);
    expect(t.dtype).toBe("int32");
    expect(t.tolist()).toEqual([[1, 2], [3, 4]]);
    expect(tensor(Float32Array.of(1.5, 2), "int64").toArray()).toEqual([1, 2]);
    expectThrows(() => tensor([[1, 2], [3]]), ShapeError, "ragged");
    expectThrows(() => tensor(Float32Array.of(1, 2, 3), undefined, [2, 2]), ShapeError, "3 values", "[2, 2]");
  });

  it("zeros, ones, full, zerosLike, onesLike in every dtype", () => {
    expectTensor(zeros([2, 2]), [[0, 0], [0, 0]], { dtype: "float32" });
    expectTensor(ones([3], "int64"), [1, 1, 1], { dtype: "int64" });
    expectTensor(full([2], 2.5), [2.5, 2.5], { dtype: "float32" });
    expectTensor(full([2], 7, "int32"), [7, 7], { dtype: "int32" });
    expectTensor(full([2], 2.7, "int64"), [2, 2], { dtype: "int64" }); // truncates like torch
    expectTensor(Tensor.full([2], true, "bool"), [1, 1], { dtype: "bool" });
    expectTensor(zerosLike(i64([1, 2])), [0, 0], { dtype: "int64" });
    expectTensor(onesLike(tensor([[1, 2]])), [[1, 1]], { dtype: "float32" });
    expect(zeros([0, 3]).numel()).toBe(0);
    expectTensor(Tensor.scalar(3, "int32"), 3, { dtype: "int32" });
  });

  it("a value an integer dtype cannot hold is a RangeError, not a wrapped or zeroed element; bool takes any nonzero", () => {
    expectTensor(Tensor.full([2], 1e300, "bool"), [1, 1], { dtype: "bool" });
    expectTensor(Tensor.full([1], NaN, "bool"), [1], { dtype: "bool" });
    expectTensor(full([1], 2 ** 31 - 1, "int32"), [2 ** 31 - 1], { dtype: "int32" });
    expect(tensor([-(2 ** 63)], "int64").data[0]).toBe(-(2n ** 63n));
    for (const make of [() => full([2], Infinity, "int32"), () => full([1], 2 ** 31, "int32"), () => full([1], NaN, "int64"), () => tensor([2 ** 63], "int64"), () => tensor([-Infinity], "int32")]) {
      expect(make).toThrow(RangeError);
    }
    expect(() => full([2], Infinity, "int32")).toThrow("full: Infinity cannot be converted to int32 without overflow");
  });

  it("arange: int64 for integer bounds, float32 otherwise, steps", () => {
    expectTensor(arange(5), [0, 1, 2, 3, 4], { dtype: "int64" });
    expectTensor(arange(2, 8, 3), [2, 5], { dtype: "int64" });
    expectTensor(arange(5, 0, -2), [5, 3, 1], { dtype: "int64" });
    expectTensor(arange(0, 1, 0.25), [0, 0.25, 0.5, 0.75], { dtype: "float32" });
    expectTensor(arange(0, 3, 1, "float32"), [0, 1, 2], { dtype: "float32" });
    expect(arange(3, 3).shape).toEqual([0]);
  });

  it("eye", () => {
    expectTensor(eye(3), [[1, 0, 0], [0, 1, 0], [0, 0, 1]], { dtype: "float32" });
    expectTensor(eye(2, "int64"), [[1, 0], [0, 1]], { dtype: "int64" });
    expectTensor(eye(2, "bool"), [[1, 0], [0, 1]], { dtype: "bool" });
  });

  it("randn and rand are deterministic for a seed", () => {
    const a = randn([4, 5], new Generator(7));
    const b = randn([4, 5], new Generator(7));
    const c = randn([4, 5], new Generator(8));
    expect(a.toArray()).toEqual(b.toArray());
    expect(a.toArray()).not.toEqual(c.toArray());
    manualSeed(3);
    const r1 = rand([10]);
    manualSeed(3);
    expect(rand([10]).toArray()).toEqual(r1.toArray());
    expect(rand([10]).toArray()).not.toEqual(r1.toArray()); // the default generator moved on
    const g = new Generator(11);
    const first = g.random();
    g.manualSeed(11);
    expect(g.random()).toBe(first);
  });

  it("rand is uniform in [0, 1) and randn standard normal (loose moments)", () => {
    const u = rand([20000], new Generator(1)).toArray();
    expect(Math.min(...u)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...u)).toBeLessThan(1);
    expect(Math.abs(sum(u) / u.length - 0.5)).toBeLessThan(0.01);
    const z = randn([20000], new Generator(2)).toArray();
    const mean = sum(z) / z.length;
    const varz = sum(z.map((x) => (x - mean) ** 2)) / z.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(varz - 1)).toBeLessThan(0.05);
    expect(randn([2, 3]).dtype).toBe("float32");
  });
});

describe("properties and conversion", () => {
  it("shape accessors", () => {
    const t = zeros([2, 3, 4]);
    expect([t.ndim, t.dim(), t.numel()]).toEqual([3, 3, 24]);
    expect(t.size()).toEqual([2, 3, 4]);
    expect(t.size(-1)).toBe(4);
    expectThrows(() => t.size(3), ShapeError, "size", "dim 3");
  });

  it("tolist, item, toArray", () => {
    expect(i64([[1, 2], [3, 4]]).tolist()).toEqual([[1, 2], [3, 4]]);
    expect(tensor(2.5).tolist()).toBe(2.5);
    expect(tensor([[7]]).item()).toBe(7);
    expect(i64([9]).item()).toBe(9);
    expect(tensor([true]).item()).toBe(1);
    expectThrows(() => tensor([1, 2]).item(), ShapeError, "item", "[2]");
    expect(zeros([2, 0, 3]).tolist()).toEqual([[], []]);
  });

  it("toString shows values, shape and dtype, and elides long dims", () => {
    expect(tensor([[1, 2.5], [3, 4]]).toString()).toBe("tensor([[1, 2.5], [3, 4]], shape=[2, 2], dtype=float32)");
    expect(i64([1, 2]).toString()).toBe("tensor([1, 2], shape=[2], dtype=int64)");
    expect(tensor(1 / 3).toString()).toBe("tensor(0.33333, shape=[], dtype=float32)");
    expect(arange(10).toString()).toBe("tensor([0, 1, 2, ..., 7, 8, 9], shape=[10], dtype=int64)");
    expect(Tensor.meta("float32", [2, 3]).toString()).toBe("tensor(meta, shape=[2, 3], dtype=float32)");
  });

  it("to(dtype): truncation toward zero, bool from nonzero, same dtype is the same tensor", () => {
    const x = tensor([-1.7, -0.2, 0, 0.2, 1.7, 2.5]);
    expectTensor(x.to("int64"), [-1, 0, 0, 0, 1, 2], { dtype: "int64" });
    expectTensor(x.to("int32"), [-1, 0, 0, 0, 1, 2], { dtype: "int32" });
    expectTensor(x.to("bool"), [1, 1, 0, 1, 1, 1], { dtype: "bool" });
    expectTensor(tensor([true, false]).float(), [1, 0], { dtype: "float32" });
    expectTensor(i64([2n ** 40n + 1n]).long(), [2 ** 40 + 1], { dtype: "int64" });
    expectTensor(i64([3, -4]).int(), [3, -4], { dtype: "int32" });
    expect(x.to("float32")).toBe(x);
  });

  it("clone copies data; detach shares it and drops the graph", () => {
    const x = tensor([1, 2, 3]);
    const c = x.clone();
    expect(c.data).not.toBe(x.data);
    expect(c.toArray()).toEqual([1, 2, 3]);
    const y = tensor([1, 2]).requiresGrad_().mul(2);
    const d = y.detach();
    expect(d.data).toBe(y.data);
    expect(d.requiresGrad).toBe(false);
    expect(y.requiresGrad).toBe(true);
    expect(x.contiguous()).toBe(x);
  });
});

describe("elementwise", () => {
  const a = randT([2, 1, 3], 1, { lo: -2, hi: 2 });
  const b = randT([4, 1], 2, { lo: -2, hi: 2, away: 0.3 });
  const binaryRefs: [string, (x: Tensor, y: Tensor) => Tensor, (x: number, y: number) => number][] = [
    ["add", (x, y) => x.add(y), (x, y) => x + y],
    ["sub", (x, y) => x.sub(y), (x, y) => x - y],
    ["mul", (x, y) => x.mul(y), (x, y) => x * y],
    ["div", (x, y) => x.div(y), (x, y) => x / y],
    ["maximum", (x, y) => x.maximum(y), Math.max],
    ["minimum", (x, y) => x.minimum(y), Math.min],
    ["fmod", (x, y) => x.fmod(y), (x, y) => x % y],
  ];
  for (const [name, f, ref] of binaryRefs) {
    it(`${name} broadcasts [2,1,3] with [4,1], both orders, and takes numbers`, () => {
      checkOp(name, [a, b], f, (x, y) => zip([x, y], ref));
      checkOp(`${name} reversed`, [b, a], f, (x, y) => zip([x, y], ref));
      checkOp(`${name} with 1.5`, [a], (x) => f(x, 1.5 as unknown as Tensor), (x) => map(x, (v) => ref(v, 1.5)));
    });
  }

  it("pow with tensor and number exponents", () => {
    const base = randT([2, 3], 3, { lo: 0.2, hi: 2 });
    const ex = randT([3], 4, { lo: -2, hi: 2 });
    checkOp("pow", [base, ex], (x, y) => x.pow(y), (x, y) => zip([x, y], Math.pow), { rtol: 1e-5 });
    checkOp("pow 3", [base], (x) => x.pow(3), (x) => map(x, (v) => v ** 3), { rtol: 1e-5 });
    checkOp("pow 2", [a], (x) => x.pow(2), (x) => map(x, (v) => v * v));
    checkOp("pow 0.5", [base], (x) => x.pow(0.5), (x) => map(x, Math.sqrt));
    expectTensor(i64([2, 3]).pow(3), [8, 27], { dtype: "int64" });
  });

  it("fmod truncates like C (sign of the dividend)", () => {
    expectTensor(tensor([-7, 7, -7, 5.5]).fmod(tensor([3, -3, -3, 2])), [-1, 1, -1, 1.5]);
    expectTensor(i64([-7, 7]).fmod(3), [-1, 1], { dtype: "int64" });
    // An integer zero divisor is an error of ours, before ONNX Runtime's (a float one gives NaN, as in PyTorch).
    expect(() => i64([7, 8]).fmod(i64([1, 0]))).toThrow("fmod: integer division by zero");
    expect(tensor([1]).fmod(0).item()).toBeNaN();
  });

  it("clamp with min, max, both, and one side null", () => {
    const x = tensor([-3, -0.5, 0, 0.5, 3]);
    expectTensor(x.clamp(-1, 1), [-1, -0.5, 0, 0.5, 1]);
    expectTensor(x.clamp(0), [0, 0, 0, 0.5, 3]);
    expectTensor(x.clamp(null, 0), [-3, -0.5, 0, 0, 0]);
    expectTensor(i64([-5, 2, 9]).clamp(-1, 4), [-1, 2, 4], { dtype: "int64" });
  });

  const unaryRefs: [string, (x: Tensor) => Tensor, (x: number) => number, { lo: number; hi: number }][] = [
    ["neg", (x) => x.neg(), (x) => -x, { lo: -3, hi: 3 }],
    ["exp", (x) => x.exp(), Math.exp, { lo: -3, hi: 3 }],
    ["log", (x) => x.log(), Math.log, { lo: 0.01, hi: 5 }],
    ["log1p", (x) => x.log1p(), Math.log1p, { lo: -0.9, hi: 5 }],
    ["softplus", (x) => x.softplus(), (x) => Math.log1p(Math.exp(x)), { lo: -6, hi: 6 }],
    ["sqrt", (x) => x.sqrt(), Math.sqrt, { lo: 0, hi: 5 }],
    ["rsqrt", (x) => x.rsqrt(), (x) => 1 / Math.sqrt(x), { lo: 0.1, hi: 5 }],
    ["reciprocal", (x) => x.reciprocal(), (x) => 1 / x, { lo: 0.1, hi: 5 }],
    ["square", (x) => x.square(), (x) => x * x, { lo: -3, hi: 3 }],
    ["abs", (x) => x.abs(), Math.abs, { lo: -3, hi: 3 }],
    ["sign", (x) => x.sign(), Math.sign, { lo: -3, hi: 3 }],
    ["floor", (x) => x.floor(), Math.floor, { lo: -3, hi: 3 }],
    ["ceil", (x) => x.ceil(), Math.ceil, { lo: -3, hi: 3 }],
    ["tanh", (x) => x.tanh(), Math.tanh, { lo: -4, hi: 4 }],
    ["sigmoid", (x) => x.sigmoid(), sigmoid, { lo: -6, hi: 6 }],
    ["relu", (x) => x.relu(), (x) => Math.max(0, x), { lo: -3, hi: 3 }],
    ["silu", (x) => x.silu(), (x) => x * sigmoid(x), { lo: -6, hi: 6 }],
    ["gelu", (x) => x.gelu(), geluRef, { lo: -4, hi: 4 }],
    ["gelu tanh", (x) => x.gelu("tanh"), geluTanhRef, { lo: -4, hi: 4 }],
    ["erf", (x) => x.erf(), erfRef, { lo: -3, hi: 3 }],
    ["sin", (x) => x.sin(), Math.sin, { lo: -4, hi: 4 }],
    ["cos", (x) => x.cos(), Math.cos, { lo: -4, hi: 4 }],
  ];
  unaryRefs.forEach(([name, f, ref, range], k) => {
    it(`${name}`, () => checkOp(name, [randT([3, 5], 20 + k, range)], f, (x) => map(x, ref), { atol: 2e-6, rtol: 2e-6 }));
  });

  it("gelu and silu at hand-computed points", () => {
    expectTensor(tensor([0, 1, -1]).gelu(), [0, 0.8413447460685429, -0.15865525393145707]);
    expectTensor(tensor([1]).gelu("tanh"), [0.8411919906082768]);
    expectTensor(tensor([0, 1]).silu(), [0, 0.7310585786300049]);
    expect(() => tensor([1]).gelu("x".repeat(100) as never)).toThrow(`gelu: approximate must be "none" or "tanh", got "${"x".repeat(40)}"`);
  });

  it("round is half to even, like torch", () => {
    expectTensor(tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.4, -2.6]).round(), [0, 2, 2, -0, -2, 0, -3]);
  });

  it("integer abs, neg, sign, relu stay integer", () => {
    const x = i64([3, -7, 0]);
    expectTensor(x.abs(), [3, 7, 0], { dtype: "int64" });
    expectTensor(x.neg(), [-3, 7, 0], { dtype: "int64" });
    expectTensor(x.sign(), [1, -1, 0], { dtype: "int64" });
    expectTensor(x.relu(), [3, 0, 0], { dtype: "int64" });
    expectTensor(x.int().relu(), [3, 0, 0], { dtype: "int32" });
  });

  it("isnan and comparisons give bool", () => {
    expectTensor(tensor([NaN, 1, Infinity]).isnan(), [1, 0, 0], { dtype: "bool" });
    const x = tensor([[1, 2, 3]]);
    const y = tensor([[2], [1]]);
    expectTensor(x.eq(y), [[0, 1, 0], [1, 0, 0]], { dtype: "bool" });
    expectTensor(x.ne(y), [[1, 0, 1], [0, 1, 1]], { dtype: "bool" });
    expectTensor(x.lt(y), [[1, 0, 0], [0, 0, 0]], { dtype: "bool" });
    expectTensor(x.le(y), [[1, 1, 0], [1, 0, 0]], { dtype: "bool" });
    expectTensor(x.gt(2), [[0, 0, 1]], { dtype: "bool" });
    expectTensor(x.ge(2), [[0, 1, 1]], { dtype: "bool" });
    expectTensor(i64([1, 5]).lt(2.5), [1, 0], { dtype: "bool" });
  });

  it("logical ops on bool (and on numbers through bool())", () => {
    const p = tensor([true, true, false, false]);
    const q = tensor([true, false, true, false]);
    expectTensor(p.logicalAnd(q), [1, 0, 0, 0], { dtype: "bool" });
    expectTensor(p.logicalOr(q), [1, 1, 1, 0], { dtype: "bool" });
    expectTensor(p.logicalXor(q), [0, 1, 1, 0], { dtype: "bool" });
    expectTensor(p.logicalNot(), [0, 0, 1, 1], { dtype: "bool" });
    expectTensor(tensor([0, 2, -1]).logicalNot(), [1, 0, 0], { dtype: "bool" });
    expectTensor(p.eq(q), [1, 0, 0, 1], { dtype: "bool" });
  });
});

describe("dtype promotion", () => {
  it("follows bool < int32 < int64 < float32, numbers keep the tensor's kind", () => {
    const l = i64([1, 2]);
    expect(l.add(i64([3, 4])).dtype).toBe("int64");
    expectTensor(l.add(2), [3, 4], { dtype: "int64" });
    expectTensor(l.add(0.5), [1.5, 2.5], { dtype: "float32" });
    expectTensor(l.mul(tensor([0.5, 0.5])), [0.5, 1], { dtype: "float32" });
    expectTensor(tensor([0.5, 0.5]).mul(l), [0.5, 1], { dtype: "float32" });
    expectTensor(l.int().add(l), [2, 4], { dtype: "int64" });
    expectTensor(l.int().add(3), [4, 5], { dtype: "int32" });
    expectTensor(tensor([true, false]).add(1), [2, 1], { dtype: "int64" });
    expectTensor(tensor([true, false]).add(tensor([0.5, 0.5])), [1.5, 0.5], { dtype: "float32" });
  });

  it("division is true division, float32 even for integers", () => {
    expectTensor(i64([7, -7]).div(i64([2, 2])), [3.5, -3.5], { dtype: "float32" });
    expectTensor(i64([1]).div(4), [0.25], { dtype: "float32" });
  });

  it("int64 arithmetic is exact beyond float32 precision", () => {
    const big = i64([2n ** 40n + 1n, -(2n ** 50n)]);
    expect(Array.from(big.add(1).data as BigInt64Array)).toEqual([2n ** 40n + 2n, -(2n ** 50n) + 1n]);
    expect(Array.from(big.mul(2).data as BigInt64Array)).toEqual([2n ** 41n + 2n, -(2n ** 51n)]);
  });

  it("ops that refuse a dtype say so with a DTypeError naming the op (float-valued math takes integers as float32)", () => {
    expectThrows(() => tensor([true]).add(tensor([true])), DTypeError, "add", "bool");
    expectThrows(() => tensor([true]).max(), DTypeError, "amax", "bool");
    expectThrows(() => apply1(P.exp, [i64([1])], undefined), DTypeError, "exp", "int64");
    expectTensor(i64([0]).gelu(), [0], { dtype: "float32" });
  });

  it("a tensor read as torch's (values, indices) pair says where they are (JavaScript; TypeScript refuses both)", () => {
    const x = tensor([[1, 5, 2]]);
    for (const name of ["values", "indices"]) expectThrows(() => (x.max(1) as unknown as Record<string, unknown>)[name], TypeError, `no .${name}`, "x.argmax(dim)", "x.topk(1, dim)");
    const { values, indices } = x.topk(1, 1);
    expectTensor(values, [[5]], { dtype: "float32" });
    expectTensor(indices, [[1]], { dtype: "int64" });
  });

  it("arange and logspace write their values in place: exact int64 ranges past 2^53, int32 overflow refused, base ** x", () => {
    expect(Array.from(arange(2 ** 53 - 1, 2 ** 53 + 2).data as BigInt64Array, String)).toEqual(["9007199254740991", "9007199254740992", "9007199254740993"]);
    expectTensor(arange(5, 0, -2), [5, 3, 1], { dtype: "int64" });
    expectTensor(arange(0, 1, 0.25), [0, 0.25, 0.5, 0.75], { dtype: "float32" });
    expectThrows(() => arange(2 ** 31 - 2, 2 ** 31 + 1, 1, "int32"), RangeError, "arange", "int32");
    expectTensor(arange(0, 3, 1, "bool"), [false, true, true], { dtype: "bool" });
    expectTensor(logspace(0, 2, 3), [1, 10, 100], { dtype: "float32" });
    expectTensor(logspace(0, 3, 4, 2), [1, 2, 4, 8], { dtype: "float32" });
  });

  it("integer reductions and means", () => {
    expectTensor(tensor([true, false, true]).sum(), 2, { dtype: "int64" });
    expectTensor(i64([[1, 2], [3, 4]]).sum(0), [4, 6], { dtype: "int64" });
    // torch.tensor([1, 2]).mean(): "mean(): could not infer output dtype. Input dtype must be either a floating point
    // or complex dtype. Got: Long"; the same for Int and Bool.
    for (const t of [i64([1, 2]), tensor([1, 2], "int32"), tensor([true, false])]) expectThrows(() => t.mean(0), DTypeError, "mean", t.dtype, ".float()");
    expectTensor(i64([1, 2]).float().mean(), 1.5, { dtype: "float32" });
    // torch 2.13: "std and var only support floating point and complex dtypes"; "linalg.vector_norm: Expected a
    // floating point or complex tensor as input. Got Long" (and Bool).
    for (const t of [i64([1, 2]), tensor([1, 2], "int32"), tensor([true, false])]) {
      expectThrows(() => t.var(), DTypeError, "var", t.dtype, ".float()");
      expectThrows(() => t.std(0), DTypeError, "std", t.dtype, ".float()");
      for (const p of [2, 1, 0, Infinity]) expectThrows(() => t.norm(p), DTypeError, "norm", t.dtype, ".float()");
    }
    expectTensor(i64([1, 3]).float().var(), 2, { dtype: "float32" });
    expectTensor(i64([3, 4]).float().norm(), 5, { dtype: "float32" });
    expectTensor(i64([3, -7, 5]).max(), 5, { dtype: "int64" });
    expectTensor(i64([3, -7, 5]).cumsum(0), [3, -4, 1], { dtype: "int64" });
    expectTensor(tensor([true, false, true]).cumsum(0), [1, 1, 2], { dtype: "int64" });
  });
});

describe("where and maskedFill", () => {
  it("where broadcasts condition and branches, takes numbers", () => {
    const c = tensor([true, false, true]);
    const x = randT([2, 1], 30);
    const y = randT([2, 3], 31);
    checkOp("where", [c.float(), x, y], (cf, xx, yy) => Tensor.where(cf.bool(), xx, yy), (cf, xx, yy) => zip([cf, xx, yy], (k, p, q) => (k ? p : q)));
    expectTensor(Tensor.where(c, 1, 0), [1, 0, 1], { dtype: "float32" });
    expectTensor(Tensor.where(c, i64([5, 5, 5]), 0), [5, 0, 5], { dtype: "int64" });
    expectTensor(tensor([1, 2, 3]).where(c, -1), [1, -1, 3]);
    expectThrows(() => Tensor.where(tensor([1, 0]), 1, 0), DTypeError, "where", "bool");
    expectTensor(Tensor.where(c, tensor([true, true, false]), tensor([false, true, true])), [1, 1, 0], { dtype: "bool" });
  });

  it("maskedFill with broadcast mask, -inf, and integer tensors", () => {
    const x = tensor([[1, 2, 3], [4, 5, 6]]);
    expectTensor(x.maskedFill(tensor([false, true, false]), -Infinity), [[1, -Infinity, 3], [4, -Infinity, 6]]);
    expectTensor(i64([1, 2]).maskedFill(tensor([true, false]), 9), [9, 2], { dtype: "int64" });
    expectTensor(x.maskedFill(x.gt(4), 0), [[1, 2, 3], [4, 0, 0]]);
  });
});

describe("matmul", () => {
  it("2-D, 1-D on either side, 1-D @ 1-D", () => {
    const A = randT([3, 4], 40);
    const B = randT([4, 2], 41);
    const v = randT([4], 42);
    const w = randT([3], 43);
    const col = (x: Nd) => ({ shape: [x.shape[0]!, 1], data: x.data });
    const row = (x: Nd) => ({ shape: [1, x.shape[0]!], data: x.data });
    checkOp("2-D", [A, B], (x, y) => x.matmul(y), matmulNd);
    checkOp("2-D @ 1-D", [A, v], (x, y) => x.matmul(y), (x, y) => ({ shape: [3], data: matmulNd(x, col(y)).data }));
    checkOp("1-D @ 2-D", [w, A], (x, y) => x.matmul(y), (x, y) => ({ shape: [4], data: matmulNd(row(x), y).data }));
    checkOp("1-D @ 1-D", [v, v], (x, y) => x.matmul(y), (x, y) => ({ shape: [], data: matmulNd(row(x), col(y)).data }));
  });

  it("batched with broadcast batch dims", () => {
    checkOp("[2,1,2,3] @ [3,3,4]", [randT([2, 1, 2, 3], 44), randT([3, 3, 4], 45)], (x, y) => x.matmul(y), matmulNd);
    checkOp("[2,3,4] @ [4,5]", [randT([2, 3, 4], 46), randT([4, 5], 47)], (x, y) => x.matmul(y), matmulNd);
    checkOp("[3,4] @ [2,4,5]", [randT([3, 4], 48), randT([2, 4, 5], 49)], (x, y) => x.matmul(y), matmulNd);
    const v = randT([4], 50);
    checkOp("[2,3,4] @ [4]", [randT([2, 3, 4], 51), v], (x, y) => x.matmul(y), (x, y) => {
      const r = matmulNd(x, { shape: [4, 1], data: y.data });
      return { shape: [2, 3], data: r.data };
    });
    checkOp("[4] @ [2,4,5]", [v, randT([2, 4, 5], 52)], (x, y) => x.matmul(y), (x, y) => {
      const r = matmulNd({ shape: [1, 4], data: x.data }, y);
      return { shape: [2, 5], data: r.data };
    });
  });

  it("of transposed operands without their copies (P.matmulT: what gradients multiply by), 2-D and batched", () => {
    // Each operand laid out transposed: its last two axes swapped in a plain reference.
    const swapLast = (x: Nd): Nd => {
      const [r, c] = x.shape.slice(-2) as [number, number];
      const batch = x.data.length / (r * c);
      const data = new Float64Array(x.data.length);
      for (let b = 0; b < batch; b++) for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) data[b * r * c + j * r + i] = x.data[b * r * c + i * c + j]!;
      return { shape: [...x.shape.slice(0, -2), c, r], data };
    };
    for (const [ta, tb] of [[false, true], [true, false], [true, true]] as const) {
      for (const [sa, sb, seed] of [[[3, 4], [4, 5], 53], [[2, 1, 3, 4], [3, 4, 5], 55]] as const) {
        const a = randT(ta ? [...sa.slice(0, -2), sa.at(-1)!, sa.at(-2)!] : sa, seed);
        const b = randT(tb ? [...sb.slice(0, -2), sb.at(-1)!, sb.at(-2)!] : sb, seed + 1);
        checkOp(`${ta ? "a^T" : "a"} @ ${tb ? "b^T" : "b"} ${sa.length}-D`, [a, b], (x, y) => P.matmulT(x, y, ta, tb), (x, y) => matmulNd(ta ? swapLast(x) : x, tb ? swapLast(y) : y));
      }
    }
    expectThrows(() => P.matmulT(zeros([3, 2]), zeros([3, 2]), false, false), ShapeError, "matmul", "[3, 2]");
    expectThrows(() => P.matmulT(zeros([3, 2]), zeros([4, 2]), true, true), ShapeError, "matmul", "[3, 2]^T", "[4, 2]^T", "3", "2");
  });

  it("integers and promotion", () => {
    expectTensor(i64([[1, 2], [3, 4]]).matmul(i64([[5], [6]])), [[17], [39]], { dtype: "int64" });
    expectTensor(i64([[1, 2]]).matmul(tensor([[0.5], [0.25]])), [[1]], { dtype: "float32" });
  });

  it("errors name the op and the shapes", () => {
    expectThrows(() => zeros([2, 3]).matmul(zeros([4, 2])), ShapeError, "matmul", "[2, 3]", "[4, 2]", "3", "4");
    expectThrows(() => zeros([2, 2, 3]).matmul(zeros([3, 3, 2])), ShapeError, "matmul", "[2]", "[3]");
    expectThrows(() => tensor(1).matmul(zeros([2])), ShapeError, "matmul");
  });
});

describe("reductions", () => {
  const x = randT([2, 3, 4], 60, { lo: -2, hi: 2 });
  const cases: [string, number | number[] | undefined, boolean][] = [
    ["all", undefined, false],
    ["dim 1", 1, false],
    ["dim -1 keepdim", -1, true],
    ["dims [0, 2]", [0, 2], false],
    ["dims [-3, 1] keepdim", [-3, 1], true],
  ];
  for (const [label, dim, keepdim] of cases) {
    it(`sum / mean / max / min over ${label}`, () => {
      checkOp("sum", [x], (t) => t.sum(dim, keepdim), (t) => reduce(t, dim, keepdim, sum));
      checkOp("mean", [x], (t) => t.mean(dim, keepdim), (t) => reduce(t, dim, keepdim, (v) => sum(v) / v.length));
      checkOp("max", [x], (t) => t.max(dim, keepdim), (t) => reduce(t, dim, keepdim, (v) => Math.max(...v)));
      checkOp("amax", [x], (t) => t.amax(dim, keepdim), (t) => reduce(t, dim, keepdim, (v) => Math.max(...v)));
      checkOp("min", [x], (t) => t.min(dim, keepdim), (t) => reduce(t, dim, keepdim, (v) => Math.min(...v)));
      checkOp("amin", [x], (t) => t.amin(dim, keepdim), (t) => reduce(t, dim, keepdim, (v) => Math.min(...v)));
    });
  }

  it("an empty dim list reduces every dim, as PyTorch's dim=[]; a 0-d tensor takes dims 0 and -1; a dim named twice is an error", () => {
    checkOp("sum []", [x], (t) => t.sum([]), (t) => nd(t.data.reduce((a, b) => a + b, 0)));
    checkOp("mean []", [x], (t) => t.mean([]), (t) => nd(t.data.reduce((a, b) => a + b, 0) / t.data.length));
    checkOp("amax []", [x], (t) => t.amax([]), (t) => nd(Math.max(...t.data)));
    const s = tensor(3);
    for (const dim of [0, -1]) {
      expect(s.sum(dim).shape).toEqual([]);
      expect(s.max(dim).item()).toBe(3);
      expect(s.softmax(dim).item()).toBe(1);
      expect(s.logSoftmax(dim).item()).toBe(0);
      expect(s.cumsum(dim).item()).toBe(3);
      expect(s.argmax(dim).item()).toBe(0);
      expect(s.logsumexp(dim).item()).toBeCloseTo(3, 6);
    }
    expectThrows(() => s.sum(1), ShapeError, "dim 1", "0-d tensor");
    expectThrows(() => x.sum([0, -3]), ShapeError, "more than once");
  });

  it("var and std with correction, norm, logsumexp", () => {
    const variance = (c: number) => (v: number[]) => {
      const m = sum(v) / v.length;
      return sum(v.map((q) => (q - m) ** 2)) / (v.length - c);
    };
    checkOp("var", [x], (t) => t.var(-1), (t) => reduce(t, -1, false, variance(1)));
    checkOp("var correction 0 keepdim", [x], (t) => t.var([0, 1], { correction: 0, keepdim: true }), (t) => reduce(t, [0, 1], true, variance(0)));
    checkOp("var all", [x], (t) => t.var(), (t) => reduce(t, undefined, false, variance(1)));
    checkOp("std", [x], (t) => t.std(1), (t) => reduce(t, 1, false, (v) => Math.sqrt(variance(1)(v))));
    checkOp("norm 2", [x], (t) => t.norm(), (t) => reduce(t, undefined, false, (v) => Math.sqrt(sum(v.map((q) => q * q)))));
    checkOp("norm 1 dim", [x], (t) => t.norm(1, -1), (t) => reduce(t, -1, false, (v) => sum(v.map(Math.abs))));
    checkOp("norm inf", [x], (t) => t.norm(Infinity, 0, true), (t) => reduce(t, 0, true, (v) => Math.max(...v.map(Math.abs))));
    checkOp("norm 3", [x], (t) => t.norm(3, 2), (t) => reduce(t, 2, false, (v) => sum(v.map((q) => Math.abs(q) ** 3)) ** (1 / 3)));
    const lse = (v: number[]) => {
      const m = Math.max(...v);
      return m + Math.log(sum(v.map((q) => Math.exp(q - m))));
    };
    checkOp("logsumexp", [x], (t) => t.logsumexp(-1), (t) => reduce(t, -1, false, lse));
    checkOp("logsumexp dims keepdim", [x], (t) => t.logsumexp([0, 2], true), (t) => reduce(t, [0, 2], true, lse));
    expectTensor(tensor([1000, 1000]).logsumexp(0), 1000 + Math.LN2, { atol: 1e-3 });
    expectTensor(i64([1, 2]).logsumexp(0), 2 + Math.log1p(Math.exp(-1)), { dtype: "float32" });
  });

  it("softmax and logSoftmax along any dim, stable for large inputs", () => {
    for (const dim of [0, 1, -1]) {
      checkOp(`softmax ${dim}`, [x], (t) => t.softmax(dim), (t) => alongAxis(t, dim, softmaxVec), { atol: 1e-6 });
      checkOp(`logSoftmax ${dim}`, [x], (t) => t.logSoftmax(dim), (t) => alongAxis(t, dim, logSoftmaxVec), { atol: 2e-6 });
    }
    expectTensor(tensor([1000, 1001]).softmax(0), softmaxVec([1000, 1001]));
    expectTensor(tensor([1000, 1001]).logSoftmax(0), logSoftmaxVec([1000, 1001]));
    // torch.tensor([0, 0]).softmax(0): '"softmax_lastdim_kernel_impl" not implemented for 'Long''; log_softmax alike.
    for (const t of [i64([0, 0]), i64(0), tensor([true])]) {
      expectThrows(() => t.softmax(0), DTypeError, "softmax", t.dtype, ".float()");
      expectThrows(() => t.logSoftmax(0), DTypeError, "log_softmax", t.dtype, ".float()");
    }
    expectTensor(i64([0, 0]).float().softmax(0), [0.5, 0.5], { dtype: "float32" });
  });

  it("argmax / argmin along dims, keepdim, flattened", () => {
    const d = distinctT([3, 4], 61);
    const argOf = (pick: (v: number[]) => number) => (v: number[]) => v.indexOf(pick(v));
    checkOp("argmax 1", [d], (t) => t.argmax(1), (t) => reduce(t, 1, false, argOf((v) => Math.max(...v))), { dtype: "int64" });
    checkOp("argmax -2 keepdim", [d], (t) => t.argmax(-2, true), (t) => reduce(t, 0, true, argOf((v) => Math.max(...v))), { dtype: "int64" });
    checkOp("argmin 0", [d], (t) => t.argmin(0), (t) => reduce(t, 0, false, argOf((v) => Math.min(...v))), { dtype: "int64" });
    checkOp("argmax flat", [d], (t) => t.argmax(), (t) => reduce(t, undefined, false, argOf((v) => Math.max(...v))), { dtype: "int64" });
    checkOp("argmin flat", [d], (t) => t.argmin(), (t) => reduce(t, undefined, false, argOf((v) => Math.min(...v))), { dtype: "int64" });
    expectTensor(tensor([1, 3, 3]).argmax(), 1); // first of ties
  });

  it("topk: values and indices, largest and smallest, any dim", () => {
    const d = distinctT([3, 5], 62);
    const topk = (k: number, largest: boolean) => (v: number[]) =>
      v
        .map((q, i) => [q, i] as const)
        .sort((p, q) => (largest ? q[0] - p[0] : p[0] - q[0]))
        .slice(0, k);
    checkOp("topk 2", [d], (t) => { const r = t.topk(2); return [r.values, r.indices]; }, (t) => [
      alongAxis(t, -1, (v) => topk(2, true)(v).map((p) => p[0])),
      alongAxis(t, -1, (v) => topk(2, true)(v).map((p) => p[1])),
    ]);
    checkOp("topk smallest dim 0", [d], (t) => { const r = t.topk(2, 0, false); return [r.values, r.indices]; }, (t) => [
      alongAxis(t, 0, (v) => topk(2, false)(v).map((p) => p[0])),
      alongAxis(t, 0, (v) => topk(2, false)(v).map((p) => p[1])),
    ]);
    expect(d.topk(2).indices.dtype).toBe("int64");
    expectThrows(() => d.topk(6), ShapeError, "topk", "k=6");
  });

  it("cumsum forward and reverse along dims", () => {
    const cum = (v: number[]) => v.map((_, i) => sum(v.slice(0, i + 1)));
    const rcum = (v: number[]) => v.map((_, i) => sum(v.slice(i)));
    checkOp("cumsum 1", [x], (t) => t.cumsum(1), (t) => alongAxis(t, 1, cum));
    checkOp("cumsum -1 reverse", [x], (t) => t.cumsum(-1, true), (t) => alongAxis(t, -1, rcum));
  });

  it("dims out of range are ShapeErrors naming the op", () => {
    expectThrows(() => x.sum(3), ShapeError, "sum", "dim 3", "rank 3");
    expectThrows(() => x.mean(-4), ShapeError, "mean", "dim -4");
    expectThrows(() => x.softmax(5), ShapeError, "softmax");
    expectThrows(() => x.argmax(3), ShapeError, "argmax");
    expectThrows(() => x.cumsum(-4), ShapeError, "cumsum");
  });
});

describe("indexing", () => {
  const x = distinctT([3, 4, 5], 70);
  const pick = (t: Nd, shape: number[], f: (idx: number[]) => number[]) => build(shape, (idx) => at(t, f(idx)));

  it("integers drop dims, negative integers count from the end", () => {
    checkOp("x[1]", [x], (t) => t.index(1), (t) => pick(t, [4, 5], ([j, k]) => [1, j!, k!]));
    checkOp("x[-1, :, 2]", [x], (t) => t.index(-1, null, 2), (t) => pick(t, [4], ([j]) => [2, j!, 2]));
    checkOp("x[0, -2, -5]", [x], (t) => t.index(0, -2, -5), (t) => pick(t, [], () => [0, 2, 0]));
  });

  it("slices with steps and negative bounds, clamped like Python", () => {
    checkOp("x[::2, 1:-1, ::3]", [x], (t) => t.index(slice(null, null, 2), slice(1, -1), slice(null, null, 3)), (t) =>
      pick(t, [2, 2, 2], ([i, j, k]) => [2 * i!, 1 + j!, 3 * k!]),
    );
    checkOp("x[-2:, :100]", [x], (t) => t.index(slice(-2), slice(null, 100)), (t) => pick(t, [2, 4, 5], ([i, j, k]) => [1 + i!, j!, k!]));
    checkOp("x[2:1] is empty", [x], (t) => t.index(slice(2, 1)), () => build([0, 4, 5], () => 0));
    checkOp("x[1:5:3, 3]", [x], (t) => t.index(slice(1, 5, 3), 3), (t) => pick(t, [1, 5], ([i, k]) => [1 + 3 * i!, 3, k!]));
  });

  it("'...' expands to the missing dims", () => {
    checkOp("x[..., 1]", [x], (t) => t.index("...", 1), (t) => pick(t, [3, 4], ([i, j]) => [i!, j!, 1]));
    checkOp("x[0, ...]", [x], (t) => t.index(0, "..."), (t) => pick(t, [4, 5], ([j, k]) => [0, j!, k!]));
    checkOp("x[1, ..., ::2]", [x], (t) => t.index(1, "...", slice(null, null, 2)), (t) => pick(t, [4, 3], ([j, k]) => [1, j!, 2 * k!]));
    checkOp("x[...]", [x], (t) => t.index("..."), (t) => t);
  });

  it("an integer tensor index picks along its dim, negatives and 2-D indices included", () => {
    checkOp("x[idx]", [x], (t) => t.index(i64([2, 0, -1])), (t) => pick(t, [3, 4, 5], ([i, j, k]) => [[2, 0, 2][i!]!, j!, k!]));
    checkOp("x[:, idx2d]", [x], (t) => t.index(null, i64([[0, 3], [1, 1]])), (t) => pick(t, [3, 2, 2, 5], ([i, a, b, k]) => [i!, [[0, 3], [1, 1]][a!]![b!]!, k!]));
    checkOp("x[..., int32 idx]", [x], (t) => t.index("...", tensor(Int32Array.of(4, 0))), (t) => pick(t, [3, 4, 2], ([i, j, c]) => [i!, j!, [4, 0][c!]!]));
  });

  it("an integer tensor index combined with integers and slices", () => {
    checkOp("x[1, idx]", [x], (t) => t.index(1, i64([3, 0])), (t) => pick(t, [2, 5], ([a, k]) => [1, [3, 0][a!]!, k!]));
    checkOp("x[idx, :, 2]", [x], (t) => t.index(i64([2, 0]), null, 2), (t) => pick(t, [2, 4], ([a, j]) => [[2, 0][a!]!, j!, 2]));
    checkOp("x[1:, idx2d, -1]", [x], (t) => t.index(slice(1), i64([[1], [2]]), -1), (t) => pick(t, [2, 2, 1], ([i, a, b]) => [1 + i!, [[1], [2]][a!]![b!]!, 4]));
    checkOp("x[0, 0-d idx]", [x], (t) => t.index(0, i64(2)), (t) => pick(t, [5], ([k]) => [0, 2, k!]));
  });

  it("a list of integers is an integer index, as in PyTorch (x[0, [3, 0, -1]])", () => {
    checkOp("x[0, [3, 0, -1]]", [x], (t) => t.index(0, [3, 0, -1]), (t) => pick(t, [3, 5], ([a, k]) => [0, [3, 0, 3][a!]!, k!]));
    checkOp("x[..., []]", [x], (t) => t.index("...", []), () => build([3, 4, 0], () => 0));
    expectThrows(() => x.index(0, [4]), ShapeError, "index 4", "size 4");
  });

  it("indexSelect, gather and scatterAdd", () => {
    checkOp("indexSelect 1", [x], (t) => t.indexSelect(1, i64([3, 3, 0])), (t) => pick(t, [3, 3, 5], ([i, a, k]) => [i!, [3, 3, 0][a!]!, k!]));
    checkOp("indexSelect -1 2-D", [x], (t) => t.indexSelect(-1, i64([[4], [0]])), (t) => pick(t, [3, 4, 2, 1], ([i, j, a]) => [i!, j!, [4, 0][a!]!]));
    // As torch.index_select: a 0-d index keeps the dim; a negative index is out of range.
    checkOp("indexSelect 0-d", [x], (t) => t.indexSelect(1, new Tensor("int64", BigInt64Array.of(2n), [])), (t) => pick(t, [3, 1, 5], ([i, , k]) => [i!, 2, k!]));
    expectThrows(() => x.indexSelect(1, i64([-1])), ShapeError, "index -1 is negative");
    const idx = [[2, 0, 1, 1], [0, 0, 2, 1]];
    const y = distinctT([3, 4], 71);
    checkOp("gather 0", [y, i64(idx)], (t, ix) => t.gather(0, ix), (t) => build([2, 4], ([i, j]) => at(t, [idx[i!]![j!]!, j!])));
    checkOp("gather 1", [y, i64([[3, 0], [1, 1], [2, 2]])], (t, ix) => t.gather(1, ix), (t, ix) => build([3, 2], ([i, j]) => at(t, [i!, at(ix, [i!, j!])])));
    const src = randT([2, 4], 72);
    checkOp("scatterAdd 0 with repeats", [y, i64(idx), src], (t, ix, s) => t.scatterAdd(0, ix, s), (t, ix, s) => {
      const out = { shape: [...t.shape], data: t.data.slice() };
      for (let i = 0; i < 2; i++) for (let j = 0; j < 4; j++) out.data[at(ix, [i, j]) * 4 + j] += at(s, [i, j]);
      return out;
    });
    checkOp("indexAdd rows with repeats", [y, i64([[2], [0], [2]]), randT([3, 4], 73)], (t, ix, u) => t.indexAdd(ix, u), (t, ix, u) => {
      const out = { shape: [...t.shape], data: t.data.slice() };
      for (let r = 0; r < 3; r++) for (let j = 0; j < 4; j++) out.data[at(ix, [r, 0]) * 4 + j] += at(u, [r, j]);
      return out;
    });
    checkOp("scatterAdd 1", [zeros([2, 3]), i64([[0, 0], [2, 1]]), tensor([[1, 2], [3, 4]])], (t, ix, s) => t.scatterAdd(1, ix, s), () => nd([[3, 0, 0], [0, 4, 3]]));
  });

  it("out-of-range indices and bad index specs are ShapeErrors", () => {
    expectThrows(() => x.index(3), ShapeError, "index 3", "size 3");
    expectThrows(() => x.index(0, -5), ShapeError, "index -5", "size 4");
    expectThrows(() => x.index(0, 0, 0, 0), ShapeError, "4 indices", "rank 3");
    expectThrows(() => x.index("...", 0, "..."), ShapeError, "'...'");
    expectThrows(() => x.index(slice(0, 2, 0)), ShapeError, "step");
    expectThrows(() => x.index(slice(0, 2, -1)), ShapeError, "step");
    expectThrows(() => x.index(i64([3])), ShapeError, "index 3", "size 3");
    expectThrows(() => x.indexSelect(2, i64([-6])), ShapeError, "index_select", "-6");
    expectThrows(() => x.gather(1, i64([[[4]]])), ShapeError, "gather", "index 4");
    expectThrows(() => zeros([2, 2]).scatterAdd(1, i64([[2]]), zeros([1, 1])), ShapeError, "scatter_add", "index 2");
    expectThrows(() => x.index(tensor([0.5])), DTypeError, "int64");
    // JavaScript lets anything through where the types do not look: each is named, none is taken as a whole dim.
    expectThrows(() => x.index(0, 1.5), ShapeError, "index entry 1", "1.5 is not a whole number");
    expectThrows(() => x.index(0, [1, 1.5]), ShapeError, "index entry 1", "list of indices must hold whole numbers");
    expectThrows(() => x.index(0, [[1], [2]] as unknown as number[]), ShapeError, "index entry 1", "nested lists");
    expectThrows(() => x.index(undefined as unknown as null), ShapeError, "index entry 0", "undefined is not an index");
    expectThrows(() => x.index(0, ":" as unknown as null), ShapeError, "index entry 1", '":" is not an index');
    expectThrows(() => x.index({ from: 1 } as unknown as null), ShapeError, "index entry 0", "slice(start, stop, step)", "{from}");
    expectThrows(() => x.index({ start: 0.5 } as unknown as null), ShapeError, "index entry 0", "slice(start, stop, step)");
    expectThrows(() => x.indexSelect(0, tensor([true])), DTypeError, "index_select");
    expectThrows(() => x.gather(0, zeros([1, 1, 1])), DTypeError, "gather");
  });
});

describe("slices that are one run of memory", () => {
  it("share the tensor's data (no copy); other slices are copies; both give the same values", () => {
    const x = arange(24).reshape(2, 3, 4);
    const shares = (t: Tensor) => t.data.buffer === x.data.buffer;
    for (const [view, expected] of [
      [x.index(1), [[12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]]],
      [x.index(0, 2), [8, 9, 10, 11]],
      [x.index(1).narrow(0, 1, 2), [[16, 17, 18, 19], [20, 21, 22, 23]]],
      [x.index(1, slice(0, 2)), [[12, 13, 14, 15], [16, 17, 18, 19]]],
    ] as [Tensor, unknown][]) {
      expect(shares(view)).toBe(true);
      expectTensor(view, expected);
    }
    for (const copy of [x.index(null, 0), x.index("...", slice(1, 3)), x.index(0, slice(0, 3, 2)), x.narrow(1, 1, 2)]) expect(shares(copy)).toBe(false);
    expectTensor(x.index(null, 0), [[0, 1, 2, 3], [12, 13, 14, 15]]);
    // Gradients flow through a view like through a copy.
    const w = randT([3, 2], 120).requiresGrad_();
    w.index(1).mul(tensor([2, 3])).sum().backward();
    expectTensor(w.grad!, [[0, 0], [2, 3], [0, 0]]);
  });
});

describe("edge values as PyTorch gives them (a differential trial against PyTorch 2.13)", () => {
  const nanRows = () => tensor([[1, NaN, 3, 0], [-Infinity, -Infinity, Infinity, 2]]);
  const values = (t: Tensor) => Array.from(t.data as Float32Array);

  it("max, min and their positions take a NaN as PyTorch does: NaN, and the first NaN's index", () => {
    expect(values(tensor([1, NaN, 3, 0]).max())).toEqual([NaN]);
    expect(values(tensor([1, NaN, 3, 0]).min())).toEqual([NaN]);
    expect(values(nanRows().max(1))).toEqual([NaN, Infinity]);
    expect(values(nanRows().amin(1, true))).toEqual([NaN, -Infinity]);
    for (const t of [tensor([1, NaN, 3, NaN]), tensor([[1, NaN, 3, NaN]])]) {
      expect(t.argmax(-1).toArray(), `[${t.shape}]`).toEqual([1]);
      expect(t.argmin(-1).toArray(), `[${t.shape}]`).toEqual([1]);
    }
    expect(nanRows().argmax(1).toArray()).toEqual([1, 2]);
    expect(values(tensor([1, NaN, 2]).norm(Infinity))).toEqual([NaN]);
    // Without NaN nothing changes, ties give the first position.
    expect(tensor([[3, 1, 3]]).argmax(1).toArray()).toEqual([0]);
    expect(values(tensor([[3, 1, 3]]).max(1))).toEqual([3]);
  });

  it("topk ranks NaN above every number, as PyTorch does, along any dim", () => {
    const top = (t: Tensor, k: number, dim = -1, largest = true) => {
      const r = t.topk(k, dim, largest);
      return [values(r.values), r.indices.toArray()];
    };
    expect(top(tensor([NaN, 1, NaN, 2, 3]), 3)).toEqual([[NaN, NaN, 3], [0, 2, 4]]);
    expect(top(tensor([1, NaN, 3, 2]), 4)).toEqual([[NaN, 3, 2, 1], [1, 2, 3, 0]]);
    expect(top(tensor([1, NaN, 3, 2]), 2, -1, false)).toEqual([[1, 2], [0, 3]]);
    expect(top(tensor([1, NaN, 3, 2]), 4, -1, false)).toEqual([[1, 2, 3, NaN], [0, 3, 2, 1]]);
    expect(top(tensor([[1, NaN], [5, 2], [NaN, 0]]), 2, 0)).toEqual([[NaN, NaN, 5, 2], [2, 0, 1, 1]]);
    // Without NaN, ONNX Runtime's answer, the same.
    expect(top(tensor([[1, 4], [5, 2], [3, 0]]), 2, 0)).toEqual([[5, 4, 3, 2], [1, 0, 2, 1]]);
  });

  it("float-valued math takes integers as float32; floor, ceil and round give integers back; no integer is NaN; sort and argsort", () => {
    const ints = tensor([1, 4, 9], "int64");
    expectTensor(ints.sqrt(), [1, 2, 3], { dtype: "float32" });
    expectTensor(ints.exp().log(), [1, 4, 9], { dtype: "float32", atol: 1e-5 });
    expect(ints.floor()).toBe(ints);
    expectTensor(ints.isnan(), [false, false, false].map(Number), { dtype: "bool" });
    const { values: v, indices: i } = tensor([3, NaN, 1, 2]).sort();
    expect([values(v), i.toArray()]).toEqual([[1, 2, 3, NaN], [2, 3, 0, 1]]);
    expect(tensor([[3, 1, 2]]).argsort(-1, true).toArray()).toEqual([0, 2, 1]);
  });

  it("norm with p = 0 counts the nonzeros, p = -Infinity is the smallest |x|", () => {
    expect(values(tensor([[0, 1, -2], [0, 0, 0]]).norm(0, 1))).toEqual([2, 0]);
    expect(values(tensor([3, -1, 0.5, 2]).norm(-Infinity))).toEqual([0.5]);
  });

  it("logsumexp of a row of -Infinity is -Infinity, of a row with Infinity Infinity; the mean of nothing is NaN", () => {
    expect(values(tensor([[-Infinity, -Infinity], [Infinity, 1], [0, Math.log(3)]]).logsumexp(1)).map((v) => Math.round(v * 1e5) / 1e5)).toEqual([-Infinity, Infinity, Math.round(Math.log(4) * 1e5) / 1e5]);
    expect(values(zeros([0, 3]).logsumexp(0))).toEqual([-Infinity, -Infinity, -Infinity]);
    expect(values(zeros([0, 3]).mean())).toEqual([NaN]);
    expect(values(zeros([0, 3]).mean(0))).toEqual([NaN, NaN, NaN]);
    expect(zeros([2, 0]).mean(0).shape).toEqual([0]);
  });

  it("an empty dim splits into one empty piece; scatterAdd adds the part of a larger src its index covers, as PyTorch does", () => {
    expect(zeros([0]).split(2).map((t) => t.shape)).toEqual([[0]]);
    expect(zeros([3, 0]).split(2, 1).map((t) => t.shape)).toEqual([[3, 0]]);
    expect(zeros([0, 2]).chunk(3).map((t) => t.shape)).toEqual([[0, 2]]);
    expectTensor(zeros([2, 3]).scatterAdd(0, i64([[1, 0]]), tensor([[1, 2, 3], [4, 5, 6]])), [[0, 2, 0], [1, 0, 0]]);
  });

  it("maskedFill keeps the tensor's dtype, as in PyTorch", () => {
    const mask = tensor([1, 0]).bool();
    expectTensor(tensor([1, 5], "int64").maskedFill(mask, 2.7), [2, 5], { dtype: "int64" });
    expectTensor(tensor([1, 1]).bool().maskedFill(mask, 0), [0, 1], { dtype: "bool" });
    expectTensor(tensor([1.5, 5]).maskedFill(mask, -Infinity), [-Infinity, 5], { dtype: "float32" });
  });

  it("int32 sums and running sums are int64, so they do not wrap", () => {
    const big = tensor(Int32Array.of(2147483647, 2147483647));
    expect([big.sum().dtype, big.sum().toArray()]).toEqual(["int64", [4294967294]]);
    expect([big.cumsum(0).dtype, big.cumsum(0).toArray()]).toEqual(["int64", [2147483647, 4294967294]]);
  });

  it("bad arguments are errors naming them, where they slipped through or failed inside ONNX Runtime", () => {
    expectThrows(() => zeros([1, 2, 3]).flatten(2, 1), ShapeError, "flatten", "start dim 2 comes after end dim 1");
    expectThrows(() => zeros([2]).expand(-1, 2), ShapeError, "expand", "dim 0", "new one");
    expectThrows(() => zeros([0, 3]).argmax(0), ShapeError, "argmax", "empty");
    expectThrows(() => zeros([0]).argmin(), ShapeError, "argmin", "empty");
    expectThrows(() => zeros([3, 2]).gather(0, i64([[0, 1, 0]])), ShapeError, "gather", "larger than the input", "dim 1");
    expectThrows(() => zeros([4]).split([-1, 5]), ShapeError, "split", "0 or more");
    expectThrows(() => zeros([2, 3]).scatterAdd(0, i64([[0, 1, 0, 1]]), zeros([1, 3])), ShapeError, "scatter_add", "larger than src");
    expect(tensor([1, 0]).logicalAnd(1).toArray()).toEqual([1, 0]);
    expect(tensor([1, 0]).logicalOr(0).toArray()).toEqual([1, 0]);
  });
});

describe("topk over empty tensors", () => {
  it("gives empty values and indices without running a kernel (ONNX Runtime's TopK died of SIGFPE on a 0-sized dim)", () => {
    for (const [shape, k, dim, want] of [
      [[0, 5], 2, -1, [0, 2]],
      [[2, 0, 5], 1, -1, [2, 0, 1]],
      [[5, 0], 2, 0, [2, 0]],
      [[0], 0, 0, [0]],
      [[3, 4], 0, -1, [3, 0]],
    ] as [number[], number, number, number[]][]) {
      for (const dtype of ["float32", "int64"] as const) {
        const { values, indices } = zeros(shape, dtype).topk(k, dim, k % 2 === 0);
        expect([values.shape, values.dtype, indices.shape, indices.dtype], `${shape} k=${k}`).toEqual([want, dtype, want, "int64"]);
      }
    }
    expectThrows(() => zeros([0, 5]).topk(6), ShapeError, "topk", "k=6");
  });
});

describe("put (index assignment)", () => {
  it("returns a new tensor and leaves the original untouched", () => {
    const x = tensor([[1, 2, 3], [4, 5, 6]]);
    const y = x.put([0, slice(1)], tensor([9, 8]));
    expectTensor(y, [[1, 9, 8], [4, 5, 6]]);
    expectTensor(x, [[1, 2, 3], [4, 5, 6]]);
    expect(y).not.toBe(x);
  });

  it("broadcasts values, takes numbers, steps, negative indices and '...'", () => {
    const x = zeros([3, 4]);
    expectTensor(x.put([null, -1], 7), [[0, 0, 0, 7], [0, 0, 0, 7], [0, 0, 0, 7]]);
    expectTensor(x.put([slice(null, null, 2)], tensor([1, 2, 3, 4])), [[1, 2, 3, 4], [0, 0, 0, 0], [1, 2, 3, 4]]);
    expectTensor(x.put(["...", slice(1, 3)], tensor([[1], [2], [3]])), [[0, 1, 1, 0], [0, 2, 2, 0], [0, 3, 3, 0]]);
    expectTensor(x.put([], 1), [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]);
    expectTensor(i64([1, 2, 3]).put([1], 9), [1, 9, 3], { dtype: "int64" });
    expectTensor(i64([1, 2, 3]).put([slice(0, 2)], tensor([1.9, -1.9])), [1, -1, 3], { dtype: "int64" });
  });

  it("refuses values that do not fit and tensor indices", () => {
    expectThrows(() => zeros([3, 4]).put([0], tensor([1, 2, 3])), ShapeError, "put", "[3]", "[4]");
    expectThrows(() => zeros([3, 4]).put([i64([0])], 1), ShapeError, "put");
    // A list is such an index too: refused, not taken as the whole row (which it was).
    expectThrows(() => zeros([2, 5]).put([0, [1, 3]], 1), ShapeError, "put", "integer-tensor indices");
  });
});

describe("joining and splitting", () => {
  const a = randT([2, 3], 80);
  const b = randT([2, 1], 81);

  it("cat along dims, negative dims", () => {
    checkOp("cat 1", [a, b], (x, y) => cat([x, y], 1), (x, y) => build([2, 4], ([i, j]) => (j! < 3 ? at(x, [i!, j!]) : at(y, [i!, 0]))));
    checkOp("cat -2", [a, a], (x, y) => cat([x, y], -2), (x) => build([4, 3], ([i, j]) => at(x, [i! % 2, j!])));
    expect(cat([a])).toBe(a);
    expectTensor(cat([i64([1]), i64([2, 3])]), [1, 2, 3], { dtype: "int64" });
  });

  it("cat errors name shapes and dtypes", () => {
    expectThrows(() => cat([a, b], 0), ShapeError, "cat", "[2, 3]", "[2, 1]");
    expectThrows(() => cat([a, zeros([2])], 0), ShapeError, "cat");
    expectThrows(() => cat([], 0), ShapeError, "cat");
    expectThrows(() => cat([a, a], 2), ShapeError, "cat", "dim 2");
    // torch.cat([torch.zeros(2, 3)], 5): "Dimension out of range"; torch.cat([torch.zeros(0), torch.tensor(1.)]):
    // "zero-dimensional tensor (at position 1) cannot be concatenated".
    expectThrows(() => cat([a], 5), ShapeError, "cat", "dim 5");
    expectThrows(() => cat([zeros([0]), tensor(1)]), ShapeError, "cat", "position 1", "0-d");
  });

  it("cat skips legacy empty tensors (shape [0]) beside tensors of other ranks, and promotes dtypes, as torch.cat", () => {
    const e = zeros([0]);
    const x = arange(6).reshape(2, 3);
    // torch.cat([torch.zeros(0), torch.arange(6.).reshape(2, 3)]) and with dim 1, -1: [[0, 1, 2], [3, 4, 5]], float32.
    for (const got of [cat([e, x.float()]), cat([x.float(), e], 1), cat([e, x.float(), e], -1)]) expectTensor(got, [[0, 1, 2], [3, 4, 5]], { dtype: "float32" });
    // torch.cat([torch.zeros(0), torch.arange(6).reshape(2, 3)]) is float32 (the skipped tensor's dtype counts);
    // torch.cat([torch.zeros(0, dtype=torch.bool), torch.arange(6).reshape(2, 3)]) is int64;
    // torch.cat([torch.arange(6).reshape(2, 3), torch.arange(6.).reshape(2, 3)]) is float32.
    expectTensor(cat([e, x]), [[0, 1, 2], [3, 4, 5]], { dtype: "float32" });
    expectTensor(cat([e.bool(), x]), [[0, 1, 2], [3, 4, 5]], { dtype: "int64" });
    expectTensor(cat([x, x.float()]), [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]], { dtype: "float32" });
    // Only empty tensors of shape [0]: torch.cat([torch.zeros(0), torch.zeros(0)], 1), and torch.cat([torch.zeros(0)], 5), are
    // shape (0,) (no dim is checked); torch.cat([torch.zeros(0), torch.zeros(0, 0)]) is (0, 0); torch.cat([torch.zeros(2, 0), x])
    // refuses ("Expected size 0 but got size 3").
    expect(cat([e, e], 1).shape).toEqual([0]);
    expect(cat([e], 5).shape).toEqual([0]);
    expect(cat([e, zeros([0, 0])]).shape).toEqual([0, 0]);
    expectThrows(() => cat([zeros([2, 0]), x.float()]), ShapeError, "cat");
    // Many rows (joined by the kernel, not in JS), the empty tensor skipped there too.
    const tall = arange(3000).float().reshape(1500, 2);
    expect(cat([tall, e, tall], 1).tolist()).toEqual(tall.repeat(1, 2).tolist());
    // Gradients: x = torch.zeros(0, requires_grad=True); y = torch.ones(2, 3, requires_grad=True);
    // torch.cat([x, y], 1).sum().backward(): x.grad is tensor([]), y.grad all ones; torch.cat([x, x]) requires grad.
    const [p, q] = [zeros([0]).requiresGrad_(), ones([2, 3]).requiresGrad_()];
    cat([p, q], 1).sum().backward();
    expect([p.grad!.shape, q.grad!.toArray()]).toEqual([[0], [1, 1, 1, 1, 1, 1]]);
    const r = zeros([0]).requiresGrad_();
    expect(cat([r, r]).requiresGrad).toBe(true);
  });

  it("stack adds a dim", () => {
    checkOp("stack 0", [a, a.neg()], (x, y) => stack([x, y]), (x) => build([2, 2, 3], ([s, i, j]) => (s ? -1 : 1) * at(x, [i!, j!])));
    checkOp("stack -1", [a, a.neg()], (x, y) => stack([x, y], -1), (x) => build([2, 3, 2], ([i, j, s]) => (s ? -1 : 1) * at(x, [i!, j!])));
    expectThrows(() => stack([a, b]), ShapeError, "cat");
  });

  it("split by size and by sizes, chunk, narrow", () => {
    const x = arange(10).reshape(5, 2);
    expect(x.split(2).map((t) => t.tolist())).toEqual([[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9]]]);
    expect(x.split([1, 4]).map((t) => t.shape)).toEqual([[1, 2], [4, 2]]);
    expect(x.split(1, 1).map((t) => t.toArray())).toEqual([[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]);
    expect(x.chunk(3).map((t) => t.shape[0])).toEqual([2, 2, 1]);
    expect(x.chunk(2, -1).map((t) => t.toArray())).toEqual([[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]);
    expect(x.chunk(10).length).toBe(5);
    expect(x.split([5])[0]).toBe(x);
    expectTensor(x.narrow(0, 1, 2), [[2, 3], [4, 5]], { dtype: "int64" });
    expectTensor(x.narrow(0, -2, 2), [[6, 7], [8, 9]]);
    expectTensor(x.narrow(1, 1, 1), [[1], [3], [5], [7], [9]]);
    expectThrows(() => x.split([2, 2]), ShapeError, "split", "4", "5");
    expectThrows(() => x.split([4]), ShapeError, "split", "4", "5");
    expectThrows(() => x.split(0), ShapeError, "split");
    expectThrows(() => x.narrow(0, 4, 2), ShapeError, "narrow", "size 5");
  });
});

describe("movement", () => {
  const x = distinctT([2, 3, 4], 90);

  it("reshape and view with -1, and errors", () => {
    checkOp("reshape", [x], (t) => t.reshape(4, -1), (t) => ({ shape: [4, 6], data: t.data }));
    checkOp("view array", [x], (t) => t.view([-1]), (t) => ({ shape: [24], data: t.data }));
    checkOp("reshape to 0-d", [tensor([5])], (t) => t.reshape([]), () => nd(5));
    expectThrows(() => x.reshape(5, -1), ShapeError, "reshape", "[2, 3, 4]", "[5, -1]");
    expectThrows(() => x.reshape(-1, -1), ShapeError, "reshape", "-1");
    // With another dim 0 the -1 could be any size: PyTorch refuses it too.
    expectThrows(() => zeros([0, 4]).reshape(2, 0, -1), ShapeError, "could be any size");
    expect(zeros([0, 4]).reshape(-1, 4).shape).toEqual([0, 4]);
    expectThrows(() => x.view(7), ShapeError, "reshape");
  });

  it("squeeze, unsqueeze, flatten", () => {
    const y = zeros([1, 3, 1, 2]);
    expect(y.squeeze().shape).toEqual([3, 2]);
    expect(y.squeeze(0).shape).toEqual([3, 1, 2]);
    expect(y.squeeze(-2).shape).toEqual([1, 3, 2]);
    expect(y.squeeze(1).shape).toEqual([1, 3, 1, 2]); // size 3: untouched, as in torch
    expect(y.squeeze([0, 2]).shape).toEqual([3, 2]);
    expect(x.unsqueeze(0).shape).toEqual([1, 2, 3, 4]);
    expect(x.unsqueeze(-1).shape).toEqual([2, 3, 4, 1]);
    expect(x.unsqueeze(3).shape).toEqual([2, 3, 4, 1]);
    expect(x.flatten().shape).toEqual([24]);
    expect(x.flatten(1).shape).toEqual([2, 12]);
    expect(x.flatten(0, 1).shape).toEqual([6, 4]);
    expect(tensor(3).flatten().shape).toEqual([1]);
    expect(x.flatten(1).toArray()).toEqual(x.toArray());
    expectThrows(() => x.unsqueeze(4), ShapeError, "unsqueeze");
    expectThrows(() => x.squeeze(3), ShapeError, "squeeze");
  });

  it("transpose and permute", () => {
    checkOp("transpose", [x], (t) => t.transpose(0, 2), (t) => transposeNd(t, [2, 1, 0]));
    checkOp("transpose negative", [x], (t) => t.transpose(-1, -2), (t) => transposeNd(t, [0, 2, 1]));
    checkOp("permute", [x], (t) => t.permute(1, 2, 0), (t) => transposeNd(t, [1, 2, 0]));
    checkOp("permute negative", [x], (t) => t.permute(-1, 0, 1), (t) => transposeNd(t, [2, 0, 1]));
    expect(x.transpose(1, 1)).toBe(x);
    expectThrows(() => x.permute(0, 1), ShapeError, "permute");
    expectThrows(() => x.permute(0, 0, 1), ShapeError, "permute");
    expectThrows(() => x.transpose(0, 3), ShapeError, "transpose");
  });

  it("expand and expandAs", () => {
    const c = tensor([[1], [2], [3]]);
    checkOp("expand", [c], (t) => t.expand(2, 3, 4), (t) => build([2, 3, 4], ([, i]) => at(t, [i!, 0])));
    checkOp("expand -1", [c], (t) => t.expand(-1, 2), (t) => build([3, 2], ([i]) => at(t, [i!, 0])));
    expect(c.expandAs(zeros([5, 3, 2])).shape).toEqual([5, 3, 2]);
    expect(c.expand(3, 1)).toBe(c);
    expectThrows(() => c.expand(2, 2), ShapeError, "expand", "[3, 1]");
  });

  it("repeatInterleave and repeat, as PyTorch's", () => {
    const m = randT([2, 3, 4], 17);
    checkOp("repeatInterleave dim 1", [m], (t) => t.repeatInterleave(3, 1), (t) => build([2, 9, 4], ([a, i, j]) => at(t, [a!, Math.floor(i! / 3), j!])));
    checkOp("repeatInterleave dim -1", [m], (t) => t.repeatInterleave(2, -1), (t) => build([2, 3, 8], ([a, i, j]) => at(t, [a!, i!, Math.floor(j! / 2)])));
    checkOp("repeat", [m], (t) => t.repeat(2, 1, 3), (t) => build([4, 3, 12], ([a, i, j]) => at(t, [a! % 2, i!, j! % 4])));
    checkOp("repeat with a new leading dim", [m], (t) => t.repeat([2, 1, 2, 1]), (t) => build([2, 2, 6, 4], ([, a, i, j]) => at(t, [a!, i! % 3, j!])));
    expect(m.repeatInterleave(1, 0)).toBe(m);
    // A grouped-query k [B, kv_heads, S, D] as one head per query head: each kv head serves H / KV query heads in a row.
    const k = randT([1, 2, 5, 3], 5);
    expect(k.repeatInterleave(2, 1).tolist()).toEqual(k.unsqueeze(2).expand(1, 2, 2, 5, 3).reshape(1, 4, 5, 3).tolist());
    expect(m.repeatInterleave(0, 1).shape).toEqual([2, 0, 4]);
    expect(m.repeat(2, 0, 1).shape).toEqual([4, 0, 4]);
    checkOp("repeatInterleave, flattened", [m], (t) => t.repeatInterleave(2), (t) => build([48], ([i]) => at(t, [Math.floor(i! / 2 / 12), Math.floor(i! / 2 / 4) % 3, Math.floor(i! / 2) % 4])));
    expectThrows(() => m.repeatInterleave(-1, 1), RangeError, "repeatInterleave", "whole number");
    expectThrows(() => m.repeatInterleave(2.5, 1), RangeError, "repeatInterleave");
    expectThrows(() => m.repeatInterleave(2, 3), ShapeError, "repeatInterleave");
    expectThrows(() => m.repeat(2, 2), ShapeError, "repeat", "a size per dim (3)");
    expectThrows(() => m.repeat(2, -1, 1), RangeError, "repeat");
  });

  it("tensor() refuses values that are not numbers, booleans or bigints, and arrays nested unevenly", () => {
    expectThrows(() => tensor({} as never), TypeError, "tensor: values must be numbers", "got an object (Object)");
    expectThrows(() => tensor([1, "2"] as never), TypeError, "got string");
    expectThrows(() => tensor([[1], [null]] as never), TypeError, "got null");
    // As many values as the first row's shape holds, but not in that shape.
    expectThrows(() => tensor([[1, [2, 3]], [4]] as never), ShapeError, "ragged", "[2, 2]");
    expectThrows(() => tensor([[1, 2], 3, 4] as never), ShapeError, "ragged");
    expectThrows(() => tensor([1, [2]] as never), ShapeError, "ragged");
    expectThrows(() => tensor(new DataView(new ArrayBuffer(8)) as never), TypeError, "DataView");
  });

  it("tensor() takes other typed arrays as their numbers", () => {
    expectTensor(tensor(Float64Array.of(0.5, 1.5, -2)), [0.5, 1.5, -2]);
    expectTensor(tensor(Int8Array.of(-1, 2), "int32"), [-1, 2], { dtype: "int32" });
    expectTensor(tensor(Uint16Array.of(1, 2, 3, 4), undefined, [2, 2]), [[1, 2], [3, 4]]);
    expect(tensor(BigUint64Array.of(7n)).dtype).toBe("int64");
    expect(tensor([]).shape).toEqual([0]);
    expect(tensor(3).shape).toEqual([]);
  });

  it("tril and triu with offsets, batched", () => {
    const m = randT([2, 3, 4], 91);
    checkOp("tril", [m], (t) => t.tril(), (t) => map(t, (v, [, i, j]) => (j! <= i! ? v : 0)));
    checkOp("tril -1", [m], (t) => t.tril(-1), (t) => map(t, (v, [, i, j]) => (j! <= i! - 1 ? v : 0)));
    checkOp("triu", [m], (t) => t.triu(), (t) => map(t, (v, [, i, j]) => (j! >= i! ? v : 0)));
    checkOp("triu 2", [m], (t) => t.triu(2), (t) => map(t, (v, [, i, j]) => (j! >= i! + 2 ? v : 0)));
    expectTensor(ones([2, 2], "bool").tril(), [[1, 0], [1, 1]], { dtype: "bool" });
    expectThrows(() => zeros([3]).tril(), ShapeError, "tril", "[3]");
  });
});

describe("broadcast errors", () => {
  it("name the op and both shapes", () => {
    const e = expectThrows(() => zeros([2, 3]).add(zeros([4])), ShapeError, "add", "[2, 3]", "[4]", "broadcast");
    expect(e.name).toBe("ShapeError");
    expectThrows(() => zeros([2, 3]).mul(zeros([3, 2])), ShapeError, "mul", "[2, 3]", "[3, 2]");
    expectThrows(() => Tensor.where(tensor([true, false, true]), zeros([2]), 0), ShapeError, "where");
  });
});

describe("normalisation primitives", () => {
  const x = randT([2, 3, 5], 100, { lo: -2, hi: 2 });
  const w = randT([5], 101, { lo: 0.5, hi: 1.5 });
  const b = randT([5], 102);
  const withAffine = (t: Nd, vec: (v: number[]) => number[], wn: Nd, bn?: Nd) =>
    map(alongAxis(t, -1, vec), (v, idx) => v * at(wn, [idx.at(-1)!]) + (bn ? at(bn, [idx.at(-1)!]) : 0));

  it("layer norm", () => {
    const eps = 1e-5;
    const norm = (v: number[]) => {
      const m = sum(v) / v.length;
      const s = sum(v.map((q) => (q - m) ** 2)) / v.length;
      return v.map((q) => (q - m) / Math.sqrt(s + eps));
    };
    checkOp("layer_norm", [x, w, b], (t, ww, bb) => apply1(P.layerNorm, [t, ww, bb], { eps }), (t, ww, bb) => withAffine(t, norm, ww, bb), { atol: 1e-5 });
    expectThrows(() => apply1(P.layerNorm, [x, zeros([4]), b], { eps }), ShapeError, "layer_norm", "[4]", "[2, 3, 5]");
  });

  it("rms norm", () => {
    const eps = 1e-6;
    const norm = (v: number[]) => {
      const r = Math.sqrt(sum(v.map((q) => q * q)) / v.length + eps);
      return v.map((q) => q / r);
    };
    checkOp("rms_norm", [x, w], (t, ww) => apply1(P.rmsNorm, [t, ww], { eps }), (t, ww) => withAffine(t, norm, ww), { atol: 1e-5 });
    expectThrows(() => apply1(P.rmsNorm, [x, zeros([3])], { eps }), ShapeError, "rms_norm", "[3]");
  });

  it("linear, plain and transposed, with and without bias", () => {
    const xs = randT([4, 3], 103);
    const W = randT([2, 3], 104);
    const bias = randT([2], 105);
    const ref = (xx: Nd, ww: Nd, bb?: Nd) => map(matmulNd(xx, transposeNd(ww, [1, 0])), (v, [, j]) => v + (bb ? at(bb, [j!]) : 0));
    checkOp("linear", [xs, W, bias], (p, q, r) => apply1(P.linear, [p, q, r], { transposed: false }), ref);
    checkOp("linear no bias", [xs, W], (p, q) => apply1(P.linear, [p, q], { transposed: false }), (p, q) => ref(p, q));
    const Wt = fromTensor(W);
    checkOp("linear transposed", [xs, W.transpose(0, 1), bias], (p, q, r) => apply1(P.linear, [p, q, r], { transposed: true }), (p, _q, r) => ref(p, Wt, r));
    expectThrows(() => apply1(P.linear, [xs, zeros([2, 4])], { transposed: false }), ShapeError, "linear", "3 features", "[2, 4]");
    expectThrows(() => apply1(P.linear, [xs, W, zeros([3])], { transposed: false }), ShapeError, "linear", "bias");
  });
});

describe("attention primitive", () => {
  // Reference: per head h (sharing kv head h / G), softmax over s of cap(scale * q.k) + mask, then weights . v.
  const reference = (scale: number, softcap: number) => (q: Nd, k: Nd, v: Nd, m: Nd) => {
    const [B, H, T, D] = q.shape as [number, number, number, number];
    const [, KV, S] = k.shape as [number, number, number];
    const G = H / KV;
    const cap = (x: number) => (softcap > 0 ? softcap * Math.tanh(x / softcap) : x);
    const weights = build([B, H, T, S], () => 0);
    for (let b = 0; b < B; b++)
      for (let h = 0; h < H; h++)
        for (let t = 0; t < T; t++) {
          const row: number[] = [];
          for (let s = 0; s < S; s++) {
            let dot = 0;
            for (let d = 0; d < D; d++) dot += at(q, [b, h, t, d]) * at(k, [b, Math.floor(h / G), s, d]);
            row.push(cap(dot * scale) + at(m, [b, 0, t, s]));
          }
          softmaxVec(row).forEach((w, s) => (weights.data[((b * H + h) * T + t) * S + s] = w));
        }
    const out = build([B, T, H * D], ([b, t, hd]) => {
      const h = Math.floor(hd! / D), d = hd! % D;
      let acc = 0;
      for (let s = 0; s < S; s++) acc += at(weights, [b!, h, t!, s]) * at(v, [b!, Math.floor(h / G), s, d]);
      return acc;
    });
    return [out, weights];
  };
  const mask = tensor([0, -1e9, -1e9, 0, 0, -1e9, 0, 0, 0], "float32", [1, 1, 3, 3]);

  it("computes softmax(q k^T * scale + mask) v and its weights, with grouped-query heads", () => {
    const [q, k, v] = [randT([1, 4, 3, 2], 110, { lo: -2, hi: 2 }), randT([1, 2, 3, 2], 111, { lo: -2, hi: 2 }), randT([1, 2, 3, 2], 112)];
    checkOp("attention", [q, k, v, mask], (a, b, c, d) => apply(P.attention, [a, b, c, d], { scale: 0.7, softcap: 0 }), reference(0.7, 0));
  });

  it("soft-caps the scaled scores before the mask (Gemma 2), which changes large scores only", () => {
    const [q, k, v] = [randT([1, 2, 3, 4], 113, { lo: -3, hi: 3 }), randT([1, 1, 3, 4], 114, { lo: -3, hi: 3 }), randT([1, 1, 3, 4], 115)];
    checkOp("attention softcap", [q, k, v, mask], (a, b, c, d) => apply(P.attention, [a, b, c, d], { scale: 1, softcap: 2 }), reference(1, 2));
    const [, capped] = apply(P.attention, [q, k, v, mask], { scale: 1, softcap: 2 });
    const [, plain] = apply(P.attention, [q, k, v, mask], { scale: 1, softcap: 0 });
    expect(capped!.sub(plain!).abs().max().item()).toBeGreaterThan(1e-3);
    const [, huge] = apply(P.attention, [q, k, v, mask], { scale: 1, softcap: 1e6 });
    expectTensor(huge!, fromTensor(plain!), { atol: 1e-5 });
  });
});

describe("meta tensors", () => {
  const m = Tensor.meta("float32", [2, 3, 4]);

  it("have a shape but no data", () => {
    expect(m.isMeta).toBe(true);
    expect(m.shape).toEqual([2, 3, 4]);
    expectThrows(() => m.data, MetaTensorError, "meta", "[2, 3, 4]");
    expectThrows(() => m.item(), ShapeError);
    expectThrows(() => Tensor.meta("float32", [1]).item(), MetaTensorError);
    expectThrows(() => m.tolist(), MetaTensorError);
  });

  it("ops infer shapes and dtypes without running kernels", () => {
    const outs: [Tensor, number[], string][] = [
      [m.add(1).mul(zeros([4])), [2, 3, 4], "float32"],
      [m.matmul(Tensor.meta("float32", [4, 7])), [2, 3, 7], "float32"],
      [m.softmax(-1), [2, 3, 4], "float32"],
      [m.sum(1), [2, 4], "float32"],
      [m.argmax(-1), [2, 3], "int64"],
      [m.index(0, slice(1), i64([0, 0, 1])), [2, 3], "float32"],
      [m.reshape(6, -1).transpose(0, 1), [4, 6], "float32"],
      [cat([m, m], 1), [2, 6, 4], "float32"],
      [m.topk(2).values, [2, 3, 2], "float32"],
      [m.put([0], 1), [2, 3, 4], "float32"],
      [m.gt(0), [2, 3, 4], "bool"],
      [m.to("int64"), [2, 3, 4], "int64"],
      [m.clone(), [2, 3, 4], "float32"],
      [apply1(P.layerNorm, [m, Tensor.meta("float32", [4]), Tensor.meta("float32", [4])], { eps: 1e-5 }), [2, 3, 4], "float32"],
      [Tensor.meta("int64", [5]).indexSelect(0, Tensor.meta("int64", [2, 3])), [2, 3], "int64"],
    ];
    for (const [t, shape, dtype] of outs) {
      expect(t.isMeta).toBe(true);
      expect([...t.shape]).toEqual(shape);
      expect(t.dtype).toBe(dtype);
    }
    expect(m.split([1, 3], -1).map((t) => t.shape)).toEqual([[2, 3, 1], [2, 3, 3]]);
  });

  it("shape errors still surface", () => {
    expectThrows(() => m.matmul(Tensor.meta("float32", [3, 3])), ShapeError, "matmul", "[2, 3, 4]");
    expectThrows(() => m.add(Tensor.meta("float32", [5])), ShapeError, "add");
    expectThrows(() => Tensor.meta("bool", [2]).add(Tensor.meta("bool", [2])), DTypeError, "add");
  });
});

describe("empty tensors", () => {
  it("elementwise, reductions, matmul with k = 0, cat with an empty piece", () => {
    expect(zeros([0, 3]).add(1).shape).toEqual([0, 3]);
    expectTensor(zeros([0, 3]).sum(0), [0, 0, 0]);
    expectTensor(ones([2, 0]).matmul(ones([0, 3])), [[0, 0, 0], [0, 0, 0]]);
    expectTensor(cat([zeros([0, 2]), tensor([[1, 2]])]), [[1, 2]]);
    expect(zeros([3, 2]).index(i64([])).shape).toEqual([0, 2]);
  });
});

describe("the helpers themselves", () => {
  it("checkOp fails on a wrong value, a wrong shape and a wrong dtype", () => {
    const x = tensor([1, 2, 3]);
    expect(() => checkOp("off by 1e-3", [x], (t) => t.mul(2), (t) => map(t, (v) => 2 * v + 1e-3))).toThrow(/element 0/);
    expect(() => checkOp("shape", [x], (t) => t.reshape(3, 1), (t) => t)).toThrow(/shape/);
    expect(() => checkOp("dtype", [x], (t) => t, (t) => t, { dtype: "int64" })).toThrow(/dtype/);
    expect(() => expectTensor(tensor([NaN, Infinity]), [NaN, Infinity])).not.toThrow();
    expect(() => expectTensor(tensor([NaN]), [0])).toThrow();
  });
});

describe("cross entropy, as torch.nn.functional.cross_entropy", () => {
  const rows = [[1, 2, 0.5], [0.1, -1, 2], [3, 0, 0]];
  const logits = tensor(rows);
  const nll = (row: number[], c: number) => Math.log(row.reduce((a, v) => a + Math.exp(v), 0)) - row[c]!;

  it("is the mean negative log-likelihood of the targets; targets equal to ignoreIndex (-100) count for nothing", () => {
    expect(F.crossEntropy(logits, tensor([1, 2, 0], "int64")).item()).toBeCloseTo((nll(rows[0]!, 1) + nll(rows[1]!, 2) + nll(rows[2]!, 0)) / 3, 5);
    expect(F.crossEntropy(logits, tensor([1, -100, 0], "int64")).item()).toBeCloseTo((nll(rows[0]!, 1) + nll(rows[2]!, 0)) / 2, 5);
    expect(F.crossEntropy(logits, tensor([1, 7, 0], "int32"), { ignoreIndex: 7 }).item()).toBeCloseTo((nll(rows[0]!, 1) + nll(rows[2]!, 0)) / 2, 5);
    expect(F.crossEntropy(logits, tensor([-100, -100, -100], "int64")).item()).toBeNaN();
  });

  it("refuses targets out of range and targets that are not class indices", () => {
    expectThrows(() => F.crossEntropy(logits, tensor([1, -1, 0], "int64")), ShapeError, "target -1 is out of range for 3 classes");
    expectThrows(() => F.crossEntropy(logits, tensor([1, 3, 0], "int64")), ShapeError, "target 3");
    expectThrows(() => F.crossEntropy(logits, tensor([1, 2, 0])), DTypeError, "class indices");
  });
});

describe("log1p, softplus and the losses of torch.nn.functional (values from torch 2.13)", () => {
  it("log1p keeps small values (log(1 + x) rounds them away) and is log(1 + x) elsewhere", () => {
    expectTensor(tensor([1e-10, -0.5, 1e-7, 3, -0.999]).log1p(), [1.000000013351432e-10, -0.6931471824645996, 9.999999406318238e-8, 1.3862943649291992, -6.907768249511719], { rtol: 1e-6 });
    expect(tensor([1e-10]).add(1).log().item()).toBe(0); // what log1p avoids
  });

  it("softplus is log(1 + exp(beta x)) / beta, and x past the threshold, with gradients that stay finite there", () => {
    const x = tensor([-30, -2, 0, 2, 19.9, 25, 100]).requiresGrad_();
    const y = x.softplus();
    expectTensor(y, [9.357622912219837e-14, 0.12692800164222717, 0.6931471824645996, 2.1269280910491943, 19.899999618530273, 25, 100], { rtol: 1e-6 });
    y.sum().backward();
    expectTensor(x.grad!, [9.357622912219837e-14, 0.11920291930437088, 0.5, 0.8807970881462097, 1, 1, 1], { rtol: 1e-5, atol: 1e-7 });
    expectTensor(tensor([1, 2.4, 2.6, 3]).softplus(2, 5), [1.0634640455245972, 2.4040980339050293, 2.5999999046325684, 3], { rtol: 1e-6 });
    expectThrows(() => tensor([1]).softplus(0), TypeError, "beta must be a finite non-zero number");
  });

  it("binaryCrossEntropyWithLogits is stable at large logits, and takes a reduction and posWeight", () => {
    const x = tensor([-100, -2, 0, 0.5, 3, 100]).requiresGrad_();
    const t = tensor([0, 1, 0.3, 1, 0, 1]);
    const loss = F.binaryCrossEntropyWithLogits(x, t);
    expect(loss.item()).toBeCloseTo(1.0571231842041016, 6);
    loss.backward();
    expectTensor(x.grad!, [0, -0.14679951965808868, 0.03333333134651184, -0.06292343884706497, 0.1587623506784439, 0], { atol: 1e-7 });
    expectTensor(F.binaryCrossEntropyWithLogits(x, t, { reduction: "none" }), [0, 2.1269280910491943, 0.6931471824645996, 0.4740769863128662, 3.0485873222351074, 0], { atol: 1e-6 });
    const sum = F.binaryCrossEntropyWithLogits(tensor([[0.5, -1], [2, 0.1]]), tensor([[1, 0], [0, 1]]), { posWeight: tensor([2, 0.5]), reduction: "sum" });
    expect(sum.item()).toBeCloseTo(3.7105422019958496, 5);
    expectThrows(() => F.binaryCrossEntropyWithLogits(x, tensor([1, 0])), ShapeError, "logits and targets must have one shape, got [6] and [2]");
    expectThrows(() => F.binaryCrossEntropyWithLogits(x, t, { reduction: "avg" as never }), TypeError, 'reduction must be "mean", "sum" or "none", got "avg"');
  });

  it("mseLoss averages or sums squared differences", () => {
    expect(F.mseLoss(tensor([1, 2, 3]), tensor([0.5, 2, 5])).item()).toBeCloseTo(1.4166666269302368, 6);
    expect(F.mseLoss(tensor([1, 2, 3]), tensor([0.5, 2, 5]), { reduction: "sum" }).item()).toBeCloseTo(4.25, 6);
    expectThrows(() => F.mseLoss(tensor([1, 2]), tensor([[1, 2]])), ShapeError, "mse_loss: input and target must have one shape");
  });
});

describe("max and min over an empty dim", () => {
  it("are ShapeErrors, as in PyTorch (ONNX Runtime would give -Infinity); logsumexp of nothing is -Infinity", () => {
    expectThrows(() => zeros([0, 3]).max(0), ShapeError, "max: dim 0", "empty");
    expectThrows(() => zeros([2, 0]).amin(-1), ShapeError, "min: dim 1");
    expectThrows(() => zeros([0]).max(), ShapeError, "empty");
    expect(zeros([2, 0]).max(0).shape).toEqual([0]);
    expect(zeros([0, 3]).logsumexp(0).toArray()).toEqual([-Infinity, -Infinity, -Infinity]);
  });
});

describe("pow of integers", () => {
  it("refuses a negative integer exponent, as PyTorch (ONNX Runtime gave 0); floats and non-negative exponents go on", () => {
    expectThrows(() => tensor([2, 3], "int64").pow(-1), DTypeError, "negative integer powers");
    expectThrows(() => tensor([2, 3], "int64").pow(tensor([1, -2], "int64")), DTypeError, "negative integer powers");
    expect(tensor([2, 3], "int64").pow(3).toArray()).toEqual([8, 27]);
    expect(tensor([2, 4], "int64").pow(-0.5).toArray()).toEqual([expect.closeTo(Math.SQRT1_2, 6), 0.5]);
  });
});

describe("any and all", () => {
  it("reduce to bool as torch.any and torch.all, over nothing false and true", () => {
    const x = tensor([[0, 1, 0], [0, 0, 0]]);
    expect([x.any().dtype, x.any().shape, x.any().toArray(), x.all().toArray()]).toEqual(["bool", [], [1], [0]]);
    expect(x.any(1).toArray()).toEqual([1, 0]);
    expect(x.all(0, true).shape).toEqual([1, 3]);
    expect(tensor([[1, 2], [3, 0]], "int64").all(-1).toArray()).toEqual([1, 0]);
    expect(tensor([true, true]).all().dtype).toBe("bool");
    expect([zeros([0, 2]).any(0).toArray(), zeros([0, 2]).all(0).toArray()]).toEqual([[0, 0], [1, 1]]);
    expect(tensor([Number.NaN]).any().toArray()).toEqual([1]);
    // dim=[] reduces nothing here, as in torch (where sum takes it as every dim).
    expect(x.any([]).shape).toEqual([2, 3]);
    expect(x.all([]).toArray()).toEqual([0, 1, 0, 0, 0, 0]);
    // clamp with a NaN bound is NaN everywhere, as in torch.
    expect(tensor([1, 2]).clamp(Number.NaN).toArray()).toEqual([Number.NaN, Number.NaN]);
  });
});

describe("flip", () => {
  it("reverses the entries along each dim given, as torch.flip, with its gradient flipped back", () => {
    const x = arange(24).reshape(2, 3, 4);
    checkOp("flip 1", [x], (t) => t.flip(1), (t) => build([2, 3, 4], ([i, j, k]) => at(t, [i!, 2 - j!, k!])));
    checkOp("flip [0, -1]", [x], (t) => t.flip([0, -1]), (t) => build([2, 3, 4], ([i, j, k]) => at(t, [1 - i!, j!, 3 - k!])));
    expectThrows(() => x.flip([1, -2]), ShapeError, "more than once");
    expectThrows(() => x.flip(3), ShapeError, "flip", "dim 3");
    const w = tensor([1, 2, 3]).requiresGrad_();
    w.flip(0).mul(tensor([1, 10, 100])).sum().backward();
    expect(w.grad!.toArray()).toEqual([100, 10, 1]);
  });
});
