import { describe, expect, it } from "vitest";
import { GradError, ShapeError, DTypeError, PackedWeight, Tensor, engineStats, functional, noGrad, tensor, isGradEnabled } from "./index.js";
import { apply, apply1, type Primitive } from "./primitive.js";
import * as P from "./primitives.js";
import { slice } from "./tensor.js";
import { distinctT, expectTensor, expectThrows, gradcheck, randT } from "../../../../test/op-helpers.js";

const i64 = (values: unknown, shape?: number[]) => tensor(values as number[], "int64", shape);

/** One gradcheck case per primitive (several for the interesting ones); `prim` is the primitives.ts export. */
type Case = { prim: keyof typeof P; name: string; run: () => void };
const cases: Case[] = [];
const add = (prim: keyof typeof P, name: string, run: () => void) => cases.push({ prim, name, run });

// #region elementwise

const unaries: [keyof typeof P, (x: Tensor) => Tensor, Parameters<typeof randT>[2]][] = [
  ["neg", (x) => x.neg(), {}],
  ["exp", (x) => x.exp(), { lo: -1.5, hi: 1.5 }],
  ["log", (x) => x.log(), { lo: 0.4, hi: 3 }],
  ["sqrt", (x) => x.sqrt(), { lo: 0.4, hi: 3 }],
  ["tanh", (x) => x.tanh(), { lo: -2, hi: 2 }],
  ["sigmoid", (x) => x.sigmoid(), { lo: -3, hi: 3 }],
  ["erf", (x) => x.erf(), { lo: -2, hi: 2 }],
  ["abs", (x) => x.abs(), { lo: -2, hi: 2, away: 0.1 }],
  ["sin", (x) => x.sin(), { lo: -3, hi: 3 }],
  ["cos", (x) => x.cos(), { lo: -3, hi: 3 }],
  ["relu", (x) => x.relu(), { lo: -2, hi: 2, away: 0.1 }],
  ["reciprocal", (x) => x.reciprocal(), { lo: -2, hi: 2, away: 0.5 }],
  ["silu", (x) => x.silu(), { lo: -3, hi: 3 }],
];
unaries.forEach(([prim, f, range], k) => add(prim, prim, () => gradcheck(f, [randT([2, 3], 10 + k, range)])));
// Steps: gradient 0 (as PyTorch's), checked away from the steps, where the finite difference is 0 too.
for (const prim of ["sign", "floor", "ceil", "round"] as const) add(prim, `${prim}: a gradient of 0`, () => gradcheck((x) => x[prim]().mul(x), [tensor([-1.3, -0.6, 0.3, 0.8, 2.2])]));
add("gelu", "gelu (erf)", () => gradcheck((x) => x.gelu(), [randT([2, 4], 31, { lo: -3, hi: 3 })]));
add("gelu", "gelu (tanh)", () => gradcheck((x) => x.gelu("tanh"), [randT([2, 4], 32, { lo: -3, hi: 3 })]));
add("log", "log1p (log, where and div)", () => gradcheck((x) => x.log1p(), [randT([2, 3], 34, { lo: -0.5, hi: 2 })]));
add("exp", "softplus (exp and log1p)", () => gradcheck((x) => x.softplus(), [randT([2, 3], 35, { lo: -3, hi: 3 })]));
add("sqrt", "rsqrt (sqrt then reciprocal)", () => gradcheck((x) => x.rsqrt(), [randT([5], 33, { lo: 0.5, hi: 2 })]));

const binaries: [keyof typeof P, (a: Tensor, b: Tensor) => Tensor][] = [
  ["add", (a, b) => a.add(b)],
  ["sub", (a, b) => a.sub(b)],
  ["mul", (a, b) => a.mul(b)],
  ["div", (a, b) => a.div(b)],
];
binaries.forEach(([prim, f], k) => {
  add(prim, `${prim} same shape`, () => gradcheck(f, [randT([2, 3], 40 + k), randT([2, 3], 50 + k, { away: 0.5, lo: -2, hi: 2 })]));
  add(prim, `${prim} broadcast [2,1,3] with [4,1]`, () => gradcheck(f, [randT([2, 1, 3], 60 + k), randT([4, 1], 70 + k, { away: 0.5, lo: -2, hi: 2 })]));
  add(prim, `${prim} broadcast [3] with [2,3] (first operand smaller)`, () => gradcheck(f, [randT([3], 80 + k), randT([2, 3], 90 + k, { away: 0.5, lo: -2, hi: 2 })]));
  add(prim, `${prim} with a number`, () => gradcheck((a) => f(a, 1.5 as unknown as Tensor), [randT([2, 3], 100 + k)]));
});
add("div", "div number by tensor (rdiv through reciprocal)", () => gradcheck((b) => b.reciprocal().mul(3), [randT([4], 110, { away: 0.5, lo: -2, hi: 2 })]));
add("pow", "pow tensor ** tensor (both inputs)", () => gradcheck((a, b) => a.pow(b), [randT([2, 3], 120, { lo: 0.5, hi: 2 }), randT([2, 3], 121, { lo: -1.5, hi: 2.5 })]));
add("pow", "pow broadcast exponent [3]", () => gradcheck((a, b) => a.pow(b), [randT([2, 3], 122, { lo: 0.5, hi: 2 }), randT([3], 123, { lo: -1, hi: 2 })]));
add("pow", "pow by a number (x^3, x^0.5)", () => gradcheck((a) => a.pow(3).add(a.pow(0.5)), [randT([5], 124, { lo: 0.5, hi: 2 })]));
add("mul", "pow(2) shortcut", () => gradcheck((a) => a.pow(2), [randT([5], 125)]));

