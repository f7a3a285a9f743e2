/**
 * Test helpers for the tensor layer (tinygrad's `helper_test_op` role): forward checks against plain-JS
 * references and gradient checks against central finite differences.
 *
 * References work on `Nd`, a float64 n-d array written with loops here, so a test never compares tsight with
 * itself. `gradcheck` seeds backward with a random projection of the output, so every output element's gradient
 * counts, and sums the projected outputs in float64. Failures throw plain Errors (no test-runner import).
 */
import { noGrad } from "../packages/tsight/src/tensor/autograd.js";
import { Tensor } from "../packages/tsight/src/tensor/tensor.js";

// #region Nd: the reference side

/** A dense row-major float64 array; the reference implementations compute on these. */
export interface Nd {
  shape: number[];
  data: Float64Array;
}

export const numel = (shape: readonly number[]): number => shape.reduce((n, d) => n * d, 1);

export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

/** Multi-index of flat offset `i`. */
export function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = i % shape[d]!;
    i = Math.floor(i / shape[d]!);
  }
  return idx;
}

export function ravel(idx: readonly number[], shape: readonly number[]): number {
  let off = 0;
  for (let d = 0; d < shape.length; d++) off = off * shape[d]! + idx[d]!;
  return off;
}

/** An Nd of `shape` whose element at each multi-index is `f(index)`. */
export function build(shape: readonly number[], f: (idx: number[]) => number): Nd {
  const data = new Float64Array(numel(shape));
  for (let i = 0; i < data.length; i++) data[i] = f(unravel(i, shape));
  return { shape: [...shape], data };
}

export function at(a: Nd, idx: readonly number[]): number {
  return a.data[ravel(idx, a.shape)]!;
}

/** Nested arrays (or a number) to an Nd. */
export function nd(values: unknown): Nd {
  const shape: number[] = [];
  for (let v = values; Array.isArray(v); v = v[0]) shape.push(v.length);
  const flat: number[] = [];
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(walk);
    else flat.push(Number(v));
  };
  walk(values);
  return { shape, data: Float64Array.from(flat) };
}

/** A tensor's values as an Nd (int64 and bool read as numbers). */
export function fromTensor(t: Tensor): Nd {
  return { shape: [...t.shape], data: Float64Array.from(t.data as ArrayLike<number | bigint>, Number) };
}

export function map(a: Nd, f: (x: number, idx: number[]) => number): Nd {
  return build(a.shape, (idx) => f(at(a, idx), idx));
}

/** The broadcast shape of several shapes, NumPy rules, written independently of tsight's. */
export function broadcast(...shapes: (readonly number[])[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const s of shapes) {
      const v = s[s.length - rank + i] ?? 1;
      if (v !== 1) {
        if (d !== 1 && d !== v) throw new Error(`reference: shapes do not broadcast`);
        d = v;
      }
    }
    out.push(d);
  }
  return out;
}

/** The element of `a` that position `idx` of a broadcast result reads. */
function bcAt(a: Nd, idx: readonly number[]): number {
  const lead = idx.length - a.shape.length;
  return at(
    a,
    a.shape.map((d, i) => (d === 1 ? 0 : idx[lead + i]!)),
  );
}

/** Elementwise over broadcast operands. */
export function zip(arrays: Nd[], f: (...xs: number[]) => number): Nd {
  const shape = broadcast(...arrays.map((a) => a.shape));
  return build(shape, (idx) => f(...arrays.map((a) => bcAt(a, idx))));
}

/** Reduces `axes` (all when undefined; negative allowed) with `f` over the values of each reduced group. */
export function reduce(a: Nd, axes: number | number[] | undefined, keepdim: boolean, f: (values: number[]) => number): Nd {
  const r = a.shape.length;
  const list = axes === undefined ? a.shape.map((_, i) => i) : (typeof axes === "number" ? [axes] : axes).map((x) => (x < 0 ? x + r : x));
  const outFull = a.shape.map((d, i) => (list.includes(i) ? 1 : d));
  const groups = new Map<number, number[]>();
  for (let i = 0; i < a.data.length; i++) {
    const idx = unravel(i, a.shape);
    const key = ravel(
      idx.map((v, d) => (list.includes(d) ? 0 : v)),
      outFull,
    );
    let g = groups.get(key);
    if (!g) groups.set(key, (g = []));
    g.push(a.data[i]!);
  }
  const res = build(outFull, (idx) => f(groups.get(ravel(idx, outFull)) ?? []));
  return keepdim ? res : { shape: a.shape.filter((_, i) => !list.includes(i)), data: res.data };
}

/** Applies a vector function along one axis; the axis may change length. */
export function alongAxis(a: Nd, axis: number, f: (vec: number[]) => number[]): Nd {
  const ax = axis < 0 ? axis + a.shape.length : axis;
  const lines = new Map<string, number[]>();
  const outer = a.shape.map((d, i) => (i === ax ? 1 : d));
  for (let i = 0; i < numel(outer); i++) {
    const base = unravel(i, outer);
    const vec: number[] = [];
    for (let j = 0; j < a.shape[ax]!; j++) vec.push(at(a, base.map((v, d) => (d === ax ? j : v))));
    lines.set(base.join(","), f(vec));
  }
  const len = lines.size ? [...lines.values()][0]!.length : a.shape[ax]!;
  const shape = a.shape.map((d, i) => (i === ax ? len : d));
  return build(shape, (idx) => lines.get(idx.map((v, d) => (d === ax ? 0 : v)).join(","))![idx[ax]!]!);
}

