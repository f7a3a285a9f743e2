/**
 * Fused graphs: the ops a piece of code runs (a decoder block's forward), captured once per input shapes and
 * compiled into one ONNX Runtime graph, then run as one kernel call instead of one call per op. Capturing runs the
 * code with every op recorded instead of executed (outputs are meta tensors); code that needs a value's data, or
 * an op with no graph form, cannot be captured and runs eagerly. Parameters and inputs are graph inputs (fed, not
 * copied into the graph); everything else the code makes (scalars, shape vectors) is a constant of the graph.
 */
import type { AsyncLocalStorage } from "node:async_hooks";
import { isGradEnabled } from "./autograd.js";
import type { DType, StorageArray, TypedArray } from "./dtype.js";
import { runKernel, type RawTensor } from "./engine.js";
import { lazyNode } from "./node.js";
import type { GraphBuilder } from "./onnx.js";
import type { OutSpec, Primitive } from "./primitive.js";
import { Tensor } from "./tensor.js";

const asyncHooks = lazyNode<typeof import("node:async_hooks")>("node:async_hooks");

/** The code being captured cannot be: it reads data, or runs an op with no graph form. */
export class CaptureError extends Error {
  override readonly name = "CaptureError";
}

interface Op {
  p: Primitive<unknown>;
  attrs: unknown;
  inputs: number[];
  feeds: RawTensor[];
  metaInputs: Tensor[];
  outputs: number[];
  specs: OutSpec[];
}

/** Graph forms of the ops that run as JS in eager mode (views and copies); a reshape's shape is its feed. */
const graphForms: Record<string, (g: GraphBuilder, ins: string[], attrs: unknown, out: OutSpec[]) => string[]> = {
  reshape: (g, [x, shape]) => [g.op("Reshape", [x!, shape!])],
  clone: (g, [x]) => [g.op("Identity", [x!])],
};

function shapeFeed(shape: readonly number[]): RawTensor {
  return { dtype: "int64", shape: [shape.length], data: BigInt64Array.from(shape.map(BigInt)) };
}

/** Ops recorded while a capture runs: the values they read (sources) and make. */
export class Capture {
  private readonly ids = new Map<Tensor, number>();
  /** Real tensors the code used, by value id. */
  readonly sources = new Map<number, Tensor>();
  readonly ops: Op[] = [];
  private next = 0;

  idOf(t: Tensor): number {
    let id = this.ids.get(t);
    if (id === undefined) {
      if (t.isMeta) throw new CaptureError("a value from outside the captured code has no data");
      // A packed weight is multiplied by its own kernel (ONNX Runtime prepacks it there), never fed to a graph.
      if (t.packed) throw new CaptureError("packed weights run in kernels of their own");
      id = this.next++;
      this.ids.set(t, id);
      this.sources.set(id, t);
    }
    return id;
  }

  has(t: Tensor): boolean {
    return this.ids.has(t);
  }

  record<A>(p: Primitive<A>, inputs: readonly Tensor[], attrs: A): Tensor[] {
    if (!p.graph && !graphForms[p.name]) throw new CaptureError(`${p.name} has no graph form`);
    const specs = p.infer(inputs, attrs);
    const ids = inputs.map((t) => this.idOf(t));
    // A reshape's target shape is a feed here (in eager mode it runs as JS), so graphs need no shape baked in.
    const feeds = p.name === "reshape" ? [shapeFeed(specs[0]!.shape)] : (p.feeds?.(inputs, attrs) ?? []);
    const outs = specs.map((s) => Tensor.meta(s.dtype, s.shape));
    const outputs = outs.map((t) => {
      const id = this.next++;
      this.ids.set(t, id);
      return id;
    });
    this.ops.push({ p: p as Primitive<unknown>, attrs, inputs: ids, feeds, metaInputs: inputs.map((t) => Tensor.meta(t.dtype, t.shape)), outputs, specs });
    return outs;
  }
}

let storage: AsyncLocalStorage<Capture> | undefined;

/** The capture the running code belongs to, if any (ops record into it instead of running). */
export function activeCapture(): Capture | undefined {
  return storage?.getStore();
}

/** Runs `work` (which may await) with every op it runs recorded in `capture`. */
export function runCaptured<T>(capture: Capture, work: () => Promise<T>): Promise<T> {
  return (storage ??= new asyncHooks.AsyncLocalStorage<Capture>()).run(capture, work);
}

let fusionSet: boolean | null = null;
let fusionFromEnv: boolean | undefined;

/**
 * Whether fusion is on: TSIGHT_FUSE=0 turns it off (every op one kernel call, as before), read once (the
 * environment is slow to read, and this is asked at every block's call); `setFusion` decides instead.
 */
