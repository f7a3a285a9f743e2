/**
 * Fused graphs: the ops a piece of code runs (a decoder block's forward), captured once per input shapes and
 * compiled into one ONNX Runtime graph, then run as one kernel call instead of one call per op. Capturing runs the
 * code with every op recorded instead of executed (outputs are meta tensors); code that needs a value's data, or
 * an op with no graph form, cannot be captured and runs eagerly. Float32 parameters are constants of the graph
 * (bound once, within a memory budget; see WeightBinding), matrices repacked for ONNX Runtime's kernels as the
 * op-by-op path has them (packing.ts); inputs and shape vectors are fed, so one graph serves every shape; small
 * values the code makes (scalars) are constants.
 */
import { isGradEnabled } from "./autograd.js";
import type { DType, StorageArray, TypedArray } from "./dtype.js";
import { hasKernel, releaseKernel, retainKernel, type RawTensor } from "./engine.js";
import { boundKey, bytesOf, decideTogether, mayCopyWeights, packs, runHolding } from "./packing.js";
import { AsyncScope } from "./async-scope.js";
import type { GraphBuilder } from "./onnx.js";
import type { OutSpec, Primitive } from "./primitive.js";
import { switchSetting } from "./settings.js";
import { Tensor } from "./tensor.js";

/** The most ops an edit applied to a call's result (see Capture.edit) may record (steering takes one or two). */
const MAX_EDIT_OPS = 256;

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

/**
 * Whether an op's feed travels in its graph's one packed vector, split apart inside the graph (see
 * Capture.feedInputs): a non-empty int64 vector. ONNX Runtime binds every input of every run, about 1.5 us each
 * here, and stdlib-gpt2's whole-model graph had 101 such vectors (a Split of 100 vectors against 100 inputs of a
 * graph of reshapes: 140-160 us less a run, measured with bench-style alternating rounds).
 */
const packable = (f: RawTensor): boolean => f.dtype === "int64" && f.shape.length === 1 && f.shape[0]! > 0;

/** A call of a module inside captured code: its arguments and result as captured, and the calls inside it. */
export interface CapturedCall {
  owner: object;
  args: unknown[];
  out: unknown;
  children: CapturedCall[];
  /** Its value was computed inside an op and is not one of the graph's (an operation point passed; see recordPassed). */
  passed?: true;
}

/** Ops recorded while a capture runs: the values they read (sources) and make. */
export class Capture {
  private readonly ids = new Map<Tensor, number>();
  /** Real tensors the code used, by value id. */
  readonly sources = new Map<number, Tensor>();
  readonly ops: Op[] = [];
  /** The module calls the code made, outermost first, each with those inside it (see recordCall). */
  readonly calls: CapturedCall[] = [];
  /** False when calls overlapped (started while a sibling ran): their nesting is then unknown. */
  callsNested = true;
  private readonly open: CapturedCall[] = [];
  private next = 0;
  /**
   * Applied to each call's result as it returns (replacements of module outputs that the graph computes too: see
   * nn/module.ts's StepEdits); what it gives is the call's result.
   */
  edit: ((owner: object, out: unknown) => unknown) | null = null;

  constructor(
    /**
     * Whether a replay will hand out the calls' values (a block's or model's graph), so operation points nobody
     * watches are noted in their place too; a generation step's graph is never replayed, and skips them.
     */
    readonly replayable = true,
  ) {}

  /** Runs a module's forward (`run`) inside the capture, noting the call with its arguments and result. */
  async recordCall<T>(owner: object, args: unknown[], run: () => Promise<T>): Promise<T> {
    const call: CapturedCall = { owner, args, out: undefined, children: [] };
    (this.open.at(-1)?.children ?? this.calls).push(call);
    this.open.push(call);
    try {
      call.out = await run();
      if (this.edit) {
        const before = this.ops.length;
        call.out = this.edit(owner, call.out);
        // Code that makes a graph of many ops (a loop) runs them op by op, where each is checked as it runs, rather
        // than have one kernel compiled for them all.
        if (this.ops.length - before > MAX_EDIT_OPS) throw new CaptureError(`an edit made ${this.ops.length - before} ops`);
      }
      return call.out as T;
    } finally {
      if (this.open.at(-1) !== call) this.callsNested = false;
      this.open.splice(this.open.lastIndexOf(call), 1);
    }
  }