// maximum/minimum: operands kept >= 0.1 apart so the finite difference never crosses the kink.
const gridA = () => distinctT([2, 3], 130, 0.5);
const gridB = () => new Tensor("float32", Float32Array.from([0.1, -0.65, 1.35]), [3]);
add("maximum", "maximum with broadcasting", () => gradcheck((a, b) => a.maximum(b), [gridA(), gridB()]));
add("minimum", "minimum with broadcasting", () => gradcheck((a, b) => a.minimum(b), [gridA(), gridB()]));
add("maximum", "clamp", () => gradcheck((a) => a.clamp(-0.3, 0.6), [tensor([-1, -0.55, -0.1, 0.2, 0.45, 0.9, 1.4])]));
// a / b never within 0.1 of an integer, so the finite difference stays on one branch
const fmodA = () => tensor([2.3, -1.7, 0.4, 3.6, -2.9, 1.1]);
const fmodB = () => tensor([0.9, 1.2, -0.8, 1.5, 1.1, -0.7]);
add("fmod", "fmod (dividend and divisor)", () => gradcheck((a, b) => a.fmod(b), [fmodA(), fmodB()]));
add("fmod", "fmod by a number", () => gradcheck((a) => a.fmod(0.7), [fmodA()]));

const mask23 = () => tensor([[true, false, true], [false, false, true]]);
add("where", "where (both branches, branch b broadcast)", () => gradcheck((a, b) => Tensor.where(mask23(), a, b), [randT([2, 3], 140), randT([3], 141)]));
add("where", "where (condition broadcast [3] over [2,1])", () => gradcheck((a, b) => Tensor.where(tensor([true, false, true]), a, b), [randT([2, 1], 142), randT([2, 3], 143)]));
add("where", "maskedFill", () => gradcheck((a) => a.maskedFill(mask23(), -2), [randT([2, 3], 144)]));

add("cast", "cast float32 to float32", () => gradcheck((x) => apply1(P.cast, [x], { to: "float32" }), [randT([2, 3], 150)]));
// d/dx (x * trunc(x)) = trunc(x): the int64 path carries no gradient
add("cast", "cast through int64 carries no gradient", () => gradcheck((x) => x.mul(x.to("int64").to("float32")), [tensor([-2.5, -1.3, 0.4, 1.6, 2.2, 3.7])]));
add("clone", "clone", () => gradcheck((x) => x.clone().mul(x), [randT([2, 3], 151)]));

// #endregion
// #region linear algebra

add("matmul", "matmul 2-D", () => gradcheck((a, b) => a.matmul(b), [randT([2, 3], 160), randT([3, 4], 161)]));
// op(a) @ op(b) without the transposed copies (what matmul's and linear's gradients multiply by), every transposition.
add("matmulTransposed", "matmul of transposed operands, 2-D (one Gemm)", () => {
  for (const [ta, tb] of [[false, true], [true, false], [true, true]] as const) {
    gradcheck((a, b) => P.matmulT(a, b, ta, tb), [randT(ta ? [3, 2] : [2, 3], 174), randT(tb ? [4, 3] : [3, 4], 175)]);
  }
});
add("matmulTransposed", "matmul of transposed operands, batched and broadcast", () => {
  for (const [ta, tb] of [[false, true], [true, false], [true, true]] as const) {
    gradcheck((a, b) => P.matmulT(a, b, ta, tb), [randT(ta ? [2, 1, 3, 2] : [2, 1, 2, 3], 176), randT(tb ? [3, 4, 3] : [3, 3, 4], 177)]);
  }
});
add("matmul", "matmul batched, broadcast batch dims [2,1,2,3] @ [3,3,2]", () => gradcheck((a, b) => a.matmul(b), [randT([2, 1, 2, 3], 162), randT([3, 3, 2], 163)]));
add("matmul", "matmul 3-D @ 2-D", () => gradcheck((a, b) => a.matmul(b), [randT([2, 2, 3], 164), randT([3, 2], 165)]));
add("matmul", "matmul 1-D @ 2-D, 2-D @ 1-D, 1-D @ 1-D", () => {
  gradcheck((a, b) => a.matmul(b), [randT([3], 166), randT([3, 2], 167)]);
  gradcheck((a, b) => a.matmul(b), [randT([2, 3], 168), randT([3], 169)]);
  gradcheck((a, b) => a.matmul(b), [randT([3], 170), randT([3], 171)]);
  gradcheck((a, b) => a.matmul(b), [randT([3], 172), randT([2, 3, 2], 173)]);
});
const linear = (transposed: boolean) => (x: Tensor, w: Tensor, b?: Tensor) => apply1(P.linear, b ? [x, w, b] : [x, w], { transposed });
add("linear", "linear x W^T + b", () => gradcheck(linear(false), [randT([4, 3], 180), randT([2, 3], 181), randT([2], 182)]));
add("linear", "linear transposed x W + b", () => gradcheck(linear(true), [randT([4, 3], 183), randT([3, 2], 184), randT([2], 185)]));
add("linear", "linear without bias", () => {
  gradcheck(linear(false), [randT([4, 3], 186), randT([2, 3], 187)]);
  gradcheck(linear(true), [randT([4, 3], 188), randT([3, 2], 189)]);
});
add("packedLinear", "linear by a packed (float16) weight: gradients of the input and the bias", () => {
  const packed = (w: Tensor, transposed: boolean) => Tensor.fromPacked(PackedWeight.fromFloat32(w.data as Float32Array, 2, 3, transposed, "float16"));
  const w = packed(randT([2, 3], 193), false);
  gradcheck((x, b) => apply1(P.packedLinear, [x, w, b!], { transposed: false }), [randT([4, 3], 194), randT([2], 195)]);
  const wt = packed(randT([3, 2], 196), true);
  gradcheck((x) => apply1(P.packedLinear, [x, wt], { transposed: true }), [randT([4, 3], 197)]);
});
add("linear", "linear with only the weight requiring grad", () => gradcheck(linear(false), [randT([4, 3], 190), randT([2, 3], 191), randT([2], 192)], { wrt: [1] }));