export function fusionEnabled(): boolean {
  if (fusionSet !== null) return fusionSet;
  return (fusionFromEnv ??= (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.TSIGHT_FUSE !== "0");
}

/** Turns fusion on or off in this thread (tests, benchmarks); null goes back to TSIGHT_FUSE. */
export function setFusion(on: boolean | null): void {
  fusionSet = on;
}

/** Where a fused graph's inputs come from at each run. */
export type InputSlot = { kind: "arg"; path: (string | number)[] } | { kind: "param"; read: () => Tensor };

/** A captured piece of code compiled as one graph: run with the same kind of arguments, it gives what the code gives. */
export class FusedGraph {
  constructor(
    private readonly key: string,
    private readonly build: (g: GraphBuilder) => void,
    private readonly slots: InputSlot[],
    private readonly outputs: { dtype: DType; shape: number[] }[],
    /** Rebuilds the code's result from the graph's output tensors. */
    private readonly result: (outs: Tensor[]) => unknown,
  ) {}

  run(args: readonly unknown[]): unknown {
    const inputs = this.slots.map((s) => (s.kind === "arg" ? (resolvePath(args, s.path) as Tensor) : s.read()));
    const raw = runKernel(this.key, this.build, inputs);
    return this.result(raw.map((r, i) => new Tensor(this.outputs[i]!.dtype, r.data as TypedArray, this.outputs[i]!.shape)));
  }
}

function resolvePath(root: unknown, path: readonly (string | number)[]): unknown {
  return path.reduce<unknown>((v, k) => (v as Record<string | number, unknown>)[k], root);
}

/** Every tensor in `value` (arrays and plain objects walked), with its path. */
function tensorsIn(value: unknown, path: (string | number)[] = [], out: { t: Tensor; path: (string | number)[] }[] = []): { t: Tensor; path: (string | number)[] }[] {
  if (value instanceof Tensor) out.push({ t: value, path });
  else if (Array.isArray(value)) value.forEach((v, i) => tensorsIn(v, [...path, i], out));
  else if (value !== null && typeof value === "object") for (const [k, v] of Object.entries(value)) tensorsIn(v, [...path, k], out);
  return out;
}

/**
 * A key for arguments a fused graph can take: tensors by dtype and shape, numbers and strings by value, arrays and
 * plain objects by structure; null when they hold anything else (a KV cache, which the code changes as it runs),
 * or a tensor that records gradients.
 */
export function argumentSignature(args: readonly unknown[]): string | null {
  const parts: string[] = [];
  const walk = (v: unknown): boolean => {
    if (v instanceof Tensor) {
      if (v.isMeta || (v.requiresGrad && isGradEnabled())) return false;
      parts.push(`${v.dtype}[${v.shape.join(",")}]`);
      return true;
    }
    if (v === undefined || v === null || typeof v === "number" || typeof v === "string" || typeof v === "boolean") {
      parts.push(JSON.stringify(v ?? null));
      return true;
    }
    if (Array.isArray(v)) {
      parts.push("[");
      if (!v.every(walk)) return false;
      parts.push("]");
      return true;
    }
    if (typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
      parts.push("{");
      for (const [k, x] of Object.entries(v as object)) {
        parts.push(k);
        if (!walk(x)) return false;
      }
      parts.push("}");
      return true;
    }
    return false;
  };
  return args.every(walk) ? parts.join(" ") : null;
}

/** Short text of a constant's data for the graph's key (constants are small: scalars and shape vectors). */
function dataKey(data: StorageArray): string {
  if (data.length > 64) throw new CaptureError("the code made a large tensor from data (it would be baked into the graph)");
  return Array.from(data as ArrayLike<number | bigint>, String).join(",");
}

/**
 * The graph of what `capture` recorded, with `outputs` (tensors the code computed or read) as its outputs. Sources
 * for which `fed` holds are graph inputs (in capture order), the others constants; the ops' shape vectors are
 * constants when `bakeFeeds`, else inputs after the sources. The key is the structure (ops, attributes, dtypes and
 * ranks) plus whatever is baked, so a graph with nothing baked serves every shape.
 */
function captureGraph(capture: Capture, outputs: readonly Tensor[], fed: (t: Tensor) => boolean, bakeFeeds: boolean): { key: string; build: (g: GraphBuilder) => void } {
  const keyParts: string[] = [];
  for (const [id, t] of capture.sources) keyParts.push(fed(t) ? `in${id}:${t.dtype}/${t.shape.length}` : `c${id}:${t.dtype}[${t.shape}]=${dataKey(t.data)}`);
  for (const op of capture.ops) {
    const feeds = op.feeds.map((f) => (bakeFeeds ? `${f.dtype}[${f.shape}]=${dataKey(f.data)}` : `${f.dtype}/${f.shape.length}`));
    keyParts.push(`${op.p.name}(${op.inputs.join(",")})${JSON.stringify(op.attrs ?? null)}|${feeds.join(";")}|${op.specs.map((o) => `${o.dtype}/${o.shape.length}`).join(";")}->${op.outputs.join(",")}`);
  }
  const outIds = outputs.map((t) => {
    if (!capture.has(t)) throw new CaptureError("the code returned a tensor it did not compute or read");
    return capture.idOf(t);
  });
  keyParts.push(`out:${outIds.join(",")}`);
  const build = (g: GraphBuilder) => {
    const names = new Map<number, string>();
    for (const [id, t] of capture.sources) if (fed(t)) names.set(id, g.input(t.dtype));
    for (const [id, t] of capture.sources) if (!fed(t)) names.set(id, g.constant(t.dtype, [...t.shape], t.data));
    const feedNames = capture.ops.map((op) => op.feeds.map((f) => (bakeFeeds ? g.constant(f.dtype, [...f.shape], f.data) : g.input(f.dtype))));
    capture.ops.forEach((op, n) => {
      const ins = [...op.inputs.map((i) => names.get(i)!), ...feedNames[n]!];
      const outs = op.p.graph ? op.p.graph(g, ins, op.attrs, op.metaInputs) : graphForms[op.p.name]!(g, ins, op.attrs, op.specs);
      op.outputs.forEach((id, i) => names.set(id, outs[i]!));
    });
    outIds.forEach((id, i) => g.output(names.get(id)!, outputs[i]!.dtype));
  };
  // "fused:" keys run on every kernel thread, like the matrix products they hold.
  return { key: `fused:${keyParts.join("\n")}`, build };
}

/** `result` with its tensors (in tensorsIn's order) replaced by `outs`. */
function rebuildResult(result: unknown, outs: readonly Tensor[]): unknown {
  if (result instanceof Tensor) return outs[0];
  const copy = structuredCopy(result);
  tensorsIn(result).forEach(({ path }, i) => setPath(copy, path, outs[i]!));
  return copy;
}

/**
 * Compiles what `capture` recorded into one graph whose outputs are `result`'s tensors, for later calls with the
 * same kind of arguments. `args` are the captured code's arguments (their tensors become inputs fed at each run),
 * `params` the parameters it may read (inputs too, read at each run so new weights are used); every other source
 * and every shape vector is a constant of the graph.
 */
export function compileCapture(capture: Capture, args: readonly unknown[], params: ReadonlyMap<Tensor, () => Tensor>, result: unknown): FusedGraph {
  const argSlots = new Map<Tensor, (string | number)[]>();
  for (const { t, path } of tensorsIn(args)) if (!argSlots.has(t)) argSlots.set(t, path);
  const fed = (t: Tensor) => argSlots.has(t) || params.has(t);
  const slots: InputSlot[] = [];
  for (const t of capture.sources.values()) {
    const arg = argSlots.get(t);
    if (arg) slots.push({ kind: "arg", path: arg });
    else if (params.has(t)) slots.push({ kind: "param", read: params.get(t)! });
  }
  const outputs = tensorsIn(result).map(({ t }) => t);
  const { key, build } = captureGraph(capture, outputs, fed, true);
  return new FusedGraph(key, build, slots, outputs.map((t) => ({ dtype: t.dtype, shape: [...t.shape] })), (outs) => rebuildResult(result, outs));
}

/**
 * One run of captured code as a graph that depends on no shape or value: every source (arguments, parameters,
 * cache entries, constants the code made) and every shape vector the ops need is an input, fed from this capture.
 * The graph is looked up by its structure (ops, attributes, dtypes), so a capture of the same code at another
 * length (the next decode step) reuses it. Returns the output tensors: `result`'s, then `extra`'s.
 */
export function runCaptureGeneric(capture: Capture, result: unknown, extra: readonly Tensor[]): { result: unknown; extra: Tensor[] } {
  const found = [...tensorsIn(result).map(({ t }) => t), ...extra];
  const { key, build } = captureGraph(capture, found, () => true, false);
  const raw = runKernel(key, build, [...capture.sources.values(), ...capture.ops.flatMap((op) => op.feeds)]);
  const outs = raw.map((r, i) => new Tensor(found[i]!.dtype, r.data as TypedArray, found[i]!.shape));
  const count = found.length - extra.length;
  return { result: rebuildResult(result, outs.slice(0, count)), extra: outs.slice(count) };
}

/** Arrays and plain objects copied (their tensors replaced afterwards). */
function structuredCopy(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(structuredCopy);
  if (v !== null && typeof v === "object" && !(v instanceof Tensor) && Object.getPrototypeOf(v) === Object.prototype) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, structuredCopy(x)]));
  return v;
}

function setPath(root: unknown, path: readonly (string | number)[], value: unknown): void {
  const parent = resolvePath(root, path.slice(0, -1)) as Record<string | number, unknown>;
  parent[path.at(-1)!] = value;
}