  /**
   * Notes, in its place among the calls, a call whose value an op computed inside itself (an operation point
   * nobody watched, passed): a replay counts it there, and cannot give its value.
   */
  recordPassed(owner: object): void {
    (this.open.at(-1)?.children ?? this.calls).push({ owner, args: [], out: undefined, children: [], passed: true });
  }

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

  private fed: RawTensor[] | null = null;
  /**
   * What its graph is fed besides its input sources (see captureGraph), in order: the ops' int64 vectors (shape
   * vectors, bounds) packed in one, then their other feeds. Made once: a graph runs with the feeds of its capture.
   */
  feedInputs(): RawTensor[] {
    if (this.fed) return this.fed;
    const all = this.ops.flatMap((op) => op.feeds);
    if (!packsFeeds(this.ops)) return (this.fed = all);
    const packed = all.filter(packable);
    const data = new BigInt64Array(packed.reduce((n, f) => n + f.shape[0]!, 0));
    let at = 0;
    for (const f of packed) data.set(f.data as BigInt64Array, at), (at += f.shape[0]!);
    return (this.fed = [{ dtype: "int64", shape: [data.length], data }, ...all.filter((f) => !packable(f))]);
  }

  /** Records `p` applied to `inputs`; `specs` are its outputs' (as p.infer gives them). */
  record<A>(p: Primitive<A>, inputs: readonly Tensor[], attrs: A, specs: OutSpec[]): Tensor[] {
    if ((!p.graph && !graphForms[p.name]) || p.graphs?.(inputs, attrs) === false) throw new CaptureError(`${p.name} has no graph form${p.graph ? " for these attributes" : ""}`);
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
    this.fed = null;
    return outs;
  }
}

const captures = new AsyncScope<Capture>();

/** The capture the running code belongs to, if any (ops record into it instead of running). */
export function activeCapture(): Capture | undefined {
  return captures.get();
}

/** Runs `work` (which may await) with every op it runs recorded in `capture`. */
export function runCaptured<T>(capture: Capture, work: () => Promise<T>): Promise<T> {
  return captures.run(capture, work);
}

let fusionSet: boolean | null = null;
let fusionFromEnv: boolean | undefined;

/**
 * Whether fusion is on: TSIGHT_FUSE=0 turns it off (every op one kernel call, as before), read once (the
 * environment is slow to read, and this is asked at every block's call); `setFusion` decides instead.
 */
export function fusionEnabled(): boolean {
  if (fusionSet !== null) return fusionSet;
  return (fusionFromEnv ??= switchSetting("TSIGHT_FUSE", true));
}

/** Turns fusion on or off in this thread (tests, benchmarks); null goes back to TSIGHT_FUSE. */
export function setFusion(on: boolean | null): void {
  fusionSet = on;
}

/** Where a fused graph's inputs come from at each run: an argument, a parameter (read then), or a shape vector of the capture. */
type InputSlot = { kind: "arg"; path: (string | number)[] } | { kind: "param"; read: () => Tensor } | { kind: "value"; value: RawTensor };

/** What a fused graph is made from: the capture, the code's result, and where its arguments and parameters were. */
interface FusedSource {
  capture: Capture;
  result: unknown;
  argSlots: ReadonlyMap<Tensor, (string | number)[]>;
  params: ReadonlyMap<Tensor, () => Tensor>;
}