// #endregion
// #region reductions

add("sum", "sum all, over a dim, over dims with keepdim, negative dim", () => {
  const x = () => randT([2, 3, 4], 200);
  gradcheck((t) => t.sum(), [x()]);
  gradcheck((t) => t.sum(1), [x()]);
  gradcheck((t) => t.sum([0, 2], true), [x()]);
  gradcheck((t) => t.sum(-1), [x()]);
});
add("mean", "mean all, over dims, keepdim", () => {
  const x = () => randT([2, 3, 4], 201);
  gradcheck((t) => t.mean(), [x()]);
  gradcheck((t) => t.mean([0, -1]), [x()]);
  gradcheck((t) => t.mean(1, true), [x()]);
});
add("amax", "amax (distinct values)", () => {
  gradcheck((t) => t.max(-1), [distinctT([2, 3, 4], 202)]);
  gradcheck((t) => t.max([0, 2], true), [distinctT([2, 3, 4], 203)]);
  gradcheck((t) => t.max(), [distinctT([3, 4], 204)]);
});
add("amin", "amin (distinct values)", () => {
  gradcheck((t) => t.min(0), [distinctT([3, 4], 205)]);
  gradcheck((t) => t.min(), [distinctT([3, 4], 206)]);
});
add("sum", "var / std / norm / logsumexp (composed)", () => {
  gradcheck((t) => t.var(1), [randT([2, 5], 207)]);
  gradcheck((t) => t.std(), [randT([2, 5], 208)]);
  gradcheck((t) => t.norm(2, -1), [randT([2, 5], 209, { away: 0.2 })]);
  gradcheck((t) => t.norm(1), [randT([2, 5], 210, { away: 0.2 })]);
  gradcheck((t) => t.norm(3, 0), [randT([2, 5], 211, { away: 0.2 })]);
  gradcheck((t) => t.logsumexp(-1), [randT([3, 4], 212, { lo: -2, hi: 2 })]);
});
add("softmax", "softmax last dim and dim 0", () => {
  gradcheck((t) => t.softmax(-1), [randT([2, 4], 220, { lo: -2, hi: 2 })]);
  gradcheck((t) => t.softmax(0), [randT([3, 2], 221, { lo: -2, hi: 2 })]);
});
add("logSoftmax", "logSoftmax last dim and dim 1 of 3", () => {
  gradcheck((t) => t.logSoftmax(-1), [randT([2, 4], 222, { lo: -2, hi: 2 })]);
  gradcheck((t) => t.logSoftmax(1), [randT([2, 3, 2], 223, { lo: -2, hi: 2 })]);
});
add("cumsum", "cumsum forward and reverse", () => {
  gradcheck((t) => t.cumsum(1), [randT([2, 4], 230)]);
  gradcheck((t) => t.cumsum(0, true), [randT([3, 2], 231)]);
});
add("topk", "topk values (largest and smallest)", () => {
  gradcheck((t) => t.topk(2, -1).values, [distinctT([3, 5], 240)]);
  gradcheck((t) => t.topk(2, 0, false).values, [distinctT([4, 3], 241)]);
});

// #endregion
// #region movement

add("reshape", "reshape / view / flatten / squeeze / unsqueeze", () => {
  gradcheck((t) => t.reshape(3, -1).mul(tensor([1, 2, 3, 4]).reshape(1, 4)), [randT([2, 6], 250)]);
  gradcheck((t) => t.flatten().unsqueeze(0).squeeze(0), [randT([2, 3], 251)]);
});
add("transpose", "transpose and permute", () => {
  gradcheck((t) => t.transpose(0, 1), [randT([2, 3], 260)]);
  gradcheck((t) => t.permute(2, 0, 1), [randT([2, 3, 4], 261)]);
});
add("expand", "expand [3,1] to [2,3,4]", () => gradcheck((t) => t.expand(2, 3, 4), [randT([3, 1], 270)]));
add("expand", "repeatInterleave and repeat (expand between reshapes)", () => {
  gradcheck((t) => t.repeatInterleave(3, 1), [randT([2, 2, 3], 271)]);
  gradcheck((t) => t.repeat(2, 1, 2), [randT([2, 2, 3], 272)]);
});
add("slice", "index with slices, steps, negative ints, '...'", () => {
  gradcheck((t) => t.index(slice(1, null, 2), slice(null, -1)), [randT([5, 4], 280)]);
  gradcheck((t) => t.index("...", -1), [randT([2, 3, 4], 281)]);
  gradcheck((t) => t.narrow(1, 1, 2), [randT([2, 4], 282)]);
});
add("sliceAssign", "put (base and value)", () => {
  gradcheck((base, v) => base.put([slice(0, 3, 2), -1], v), [randT([4, 3], 290), randT([2], 291)]);
  gradcheck((base, v) => base.put([null, slice(1, 3)], v), [randT([3, 4], 292), randT([1, 2], 293)]);
});
add("concat", "cat of three along dim 1, stack", () => {
  gradcheck((a, b, c) => Tensor.cat([a, b, c], 1), [randT([2, 1], 300), randT([2, 3], 301), randT([2, 2], 302)]);
  gradcheck((a, b) => Tensor.stack([a, b], -1), [randT([2, 3], 303), randT([2, 3], 304)]);
});
add("split", "split / chunk, all outputs and one output", () => {
  gradcheck((t) => t.split([1, 3], 1), [randT([2, 4], 310)]);
  gradcheck((t) => t.chunk(3, 0)[1]!, [randT([5, 2], 311)]);
});
add("gather", "indexSelect axis 0 with repeats", () => gradcheck((t) => t.indexSelect(0, i64([2, 0, 2, 1])), [randT([3, 2], 320)]));
add("gather", "index with a list holding a negative entry", () => gradcheck((t) => t.index([2, 0, -1]), [randT([3, 2], 324)]));
add("gather", "indexSelect axis 1, 2-D index", () => gradcheck((t) => t.indexSelect(1, i64([[0, 3], [3, 3]])), [randT([2, 4, 3], 321)]));
add("gather", "index with an integer tensor", () => gradcheck((t) => t.index(null, i64([1, 1, 0])), [randT([2, 3], 322)]));
add("gather", "index with a 0-d integer tensor", () => gradcheck((t) => t.index(null, i64(2)), [randT([2, 3, 2], 323)]));
add("gatherElements", "gather along dim 1 and dim 0", () => {
  gradcheck((t) => t.gather(1, i64([[0, 0, 2], [1, 2, 1]])), [randT([2, 3], 330)]);
  gradcheck((t) => t.gather(0, i64([[1, 0], [1, 1], [0, 1]])), [randT([2, 2], 331)]);
});
add("scatterAdd", "scatterAdd (data and src), repeated indices", () =>
  gradcheck((d, src) => d.scatterAdd(1, i64([[0, 0, 2], [1, 3, 1]]), src), [randT([2, 4], 340), randT([2, 3], 341)]),
);
add("indexAdd", "indexAdd (data and updates), repeated rows", () =>
  gradcheck((d, u) => d.indexAdd(i64([[2], [0], [2]]), u), [randT([3, 2], 350), randT([3, 2], 351)]),
);
add("trilu", "tril / triu with offsets", () => {
  gradcheck((t) => t.tril(), [randT([3, 4], 360)]);
  gradcheck((t) => t.triu(1), [randT([3, 4], 361)]);
  gradcheck((t) => t.tril(-1), [randT([2, 3, 3], 362)]);
});