export function transposeNd(a: Nd, perm: number[]): Nd {
  const shape = perm.map((p) => a.shape[p]!);
  return build(shape, (idx) => {
    const src = new Array<number>(perm.length);
    perm.forEach((p, i) => (src[p] = idx[i]!));
    return at(a, src);
  });
}

/** Batched matrix product of rank >= 2 operands with broadcast batch dims. */
export function matmulNd(a: Nd, b: Nd): Nd {
  const [n, k] = a.shape.slice(-2) as [number, number];
  const m = b.shape.at(-1)!;
  const batch = broadcast(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const pick = (x: Nd, bIdx: number[], i: number, j: number): number => {
    const xb = x.shape.slice(0, -2);
    const lead = bIdx.length - xb.length;
    return at(x, [...xb.map((d, q) => (d === 1 ? 0 : bIdx[lead + q]!)), i, j]);
  };
  return build([...batch, n, m], (idx) => {
    const bIdx = idx.slice(0, -2);
    const [i, j] = idx.slice(-2) as [number, number];
    let s = 0;
    for (let q = 0; q < k; q++) s += pick(a, bIdx, i, q) * pick(b, bIdx, q, j);
    return s;
  });
}

/** erf to ~1e-15 (series near 0, continued fraction of erfc beyond). */
export function erfRef(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let term = ax,
      sum = ax;
    for (let n = 1; n < 100; n++) {
      term *= (-ax * ax) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17) break;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc by Lentz's continued fraction
  let f = ax,
    c = ax,
    d = 0;
  for (let i = 1; i < 200; i++) {
    const an = i / 2;
    d = ax + an * d;
    d = 1 / d;
    c = ax + an / c;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

// #endregion
// #region random inputs

/** mulberry32: a seeded uniform [0, 1) source independent of tsight's generator. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface RandOptions {
  lo?: number;
  hi?: number;
  /** Keep |x| at least this far from zero (for abs, relu, sign kinks); keeps the sign from [lo, hi]. */
  away?: number;
}

/** A float32 tensor of uniform values in [lo, hi), seeded. */
export function randT(shape: readonly number[], seed: number, { lo = -1, hi = 1, away = 0 }: RandOptions = {}): Tensor {
  const r = rng(seed);
  const data = new Float32Array(numel(shape));
  for (let i = 0; i < data.length; i++) {
    let v = lo + (hi - lo) * r();
    if (away > 0 && Math.abs(v) < away) v = v < 0 ? -away - Math.abs(v) : away + v;
    data[i] = v;
  }
  return new Tensor("float32", data, shape);
}

/** Distinct float32 values in random order (no ties for max/min/topk). */
export function distinctT(shape: readonly number[], seed: number, spacing = 0.25): Tensor {
  const r = rng(seed);
  const n = numel(shape);
  const vals = Array.from({ length: n }, (_, i) => (i - n / 2) * spacing);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [vals[i], vals[j]] = [vals[j]!, vals[i]!];
  }
  return new Tensor("float32", Float32Array.from(vals), shape);
}

// #endregion
// #region checks

export interface Tolerance {
  atol?: number;
  rtol?: number;
}

/** First element where `actual` and `expected` differ beyond tolerance, or null. NaN matches NaN, inf matches inf. */
function firstMismatch(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number): number | null {
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!,
      e = expected[i]!;
    if (Number.isNaN(e) ? Number.isNaN(a) : a === e || Math.abs(a - e) <= atol + rtol * Math.abs(e)) continue;
    return i;
  }
  return null;
}

/** Asserts a tensor's shape (and dtype, when given) and values against a reference. */
export function expectTensor(actual: Tensor, expected: unknown, { atol = 1e-5, rtol = 1e-5, dtype }: Tolerance & { dtype?: string } = {}, label = "tensor"): void {
  const ref = isNd(expected) ? expected : nd(expected);
  if (!sameList(actual.shape, ref.shape)) throw new Error(`${label}: shape [${actual.shape}], expected [${ref.shape}]`);
  if (dtype && actual.dtype !== dtype) throw new Error(`${label}: dtype ${actual.dtype}, expected ${dtype}`);
  const got = fromTensor(actual).data;
  const bad = firstMismatch(got, ref.data, atol, rtol);
  if (bad !== null) {
    throw new Error(`${label}: element ${bad} (index [${unravel(bad, ref.shape)}]) is ${got[bad]}, expected ${ref.data[bad]} (atol ${atol}, rtol ${rtol})`);
  }
}

const sameList = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

function isNd(v: unknown): v is Nd {
  return typeof v === "object" && v !== null && "shape" in v && (v as Nd).data instanceof Float64Array;
}