/**
 * How each source of `src` becomes part of a graph (see SourceKind): arguments are inputs; parameters are weights
 * when repacked (see packing.ts: every path holds them so), or when `weights` and float32 vectors (norms' gains,
 * biases), else inputs; values the code made are constants (small ones only: CaptureError). A matrix not repacked is
 * fed, as op by op feeds it: held as a constant (its kernel does not repack it) it summed otherwise on two threads
 * (stdlib-llama's logits 6.7e-6 from op by op's with TSIGHT_PREPACK=0), for a copy, and was not faster on the whole
 * (with TSIGHT_PREPACK=0, GPT-2-small's prefill at 128 tokens took 104-114 ms held against 109-123 fed, stdlib-gpt2
 * at 5 tokens 1.14-1.53 ms against 0.60-0.74).
 * Gives the kinds, the inputs' slots in order (the ops' shape vectors follow them) and the weights' reads in order.
 */
function planInputs(src: FusedSource, weights: boolean): { kindOf: (t: Tensor) => SourceKind; slots: InputSlot[]; reads: (() => Tensor)[] } {
  // Decided by the parameters now (a graph is planned again for weights set since, see FusedGraph.replanIfStale).
  const now = (t: Tensor): Tensor => src.params.get(t)!();
  const paramKind = (t: Tensor): SourceKind => (packs(now(t)) || (weights && bakeable(t) && t.shape.length < 2) ? "weight" : "input");
  const kindOf = (t: Tensor): SourceKind => (src.argSlots.has(t) ? "input" : src.params.has(t) ? paramKind(t) : "constant");
  // A large value that is neither an argument nor a parameter known before the capture (a weight set while it ran)
  // would be frozen into the graph.
  for (const t of src.capture.sources.values()) {
    if (!src.argSlots.has(t) && !src.params.has(t) && t.data.length > MAX_BAKED_CONSTANT) {
      throw new CaptureError(`the code read a tensor of shape [${t.shape}] that is neither an argument nor a parameter of the module`);
    }
  }
  const slots: InputSlot[] = [];
  const reads: (() => Tensor)[] = [];
  for (const t of src.capture.sources.values()) {
    const kind = kindOf(t);
    const arg = src.argSlots.get(t);
    const read = src.params.get(t);
    if (kind === "weight") reads.push(read!);
    else if (kind === "input") slots.push(arg ? { kind: "arg", path: arg } : { kind: "param", read: read! });
  }
  for (const value of src.capture.feedInputs()) slots.push({ kind: "value", value });
  return { kindOf, slots, reads };
}

/**
 * The graph of `src` with `outputs`, bound to its weights as constants while their copies fit the budget (or are
 * made already: a block's graph for another shape of arguments), else with them fed; and its inputs' slots.
 */
function bind(src: FusedSource, outputs: readonly Tensor[]): { binding: WeightBinding; slots: InputSlot[] } {
  decideTogether([...src.params.values()].map((read) => read()));
  let plan = planInputs(src, true);
  let graph = captureGraph(src.capture, outputs, plan.kindOf);
  const weights = plan.reads.map((read) => read());
  // Repacked matrices are held whatever the budget (they had room reserved when decided).
  const bytes = bytesOf(weights.filter((w) => !packs(w)));
  if (bytes && !hasKernel(boundKey(graph.base, weights)) && !mayCopyWeights(bytes)) {
    plan = planInputs(src, false);
    graph = captureGraph(src.capture, outputs, plan.kindOf);
  }
  return { binding: new WeightBinding(graph, plan.reads), slots: plan.slots };
}

function feed(slots: readonly InputSlot[], args: readonly unknown[]): RawTensor[] {
  return slots.map((s) => (s.kind === "arg" ? (resolvePath(args, s.path) as Tensor) : s.kind === "param" ? s.read() : s.value));
}

/**
 * A captured piece of code compiled as one graph: run with the same kind of arguments, it gives what the code gives.
 * Its weights are constants of the graph (see WeightBinding); everything shaped by the arguments is fed, so one
 * kernel serves every kind of arguments with the same ops.
 */