// #endregion
// #region normalisation

add("layerNorm", "layerNorm (x, weight, bias)", () =>
  gradcheck((x, w, b) => apply1(P.layerNorm, [x, w, b], { eps: 1e-5 }), [randT([2, 3, 4], 370, { lo: -2, hi: 2 }), randT([4], 371, { lo: 0.5, hi: 1.5 }), randT([4], 372)]),
);
add("layerNorm", "layerNorm on a 1-D input", () =>
  gradcheck((x, w, b) => apply1(P.layerNorm, [x, w, b], { eps: 1e-5 }), [randT([5], 373, { lo: -2, hi: 2 }), randT([5], 374, { lo: 0.5, hi: 1.5 }), randT([5], 375)]),
);
// Attention: both outputs (merged values and weights) carry gradients; grouped-query heads fold back onto k and v.
const causalMask = (T: number, S: number) => tensor(Array.from({ length: T * S }, (_, i) => (i % S <= Math.floor(i / S) + S - T ? 0 : -1e9)), "float32", [1, 1, T, S]);
add("attention", "attention (q, k, v), multi-head", () =>
  gradcheck((q, k, v, m) => apply(P.attention, [q, k, v, m], { scale: 0.5, softcap: 0 }), [randT([1, 2, 3, 4], 390, { lo: -1, hi: 1 }), randT([1, 2, 3, 4], 391, { lo: -1, hi: 1 }), randT([1, 2, 3, 4], 392, { lo: -1, hi: 1 }), causalMask(3, 3)], { wrt: [0, 1, 2] }),
);
add("attention", "attention with grouped-query heads and cached keys", () =>
  gradcheck((q, k, v, m) => apply(P.attention, [q, k, v, m], { scale: 0.7, softcap: 0 }), [randT([2, 4, 2, 3], 393, { lo: -1, hi: 1 }), randT([2, 2, 5, 3], 394, { lo: -1, hi: 1 }), randT([2, 2, 5, 3], 395, { lo: -1, hi: 1 }), tensor(new Array(2 * 2 * 5).fill(0), "float32", [2, 1, 2, 5])], { wrt: [0, 1, 2] }),
);