/**
 * Checks one op's forward values: `tsightFn` on the tensors against `referenceFn` on their values as Nd arrays.
 * Either side may return several outputs (an array), compared pairwise.
 */
export function checkOp(
  name: string,
  inputs: Tensor[],
  tsightFn: (...xs: Tensor[]) => Tensor | Tensor[],
  referenceFn: (...xs: Nd[]) => Nd | Nd[],
  options: Tolerance & { dtype?: string } = {},
): void {
  const out = tsightFn(...inputs);
  const ref = referenceFn(...inputs.map(fromTensor));
  const outs = Array.isArray(out) ? out : [out];
  const refs = Array.isArray(ref) ? ref : [ref];
  if (outs.length !== refs.length) throw new Error(`${name}: ${outs.length} outputs, expected ${refs.length}`);
  outs.forEach((o, i) => expectTensor(o, refs[i], { atol: 1e-5, rtol: 1e-5, ...options }, outs.length > 1 ? `${name} output ${i}` : name));
}

export interface GradcheckOptions extends Tolerance {
  /** Finite-difference step (default 1e-2, suited to float32 forwards). */
  eps?: number;
  /** Which inputs to differentiate (default: every float32 input). */
  wrt?: number[];
  seed?: number;
}

/**
 * Checks every differentiated input's analytic gradient against central finite differences.
 *
 * Backward is seeded with a random projection r of each output, so the checked quantity is L = sum(out * r),
 * summed in float64 here; the finite difference divides by the step actually taken in float32. A missing gradient
 * (null) counts as zeros, so a rule that forgets an input fails. Throws naming the input, element and both values.
 */
export function gradcheck(fn: (...xs: Tensor[]) => Tensor | Tensor[], inputs: Tensor[], options: GradcheckOptions = {}): void {
  const { eps = 1e-2, atol = 2e-3, rtol = 2e-2, seed = 1234 } = options;
  const wrt = options.wrt ?? inputs.flatMap((t, i) => (t.dtype === "float32" ? [i] : []));
  const base = inputs.map((t) => new Tensor(t.dtype, t.data.slice(), t.shape));
  const outputsOf = (xs: Tensor[]): Tensor[] => {
    const o = fn(...xs);
    return Array.isArray(o) ? o : [o];
  };

  // Analytic: backward once per output with its projection; leaf grads accumulate across the calls.
  const leaves = base.map((t, i) => (wrt.includes(i) ? new Tensor("float32", (t.data as Float32Array).slice(), t.shape).requiresGrad_() : t));
  const outs = outputsOf(leaves);
  const r = rng(seed);
  const projections = outs.map((o) => Float32Array.from({ length: o.numel() }, () => 2 * r() - 1));
  let backwards = 0;
  outs.forEach((o, k) => {
    if (o.dtype !== "float32" || !o.requiresGrad) return;
    o.backward(new Tensor("float32", projections[k]!, o.shape));
    backwards++;
  });
  if (backwards === 0) throw new Error("gradcheck: no output requires grad");

  const loss = (xs: Tensor[]): number =>
    noGrad(() => {
      let s = 0;
      outputsOf(xs).forEach((o, k) => {
        if (o.dtype !== "float32") return;
        const d = o.data as Float32Array;
        const p = projections[k]!;
        for (let i = 0; i < d.length; i++) s += d[i]! * p[i]!;
      });
      return s;
    });

  for (const i of wrt) {
    const leaf = leaves[i]!;
    const analytic = leaf.grad;
    if (analytic && (!sameList(analytic.shape, leaf.shape) || analytic.dtype !== "float32")) {
      throw new Error(`gradcheck: input ${i}'s gradient is ${analytic.dtype} [${analytic.shape}], expected float32 [${leaf.shape}]`);
    }
    const ga = analytic ? (analytic.data as Float32Array) : new Float32Array(leaf.numel());
    const x0 = base[i]!.data as Float32Array;
    for (let j = 0; j < x0.length; j++) {
      const plus = x0.slice(),
        minus = x0.slice();
      plus[j] = x0[j]! + eps;
      minus[j] = x0[j]! - eps;
      const withInput = (data: Float32Array) => base.map((t, q) => (q === i ? new Tensor("float32", data, t.shape) : t));
      const numeric = (loss(withInput(plus)) - loss(withInput(minus))) / (plus[j]! - minus[j]!);
      const a = ga[j]!;
      if (!(Math.abs(a - numeric) <= atol + rtol * Math.abs(numeric))) {
        throw new Error(`gradcheck: input ${i} element ${j} (index [${unravel(j, leaf.shape)}]): analytic ${a}, numeric ${numeric}${analytic ? "" : " (no gradient reached this input)"}`);
      }
    }
  }
}

/** Asserts that `fn` throws an instance of `type` whose message contains every fragment. */
export function expectThrows(fn: () => unknown, type: abstract new (...args: never[]) => Error, ...fragments: string[]): Error {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof type)) throw new Error(`expected a ${type.name}, got ${err === undefined ? "no error" : String(err)}`);
  for (const f of fragments) if (!err.message.includes(f)) throw new Error(`${type.name} message "${err.message}" does not contain "${f}"`);
  return err;
}

// #endregion
