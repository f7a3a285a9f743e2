/**
 * einsum against a float64 evaluation by loops over every index (the definition), forward and gradients (gradcheck),
 * and its errors.
 */
import { describe, expect, it } from "vitest";
import { einsum, ShapeError, DTypeError, Tensor, tensor } from "./index.js";
import { expectThrows, gradcheck, randT } from "../../../../test/op-helpers.js";

/** The definition: out[o] = sum over the other letters of the product of the operands at those indices. */
function reference(equation: string, operands: Tensor[]): { shape: number[]; data: Float64Array } {
  const [lhs, rhs] = equation.replace(/\s/g, "").split("->") as [string, string];
  const terms = lhs.split(",").map((t) => [...t]);
  const size = new Map<string, number>();
  terms.forEach((t, i) => t.forEach((c, d) => size.set(c, operands[i]!.shape[d]!)));
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
        t.forEach((c, d) => (flat = flat * operands[i]!.shape[d]! + at.get(c)!));
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

  it("refuses what it cannot take with ShapeErrors and DTypeErrors naming the operand or letter", () => {
    const a = randT([3, 4], 920);
    expectThrows(() => einsum("ij,jk->ik", a, randT([5, 2], 921)), ShapeError, '"j" is 4', "operand 1");
    expectThrows(() => einsum("ijk->i", a), ShapeError, "operand 0 has 2 dims");
    expectThrows(() => einsum("ii->i", randT([3, 3], 922)), ShapeError, "twice");
    expectThrows(() => einsum("ij->iz", a), ShapeError, '"z"');
    expectThrows(() => einsum("ij,jk", a), ShapeError, "2 operand terms for 1 operands");
    expectThrows(() => einsum("i$->i", a), ShapeError, '"$"');
    expectThrows(() => einsum("...i->i", a), ShapeError, "output must place it");
    expectThrows(() => einsum("ij,jk->ik", a, tensor([[1, 2], [3, 4], [5, 6], [7, 8]], "int64")), DTypeError, "one dtype");
  });
});