add("attention", "attention with soft-capped scores (Gemma 2)", () =>
  gradcheck((q, k, v, m) => apply(P.attention, [q, k, v, m], { scale: 0.9, softcap: 1.5 }), [randT([1, 4, 3, 3], 396, { lo: -2, hi: 2 }), randT([1, 2, 3, 3], 397, { lo: -2, hi: 2 }), randT([1, 2, 3, 3], 398, { lo: -1, hi: 1 }), causalMask(3, 3)], { wrt: [0, 1, 2] }),
);
add("attention", "attention's additive mask gets the scores' gradient, summed over heads", () =>
  gradcheck((q, k, v, m) => apply(P.attention, [q, k, v, m], { scale: 0.6, softcap: 0 }), [randT([1, 2, 3, 4], 399, { lo: -1, hi: 1 }), randT([1, 2, 3, 4], 400, { lo: -1, hi: 1 }), randT([1, 2, 3, 4], 405, { lo: -1, hi: 1 }), randT([1, 1, 3, 3], 406, { lo: -1, hi: 1 })]),
);
add("attentionScores", "attention's scores alone, grouped-query heads and one query row (a decode step)", () =>
  gradcheck((q, k) => apply(P.attentionScores, [q, k], { scale: 0.7, softcap: 0 }), [randT([2, 4, 1, 3], 401, { lo: -1, hi: 1 }), randT([2, 2, 5, 3], 402, { lo: -1, hi: 1 })]),
);
add("attentionScores", "attention's scores alone, soft-capped", () =>
  gradcheck((q, k) => apply(P.attentionScores, [q, k], { scale: 0.9, softcap: 1.5 }), [randT([1, 4, 3, 3], 403, { lo: -2, hi: 2 }), randT([1, 2, 3, 3], 404, { lo: -2, hi: 2 })]),
);
add("attentionValues", "attention's pattern times values alone, grouped-query heads", () =>
  gradcheck((w, v) => apply(P.attentionValues, [w, v], undefined), [randT([2, 4, 2, 5], 405, { lo: 0, hi: 1 }), randT([2, 2, 5, 3], 406, { lo: -1, hi: 1 })]),
);
// Over a KV cache kept in place: 5 of its 8 positions filled (the cache itself records no gradient).
add("attentionPastScores", "scores over a cache kept in place and a decode step's keys, grouped-query heads", () =>
  gradcheck((q, k, past) => apply(P.attentionPastScores, [q, k, past], { scale: 0.7, softcap: 0, past: 5 }), [randT([2, 4, 1, 3], 407, { lo: -1, hi: 1 }), randT([2, 2, 1, 3], 408, { lo: -1, hi: 1 }), randT([2, 2, 8, 3], 409, { lo: -1, hi: 1 })], { wrt: [0, 1] }),
);
add("attentionPastScores", "scores over a cache kept in place, soft-capped, two new positions", () =>
  gradcheck((q, k, past) => apply(P.attentionPastScores, [q, k, past], { scale: 0.9, softcap: 1.5, past: 5 }), [randT([1, 4, 2, 3], 410, { lo: -2, hi: 2 }), randT([1, 2, 2, 3], 411, { lo: -2, hi: 2 }), randT([1, 2, 8, 3], 412, { lo: -2, hi: 2 })], { wrt: [0, 1] }),
);
add("attentionPastSoftmax", "the softmax over a cache's row, its room left out", () =>
  gradcheck((sc) => apply1(P.attentionPastSoftmax, [sc], { past: 5, capacity: 8 }), [randT([1, 2, 2, 7], 413, { lo: -2, hi: 2 })]),
);
add("attentionPastValues", "weights times a cache's values kept in place and a decode step's, grouped-query heads", () =>
  gradcheck((w, v, past) => apply1(P.attentionPastValues, [w, v, past], { past: 5 }), [randT([2, 4, 1, 6], 414, { lo: 0, hi: 1 }), randT([2, 2, 1, 3], 415, { lo: -1, hi: 1 }), randT([2, 2, 8, 3], 416, { lo: -1, hi: 1 })], { wrt: [0, 1] }),
);

add("rmsNorm", "rmsNorm (x, weight)", () =>
  gradcheck((x, w) => apply1(P.rmsNorm, [x, w], { eps: 1e-6 }), [randT([2, 3, 4], 380, { lo: -2, hi: 2 }), randT([4], 381, { lo: 0.5, hi: 1.5 })]),
);
add("rotary", "rotary (x, and cos and sin broadcast over heads, all three with gradients)", () =>
  gradcheck((x, c, s) => apply1(P.rotary, [x, c, s], { half: 2 }), [randT([2, 3, 5, 4], 384), randT([2, 1, 5, 4], 385), randT([2, 1, 5, 4], 386)]),
);
add("rmsNorm", "rmsNorm on a 1-D input", () => gradcheck((x, w) => apply1(P.rmsNorm, [x, w], { eps: 1e-6 }), [randT([4], 382, { lo: -2, hi: 2 }), randT([4], 383, { lo: 0.5, hi: 1.5 })]));

// #endregion

describe("gradcheck of every differentiable primitive", () => {
  for (const c of cases) it(c.name, c.run);

  it("has a case for every primitive with a gradient rule", () => {
    const differentiable = Object.entries(P)
      .filter(([, v]) => typeof v === "object" && v !== null && "grad" in v && typeof (v as Primitive).grad === "function")
      .map(([k]) => k);
    const covered = new Set(cases.map((c) => c.prim));
    expect(differentiable.filter((k) => !covered.has(k as keyof typeof P))).toEqual([]);
    expect(differentiable.length).toBeGreaterThan(40);
  });
});

