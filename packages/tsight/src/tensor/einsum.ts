/**
 * torch.einsum: `einsum("bhtd,bhsd->bhts", q, k)`. Letters name dims, `...` the dims an operand has beyond its letters
 * (broadcast across operands), `->` the output (left out: the letters used once, in alphabetical order, after `...`).
 * One ONNX Runtime Einsum kernel per pair of operands (three or more are contracted two at a time); its gradient is
 * an einsum of the output's gradient with the other operands.
 * A letter twice in one operand (a diagonal, a trace) is not taken.
 */
import { DTypeError, ShapeError } from "./errors.js";
import { apply1, type Primitive } from "./primitive.js";
import { broadcastShapes, fmt, sizeOf } from "./shape.js";
import { Tensor } from "./tensor.js";

/** An operand's or the output's dims: letters, and "..." for the rest. */
type Term = string[];

interface EinsumAttrs {
  /** The equation as ONNX takes it: every term written out, with its output. */
  equation: string;
  inputs: Term[];
  output: Term;
}

const ELLIPSIS = "...";
const MAX_EQUATION = 256;

/** The einsum of `operands` (tensors as arguments, or one list of them) by `equation`. */
export function einsum(equation: string, ...operands: (Tensor | readonly Tensor[])[]): Tensor {
  const list = operands.length === 1 && Array.isArray(operands[0]) ? [...(operands[0] as readonly Tensor[])] : (operands as Tensor[]);
  if (typeof equation !== "string") throw new ShapeError(`einsum: the equation must be a string, got ${typeof equation}`);
  if (list.length === 0) throw new ShapeError("einsum: no operands");
  list.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw new ShapeError(`einsum: operand ${i} is not a tensor`);
  });
  const { inputs, output } = parse(equation, list);
  return contract(inputs, list, output);
}

/** The einsum of operands by parsed terms; 0-d operands (an empty term) multiply the result (ONNX takes none). */
function contract(inputs: Term[], operands: Tensor[], output: Term): Tensor {
  const scalars = operands.filter((_, i) => inputs[i]!.length === 0);
  const rest = operands.map((t, i) => [t, inputs[i]!] as const).filter(([, term]) => term.length > 0);
  let out: Tensor;
  if (rest.length === 0) out = Tensor.ones([], operands[0]!.dtype);
  else if (rest.length > 2) {
    // Two at a time, each keeping the dims still needed: every intermediate is an op's output, so its size is
    // checked (and charged, in the sandbox) before it is made; one kernel over all might make larger ones unchecked.
    let [acc, accTerm] = rest[0]!;
    for (let j = 1; j < rest.length; j++) {
      const [next, nextTerm] = rest[j]!;
      const later = j === rest.length - 1 ? output : [...output, ...rest.slice(j + 1).flatMap(([, t]) => t)];
      const joined = [...new Set([...accTerm, ...nextTerm])].filter((x) => later.includes(x));
      const term = joined.includes(ELLIPSIS) ? [ELLIPSIS, ...joined.filter((x) => x !== ELLIPSIS)] : joined;
      acc = contract([accTerm, nextTerm], [acc, next], j === rest.length - 1 ? output : term);
      accTerm = j === rest.length - 1 ? output : term;
    }
    out = acc;
  } else {
    const terms = rest.map(([, term]) => term);
    const equation = `${terms.map((t) => t.join("")).join(",")}->${output.join("")}`;
    // ONNX Runtime takes "..." as the same number of dims in every operand: fewer get leading 1s, which broadcast.
    const ellipsisRank = (t: Tensor, term: Term) => (term.includes(ELLIPSIS) ? t.ndim - term.length + 1 : 0);
    const widest = Math.max(...rest.map(([t, term]) => ellipsisRank(t, term)));
    const padded = rest.map(([t, term]) => {
      const have = ellipsisRank(t, term);
      if (!term.includes(ELLIPSIS) || have === widest) return t;
      const at = term.indexOf(ELLIPSIS);
      return t.reshape([...t.shape.slice(0, at), ...new Array<number>(widest - have).fill(1), ...t.shape.slice(at)]);
    });
    out = apply1(einsumOp, padded, { equation, inputs: terms, output });
  }
  for (const s of scalars) out = out.mul(s);
  return out;
}

