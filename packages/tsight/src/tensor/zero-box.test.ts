import { describe, expect, it } from "vitest";
import { Tensor, noGrad, tensor } from "./index.js";
import { linear } from "./functional.js";
import { slice } from "./tensor.js";
import { matmulT } from "./primitives.js";
import { boxOf, boxedProduct, paddedSlice, sumOfBoxed } from "./zero-box.js";
import { randT } from "../../../../test/op-helpers.js";

/** Bit for bit, signs of zero included. */
function expectSameBits(a: Tensor, b: Tensor): void {
  expect(a.shape).toEqual(b.shape);
  const x = a.data as Float32Array;
  const y = b.data as Float32Array;
  let differ = 0;
  for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) differ++;
  expect(differ).toBe(0);
}

/** The gradient of every input of `f(...inputs)` summed, by a backward pass. */
function gradsOf(f: (...xs: Tensor[]) => Tensor, inputs: Tensor[]): Tensor[] {
  const leaves = inputs.map((x) => x.clone().requiresGrad_());
  f(...leaves).backward();
  return leaves.map((l) => l.grad!);
}

describe("gradients zero outside a box (zero-box.ts)", () => {
  // A logit difference at the last position, as attribution patching takes it, through an output layer: what the
  // boxes are for. The same loss as a product with a one-hot mask has a dense gradient all the way, op by op.
  const [rows, vocab, width] = [64, 1000, 48];
  const h = randT([1, rows, width], 1);
  const w = randT([vocab, width], 2);

  it("a slice's gradient is boxed, and the output layer's input gradient is the dense path's", () => {
    const viaSlices = (x: Tensor) => {
      const logits = x.reshape(rows, width).matmul(w.transpose(0, 1)).reshape(1, rows, vocab);
      return logits.index(0, -1, 5).sub(logits.index(0, -1, 7));
    };
    const viaMask = (x: Tensor) => {
      const mask = Tensor.zeros([1, rows, vocab]).put([0, -1, 5], 1).put([0, -1, 7], -1);
      return x.reshape(rows, width).matmul(w.transpose(0, 1)).reshape(1, rows, vocab).mul(mask).sum();
    };
    const [boxed] = gradsOf(viaSlices, [h]);
    const [dense] = gradsOf(viaMask, [h]);
    // One nonzero row (the last), equal to the dense product's within its summation order (two terms: exactly).
    expect(boxOf(boxed!)).toEqual({ r0: rows - 1, r1: rows, c0: 0, c1: width });
    expectSameBits(boxed!, dense!);
  });

  it("a linear layer's input gradient through a boxed gradient matches the dense one", () => {
    // Hugging Face's Linear (weight [out, in]) and GPT-2's Conv1D (weight [in, out]).
    for (const transposed of [false, true]) {
      const weight = transposed ? w.transpose(0, 1).contiguous() : w;
      const out = (x: Tensor) => {
        const y = transposed ? x.reshape(rows, width).matmul(weight) : linear(x.reshape(rows, width), weight);
        return y.reshape(1, rows, vocab);
      };
      const [boxed] = gradsOf((x) => out(x).index(0, slice(2, 4), slice(10, 31, 10)).sum(), [h]);
      const mask = Tensor.zeros([1, rows, vocab]).put([0, slice(2, 4), slice(10, 31, 10)], 1);
      const [dense] = gradsOf((x) => out(x).mul(mask).sum(), [h]);
      expect(boxed!.shape).toEqual(dense!.shape);
      const [x, y] = [boxed!.data as Float32Array, dense!.data as Float32Array];
      for (let i = 0; i < x.length; i++) expect(Math.abs(x[i]! - y[i]!)).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(y[i]!)));
    }
  });

  it("sums of boxed gradients are the dense sums, bit for bit, with the union as box", () => {
    const big = [2, 100, 300];
    const g1 = paddedSlice(big, { starts: [1, 10, 5], stops: [2, 12, 9], steps: [1, 1, 1] }, randT([1, 2, 4], 3))!;
    const g2 = paddedSlice(big, { starts: [1, 11, 7], stops: [2, 20, 30], steps: [1, 3, 2] }, randT([1, 3, 12], 4))!;
    expect(boxOf(g1)).toEqual({ r0: 110, r1: 112, c0: 5, c1: 9 });
    expect(boxOf(g2)).toEqual({ r0: 111, r1: 118, c0: 7, c1: 30 });
    // The padded slices are what zeros with the slice assigned give.
    expectSameBits(g1, Tensor.zeros(big).sliceAssign({ starts: [1, 10, 5], stops: [2, 12, 9], steps: [1, 1, 1] }, randT([1, 2, 4], 3)));
    const sum = sumOfBoxed(g1, g2)!;
    expectSameBits(sum, noGrad(() => g1.clone().add(g2.clone())));
    expect(boxOf(sum)).toEqual({ r0: 110, r1: 118, c0: 5, c1: 30 });
    // A sum with a dense tensor is not made here.
    expect(sumOfBoxed(g1, randT(big, 5))).toBeNull();
  });

  it("a product keeps the box's rows, and a weight holding an infinity or NaN is multiplied whole, as PyTorch does", () => {
    const g = paddedSlice([40, 500], { starts: [39, 3], stops: [40, 6], steps: [1, 1] }, tensor([[1, -0, 2]]))!;
    const b = randT([500, 16], 6);
    const y = boxedProduct(g, b, false, (x, z) => x.matmul(z))!;
    expect(boxOf(y)).toEqual({ r0: 39, r1: 40, c0: 0, c1: 16 });
    const dense = g.clone().matmul(b);
    expectSameBits(y, dense);
    // The same through matmulT with the weight transposed.
    expectSameBits(matmulT(g, b.transpose(0, 1).contiguous(), false, true), dense);
    // An infinity in a weight row the box does not meet: 0 x inf is NaN in every row of the dense product, and so here.
    for (const bad of [Infinity, NaN]) {
      const w = b.clone().put([100, 0], bad);
      expect(boxedProduct(g, w, false, (x, z) => x.matmul(z))).toBeNull();
      const got = matmulT(g, w, false, false).data as Float32Array;
      expect(Number.isNaN(got[0])).toBe(true);
      expect(Number.isNaN(got[39 * 16])).toBe(true);
    }
  });

  it("a slice of a tensor with no values (meta) has a meta gradient, as before", () => {
    const x = Tensor.meta("float32", [64, 2000]).requiresGrad_();
    x.index(-1, slice(0, 3)).mul(Tensor.meta("float32", [3])).sum().backward();
    expect(x.grad!.isMeta).toBe(true);
    expect(x.grad!.shape).toEqual([64, 2000]);
  });

  it("a reshape keeps the box only where the last dim stays", () => {
    const g = paddedSlice([4, 50, 400], { starts: [3, 49, 0], stops: [4, 50, 10], steps: [1, 1, 1] }, randT([1, 1, 10], 7))!;
    const flat = g.reshape(200, 400);
    expect(boxOf(flat)).toEqual(boxOf(g));
    expect(boxOf(g.reshape(4, 20000))).toBeUndefined();
    // Read, a reshape shares its source's array (one array for both, as for any reshape).
    expect(flat.data).toBe(g.data);
  });

  it("a boxed tensor makes its values when read, once, and they are the dense ones", () => {
    const g = paddedSlice([300, 200], { starts: [299, 10], stops: [300, 14], steps: [1, 1] }, tensor([[1, 2, 3, 4]]))!;
    const dense = Tensor.zeros([300, 200]).sliceAssign({ starts: [299, 10], stops: [300, 14], steps: [1, 1] }, tensor([[1, 2, 3, 4]]));
    expect(g.isMeta).toBe(false);
    const first = g.data;
    expect(g.data).toBe(first);
    expectSameBits(g, dense);
    expectSameBits(g.detach(), dense);
  });

  it("small tensors and large regions are not boxed", () => {
    expect(paddedSlice([10, 10], { starts: [9, 0], stops: [10, 10], steps: [1, 1] }, randT([1, 10], 8))).toBeNull();
    expect(paddedSlice([200, 200], { starts: [0, 0], stops: [100, 200], steps: [1, 1] }, randT([100, 200], 9))).toBeNull();
  });
});