export class FusedGraph {
  /** The graph for the latest set of taps asked for (see tapped), and the set it was asked with, at its size then. */
  private tap: { key: string; graph: TappedGraph | null; asked: ReadonlySet<string>; size: number } | null = null;
  private slots!: InputSlot[];
  private binding!: WeightBinding;
  /** Whether each parameter was repacked when the graph was planned (see replanIfStale). */
  private planned!: boolean[];
  private readonly outputs: { dtype: DType; shape: number[] }[];

  constructor(private readonly src: FusedSource) {
    this.plan();
    this.outputs = tensorsIn(src.result).map(({ t }) => ({ dtype: t.dtype, shape: [...t.shape] }));
  }

  private plan(): void {
    ({ binding: this.binding, slots: this.slots } = bind(this.src, tensorsIn(this.src.result).map(({ t }) => t)));
    this.planned = [...this.src.params.values()].map((read) => packs(read()));
  }

  /**
   * Plans the graph again when a parameter was replaced by one decided otherwise (a trainable one, which is never
   * repacked, or one that fits the budget now): a repacked matrix must be a constant of it, any other one fed.
   */
  private replanIfStale(): void {
    let i = 0;
    for (const read of this.src.params.values()) {
      if (packs(read()) === this.planned[i++]) continue;
      this.release();
      this.plan();
      return;
    }
  }

  /** The module calls inside the captured code, outermost first (null if they overlapped, or were not captured). */
  get calls(): readonly CapturedCall[] | null {
    const capture = this.src.capture;
    return capture.callsNested && capture.calls.length > 0 ? capture.calls : null;
  }

  /**
   * Whether a parameter it reads has changed kind since the capture: it records gradients now (a graph has none),
   * or is packed or has no values (set since): the code must run op by op.
   */
  cannotRun(): boolean {
    const grad = isGradEnabled();
    for (const read of this.src.params.values()) {
      const t = read();
      if (t.packed || t.isMeta || (grad && t.requiresGrad)) return true;
    }
    return false;
  }

  /** Lets go of its kernels (it is forgotten). */
  release(): void {
    this.binding.release();
    this.tap?.graph?.release();
    this.tap = null;
  }

  run(args: readonly unknown[]): unknown {
    this.replanIfStale();
    const raw = this.binding.run(feed(this.slots, args));
    return rebuildResult(this.src.result, raw.map((r, i) => new Tensor(this.outputs[i]!.dtype, r.data as TypedArray, this.outputs[i]!.shape)));
  }

  /**
   * The same graph with values the module calls inside the code took or gave as outputs too: the arguments of the
   * calls `taps` names as `input|PATH`, the results of those it names as `output|PATH` (`pathOf` gives a call's
   * path). What lets a fused block hand out the values of the modules inside it. Null when the calls overlapped.
   * Its weights are constants too while the budget allows (see bind): each kind of taps is a graph of its own.
   * A set given again must only have grown since (at the same size it is taken to hold the same taps).
   */
  tapped(taps: ReadonlySet<string>, pathOf: (owner: object) => string): TappedGraph | null {
    this.replanIfStale();
    // The same set at the same size holds the same taps (a set only grows; a block's taps shrink to a new set): no
    // key to make.
    if (this.tap?.asked === taps && this.tap.size === taps.size) return this.tap.graph;
    const key = [...taps].sort().join(" ");
    if (this.tap?.key === key) {
      this.tap = { ...this.tap, asked: taps, size: taps.size };
      return this.tap.graph;
    }
    // A block's taps change rarely (they grow as code asks for more, and shrink to those still read; see nn/fusion's
    // noteTapsUsed): the graph for the set before is let go of.
    this.tap?.graph?.release();
    let made: TappedGraph | null = null;
    if (this.calls) {
      try {
        made = this.makeTapped(taps, pathOf);
      } catch (e) {
        if (!(e instanceof CaptureError)) throw e;
        made = null;
      }
    }
    this.tap = { key, graph: made, asked: taps, size: taps.size };
    return made;
  }