describe("gradients where PyTorch sets a convention", () => {
  const leaf = (v: number[]) => tensor(v).requiresGrad_();
  const gradOf = (x: Tensor, f: (x: Tensor) => Tensor) => (f(x).sum().backward(), x.grad!.toArray());

  it("0, not NaN, at the singular points of norms, std and pow (torch masks them)", () => {
    for (const p of [2, 3, 0.5]) expect(gradOf(leaf([0, 0, 0]), (x) => x.norm(p)), `norm(${p})`).toEqual([0, 0, 0]);
    expect(gradOf(leaf([0, 2, 0]), (x) => x.norm(0.5))).toEqual([0, expect.closeTo(1, 6), 0]);
    expect(gradOf(leaf([0, 0, 3, 4]), (x) => x.reshape(2, 2).norm(2, 1))).toEqual([0, 0, expect.closeTo(0.6, 6), expect.closeTo(0.8, 6)]);
    expect(gradOf(leaf([2, 2, 2]), (x) => x.std())).toEqual([0, 0, 0]);
    expect(gradOf(leaf([0, 1]), (x) => x.pow(0))).toEqual([0, 0]);
    const e = leaf([2, 0.5, 0, -1]);
    tensor([0, 0, 0, 2]).pow(e).sum().backward();
    expect(e.grad!.toArray()).toEqual([0, 0, 0, expect.closeTo(0.5 * Math.log(2), 6)]);
  });

  it("at NaN, ±Infinity and ±0, elementwise gradients are PyTorch's: relu passes NaN's, abs's is 0 there (sign(NaN) is 0)", () => {
    // torch 2.13: x = torch.tensor([nan, inf, -inf, 0., -0.], requires_grad=True); f(x).sum().backward(); x.grad.
    const torchGrads: [string, (x: Tensor) => Tensor, number[]][] = [
      ["torch.relu", (x) => x.relu(), [1, 1, 0, 0, 0]],
      ["torch.abs", (x) => x.abs(), [0, 1, -1, 0, 0]],
      ["F.gelu", (x) => x.gelu(), [NaN, NaN, NaN, 0.5, 0.5]],
      ["F.gelu(approximate='tanh')", (x) => x.gelu("tanh"), [NaN, NaN, NaN, 0.5, 0.5]],
      ["torch.sigmoid", (x) => x.sigmoid(), [NaN, 0, 0, 0.25, 0.25]],
      ["torch.tanh", (x) => x.tanh(), [NaN, 0, 0, 1, 1]],
      ["torch.sqrt", (x) => x.sqrt(), [NaN, 0, NaN, Infinity, -Infinity]],
      ["torch.exp", (x) => x.exp(), [NaN, Infinity, 0, 1, 1]],
      ["torch.log", (x) => x.log(), [NaN, 0, -0, Infinity, -Infinity]],
      ["F.silu", (x) => x.silu(), [NaN, NaN, NaN, 0.5, 0.5]],
    ];
    for (const [name, f, want] of torchGrads) expect(gradOf(leaf([NaN, Infinity, -Infinity, 0, -0]), f), name).toEqual(want);
    // torch.sign(torch.tensor([nan, -nan, inf, -inf, 0.])) is [0, 0, 1, -1, 0].
    expect(tensor([NaN, -NaN, Infinity, -Infinity, 0]).sign().toArray()).toEqual([0, 0, 1, -1, 0]);
  });

  it("a tie in maximum and minimum splits the gradient in halves; clamp passes it whole at a bound", () => {
    const a = leaf([1, 2, 3]), b = leaf([1, 1, 3]);
    a.maximum(b).sum().backward();
    expect([a.grad!.toArray(), b.grad!.toArray()]).toEqual([[0.5, 1, 0.5], [0.5, 0, 0.5]]);
    const c = leaf([1, 2]), d = leaf([1, 3]);
    c.minimum(d).sum().backward();
    expect([c.grad!.toArray(), d.grad!.toArray()]).toEqual([[0.5, 1], [0.5, 0]]);
    expect(gradOf(leaf([1, 2, 2.5, 3]), (x) => x.clamp(2, 2.5))).toEqual([0, 1, 1, 0]);
    // A NaN, whose result is NaN, passes it whole to both.
    const p = leaf([1, Number.NaN]), q = leaf([Number.NaN, 1]);
    p.maximum(q).sum().backward();
    expect([p.grad!.toArray(), q.grad!.toArray()]).toEqual([[1, 1], [1, 1]]);
  });

  it("an integer or bool result carries no gradient: casts, topk's and sort's indices", () => {
    const x = leaf([1.5, 2, -1]);
    for (const t of [x.long(), x.int(), x.bool(), x.to("int64"), x.topk(1).indices, x.sort().indices, x.argmax()]) expect(t.requiresGrad).toBe(false);
    expect(x.topk(1).values.requiresGrad).toBe(true);
    expectThrows(() => x.long().sum().backward(), GradError, "does not require grad");
    // Mixed with the float path, only that path's gradient arrives, as in PyTorch.
    expect(gradOf(leaf([1.5, 2]), (x) => x.long().mul(x))).toEqual([1, 2]);
  });

  it("a gradient hook must give a tensor of the gradient's shape and dtype", () => {
    const x = leaf([1, 2]);
    x.registerHook(() => tensor([1]));
    expectThrows(() => x.sum().backward(), GradError, "shape [1]", "shape [2]");
    const y = leaf([1, 2]);
    y.registerHook((() => 3) as never);
    expectThrows(() => y.sum().backward(), GradError, "returned a number");
  });
});

describe("a norm's input gradient", () => {
  // The rules as they were written before norm_grad, op by op: its values must be these.
  const opByOp = (g: Tensor, x: Tensor, w: Tensor, eps: number, centered: boolean): Tensor =>
    noGrad(() => {
      const xc = centered ? x.sub(x.mean(-1, true)) : x;
      const rstd = xc.mul(xc).mean(-1, true).add(eps).rsqrt();
      const xhat = xc.mul(rstd);
      const gxh = g.mul(w);
      return (centered ? gxh.sub(gxh.mean(-1, true)) : gxh).sub(xhat.mul(gxh.mul(xhat).mean(-1, true))).mul(rstd);
    });

  for (const centered of [true, false]) {
    it(`of ${centered ? "layer" : "RMS"} norm is one kernel call, with the op-by-op rule's values, and no weight gradient for a frozen weight`, () => {
      const [x, w, b, g] = [randT([2, 5, 64], 420, { lo: -2, hi: 2 }), randT([64], 421, { lo: 0.5, hi: 1.5 }), randT([64], 422), randT([2, 5, 64], 423)];
      const leaf = x.clone().requiresGrad_();
      const y = centered ? apply1(P.layerNorm, [leaf, w, b], { eps: 1e-5 }) : apply1(P.rmsNorm, [leaf, w], { eps: 1e-6 });
      y.backward(g); // once to build the kernel
      leaf.grad = null;
      const runs = engineStats().runs;
      y.backward(g);
      expect(engineStats().runs - runs).toBe(1);
      expectTensor(leaf.grad!, opByOp(g, x, w, centered ? 1e-5 : 1e-6, centered).tolist(), { atol: 1e-6, rtol: 1e-6 });
    });
  }
});

describe("rotary as one kernel", () => {
  // The ops it replaced (nn/rotary.ts before): its values and its input gradient must be theirs, bit for bit.
  const byOps = (x: Tensor, c: Tensor, s: Tensor): Tensor => {
    const [x1, x2] = x.split(x.shape.at(-1)! / 2, -1) as [Tensor, Tensor];
    return x.mul(c).add(Tensor.cat([x2.neg(), x1], -1).mul(s));
  };
  it("gives the ops' values and gradient in one kernel call each way", () => {
    const [x, c, s, g] = [randT([1, 4, 6, 8], 440), randT([1, 1, 6, 8], 441), randT([1, 1, 6, 8], 442), randT([1, 4, 6, 8], 443)];
    const [a, b] = [x.clone().requiresGrad_(), x.clone().requiresGrad_()];
    const [ya, yb] = [functional.rotary(a, c, s), byOps(b, c, s)];
    expect(ya.toArray()).toEqual(yb.toArray());
    ya.backward(g);
    yb.backward(g);
    expect(a.grad!.toArray()).toEqual(b.grad!.toArray());
    a.grad = null;
    let runs = engineStats().runs;
    functional.rotary(x, c, s);
    expect(engineStats().runs - runs).toBe(1);
    runs = engineStats().runs;
    ya.backward(g);
    expect(engineStats().runs - runs).toBe(1);
    expectThrows(() => functional.rotary(randT([2, 3], 444), c, s), ShapeError, "even");
  });
});

