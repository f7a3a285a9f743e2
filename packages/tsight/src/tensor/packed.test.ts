/**
 * Packed weights against references written here from the documented rules, in float64: block quantization and
 * its inverse, and products by int8/int4/bfloat16/float16 matrices against the same product by the dequantized
 * float32 matrix, within the error the kernel's own activation quantization allows.
 */
import { describe, expect, it } from "vitest";
import { DTypeError, PackedWeight, Tensor, functional as F } from "./index.js";
import { rng } from "../../../../test/op-helpers.js";

function randomMatrix(n: number, seed: number, scale = 0.05): Float32Array {
  const rand = rng(seed);
  // A few large values per matrix, as trained weights have: they set their blocks' scales.
  return Float32Array.from({ length: n }, (_, i) => (rand() - 0.5) * scale * (i % 97 === 0 ? 20 : 1));
}

/** Reference quantization of one block, from the rule in packed.ts's header, in float64 except the stored scale. */
function referenceBlock(values: number[], bits: number): { scale: number; zero: number; q: number[]; lo: number; hi: number } {
  const qmax = 2 ** bits - 1;
  const round = (x: number) => Math.floor(x + 0.5); // the rule's rounding: halves up
  const lo = Math.min(0, ...values);
  const hi = Math.max(0, ...values);
  if (hi === lo) return { scale: 1, zero: 2 ** (bits - 1), q: values.map(() => 2 ** (bits - 1)), lo, hi };
  const candidates = (bits === 4 ? [1, 0.95, 0.9, 0.85, 0.8] : [1]).map((f) => {
    const scale = Math.fround((f * (hi - lo)) / qmax);
    const zero = Math.min(qmax, Math.max(0, round((-f * lo) / scale)));
    const q = values.map((v) => Math.min(qmax, Math.max(0, round(v / scale) + zero)));
    const err = values.reduce((e, v, i) => e + (v - (q[i]! - zero) * scale) ** 2, 0);
    return { scale, zero, q, err, lo: f * lo, hi: f * hi };
  });
  return candidates.reduce((best, c) => (c.err < best.err ? c : best));
}

