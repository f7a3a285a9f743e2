/**
 * torch.einsum: `einsum("bhtd,bhsd->bhts", q, k)`. Letters name dims, `...` the dims an operand has beyond its letters
 * (broadcast across operands), `->` the output (left out: `...`, then the letters used once, in alphabetical order).
 * As in torch, a letter twice in one operand takes its diagonal (`"ii->i"`, or a trace: `"ii->"`), a letter of size 1
 * broadcasts against its size in the other operands (as `...`'s dims do), and `...` left out of a given output is
 * summed over.
 *
 * Each operand is first brought to a plain form by ordinary ops (their outputs checked, and charged in the sandbox,
 * as any op's): `...` spelled out as letters no term uses, a letter it names twice reduced to the diagonal, a size-1
 * dim broadcast against a larger one squeezed away. Then one ONNX Runtime Einsum kernel per pair of operands (three or
 * more are contracted two at a time); its gradient is an einsum of the output's gradient with the other operands,
 * and the plain form's ops carry their own.
 */
import { DTypeError, ShapeError } from "./errors.js";
import { apply1, type Primitive } from "./primitive.js";
import { permuteWork, PRODUCT_WORK } from "./primitives.js";
import { fmt } from "./shape.js";
import { arange, Tensor } from "./tensor.js";

/** A term as written: letters, and "..." for the rest of an operand's dims. */
type Written = string[];
/** An operand's or the output's dims, one letter each ("..." spelled out). */
type Term = string[];

interface EinsumAttrs {
  /** The equation as ONNX takes it: every term written out, with its output. */
  equation: string;
  inputs: Term[];
  output: Term;
}

const ELLIPSIS = "...";
const MAX_EQUATION = 256;
const LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/** The einsum of `operands` (tensors as arguments, or one list of them) by `equation`. */
export function einsum(equation: string, ...operands: (Tensor | readonly Tensor[])[]): Tensor {
  const list = operands.length === 1 && Array.isArray(operands[0]) ? [...(operands[0] as readonly Tensor[])] : (operands as Tensor[]);
  if (typeof equation !== "string") throw new ShapeError(`einsum: the equation must be a string, got ${typeof equation}`);
  if (list.length === 0) throw new ShapeError("einsum: no operands");
  list.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw new ShapeError(`einsum: operand ${i} is not a tensor`);
  });
  // Before the plain form's ops, whose own errors would not name einsum.
  checkDTypes(list);
  const { inputs, output, names } = parse(equation, list);
  const sizes = letterSizes(inputs, list, names);
  const plain = list.map((t, i) => plainForm(t, inputs[i]!, sizes));
  return contract(plain.map((p) => p.term), plain.map((p) => p.tensor), output);
}

function checkDTypes(operands: readonly Tensor[]): void {
  const dtype = operands[0]!.dtype;
  if (dtype === "bool") throw new DTypeError('einsum: does not take bool tensors; convert with .to("float32")');
  const other = operands.find((t) => t.dtype !== dtype);
  if (other) throw new DTypeError(`einsum: operands are ${dtype} and ${other.dtype}; convert them to one dtype`);
}

/** The einsum of operands in plain form; 0-d operands (an empty term) multiply the result (ONNX takes none). */
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
      const later = [...output, ...rest.slice(j + 1).flatMap(([, t]) => t)];
      const term = j === rest.length - 1 ? output : [...new Set([...accTerm, ...nextTerm])].filter((x) => later.includes(x));
      acc = contract([accTerm, nextTerm], [acc, next], term);
      accTerm = term;
    }
    out = acc;
  } else {
    const terms = rest.map(([, term]) => term);
    const equation = `${terms.map((t) => t.join("")).join(",")}->${output.join("")}`;
    out = apply1(einsumOp, rest.map(([t]) => t), { equation, inputs: terms, output });
  }
  for (const s of scalars) out = out.mul(s);
  return out;
}

/** A term's letters and "..."; a letter may repeat in an operand's term (a diagonal), not in the output. */
function tokens(term: string, where: string, repeats: boolean): Written {
  const out: Written = [];
  for (let i = 0; i < term.length; ) {
    if (term.startsWith(ELLIPSIS, i)) {
      if (out.includes(ELLIPSIS)) throw new ShapeError(`einsum: ${where} "${term}" has "..." twice`);
      out.push(ELLIPSIS);
      i += 3;
    } else if (/[a-zA-Z]/.test(term[i]!)) {
      if (!repeats && out.includes(term[i]!)) throw new ShapeError(`einsum: ${where} "${term}" names "${term[i]}" twice (each output dim is named once)`);
      out.push(term[i]!);
      i += 1;
    } else throw new ShapeError(`einsum: ${where} "${term}" has "${term[i]}", which is neither a letter nor "..."`);
  }
  return out;
}