describe("gradients only for the inputs that need them", () => {
  /** Kernel calls of a backward pass from `y` (the second one: the first builds the kernels). */
  const backwardRuns = (y: Tensor, leaf: Tensor): number => {
    const g = randT(y.shape, 430);
    y.backward(g);
    leaf.grad = null;
    const before = engineStats().runs;
    y.backward(g);
    return engineStats().runs - before;
  };

  it("a constant broadcast into an elementwise op gets no gradient (no sum over its broadcast axes)", () => {
    const scores = randT([1, 4, 8, 8], 431).requiresGrad_();
    const mask = randT([1, 1, 8, 8], 432);
    // add: the gradient passes through (no kernel); mul: one product; sub, div: one op each.
    expect(backwardRuns(scores.add(mask), scores)).toBe(0);
    expect(backwardRuns(scores.mul(mask), scores)).toBe(1);
    expect(backwardRuns(mask.sub(scores), scores)).toBe(1);
    expect(backwardRuns(scores.div(mask), scores)).toBe(1);
    expect(scores.grad!.shape).toEqual([1, 4, 8, 8]);
  });

  it("a frozen matrix's gradient is not a matrix product", () => {
    const x = randT([3, 5, 6], 433).requiresGrad_();
    const w = randT([6, 7], 434);
    expect(backwardRuns(x.matmul(w), x)).toBe(1);
    expect(backwardRuns(P.matmulT(x, randT([7, 6], 435), false, true), x)).toBe(1);
    // Both needed: both computed, as before.
    const wt = randT([6, 7], 436).requiresGrad_();
    const y = x.matmul(wt);
    y.backward(randT(y.shape, 437));
    expect(wt.grad!.shape).toEqual([6, 7]);
  });
});

describe("gradcheck catches wrong rules", () => {
  const wrong = <A>(p: Primitive<A>, grad: Primitive<A>["grad"]): Primitive<A> => ({ ...p, name: `${p.name}_wrong`, grad });
  const fails = (fn: () => void) => expect(fn).toThrow(/gradcheck/);

  it("a gradient 5% too large", () => {
    const bad = wrong(P.exp, ([g], n) => [g!.mul(n.outputs[0]!).mul(1.05)]);
    fails(() => gradcheck((x) => apply1(bad, [x], undefined), [randT([2, 3], 400)]));
  });
  it("softmax without the normalisation term", () => {
    const bad = wrong(P.softmax, ([g], n) => [n.outputs[0]!.mul(g!)]);
    fails(() => gradcheck((x) => apply1(bad, [x], { axis: 1 }), [randT([2, 3], 401)]));
  });
  it("layer norm that forgets the mean term", () => {
    // the RMSNorm-style rule: no "- mean(g * w)" term
    const bad = wrong(P.layerNorm, (grads, n) => {
      const [, gw, gb] = P.layerNorm.grad!(grads, n);
      const [x, w] = n.inputs as [Tensor, Tensor];
      const xc = x.sub(x.mean(-1, true));
      const rstd = xc.mul(xc).mean(-1, true).add(1e-5).rsqrt();
      const xhat = xc.mul(rstd);
      const gxh = grads[0]!.mul(w);
      return [gxh.sub(xhat.mul(gxh.mul(xhat).mean(-1, true))).mul(rstd), gw!, gb!];
    });
    fails(() => gradcheck((x, w, b) => apply1(bad, [x, w, b], { eps: 1e-5 }), [randT([2, 4], 402, { lo: -2, hi: 2 }), randT([4], 403, { lo: 0.5 }), randT([4], 404)]));
  });
  it("a rule that drops an input's gradient", () => {
    const bad = wrong(P.mul, ([g], n) => [g!.mul(n.inputs[1]!), null]);
    fails(() => gradcheck((a, b) => apply1(bad, [a, b], undefined), [randT([3], 405), randT([3], 406)]));
  });
  it("a rule that does not sum a broadcast gradient", () => {
    const bad = wrong(P.add, ([g]) => [g!, g!]);
    expect(() => gradcheck((a, b) => apply1(bad, [a, b], undefined), [randT([2, 3], 407), randT([3], 408)])).toThrow(/gradient is float32 \[2,3\], expected float32 \[3\]/);
  });
  it("a transposed-weight mix-up in linear", () => {
    const bad = wrong(P.linear, ([g], n) => {
      const [x, w] = n.inputs as [Tensor, Tensor];
      return [g!.matmul(w), x.transpose(0, 1).matmul(g!).transpose(0, 1).mul(0.9)];
    });
    fails(() => gradcheck((x, w) => apply1(bad, [x, w], { transposed: false }), [randT([3, 2], 409), randT([2, 2], 410)]));
  });
});

