/**
 * einsum against a float64 evaluation by loops over every index (the definition), forward and gradients (gradcheck),
 * and its errors.
 */
import { describe, expect, it } from "vitest";
import { einsum, ShapeError, DTypeError, Tensor, tensor, withAllocationGuard } from "./index.js";
import { permuteWork } from "./primitives.js";
import { expectThrows, gradcheck, randT } from "../../../../test/op-helpers.js";

/** The definition: out[o] = sum over the other letters of the product of the operands at those indices. */
function reference(equation: string, operands: Tensor[]): { shape: number[]; data: Float64Array } {
  const [lhs, rhs] = equation.replace(/\s/g, "").split("->") as [string, string];
  const terms = lhs.split(",").map((t) => [...t]);
  const size = new Map<string, number>();
  // A size of 1 broadcasts against a letter's size in other operands.
  terms.forEach((t, i) =>
    t.forEach((c, d) => {
      if ((size.get(c) ?? 1) === 1) size.set(c, operands[i]!.shape[d]!);
    }),
  );
  const out = [...rhs];
  const all = [...size.keys()];
  const shape = out.map((c) => size.get(c)!);
  const data = new Float64Array(shape.reduce((a, b) => a * b, 1));
  const values = operands.map((t) => Array.from(t.data as ArrayLike<number>, Number));
  const at = new Map<string, number>();
  const walk = (k: number): void => {
    if (k === all.length) {
      let p = 1;
      terms.forEach((t, i) => {
        let flat = 0;
        t.forEach((c, d) => (flat = flat * operands[i]!.shape[d]! + (operands[i]!.shape[d] === 1 ? 0 : at.get(c)!)));
        p *= values[i]![flat]!;
      });
      let o = 0;
      out.forEach((c, d) => (o = o * shape[d]! + at.get(c)!));
      data[o]! += p;
      return;
    }
    for (let v = 0; v < size.get(all[k]!)!; v++) {
      at.set(all[k]!, v);
      walk(k + 1);
    }
  };
  walk(0);
  return { shape, data };
}

const cases: [string, number[][]][] = [
  ["ij,jk->ik", [[3, 4], [4, 5]]],
  ["bhtd,bhsd->bhts", [[2, 3, 4, 5], [2, 3, 6, 5]]],
  ["bhts,bhsd->bthd", [[2, 3, 4, 6], [2, 3, 6, 5]]],
  ["i,j->ij", [[3], [4]]],
  ["ij->ji", [[3, 4]]],
  ["ij->", [[3, 4]]],
  ["ijk->j", [[2, 3, 4]]],
  ["i,i->", [[5], [5]]],
  ["bpd,dm->bpm", [[2, 3, 4], [4, 6]]],
  ["abc,cd,de->abe", [[2, 3, 4], [4, 5], [5, 2]]],
  // Diagonals, and a letter of size 1 broadcast against its size elsewhere.
  ["ii->i", [[3, 3]]],
  ["ii->", [[3, 3]]],
  ["iij->j", [[2, 2, 3]]],
  ["ijij->ij", [[2, 3, 2, 3]]],
  ["iii,i->i", [[2, 2, 2], [2]]],
  ["ij,jk->ik", [[3, 1], [4, 5]]],
  ["bij,bjk->bik", [[1, 2, 3], [4, 3, 1]]],
  ["ii,i->i", [[1, 1], [3]]],
  ["ij,jk,kl->il", [[2, 1], [3, 4], [1, 2]]],
];