/** Dequantized [rows, cols] matrix by the reference, with each value's block (its scale and clipped range). */
function referenceDequantized(w: Float32Array, rows: number, cols: number, bits: number, block: number): { values: Float64Array; blocks: { scale: number; lo: number; hi: number }[][] } {
  const values = new Float64Array(rows * cols);
  const blocks: { scale: number; lo: number; hi: number }[][] = [];
  for (let r = 0; r < rows; r++) {
    blocks.push([]);
    for (let start = 0; start < cols; start += block) {
      const part = Array.from(w.subarray(r * cols + start, r * cols + Math.min(cols, start + block)));
      const { scale, zero, q, lo, hi } = referenceBlock(part, bits);
      blocks[r]!.push({ scale, lo, hi });
      q.forEach((v, i) => (values[r * cols + start + i] = Math.fround((v - zero) * scale)));
    }
  }
  return { values, blocks };
}
describe("block quantization", () => {
  for (const [format, bits] of [["int8", 8], ["int4", 4]] as const) {
    it(`${format}: dequantized values equal the reference's, each within half a step of the original`, () => {
      // 70 columns: two whole blocks of 32 and a partial one of 6.
      const rows = 9;
      const cols = 70;
      const w = randomMatrix(rows * cols, 11);
      w.fill(0, 0, 32); // an all-zero block
      const packed = PackedWeight.fromFloat32(w, rows, cols, false, format);
      const got = packed.toFloat32();
      const ref = referenceDequantized(w, rows, cols, bits, 32);
      expect(Array.from(got)).toEqual(Array.from(ref.values));
      let clipped = 0;
      for (let i = 0; i < w.length; i++) {
        const { scale, lo, hi } = ref.blocks[Math.floor(i / cols)]![Math.floor((i % cols) / 32)]!;
        if (w[i]! >= lo && w[i]! <= hi) expect(Math.abs(got[i]! - w[i]!)).toBeLessThanOrEqual(scale / 2 + 1e-9);
        else clipped++;
      }
      // int8 never clips; int4 clips a few extremes where that lowers a block's error.
      if (format === "int8") expect(clipped).toBe(0);
      else expect(clipped).toBeGreaterThan(0);
      expect(Array.from(got.subarray(0, 32))).toEqual(new Array(32).fill(0));
      // Bytes: q blocks (padded), a float32 scale per block, a zero point per block (packed two per byte for int4).
      const blocks = 3;
      expect(packed.byteLength).toBe(rows * blocks * ((32 * bits) / 8) + rows * blocks * 4 + rows * Math.ceil((blocks * bits) / 8));
    });

    it(`${format}: a transposed (Conv1D) weight is quantized along its inputs and read back in its own layout`, () => {
      const [inF, outF] = [40, 6];
      const w = randomMatrix(inF * outF, 12); // [in, out]
      const packed = PackedWeight.fromFloat32(w, outF, inF, true, format);
      expect(packed.shape).toEqual([inF, outF]);
      const wt = new Float32Array(inF * outF);
      for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) wt[o * inF + i] = w[i * outF + o]!;
      const ref = referenceDequantized(wt, outF, inF, bits, 32).values;
      const got = packed.toFloat32();
      for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) expect(got[i * outF + o]).toBe(ref[o * inF + i]);
    });
  }

  it("bfloat16 and float16 keep exactly the values they can hold and round the rest to nearest", () => {
    const w = Float32Array.from([1, -2.5, 0.1, 3.0000002, 65504, 1e-8]);
    const bf = PackedWeight.fromFloat32(w, 2, 3, false, "bfloat16").toFloat32();
    expect(Array.from(bf.subarray(0, 2))).toEqual([1, -2.5]);
    // bfloat16 has 8 significant bits: 0.1 rounds to 0.10009765625.
    expect(bf[2]).toBe(0.10009765625);
    const half = PackedWeight.fromFloat32(w, 2, 3, false, "float16").toFloat32();
    expect(half[4]).toBe(65504);
    expect(half[2]).toBe(Math.fround(0.0999755859375));
  });
});