  private makeTapped(wanted: ReadonlySet<string>, pathOf: (owner: object) => string): TappedGraph {
    const src = this.src;
    const results = tensorsIn(src.result).map(({ t }) => t);
    const taps = tapsOf(src.capture, wanted, pathOf);
    const { binding, slots } = bind(src, [...results, ...taps]);
    const specs = [...results, ...taps].map((t) => ({ dtype: t.dtype, shape: [...t.shape] }));
    const run = (args: readonly unknown[]) => {
      const raw = binding.run(feed(slots, args));
      const outs = raw.map((r, i) => new Tensor(specs[i]!.dtype, r.data as TypedArray, specs[i]!.shape));
      const tapped = new Map(taps.map((t, i) => [t, outs[results.length + i]!]));
      // A value the calls saw, as it is in this run: computed (a tap), an argument or parameter of this run, or a
      // constant of the code.
      const real = (t: Tensor): Tensor | undefined => {
        if (t.isMeta) return tapped.get(t);
        const at = src.argSlots.get(t);
        if (at) return resolvePath(args, at) as Tensor;
        return src.params.get(t)?.() ?? t;
      };
      return { result: rebuildResult(src.result, outs.slice(0, results.length)), real: (v: unknown) => mapValues(v, real) };
    };
    return { run, release: () => binding.release() };
  }
}

/** What a tapped graph's `real` gives for a captured value it cannot give as in this run. */
export const UNKNOWN_VALUE: unique symbol = Symbol("unknown value");

/** A fused graph that also gives the values of the module calls inside it (see FusedGraph.tapped). */
export interface TappedGraph {
  /** Runs it; `real` turns a captured value (a call's arguments or result) into this run's, or UNKNOWN_VALUE. */
  run(args: readonly unknown[]): { result: unknown; real: (captured: unknown) => unknown };
  /** Frees its kernel (it is forgotten). */
  release(): void;
}

/** `v` with its tensors replaced by `map`'s (arrays and plain objects copied); UNKNOWN_VALUE if one cannot be, or `v` holds other objects. */
function mapValues(v: unknown, map: (t: Tensor) => Tensor | undefined): unknown {
  const cannot = UNKNOWN_VALUE;
  const walk = (x: unknown): unknown => {
    if (x instanceof Tensor) return map(x) ?? cannot;
    if (x === null || x === undefined || typeof x !== "object") return x;
    if (Array.isArray(x)) {
      const out = x.map(walk);
      return out.includes(cannot) ? cannot : out;
    }
    if (Object.getPrototypeOf(x) !== Object.prototype) return cannot;
    const out: Record<string, unknown> = {};
    for (const [k, y] of Object.entries(x)) if ((out[k] = walk(y)) === cannot) return cannot;
    return out;
  };
  return walk(v);
}

function resolvePath(root: unknown, path: readonly (string | number)[]): unknown {
  return path.reduce<unknown>((v, k) => (v as Record<string | number, unknown>)[k], root);
}

/**
 * Every tensor in `value` (arrays and plain objects walked), with its path. Other objects are not walked: a model's
 * step returns its KV cache, whose buffers are the cache's own (not outputs of the graph to copy and put back).
 */
function tensorsIn(value: unknown, path: (string | number)[] = [], out: { t: Tensor; path: (string | number)[] }[] = []): { t: Tensor; path: (string | number)[] }[] {
  if (value instanceof Tensor) out.push({ t: value, path });
  else if (Array.isArray(value)) value.forEach((v, i) => tensorsIn(v, [...path, i], out));
  else if (value !== null && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) for (const [k, v] of Object.entries(value)) tensorsIn(v, [...path, k], out);
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
  return Array.from(data as ArrayLike<number | bigint>, String).join(",");
}

/** The most values a constant the code made may have (it is written into the graph and its key). */
const MAX_BAKED_CONSTANT = 64;

/**
 * What each value the captured code read becomes in its graph: an input fed at each run, a constant written into
 * the graph (keyed by its data: scalars and small vectors the code made), or a weight (a constant too, keyed by the
 * identity of its values, see WeightBinding).
 */
type SourceKind = "input" | "constant" | "weight";