describe("einsum", () => {
  it.each(cases)("%s equals the loops of its definition, and its gradients gradcheck", (equation, shapes) => {
    const operands = shapes.map((s, i) => randT(s, 900 + i, { lo: -1, hi: 1 }));
    const got = einsum(equation, ...operands);
    const want = reference(equation, operands);
    expect(got.shape).toEqual(want.shape);
    const data = Array.from(got.data as Float32Array);
    data.forEach((v, k) => expect(Math.abs(v - want.data[k]!), `${equation} at ${k}`).toBeLessThan(1e-5));
    gradcheck((...xs: Tensor[]) => einsum(equation, ...xs), operands);
  });

  it("takes the output left out (letters used once, sorted), a list of operands, and '...' broadcast across operands", () => {
    const a = randT([3, 4], 910), b = randT([4, 5], 911);
    expect(einsum("ij,jk", a, b).toArray()).toEqual(einsum("ij,jk->ik", [a, b]).toArray());
    expect(einsum("ba", a).shape).toEqual([4, 3]);
    const x = randT([2, 3, 4, 5], 912), w = randT([5, 6], 913);
    const viaEllipsis = einsum("...d,dm->...m", x, w);
    expect(Math.max(...Array.from(viaEllipsis.sub(x.matmul(w)).abs().data as Float32Array))).toBeLessThan(1e-5);
    // "..." of [3, 1] against [2, 1, 4]: broadcast, and the gradient summed back to each operand's own.
    gradcheck((p, q) => einsum("...i,...i->...", p, q), [randT([3, 1, 4], 914), randT([2, 1, 5, 4], 915)]);
    gradcheck((p, q) => einsum("i...,i->...", p, q), [randT([3, 2, 1], 916), randT([3], 917)]);
  });

  // torch 2.13: x_k = (torch.arange(n) * step + start).reshape(shape) with the start and step given, out =
  // torch.einsum(eq, *xs), then (out * w).sum().backward() with w = torch.arange(1, out.numel() + 1).reshape(out.shape)
  // (2 for a 0-d out); `out` and `grads` are out.flatten() and each x_k.grad.flatten().
  const torchCases: { eq: string; xs: [number[], number, number][]; shape: number[]; out: number[]; grads: number[][] }[] = [
    { eq: "ii->i", xs: [[[3, 3], -2, 0.5]], shape: [3], out: [-2, 0, 2], grads: [[1, 0, 0, 0, 2, 0, 0, 0, 3]] },
    { eq: "ii->", xs: [[[3, 3], -2, 0.5]], shape: [], out: [0], grads: [[2, 0, 0, 0, 2, 0, 0, 0, 2]] },
    { eq: "ii", xs: [[[3, 3], -2, 0.5]], shape: [], out: [0], grads: [[2, 0, 0, 0, 2, 0, 0, 0, 2]] },
    { eq: "iij->j", xs: [[[2, 2, 3], -1.5, 0.5]], shape: [3], out: [1.5, 2.5, 3.5], grads: [[1, 2, 3, 0, 0, 0, 0, 0, 0, 1, 2, 3]] },
    { eq: "jii->ij", xs: [[[3, 2, 2], -1, 0.5]], shape: [2, 3], out: [-1, 1, 3, 0.5, 2.5, 4.5], grads: [[1, 0, 0, 4, 2, 0, 0, 5, 3, 0, 0, 6]] },
    { eq: "ij,jk->ik", xs: [[[3, 1], 1, 0.5], [[4, 2], -2, 0.5]], shape: [3, 2], out: [-2, 0, -3, 0, -4, 0], grads: [[-2, -6, -10], [15.5, 20, 15.5, 20, 15.5, 20, 15.5, 20]] },
    { eq: "i,i->i", xs: [[[1], 3, 0.5], [[4], -1, 0.5]], shape: [4], out: [-3, -1.5, 0, 1.5], grads: [[0], [3, 6, 9, 12]] },
    {
      eq: "bij,bjk->bik",
      xs: [[[1, 2, 3], -1, 0.5], [[2, 3, 2], 0.5, 0.25]],
      shape: [2, 2, 2],
      out: [-1, -1.375, 3.5, 4.25, -3.25, -3.625, 8, 8.75],
      grads: [[25.5, 32.5, 39.5, 36.5, 47.5, 58.5], [0.5, 0, 2.5, 3, 4.5, 6, -1.5, -2, 4.5, 5, 10.5, 12]],
    },
    { eq: "...ij->ij", xs: [[[2, 2, 3], -2, 0.5]], shape: [2, 3], out: [-1, 0, 1, 2, 3, 4], grads: [[1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]] },
    { eq: "...ij->ji", xs: [[[2, 2, 3], -2, 0.5]], shape: [3, 2], out: [-1, 2, 0, 3, 1, 4], grads: [[1, 3, 5, 2, 4, 6, 1, 3, 5, 2, 4, 6]] },
    { eq: "ii,i->i", xs: [[[1, 1], 2, 0.5], [[3], -1, 0.5]], shape: [3], out: [-2, -1, 0], grads: [[-2], [2, 4, 6]] },
    { eq: "...i,i...->i", xs: [[[2, 3], -1, 0.5], [[3, 2], 1, 0.5]], shape: [3], out: [-0.25, 1.5, 5.25], grads: [[1, 4, 9, 1.5, 5, 10.5], [-1, 0.5, -1, 2, 0, 4.5]] },
  ];
  it.each(torchCases)("takes $eq as torch.einsum does (diagonals, size-1 letters broadcast, '...' summed): torch's values and gradients", ({ eq, xs, shape, out, grads }) => {
    const operands = xs.map(([s, start, step]) => {
      const n = s.reduce((a, b) => a * b, 1);
      return tensor(Array.from({ length: n }, (_, k) => start + k * step)).reshape(s).requiresGrad_();
    });
    const y = einsum(eq, ...operands);
    expect(y.shape).toEqual(shape);
    expect(y.toArray()).toEqual(out);
    const n = y.numel();
    const w = y.ndim ? tensor(Array.from({ length: n }, (_, k) => k + 1)).reshape(shape) : tensor(2);
    y.mul(w).sum().backward();
    expect(operands.map((x) => x.grad!.toArray())).toEqual(grads);
  });

  it("takes a diagonal with an Infinity or NaN off it, as torch does; takes int64 diagonals", () => {
    // torch.einsum("ii->i", torch.tensor([[1., inf], [nan, 2.]])) is [1., 2.]
    expect(einsum("ii->i", tensor([[1, Infinity], [NaN, 2]])).toArray()).toEqual([1, 2]);
    const ints = einsum("ii->i", tensor([[1, 2], [3, 4]], "int64"));
    expect([ints.dtype, ints.toArray()]).toEqual(["int64", [1, 4]]);
  });

  it("tells an allocation guard of every op it runs, the plain form's too, and the kernel's flops", () => {
    const [x, w] = [randT([4, 4, 1], 930), randT([6, 5], 931)];
    const seen: number[][] = [];
    const y = withAllocationGuard((bytes, flops) => void seen.push([bytes, flops]), () => einsum("iij,jk->ik", x, w));
    expect(y.shape).toEqual([4, 5]);
    // The diagonal's masked copy of x (float32 [4, 4, 1]), then one kernel "i,jk->ik": 2 * 4 * 6 * 5 flops, and the
    // permutes the kernel may make of its operands and result.
    expect(seen).toContainEqual([4 * 4 * 4, 0]);
    expect(seen).toContainEqual([4 * 5 * 4, 2 * 4 * 6 * 5 + permuteWork([4]) + permuteWork([6, 5]) + permuteWork([4, 5])]);
  });

  it("refuses what it cannot take with ShapeErrors and DTypeErrors naming the operand or letter", () => {
    const a = randT([3, 4], 920);
    expectThrows(() => einsum("ij,jk->ik", a, randT([5, 2], 921)), ShapeError, '"j" is 4', "operand 1");
    expectThrows(() => einsum("ijk->i", a), ShapeError, "operand 0 has 2 dims");
    // torch: "subscript i is repeated for operand 0 but the sizes don't match, 3 != 2"; "output subscript i appears
    // more than once in the output"; "subscript j has size 3 for operand 1 which does not broadcast with previously
    // seen size 2".
    expectThrows(() => einsum("ii->i", randT([2, 3], 922)), ShapeError, "operand 0", '"i" twice', "2 and 3");
    expectThrows(() => einsum("ij->ii", randT([2, 2], 923)), ShapeError, "the output", '"i" twice');
    expectThrows(() => einsum("ij,jk->ik", randT([3, 2], 924), randT([3, 5], 925)), ShapeError, '"j" is 2', "operand 1");
    expectThrows(() => einsum("...i,...i->...", randT([2, 3], 926), randT([4, 3], 927)), ShapeError, 'dim 0 of "..."', "is 2", "4 in operand 1");
    expectThrows(() => einsum("ij->iz", a), ShapeError, '"z"');
    expectThrows(() => einsum("ij,jk", a), ShapeError, "2 operand terms for 1 operands");
    expectThrows(() => einsum("i$->i", a), ShapeError, '"$"');
    expectThrows(() => einsum("ij,jk->ik", a, tensor([[1, 2], [3, 4], [5, 6], [7, 8]], "int64")), DTypeError, "one dtype");
  });
});