describe("products by packed matrices", () => {
  const [m, rows, cols] = [5, 48, 96];
  const x = randomMatrix(m * cols, 21, 2);

  /** float64 x @ W^T for a [rows, cols] W. */
  function product(w: ArrayLike<number>): Float64Array {
    const y = new Float64Array(m * rows);
    for (let i = 0; i < m; i++) for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let k = 0; k < cols; k++) s += x[i * cols + k]! * w[r * cols + k]!;
      y[i * rows + r] = s;
    }
    return y;
  }

  for (const format of ["int8", "int4"] as const) {
    it(`${format}: within the int8 quantization of the activations (half a step per block) of x @ dequantized(W)^T`, () => {
      const w = randomMatrix(rows * cols, 22);
      const packed = PackedWeight.fromFloat32(w, rows, cols, false, format);
      const deq = packed.toFloat32();
      const got = packed.matmul(x, m);
      const ref = product(deq);
      // MatMulNBits at accuracy level 4 rounds each block of 32 inputs of a row of x to int8 with scale
      // max|x_block| / 127: each input moves by at most half that, so an output moves by at most the sum over
      // blocks of that half-step times the block's sum of |w| (plus float32 accumulation).
      for (let i = 0; i < m; i++) for (let r = 0; r < rows; r++) {
        let bound = 0;
        let magnitude = 0;
        for (let b = 0; b < cols; b += 32) {
          let amax = 0;
          let wsum = 0;
          for (let k = b; k < b + 32; k++) {
            amax = Math.max(amax, Math.abs(x[i * cols + k]!));
            wsum += Math.abs(deq[r * cols + k]!);
            magnitude += Math.abs(x[i * cols + k]! * deq[r * cols + k]!);
          }
          bound += (amax / 127 / 2) * wsum;
        }
        const err = Math.abs(got[i * rows + r]! - ref[i * rows + r]!);
        expect(err).toBeLessThanOrEqual(bound + 1e-5 * magnitude);
      }
      // And the bound is not vacuous: the quantized product is close to the float32 one in absolute terms.
      const exact = product(w);
      const scale = Math.max(...exact.map(Math.abs));
      expect(Math.max(...got.map((v, i) => Math.abs(v - exact[i]!))) / scale).toBeLessThan(format === "int8" ? 0.02 : 0.1);
    });
  }

  for (const format of ["bfloat16", "float16"] as const) {
    it(`${format}: the product by the widened matrix, to float32 accuracy`, () => {
      const packed = PackedWeight.fromFloat32(randomMatrix(rows * cols, 23), rows, cols, false, format);
      const ref = product(packed.toFloat32());
      const got = packed.matmul(x, m);
      for (let i = 0; i < got.length; i++) expect(Math.abs(got[i]! - ref[i]!)).toBeLessThan(1e-5);
    });
  }

  it("F.linear takes a packed weight and a bias, in both layouts; other ops see the widened values", () => {
    const w = randomMatrix(rows * cols, 24);
    const bias = new Tensor("float32", randomMatrix(rows, 25), [rows]);
    const packed = Tensor.fromPacked(PackedWeight.fromFloat32(w, rows, cols, false, "float16"));
    const plain = packed.unpacked();
    const xt = new Tensor("float32", x, [1, m, cols]);
    const a = F.linear(xt, packed, bias).data;
    const b = F.linear(xt, plain, bias).data;
    for (let i = 0; i < a.length; i++) expect(Math.abs((a[i] as number) - (b[i] as number))).toBeLessThan(1e-5);
    expect(packed.mul(2).data).toEqual(plain.mul(2).data);
    expect(packed.isMeta).toBe(false);
    expect(packed.detach().packed).toBe(packed.packed);
  });

  it("an embedding lookup in a packed table widens only its rows, and checks ids", () => {
    const table = PackedWeight.fromFloat32(randomMatrix(10 * 8, 26), 10, 8, false, "int4");
    const weight = Tensor.fromPacked(table);
    const ids = new Tensor("int64", BigInt64Array.from([3n, 0n, -1n]), [1, 3]);
    const rows = F.embedding(ids, weight);
    expect(rows.shape).toEqual([1, 3, 8]);
    const all = table.toFloat32();
    expect(Array.from(rows.data as Float32Array)).toEqual([...all.subarray(24, 32), ...all.subarray(0, 8), ...all.subarray(72, 80)]);
    expect(() => F.embedding(new Tensor("int64", BigInt64Array.from([10n]), [1]), weight)).toThrow(/id 10 is out of range for 10 rows/);
  });

  it("a packed weight cannot require grad; the input's gradient flows through it", () => {
    const weight = Tensor.fromPacked(PackedWeight.fromFloat32(randomMatrix(rows * cols, 27), rows, cols, false, "int8"));
    expect(() => weight.requiresGrad_()).toThrow(DTypeError);
    const xt = new Tensor("float32", x, [m, cols]).requiresGrad_();
    F.linear(xt, weight).sum().backward();
    // d/dx sum(x W^T) = column sums of W: the dequantized W's, since the backward multiplies by the widened matrix.
    const deq = weight.packed!.toFloat32();
    const colSums = Array.from({ length: cols }, (_, k) => Array.from({ length: rows }, (_, r) => deq[r * cols + k]!).reduce((s, v) => s + v, 0));
    const g = xt.grad!.data as Float32Array;
    for (let i = 0; i < m; i++) for (let k = 0; k < cols; k++) expect(Math.abs(g[i * cols + k]! - colSums[k]!)).toBeLessThan(1e-5);
  });
});