/**
 * The terms with "..." spelled out: as many letters no term uses as the widest "..." has dims, an operand with fewer
 * taking the last of them (dims broadcast from the right). `names` says what such a letter stands for, for errors.
 */
function parse(equation: string, operands: readonly Tensor[]): { inputs: Term[]; output: Term; names: Map<string, string> } {
  if (equation.length > MAX_EQUATION) throw new ShapeError(`einsum: the equation has ${equation.length} characters, more than ${MAX_EQUATION}`);
  const eq = equation.replace(/\s+/g, "");
  const arrows = eq.split("->");
  if (arrows.length > 2) throw new ShapeError(`einsum: "${equation}" has "->" more than once`);
  const written = arrows[0]!.split(",").map((t, i) => tokens(t, `operand ${i}'s term`, true));
  if (written.length !== operands.length) throw new ShapeError(`einsum: "${equation}" has ${written.length} operand terms for ${operands.length} operands`);
  written.forEach((term, i) => {
    const letters = term.filter((x) => x !== ELLIPSIS).length;
    const rank = operands[i]!.ndim;
    if (term.includes(ELLIPSIS) ? letters > rank : letters !== rank) throw new ShapeError(`einsum: operand ${i} has ${rank} dims (${fmt(operands[i]!.shape)}), its term "${term.join("")}" names ${letters}`);
  });
  const given = arrows.length === 2 ? tokens(arrows[1]!, "the output", false) : null;
  const used = new Set(written.flat().filter((x) => x !== ELLIPSIS));
  const unknown = given?.find((x) => x !== ELLIPSIS && !used.has(x));
  if (unknown !== undefined) throw new ShapeError(`einsum: the output names "${unknown}", which no operand has`);

  const ranks = written.map((term, i) => (term.includes(ELLIPSIS) ? operands[i]!.ndim - term.length + 1 : 0));
  const width = Math.max(0, ...ranks);
  const fresh = [...LETTERS].filter((l) => !used.has(l)).slice(0, width);
  if (fresh.length < width) throw new ShapeError(`einsum: "${equation}" names ${used.size} letters and its "..." covers ${width} dims, more than the ${LETTERS.length} letters there are`);
  const spell = (term: Written, rank: number): Term => term.flatMap((x) => (x === ELLIPSIS ? fresh.slice(width - rank) : [x]));
  const inputs = written.map((term, i) => spell(term, ranks[i]!));
  let output: Term;
  if (given) output = spell(given, width);
  else {
    // A letter twice in one operand counts twice: "ii" is a trace.
    const counts = new Map<string, number>();
    for (const x of written.flat()) if (x !== ELLIPSIS) counts.set(x, (counts.get(x) ?? 0) + 1);
    output = [...fresh, ...[...counts].filter(([, n]) => n === 1).map(([x]) => x).sort()];
  }
  return { inputs, output, names: new Map(fresh.map((l, k) => [l, `dim ${k} of "..."`])) };
}

/**
 * Each letter's size, checked: equal where one operand names it twice (a diagonal), and across operands equal or 1
 * (a size 1 broadcasts, as in torch).
 */
function letterSizes(inputs: Term[], operands: readonly Tensor[], names: Map<string, string>): Map<string, number> {
  const sizes = new Map<string, number>();
  inputs.forEach((term, i) => {
    const shape = operands[i]!.shape;
    term.forEach((x, d) => {
      const n = shape[d]!;
      const first = term.indexOf(x);
      if (first < d && shape[first] !== n) throw new ShapeError(`einsum: operand ${i} (${fmt(shape)}) names "${x}" twice, for dims of ${shape[first]} and ${n}: a diagonal needs them equal`);
      const seen = sizes.get(x);
      if (seen !== undefined && seen !== n && seen !== 1 && n !== 1) throw new ShapeError(`einsum: ${names.get(x) ?? `"${x}"`} is ${seen} in one operand and ${n} in operand ${i} (${fmt(shape)}); sizes differ only where one is 1`);
      if (seen === undefined || seen === 1) sizes.set(x, n);
    });
  });
  return sizes;
}

/**
 * An operand as the kernel takes it: each letter once, of its size in every operand. A letter named twice is reduced
 * to the diagonal; a size-1 dim whose letter is larger elsewhere is squeezed away, the letter then read from the
 * operands that have it (the broadcast value is the same along it).
 */
