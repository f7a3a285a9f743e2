/**
 * Seeded randomness: the same seed gives the same numbers on every machine (sampling, random weights in benches).
 * xoshiro128** for uniform 32-bit integers, seeded through splitmix32; Box-Muller for normals.
 */
import { Tensor } from "./tensor.js";
import { ShapeError } from "./errors.js";
import { checkShape, sizeOf } from "./shape.js";

export class Generator {
  private s = new Uint32Array(4);

  constructor(seed = 0) {
    this.manualSeed(seed);
  }

  manualSeed(seed: number): this {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    return this;
  }

  /** Uniform integer in [0, 2^32). */
  nextUint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result;
  }

  /** Uniform float in [0, 1). */
  random(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Standard normal. */
  normal(): number {
    let u = 0;
    while (u === 0) u = this.random();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.random());
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** The generator used when none is passed. */
export const defaultGenerator = new Generator(0);

export function manualSeed(seed: number): void {
  defaultGenerator.manualSeed(seed);
}

/** Standard-normal float32 tensor. */
export function randn(shape: readonly number[], generator: Generator = defaultGenerator): Tensor {
  const data = new Float32Array(sizeOf(checkShape("random", shape)));
  for (let i = 0; i < data.length; i++) data[i] = generator.normal();
  return new Tensor("float32", data, shape);
}

/** Uniform [0, 1) float32 tensor. */
export function rand(shape: readonly number[], generator: Generator = defaultGenerator): Tensor {
  const data = new Float32Array(sizeOf(checkShape("random", shape)));
  for (let i = 0; i < data.length; i++) data[i] = generator.random();
  return new Tensor("float32", data, shape);
}

/** Integers drawn uniformly from [low, high), int64. */
export function randint(low: number, high: number, shape: readonly number[], generator: Generator = defaultGenerator): Tensor {
  if (!Number.isSafeInteger(low) || !Number.isSafeInteger(high) || high <= low) throw new ShapeError(`randint: low and high must be whole numbers with low < high, got ${low} and ${high}`);
  const data = new BigInt64Array(sizeOf(checkShape("randint", shape)));
  const span = high - low;
  for (let i = 0; i < data.length; i++) data[i] = BigInt(low + Math.floor(generator.random() * span));
  return new Tensor("int64", data, shape);
}

/** A random permutation of 0 .. n-1, int64 (Fisher-Yates with the generator). */
export function randperm(n: number, generator: Generator = defaultGenerator): Tensor {
  if (!Number.isSafeInteger(n) || n < 0) throw new ShapeError(`randperm: n must be a whole number of 0 or more, got ${n}`);
  checkShape("randperm", [n]);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(generator.random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return new Tensor("int64", BigInt64Array.from(order, BigInt), [n]);
}
