/**
 * Element types a Tensor can hold, and the typed arrays behind them.
 *
 * Computation happens in float32 (weights stored as float16/bfloat16 are widened at load), integers are int64
 * (token ids, positions, indices; stored as BigInt64Array, as ONNX Runtime wants them) or int32, and masks are bool
 * (one byte per element, as ONNX Runtime stores them).
 */
import { DTypeError } from "./errors.js";

export type DType = "float32" | "int64" | "int32" | "bool";

export interface DTypeArrayMap {
  float32: Float32Array;
  int64: BigInt64Array;
  int32: Int32Array;
  bool: Uint8Array;
}
export type TypedArray = DTypeArrayMap[DType];

/**
 * Element types kernels also take, beyond tensors' own: the storage of packed weights (quantized blocks as uint8,
 * float16 bits; bfloat16 only as a graph constant, since ONNX Runtime's JS binding cannot feed it). Never a Tensor's
 * dtype.
 */
export type StorageDType = DType | "uint8" | "uint16" | "float16" | "bfloat16";
export type StorageArray = TypedArray | Uint16Array;

/** ONNX TensorProto.DataType codes, used when building graphs. */
export const onnxCode: Record<StorageDType, number> = { float32: 1, uint8: 2, uint16: 4, int32: 6, int64: 7, bool: 9, float16: 10, bfloat16: 16 };

export const dtypes: readonly DType[] = ["float32", "int64", "int32", "bool"];

export function isDType(name: unknown): name is DType {
  return typeof name === "string" && (dtypes as readonly string[]).includes(name);
}

/** Storage-only types of safetensors files: weights in them are widened to float32 when they load. */
const storedOnly: Readonly<Record<string, string>> = { float16: "F16", half: "F16", bfloat16: "BF16", float64: "F64", double: "F64" };

/**
 * `dtype` if tensors can have it, else a DTypeError listing those they can (the one place that says so). `where`
 * names the call, e.g. "to".
 */
export function checkDType(dtype: unknown, where: string): DType {
  if (isDType(dtype)) return dtype;
  const given = typeof dtype === "string" ? `"${dtype.slice(0, 40)}"` : dtype === null ? "null" : typeof dtype;
  // The table's own names only: "constructor" or "toString" are no dtype either.
  const stored = typeof dtype === "string" && Object.hasOwn(storedOnly, dtype) ? storedOnly[dtype] : undefined;
  const why = stored ? `: tsight computes in float32 (${stored} weights are widened to float32 when a model loads)` : "";
  throw new DTypeError(`${where}: ${given} is not a dtype tsight tensors can have${why}; the dtypes are ${dtypes.map((d) => `"${d}"`).join(", ")}`);
}

export function allocate<D extends DType>(dtype: D, size: number): DTypeArrayMap[D] {
  switch (checkDType(dtype, "tensor")) {
    case "float32":
      return new Float32Array(size) as DTypeArrayMap[D];
    case "int64":
      return new BigInt64Array(size) as DTypeArrayMap[D];
    case "int32":
      return new Int32Array(size) as DTypeArrayMap[D];
    case "bool":
      return new Uint8Array(size) as DTypeArrayMap[D];
  }
}

/** The dtype whose typed array `data` is, or undefined. */
export function dtypeOfArray(data: unknown): DType | undefined {
  if (data instanceof Float32Array) return "float32";
  if (data instanceof BigInt64Array) return "int64";
  if (data instanceof Int32Array) return "int32";
  if (data instanceof Uint8Array) return "bool";
  return undefined;
}