function tokens(term: string, where: string): Term {
  const out: Term = [];
  for (let i = 0; i < term.length; ) {
    if (term.startsWith(ELLIPSIS, i)) {
      if (out.includes(ELLIPSIS)) throw new ShapeError(`einsum: ${where} "${term}" has "..." twice`);
      out.push(ELLIPSIS);
      i += 3;
    } else if (/[a-zA-Z]/.test(term[i]!)) {
      if (out.includes(term[i]!)) throw new ShapeError(`einsum: ${where} "${term}" names "${term[i]}" twice (a diagonal or trace is not taken; index it out first)`);
      out.push(term[i]!);
      i += 1;
    } else throw new ShapeError(`einsum: ${where} "${term}" has "${term[i]}", which is neither a letter nor "..."`);
  }
  return out;
}

function parse(equation: string, operands: readonly Tensor[]): { inputs: Term[]; output: Term } {
  if (equation.length > MAX_EQUATION) throw new ShapeError(`einsum: the equation has ${equation.length} characters, more than ${MAX_EQUATION}`);
  const eq = equation.replace(/\s+/g, "");
  const arrows = eq.split("->");
  if (arrows.length > 2) throw new ShapeError(`einsum: "${equation}" has "->" more than once`);
  const inputs = arrows[0]!.split(",").map((t, i) => tokens(t, `operand ${i}'s term`));
  if (inputs.length !== operands.length) throw new ShapeError(`einsum: "${equation}" has ${inputs.length} operand terms for ${operands.length} operands`);
  inputs.forEach((term, i) => {
    const letters = term.filter((x) => x !== ELLIPSIS).length;
    const rank = operands[i]!.ndim;
    if (term.includes(ELLIPSIS) ? letters > rank : letters !== rank) throw new ShapeError(`einsum: operand ${i} has ${rank} dims (${fmt(operands[i]!.shape)}), its term "${term.join("")}" names ${letters}`);
  });
  const anyEllipsis = inputs.some((t) => t.includes(ELLIPSIS));
  let output: Term;
  if (arrows.length === 2) {
    output = tokens(arrows[1]!, "the output");
    const known = new Set(inputs.flat());
    const unknown = output.find((x) => !known.has(x));
    if (unknown !== undefined) throw new ShapeError(`einsum: the output names "${unknown}", which no operand has`);
    if (anyEllipsis && !output.includes(ELLIPSIS)) throw new ShapeError(`einsum: an operand has "...", so the output must place it too ("${arrows[0]}->...${arrows[1]}")`);
  } else {
    const counts = new Map<string, number>();
    for (const x of inputs.flat()) if (x !== ELLIPSIS) counts.set(x, (counts.get(x) ?? 0) + 1);
    output = [...(anyEllipsis ? [ELLIPSIS] : []), ...[...counts].filter(([, n]) => n === 1).map(([x]) => x).sort()];
  }
  return { inputs, output };
}

/** Each letter's size and the broadcast "..." shape, checked across operands. */
function sizes(inputs: Term[], operands: readonly Tensor[]): { letters: Map<string, number>; ellipsis: number[] } {
  const letters = new Map<string, number>();
  let ellipsis: number[] = [];
  inputs.forEach((term, i) => {
    const shape = operands[i]!.shape;
    const e = term.indexOf(ELLIPSIS);
    const extra = shape.length - (term.length - (e >= 0 ? 1 : 0));
    let d = 0;
    for (const x of term) {
      if (x === ELLIPSIS) {
        ellipsis = broadcastShapes("einsum (the dims of ...)", ellipsis, shape.slice(d, d + extra));
        d += extra;
        continue;
      }
      const n = shape[d++]!;
      const seen = letters.get(x);
      if (seen !== undefined && seen !== n) throw new ShapeError(`einsum: "${x}" is ${seen} in one operand and ${n} in operand ${i} (${fmt(shape)})`);
      letters.set(x, n);
    }
  });
  return { letters, ellipsis };
}

