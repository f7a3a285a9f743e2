/**
 * What a primitive op is, and how one runs: infer output shapes in JS (so errors name the op and shapes, and meta
 * tensors need no kernel), run the ONNX Runtime kernel (or a JS implementation), record a GradNode when an input
 * requires grad.
 */
import { GradNode, isGradEnabled, type GradRule } from "./autograd.js";
import type { DType, TypedArray } from "./dtype.js";
import { runKernel, type RawTensor } from "./engine.js";
import type { GraphBuilder } from "./onnx.js";
import { Tensor } from "./tensor.js";
import { activeCapture } from "./fuse.js";
import { boundKey, packs, runHolding } from "./packing.js";

export interface OutSpec {
  dtype: DType;
  shape: number[];
}

export interface Primitive<A = undefined> {
  readonly name: string;
  /** Output dtypes and shapes; throws ShapeError/DTypeError naming the op. */
  infer(inputs: readonly Tensor[], attrs: A): OutSpec[];
  /** The part of the kernel cache key that the attributes decide (baked into the graph). */
  key?(attrs: A): string;
  /** Extra runtime inputs computed from the attributes (slice bounds, target shapes), fed after the tensors. */
  feeds?(inputs: readonly Tensor[], attrs: A): RawTensor[];
  /** Adds the op's nodes; `ins` are the tensor inputs' names then the feeds' names. Returns the outputs' names. */
  graph?(g: GraphBuilder, ins: string[], attrs: A, inputs: readonly Tensor[]): string[];
  /** Whether `graph` takes these inputs and attributes (absent: always); an op it does not take cannot be captured. */
  graphs?(inputs: readonly Tensor[], attrs: A): boolean;
  /** A JS implementation, used instead of a kernel (views, copies). */
  js?(inputs: readonly Tensor[], attrs: A, out: OutSpec[]): Tensor[];
  /**
   * A result without a kernel where the op allows one cheaply (a zero-copy view of a contiguous slice, a concatenation
   * of few runs copied in JS); null runs the kernel.
   */
  view?(inputs: readonly Tensor[], attrs: A, out: OutSpec[]): Tensor[] | null;
  /** Input gradients from output gradients, in tensor ops. Absent: not differentiable. */
  grad?: GradRule;
  /** Takes packed weights as they are (other ops get them widened to plain float32 first). */
  packed?: boolean;
  /**
   * The input that is a weight matrix the op multiplies by: when it is repacked (see packing.ts), the op runs as a
   * kernel holding it as a constant.
   */
  weightInput?: number;
  /** Floating-point operations, for ops whose work grows faster than their outputs (matmul, attention). */
  flops?(inputs: readonly Tensor[], out: OutSpec[], attrs: A): number;
}

/**
 * Told, before an op or a costly conversion runs, how many bytes it will allocate and how many floating-point
 * operations it will take; throws to refuse (see withAllocationGuard).
 */
export type AllocationGuard = (bytes: number, flops: number) => void;

let allocationGuard: AllocationGuard | null = null;

/**
 * Runs `work` with `guard` told, before each op runs, how many bytes its outputs will take and how much it
 * computes; the guard throws to refuse (the sandbox caps the memory and time a job's own tensor math may take).
 */
export function withAllocationGuard<T>(guard: AllocationGuard, work: () => T): T {
  const before = allocationGuard;
  allocationGuard = guard;
  try {
    return work();
  } finally {
    allocationGuard = before;
  }
}

/** Asks the guard (if any) about an allocation made outside an op (lists, splits, copies). */
export function guardAllocation(bytes: number, flops = 0): void {
  allocationGuard?.(bytes, flops);
}

const ITEM_BYTES = { float32: 4, int64: 8, int32: 4, bool: 1 } as const;

/** Asks the guard about an op: its outputs' bytes and its work. */
function guardOp<A>(p: Primitive<A>, inputs: readonly Tensor[], specs: OutSpec[], attrs: A): void {
  allocationGuard!(specs.reduce((n, s) => n + s.shape.reduce((a, d) => a * d, 1) * ITEM_BYTES[s.dtype], 0), p.flops?.(inputs, specs, attrs) ?? 0);
}

export function apply<A>(p: Primitive<A>, given: readonly Tensor[], attrs: A): Tensor[] {
  // Code being captured for a fused graph records its ops instead of running them. What a sandboxed job's code
  // records (a function edit compiled into a generation step) is charged as if it ran: the graph will run it.
  const capture = activeCapture();
  if (capture) {
    const specs = p.infer(given, attrs);
    if (allocationGuard) guardOp(p, given, specs, attrs);
    return capture.record(p, given, attrs, specs);
  }
  const inputs = p.packed || !given.some((t) => t.packed) ? given : given.map((t) => t.unpacked());
  const specs = p.infer(inputs, attrs);
  if (allocationGuard) guardOp(p, inputs, specs, attrs);
  let outs: Tensor[];
  const view = inputs.some((t) => t.isMeta) ? null : (p.view?.(inputs, attrs, specs) ?? null);
  if (inputs.some((t) => t.isMeta)) {
    outs = specs.map((s) => Tensor.meta(s.dtype, s.shape));
  } else if (view) {
    outs = view;
  } else if (p.js) {
    outs = p.js(inputs, attrs, specs);
  } else {
    const feeds = p.feeds?.(inputs, attrs) ?? [];
    const key = `${p.name}(${inputs.map((t) => t.dtype).join(",")}|${feeds.map((t) => t.dtype).join(",")})${p.key?.(attrs) ?? ""}`;
    const at = p.weightInput ?? -1;
    const weight = inputs[at];
    const held = weight && packs(weight) ? weight : null;
    const build = (g: GraphBuilder) => {
      const names = [...inputs, ...feeds].map((t, i) => (t === held && i === at ? g.constant(t.dtype, [...t.shape], t.data) : g.input(t.dtype)));
      const outNames = p.graph!(g, names, attrs, inputs);
      outNames.forEach((n, i) => g.output(n, specs[i]!.dtype));
    };
    const raw = held ? runHolding(boundKey(`${key}|held${at}[${held.shape}]`, [held]), [held], build, [...inputs.filter((_, i) => i !== at), ...feeds]) : runKernel(key, build, [...inputs, ...feeds]);
    outs = raw.map((r, i) => {
      const s = specs[i]!;
      if (r.shape.length !== s.shape.length || r.shape.some((d, j) => d !== s.shape[j])) {
        throw new Error(`internal: ${p.name} produced shape [${r.shape}] where [${s.shape}] was inferred`);
      }
      return new Tensor(s.dtype, r.data as TypedArray, s.shape);
    });
  }
  if (p.grad && isGradEnabled() && inputs.some((t) => t.requiresGrad)) {
    const node = new GradNode(p.name, inputs, attrs, p.grad);
    node.outputs = outs;
    // Only floating-point results carry gradients (PyTorch's rule): a cast to an integer, or topk's indices, is
    // a constant to autograd.
    for (const o of outs) if (o.dtype === "float32") o.gradNode = node;
  }
  return outs;
}

/** Single-output shorthand for `apply`. */
export function apply1<A>(p: Primitive<A>, inputs: readonly Tensor[], attrs: A): Tensor {
  return apply(p, inputs, attrs)[0]!;
}