/** Whether the ops' packable feeds travel packed in one input: when there are two or more. */
const packsFeeds = (ops: readonly Op[]): boolean => ops.reduce((n, op) => n + op.feeds.filter(packable).length, 0) >= 2;

/** The names of the ops' feeds in a graph fed as Capture.feedInputs gives them: per op, its feeds' names. */
function feedGraph(g: GraphBuilder, ops: readonly Op[]): string[][] {
  if (!packsFeeds(ops)) return ops.map((op) => op.feeds.map((f) => g.input(f.dtype)));
  const packed = ops.flatMap((op) => op.feeds.filter(packable));
  const pieces = g.node("Split", [g.input("int64"), g.ints(packed.map((f) => f.shape[0]!))], { axis: 0 }, packed.length);
  let next = 0;
  return ops.map((op) => op.feeds.map((f) => (packable(f) ? pieces[next++]! : g.input(f.dtype))));
}

/** A graph built from a capture: its key without the weights' identities, and how to build it with given weights. */
interface CapturedGraph {
  base: string;
  build: (g: GraphBuilder, weights: readonly Tensor[]) => void;
}

/**
 * The graph of what `capture` recorded, with `outputs` (tensors the code computed or read) as its outputs. Each
 * source becomes what `kindOf` says; the graph's inputs are the sources that are inputs, in capture order, then
 * the ops' shape vectors. The key is the structure (ops, attributes, dtypes and ranks) and the constants' data,
 * so a graph serves every shape (weights are named by their shapes here, by identity in WeightBinding's key).
 */
function captureGraph(capture: Capture, outputs: readonly Tensor[], kindOf: (t: Tensor) => SourceKind): CapturedGraph {
  const keyParts: string[] = [];
  for (const [id, t] of capture.sources) {
    const kind = kindOf(t);
    keyParts.push(kind === "input" ? `in${id}:${t.dtype}/${t.shape.length}` : kind === "weight" ? `w${id}:${t.dtype}[${t.shape}]` : `c${id}:${t.dtype}[${t.shape}]=${dataKey(t.data)}`);
  }
  for (const op of capture.ops) {
    // A packed vector's length is part of the graph (the split's sizes): a shape vector's is its op's rank.
    const feeds = op.feeds.map((f) => `${f.dtype}/${f.shape.length}${packable(f) ? `:${f.shape[0]}` : ""}`);
    // An op's attributes as its eager kernel names them (p.key: what its graph depends on; a reshape's target shape
    // is a feed here), so the key holds no shape and one graph serves every length.
    keyParts.push(`${op.p.name}(${op.inputs.join(",")})${op.p.graph ? (op.p.key?.(op.attrs) ?? "") : ""}|${feeds.join(";")}|${op.specs.map((o) => `${o.dtype}/${o.shape.length}`).join(";")}->${op.outputs.join(",")}`);
  }
  const outIds = outputs.map((t) => {
    if (!capture.has(t)) throw new CaptureError("the code returned a tensor it did not compute or read");
    return capture.idOf(t);
  });
  keyParts.push(`out:${outIds.join(",")}`);
  const build = (g: GraphBuilder, weights: readonly Tensor[]) => {
    const names = new Map<number, string>();
    for (const [id, t] of capture.sources) if (kindOf(t) === "input") names.set(id, g.input(t.dtype));
    let w = 0;
    for (const [id, t] of capture.sources) {
      const kind = kindOf(t);
      if (kind === "constant") names.set(id, g.constant(t.dtype, [...t.shape], t.data));
      else if (kind === "weight") {
        const weight = weights[w++]!;
        names.set(id, g.constant(weight.dtype, [...weight.shape], weight.data));
      }
    }
    const feedNames = feedGraph(g, capture.ops);
    capture.ops.forEach((op, n) => {
      const ins = [...op.inputs.map((i) => names.get(i)!), ...feedNames[n]!];
      const outs = op.p.graph ? op.p.graph(g, ins, op.attrs, op.metaInputs) : graphForms[op.p.name]!(g, ins, op.attrs, op.specs);
      op.outputs.forEach((id, i) => names.set(id, outs[i]!));
    });
    outIds.forEach((id, i) => g.output(names.get(id)!, outputs[i]!.dtype));
  };
  // "fused:" keys run on every kernel thread, like the matrix products they hold.
  return { base: `fused:${keyParts.join("\n")}`, build };
}