function shapeOf(term: Term, letters: Map<string, number>, ellipsis: number[]): number[] {
  return term.flatMap((x) => (x === ELLIPSIS ? ellipsis : [letters.get(x)!]));
}

const einsumOp: Primitive<EinsumAttrs> = {
  name: "einsum",
  infer: (operands, a) => {
    const dtype = operands[0]!.dtype;
    if (dtype === "bool") throw new DTypeError("einsum: does not take bool tensors; convert with .to(\"float32\")");
    const other = operands.find((t) => t.dtype !== dtype);
    if (other) throw new DTypeError(`einsum: operands are ${dtype} and ${other.dtype}; convert them to one dtype`);
    const { letters, ellipsis } = sizes(a.inputs, operands);
    return [{ dtype, shape: shapeOf(a.output, letters, ellipsis) }];
  },
  key: (a) => a.equation,
  graph: (g, names, a) => [g.op("Einsum", names, { equation: a.equation })],
  // Every combination of the letters (and of the "..." dims) is a multiply-add.
  flops: (operands, _out, a) => {
    const { letters, ellipsis } = sizes(a.inputs, operands);
    return 2 * sizeOf(ellipsis) * [...letters.values()].reduce((p, d) => p * d, 1);
  },
  grad: (grads, node) => {
    const g = grads[0]!;
    const a = node.attrs as EinsumAttrs;
    const operands = node.inputs as Tensor[];
    return operands.map((x, i) => (x.requiresGrad ? gradOf(i, g, operands, a) : null));
  },
};

/**
 * The gradient for operand `i`: the output's gradient contracted with the other operands onto operand i's dims (its
 * "..." first), the broadcast "..." summed down to its own, and the dims only it has (summed in the forward)
 * restored by broadcasting.
 */
function gradOf(i: number, g: Tensor, operands: Tensor[], a: EinsumAttrs): Tensor {
  const term = a.inputs[i]!;
  const x = operands[i]!;
  const others = a.inputs.filter((_, j) => j !== i);
  const elsewhere = new Set([...a.output, ...others.flat()]);
  const kept = term.filter((t) => t !== ELLIPSIS && elsewhere.has(t));
  const missing = term.filter((t) => t !== ELLIPSIS && !elsewhere.has(t));
  const hasEllipsis = term.includes(ELLIPSIS);
  // "..." first whenever the output has it (ONNX Runtime takes no output without it then); summed down below.
  const target: Term = [...(a.output.includes(ELLIPSIS) ? [ELLIPSIS] : []), ...kept];
  let r = contract([a.output, ...others], [g, ...operands.filter((_, j) => j !== i)], target);
  const { letters, ellipsis } = sizes(a.inputs, operands);
  const own = x.ndim - (term.length - (hasEllipsis ? 1 : 0));
  const ownEllipsis = hasEllipsis ? x.shape.slice(term.indexOf(ELLIPSIS), term.indexOf(ELLIPSIS) + own) : [];
  const keptSizes = kept.map((t) => letters.get(t)!);
  if (target.includes(ELLIPSIS) && (ownEllipsis.length !== ellipsis.length || ownEllipsis.some((d, k) => d !== ellipsis[k]))) {
    // Summed over the dims "..." was broadcast along (leading ones, and its size-1 dims).
    const lead = ellipsis.length - ownEllipsis.length;
    const axes = ellipsis.flatMap((d, k) => (k < lead || (ownEllipsis[k - lead] === 1 && d !== 1) ? [k] : []));
    if (axes.length) r = r.sum(axes, true);
    r = r.reshape([...ownEllipsis, ...keptSizes]);
  }
  // Dims in `target` order, then the missing letters as size-1 dims: permuted into the operand's order, broadcast.
  const ids = (t: Term) => t.flatMap((s) => (s === ELLIPSIS ? ownEllipsis.map((_, k) => `.${k}`) : [s]));
  const have = [...ids(hasEllipsis ? target : kept), ...missing];
  r = missing.length ? r.reshape([...r.shape, ...missing.map(() => 1)]) : r;
  const perm = ids(term).map((s) => have.indexOf(s));
  if (perm.some((p, k) => p !== k)) r = r.permute(...perm);
  return r.expand(...x.shape);
}