/** Fills a typed array of `dtype` from plain numbers (or bigints, or booleans); see elementOf. */
export function arrayFrom<D extends DType>(dtype: D, values: ArrayLike<number | bigint | boolean>, what = "tensor"): DTypeArrayMap[D] {
  const out = allocate(dtype, values.length);
  const n = values.length;
  // One loop per dtype, the common case (numbers in range) without a call or an allocation per element.
  if (dtype === "float32") for (let i = 0; i < n; i++) (out as Float32Array)[i] = Number(values[i]);
  else if (dtype === "bool") for (let i = 0; i < n; i++) (out as Uint8Array)[i] = isZero(values[i]!) ? 0 : 1;
  else if (dtype === "int32") {
    const o = out as Int32Array;
    for (let i = 0; i < n; i++) {
      const v = values[i]!;
      o[i] = typeof v === "number" && v >= -2147483648 && v < 2147483648 ? v : (elementOf("int32", v, what) as number);
    }
  } else {
    const o = out as BigInt64Array;
    for (let i = 0; i < n; i++) {
      const v = values[i]!;
      if (typeof v === "number" && v >= -9223372036854775808 && v < 9223372036854775808) o[i] = BigInt(Math.trunc(v));
      else o[i] = typeof v === "bigint" && v >= INT64_MIN && v <= INT64_MAX ? v : (elementOf("int64", v, what) as bigint);
    }
  }
  return out;
}

const isZero = (v: number | bigint | boolean): boolean => v === 0 || v === 0n || v === false;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
/** Each integer dtype's range: [min, max] as bigints (a number is in range when min <= trunc(v) < -min). */
const RANGES = { int32: [-(2n ** 31n), 2n ** 31n - 1n], int64: [INT64_MIN, INT64_MAX] } as const;

/**
 * `v` as an element of `dtype`, as PyTorch converts it: truncated toward zero for integers, any nonzero value (NaN
 * too) true for bool. A value an integer dtype cannot hold (NaN, an infinity, past its range) is a RangeError, as
 * PyTorch's "cannot be converted without overflow": it used to wrap (2**63 became -2**63) or become 0.
 */
export function elementOf(dtype: DType, v: number | bigint | boolean, what: string): number | bigint {
  if (dtype === "bool") return isZero(v) ? 0 : 1;
  if (dtype === "float32") return Number(v);
  const [min, max] = RANGES[dtype];
  let fits: boolean;
  let n: number | bigint;
  if (typeof v === "number") {
    n = Math.trunc(v);
    fits = Number.isFinite(v) && n >= Number(min) && n < -Number(min);
  } else {
    n = typeof v === "bigint" ? v : BigInt(v);
    fits = n >= min && n <= max;
  }
  if (!fits) throw new RangeError(`${what}: ${String(v)} cannot be converted to ${dtype} without overflow`);
  return dtype === "int64" ? BigInt(n) : Number(n);
}

/** IEEE half precision bits to float32, for weights stored as F16. */
export function float16ToFloat32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const table = halfTable();
  for (let i = 0; i < src.length; i++) out[i] = table[src[i]!]!;
  return out;
}

let halfLookup: Float32Array | undefined;
function halfTable(): Float32Array {
  if (halfLookup) return halfLookup;
  halfLookup = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v: number;
    if (exp === 0) v = frac * 2 ** -24;
    else if (exp === 31) v = frac ? NaN : Infinity;
    else v = (1 + frac / 1024) * 2 ** (exp - 15);
    halfLookup[h] = sign * v;
  }
  return halfLookup;
}

/** bfloat16 is the top half of a float32: shift the bits up. */
export function bfloat16ToFloat32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  // An Int32Array view: `x << 16` is an int32, stored without conversion (a Uint32Array store converts; 2x slower).
  const bits = new Int32Array(out.buffer, out.byteOffset, out.length);
  const n = src.length;
  for (let i = 0; i < n; i++) bits[i] = src[i]! << 16;
  return out;
}

/** float32 to IEEE half bits, round to nearest even; for writing F16 safetensors. */
export function float32ToFloat16(src: Float32Array, out = new Uint16Array(src.length)): Uint16Array {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < src.length; i++) {
    f[0] = src[i]!;
    const x = u[0]!;
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    let e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
      continue;
    }
    if (e <= 0) {
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      mant |= 0x800000;
      const shift = 14 - e;
      let half = mant >>> shift;
      const rem = mant & ((1 << shift) - 1);
      const mid = 1 << (shift - 1);
      if (rem > mid || (rem === mid && half & 1)) half++;
      out[i] = sign | half;
      continue;
    }
    let half = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
    out[i] = sign | half;
  }
  return out;
}

/** float32 to bfloat16 bits, round to nearest even. */
export function float32ToBfloat16(src: Float32Array, out = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i]!;
    if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) {
      out[i] = (x >>> 16) | 0x40;
      continue;
    }
    out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}