/**
 * A captured graph run with the module's weights as constants of the graph, bound once rather than fed at every
 * run (GPT-2-small at 128 tokens on an AMD EPYC: 249 ms against 273 fed, 224 with the matrices repacked, see
 * packing.ts). ONNX Runtime keeps its own copy of them. The graph is
 * rebuilt when a weight is replaced (an optimizer step, setParameter, a new checkpoint): `reads` give the weights
 * now, and the kernel of the old ones is freed.
 */
class WeightBinding {
  private bound: StorageArray[] = [];
  private key = "";
  /** The bound weights' bytes (the engine counts them against the budget). */
  private holds = 0;

  constructor(
    private readonly graph: CapturedGraph,
    private readonly reads: readonly (() => Tensor)[],
  ) {}

  run(inputs: readonly RawTensor[]): RawTensor[] {
    const weights = this.reads.map((read) => read());
    if (!this.key || weights.some((w, i) => w.data !== this.bound[i])) {
      const key = boundKey(this.graph.base, weights);
      // Kernels holding weights are counted by the graphs using them (the same block at other lengths shares one).
      if (weights.length && key !== this.key) {
        retainKernel(key);
        if (this.key) releaseKernel(this.key);
      }
      this.bound = weights.map((w) => w.data);
      this.key = key;
      this.holds = bytesOf(weights);
    }
    // Its kernel is kept until the weights change or are collected.
    return runHolding(this.key, weights, (g) => this.graph.build(g, weights), inputs, this.holds);
  }

  /** Lets go of its kernel (freed when no other graph uses it; one without weights is in the engine's bounded cache). */
  release(): void {
    if (this.key && this.bound.length) releaseKernel(this.key);
    this.key = "";
  }
}

/** Whether a parameter can be a constant of a graph: float32 (a narrow one would be widened into a float32 copy). */
const bakeable = (t: Tensor): boolean => t.dtype === "float32";

/** `result` with its tensors (in tensorsIn's order) replaced by `outs`. */
function rebuildResult(result: unknown, outs: readonly Tensor[]): unknown {
  if (result instanceof Tensor) return outs[0];
  const copy = structuredCopy(result);
  tensorsIn(result).forEach(({ path }, i) => setPath(copy, path, outs[i]!));
  return copy;
}

/**
 * Compiles what `capture` recorded into one graph whose outputs are `result`'s tensors, for later calls with the
 * same kind of arguments. `args` are the captured code's arguments (their tensors are inputs fed at each run),
 * `params` the parameters it may read (read again at each run, so new weights are used).
 */
export function compileCapture(capture: Capture, args: readonly unknown[], params: ReadonlyMap<Tensor, () => Tensor>, result: unknown): FusedGraph {
  const argSlots = new Map<Tensor, (string | number)[]>();
  for (const { t, path } of tensorsIn(args)) if (!argSlots.has(t)) argSlots.set(t, path);
  return new FusedGraph({ capture, result, argSlots, params });
}

/**
 * One run of captured code as a graph that depends on no shape or value: every source (arguments, parameters,
 * cache entries, values the code made) and every shape vector the ops need is an input, fed from this capture.
 * The graph is looked up by its structure (ops, attributes, dtypes), so a capture of the same code at another
 * length (the next decode step) reuses it. Repacked matrices (see packing.ts) are its constants, as every path
 * holds them, so it is then a graph per block (one row at a time, a repacked matrix multiplies as fast as a fed
 * one: GPT-2-small decode 29.5-31.3 tokens/s against 28.5-29.2), with its float32 parameter vectors; without
 * repacked matrices every weight is fed, and blocks with the same ops share the graph. Returns the output tensors:
 * `result`'s, then `extra`'s. `isParam` tells the parameters.
 */