describe("backward", () => {
  it("accumulates the gradient of a tensor used twice", () => {
    const x = tensor([1, -2, 3]).requiresGrad_();
    x.mul(x).add(x).sum().backward();
    expectTensor(x.grad!, [3, -3, 7]); // 2x + 1
  });

  it("accumulates into .grad over two backward calls, and .grad does not require grad", () => {
    const x = tensor([1, 2]).requiresGrad_();
    x.mul(3).sum().backward();
    x.mul(x).sum().backward();
    expectTensor(x.grad!, [5, 7]); // 3 + 2x
    expect(x.grad!.requiresGrad).toBe(false);
  });

  it("backward of a leaf itself seeds its gradient", () => {
    const x = tensor([4]).requiresGrad_();
    x.backward();
    expectTensor(x.grad!, [1]);
  });

  it("gives no gradient through detach and to leaves that do not require grad", () => {
    const x = tensor([1, 2]).requiresGrad_();
    const c = tensor([5, 7]);
    x.mul(x.detach()).mul(c).sum().backward();
    expectTensor(x.grad!, [5, 14]); // d/dx (x * stop(x) * c) = stop(x) * c
    expect(c.grad).toBeNull();
  });

  it("reaches only the outputs of a multi-output op that were used", () => {
    const x = tensor([1, 2, 3, 4]).requiresGrad_();
    const [, b] = x.split([1, 3]);
    b!.mul(tensor([1, 2, 3])).sum().backward();
    expectTensor(x.grad!, [0, 1, 2, 3]);
  });

  it("splits the gradient of a max evenly among ties", () => {
    const x = tensor([1, 3, 3]).requiresGrad_();
    x.max().backward();
    expectTensor(x.grad!, [0, 0.5, 0.5]);
  });

  it("refuses a tensor that does not require grad", () => {
    expectThrows(() => tensor([1, 2]).sum().backward(), GradError, "does not require grad");
  });

  it("refuses a non-scalar without a gradient, and a gradient of the wrong shape", () => {
    const y = tensor([1, 2]).requiresGrad_().mul(2);
    expectThrows(() => y.backward(), ShapeError, "shape [2]", "pass a gradient");
    expectThrows(() => y.backward(tensor([1, 1, 1])), GradError, "[3]", "[2]");
  });

  it("only float32 leaves can require grad; only leaves can be marked", () => {
    expectThrows(() => tensor([1, 2], "int64").requiresGrad_(), DTypeError, "int64");
    const y = tensor([1]).requiresGrad_().mul(2);
    expect(() => y.requiresGrad_()).toThrow(/leaf/);
  });
});

describe("noGrad", () => {
  it("records nothing inside and restores afterwards", () => {
    const x = tensor([1, 2]).requiresGrad_();
    const y = noGrad(() => x.mul(2));
    expect(y.requiresGrad).toBe(false);
    expect(isGradEnabled()).toBe(true);
    expect(x.mul(2).requiresGrad).toBe(true);
  });

  it("restores after a throw and after an async function", async () => {
    expect(() =>
      noGrad(() => {
        throw new Error("boom");
      }),
    ).toThrow("boom");
    expect(isGradEnabled()).toBe(true);
    const x = tensor([1]).requiresGrad_();
    const y = await noGrad(async () => {
      await new Promise((r) => setTimeout(r, 1));
      return x.mul(2);
    });
    expect(y.requiresGrad).toBe(false);
    expect(isGradEnabled()).toBe(true);
  });
});

describe("hooks", () => {
  it("see the gradient and can replace it; the replacement flows to earlier tensors", () => {
    const x = tensor([1, 2, 3]).requiresGrad_();
    const y = x.mul(2);
    const z = y.mul(y); // dz/dy = 2y
    const seen: number[][] = [];
    y.registerHook((g) => {
      seen.push(g.toArray());
      return g.mul(10);
    });
    z.sum().backward();
    expect(seen).toEqual([[4, 8, 12]]);
    expectTensor(x.grad!, [80, 160, 240]); // 10 * 2y * 2
  });

  it("on a leaf replace what lands in .grad", () => {
    const x = tensor([1, 2]).requiresGrad_();
    x.registerHook((g) => g.add(1));
    x.mul(3).sum().backward();
    expectTensor(x.grad!, [4, 4]);
  });

  it("fire in reverse creation order, leaves last, and can be removed", () => {
    const x = tensor([0.5, 1]).requiresGrad_();
    const order: string[] = [];
    const a = x.mul(2);
    const b = a.exp();
    const c = b.sum();
    x.registerHook(() => void order.push("x"));
    a.registerHook(() => void order.push("a"));
    const remove = b.registerHook(() => void order.push("b-removed"));
    b.registerHook(() => void order.push("b"));
    c.registerHook(() => void order.push("c"));
    remove();
    c.backward();
    expect(order).toEqual(["c", "b", "a", "x"]);
  });

  it("async hooks run with backwardAsync; backward refuses them", async () => {
    const x = tensor([1, 2]).requiresGrad_();
    const y = x.mul(x);
    y.registerHook(async (g) => {
      await new Promise((r) => setTimeout(r, 2));
      return g.mul(0);
    });
    expectThrows(() => y.sum().backward(), GradError, "backwardAsync");
    const x2 = tensor([1, 2]).requiresGrad_();
    const y2 = x2.mul(x2);
    let ran = false;
    y2.registerHook(async (g) => {
      await new Promise((r) => setTimeout(r, 2));
      ran = true;
      return g.mul(3);
    });
    await y2.sum().backwardAsync();
    expect(ran).toBe(true);
    expectTensor(x2.grad!, [6, 12]); // 3 * 2x
  });
});

describe("multi-output primitives", () => {
  it("topk indices carry no gradient; values do", () => {
    const x = tensor([[0.1, 0.9, 0.5]]).requiresGrad_();
    const { values, indices } = x.topk(2);
    values.mul(tensor([[1, 2]])).sum().backward();
    expectTensor(x.grad!, [[0, 1, 2]]);
    expect(indices.dtype).toBe("int64");
  });

  it("apply returns every output of split", () => {
    const parts = apply(P.split, [tensor([1, 2, 3])], { axis: 0, sizes: [2, 1] });
    expect(parts.map((p) => p.toArray())).toEqual([[1, 2], [3]]);
  });
});