function plainForm(x: Tensor, term: Term, sizes: Map<string, number>): { tensor: Tensor; term: Term } {
  let t = x;
  const letters = [...term];
  for (let q = 1; q < letters.length; q++) {
    const p = letters.indexOf(letters[q]!);
    if (p === q) continue;
    t = diagonal(t, p, q);
    letters.splice(q--, 1);
  }
  const broadcast = letters.flatMap((l, d) => (t.shape[d] === 1 && sizes.get(l) !== 1 ? [d] : []));
  return broadcast.length ? { tensor: t.squeeze(broadcast), term: letters.filter((_, d) => !broadcast.includes(d)) } : { tensor: t, term: letters };
}

/**
 * The diagonal of dims p < q (of one size), in q's place at p: the values where the two indices are equal, summed
 * over q with zeros elsewhere (chosen, not multiplied by a mask, so an Infinity or NaN off the diagonal takes no part).
 */
function diagonal(x: Tensor, p: number, q: number): Tensor {
  const n = x.shape[p]!;
  const index = (d: number) => arange(n).reshape(x.shape.map((_, k) => (k === d ? n : 1)));
  const out = Tensor.where(index(p).eq(index(q)), x, 0).sum(q);
  // An int32 sum is int64 (as torch's); torch's einsum keeps its operands' dtype.
  return out.to(x.dtype);
}

/** Each letter's size in plain-form operands: one letter per dim, one size across operands (einsum makes them so). */
function kernelSizes(inputs: Term[], operands: readonly Tensor[]): Map<string, number> {
  const sizes = new Map<string, number>();
  inputs.forEach((term, i) => {
    const shape = operands[i]!.shape;
    if (term.length !== shape.length || new Set(term).size !== term.length) throw new ShapeError(`einsum: internal: term "${term.join("")}" does not fit operand ${i} ${fmt(shape)}`);
    term.forEach((x, d) => {
      const seen = sizes.get(x);
      if (seen !== undefined && seen !== shape[d]) throw new ShapeError(`einsum: internal: "${x}" is ${seen} in one operand and ${shape[d]} in operand ${i}`);
      sizes.set(x, shape[d]!);
    });
  });
  return sizes;
}

const einsumOp: Primitive<EinsumAttrs> = {
  name: "einsum",
  infer: (operands, a) => {
    checkDTypes(operands);
    const sizes = kernelSizes(a.inputs, operands);
    return [{ dtype: operands[0]!.dtype, shape: a.output.map((x) => sizes.get(x)!) }];
  },
  key: (a) => a.equation,
  graph: (g, names, a) => [g.op("Einsum", names, { equation: a.equation })],
  // Every combination of the letters is a multiply-add; and ONNX Runtime's kernel may permute each operand and the
  // result into the order its products need (a rank-6 reversed contraction estimated under 1 ms without that took 0.85 s).
  flops: (operands, [out], a) => 2 * [...kernelSizes(a.inputs, operands).values()].reduce((p, d) => p * d, 1) * PRODUCT_WORK[operands[0]!.dtype] + [...operands.map((t) => t.shape), out!.shape].reduce((w, s) => w + permuteWork(s), 0),
  grad: (grads, node) => {
    const g = grads[0]!;
    const a = node.attrs as EinsumAttrs;
    const operands = node.inputs as Tensor[];
    return operands.map((x, i) => (x.requiresGrad ? gradOf(i, g, operands, a) : null));
  },
};

/**
 * The gradient for operand `i`: the output's gradient contracted with the other operands onto operand i's letters,
 * and the letters only it has (summed in the forward) restored by broadcasting.
 */
function gradOf(i: number, g: Tensor, operands: Tensor[], a: EinsumAttrs): Tensor {
  const term = a.inputs[i]!;
  const others = a.inputs.filter((_, j) => j !== i);
  const elsewhere = new Set([...a.output, ...others.flat()]);
  const kept = term.filter((x) => elsewhere.has(x));
  const missing = term.filter((x) => !elsewhere.has(x));
  let r = contract([a.output, ...others], [g, ...operands.filter((_, j) => j !== i)], kept);
  // Dims in `kept` order, then the missing letters as size-1 dims: permuted into the operand's order, broadcast.
  if (missing.length) r = r.reshape([...r.shape, ...missing.map(() => 1)]);
  const have = [...kept, ...missing];
  const perm = term.map((x) => have.indexOf(x));
  if (perm.some((p, k) => p !== k)) r = r.permute(...perm);
  return r.expand(...operands[i]!.shape);
}