export function runCaptureGeneric(capture: Capture, result: unknown, extra: readonly Tensor[], isParam: (t: Tensor) => boolean): { result: unknown; extra: Tensor[]; key: string } {
  const found = [...tensorsIn(result).map(({ t }) => t), ...extra];
  const sources = [...capture.sources.values()];
  // Decided together before kindOf asks about one (which would decide it alone).
  decideTogether(sources.filter(isParam));
  // With a repacked matrix held, the graph is this block's alone: its other float32 parameters are held too (the
  // layer norms' and biases' vectors, each an input fed at every step otherwise: 32 of a stdlib-gpt2 step's 54).
  const holding = sources.some((t) => isParam(t) && packs(t));
  // Not a trainable one: an optimizer step replaces it, and with it the kernel holding the block's matrices.
  const kindOf = (t: Tensor): SourceKind => (isParam(t) && (packs(t) || (holding && t.dtype === "float32" && t.shape.length <= 1 && !t.requiresGrad)) ? "weight" : "input");
  const graph = captureGraph(capture, found, kindOf);
  const weights = sources.filter((t) => kindOf(t) === "weight");
  const inputs = [...sources.filter((t) => kindOf(t) === "input"), ...capture.feedInputs()];
  const key = boundKey(graph.base, weights);
  const raw = runHolding(key, weights, (g) => graph.build(g, weights), inputs);
  const outs = raw.map((r, i) => new Tensor(found[i]!.dtype, r.data as TypedArray, found[i]!.shape));
  const count = found.length - extra.length;
  return { result: rebuildResult(result, outs.slice(0, count)), extra: outs.slice(count), key };
}

/**
 * The captured values (computed inside the code, each once, in call order) of the module calls `wanted` names: the
 * arguments of those named `input|PATH`, the results of those named `output|PATH` (`pathOf` gives a call's path).
 */
function tapsOf(capture: Capture, wanted: ReadonlySet<string>, pathOf: (owner: object) => string): Tensor[] {
  // Nothing read (a step with edits only): no walk of its calls (it cost a step of stdlib-gpt2 about 25 us).
  if (wanted.size === 0) return [];
  const taps: Tensor[] = [];
  const seen = new Set<Tensor>();
  const tap = (v: unknown) => {
    for (const { t } of tensorsIn(v)) if (t.isMeta && capture.has(t) && !seen.has(t)) seen.add(t), taps.push(t);
  };
  const walk = (call: CapturedCall): void => {
    const path = pathOf(call.owner);
    if (wanted.has(`input|${path}`)) tap(call.args);
    if (wanted.has(`output|${path}`)) tap(call.out);
    call.children.forEach(walk);
  };
  capture.calls.forEach(walk);
  return taps;
}

/**
 * runCaptureGeneric with the values of the module calls `wanted` names (see tapsOf) as outputs too, for a
 * generation step that hands out the values of the modules inside it: `real` turns a call's captured value into
 * this run's, or UNKNOWN_VALUE where the graph did not give it (or it holds an object, such as the KV cache, which
 * the run has changed). What the capture read (arguments, parameters) is this run's already.
 */
export function runCaptureTapped(
  capture: Capture,
  result: unknown,
  extra: readonly Tensor[],
  wanted: ReadonlySet<string>,
  pathOf: (owner: object) => string,
  isParam: (t: Tensor) => boolean,
): { result: unknown; extra: Tensor[]; key: string; real: (captured: unknown) => unknown } {
  const taps = tapsOf(capture, wanted, pathOf);
  const ran = runCaptureGeneric(capture, result, [...extra, ...taps], isParam);
  const given = new Map(taps.map((t, i) => [t, ran.extra[extra.length + i]!]));
  const real = (t: Tensor): Tensor | undefined => (t.isMeta ? given.get(t) : t);
  return { result: ran.result, extra: ran.extra.slice(0, extra.length), key: ran.key, real: (v) => mapValues(v, real) };
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
