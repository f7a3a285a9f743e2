/**
 * Module: a node of a model's tree. Owns its parameters (declared with `param`) and its children (any Module
 * field, discovered in declaration order, so declaring fields in Hugging Face's order gives Hugging Face's
 * `named_modules()` order). `call` runs `forward` through the tree's hooks, which is where interventions attach.
 */
import { activeCapture, releaseWeight, Tensor, type DType } from "../tensor/index.js";
import { markParameter } from "../tensor/packing.js";
import { fusedForward } from "./fusion.js";

/**
 * The one contract between models and the intervention layer: every module call goes through `call`, which may
 * replace arguments, skip `forward`, and replace the output.
 */
export interface ModuleHooks {
  call(module: Module, args: unknown[], forward: (args: unknown[]) => Promise<unknown>): Promise<unknown>;
  /**
   * Whether anything reads, replaces or records the module at `path` (optional, with `pass`: hooks without it are
   * taken to watch everything). A forward computes an operation point nobody watches the fast way (one fused kernel).
   */
  watches?(path: string): boolean;
  /** A call of `module` that happened inside a fused kernel, unwatched: counted (so later calls keep their numbers), not provided. */
  pass?(module: Module): void;
  /**
   * A call of `module` that ran as one fused kernel: every module below it counts as called once more (as `pass`
   * for each of them, in one step), but those at the paths `uncalled` (which the run did not call, as an op-by-op
   * run would not). Hooks without it get `pass` for each module called.
   */
  passWithin?(module: Module, uncalled?: ReadonlySet<string>): void;
  /** Whether anything reads, replaces or records a module below `path` (with `pass`: lets a block run fused). */
  watchesWithin?(path: string): boolean;
  /**
   * For a block with watched modules inside: whether it may run fused and then hand the modules' values out as
   * if they had run one by one (see fusion.ts's replay), or null. `modules` are the paths whose values it can give.
   * Hooks that replay get, from the replay's `call`s, a `forward` that may return its result itself (no promise):
   * a replay takes many calls, and each promise costs.
   */
  replay?(block: Module, modules: ReadonlySet<string>): Replay | null;
  /**
   * For a generation step of a block with modules inside edited by functions (`output = fn`, see StepEdits): those
   * the step's graph may compute, set aside (replay does not count them) until `release`; null when none may.
   */
  stepEdits?(block: Module): StepEdits | null;
}

/**
 * Edits of modules' outputs by pure functions, computed by a generation step's graph: the function is called while
 * the step is captured, on a tensor without values, so that its ops become the graph's. Set aside while the step is
 * captured and run; an edit the graph did not compute is applied as before, when the step runs op by op.
 */
export interface StepEdits {
  /** The paths of the modules edited. */
  readonly paths: ReadonlySet<string>;
  /** Whether nothing else is asked of the modules below the block (no value read): no replay is needed. */
  readonly alone: boolean;
  /** The edit of the `nth` call (from 0) in this step of the module at `path`, applied to its output; or null. */
  at(path: string, nth: number): ((output: unknown) => unknown) | null;
  /** The graph computed the edits `at` gave: they are done. */
  done(): void;
  /** The step runs op by op after all: the edits done are applied again there. */
  restore(): void;
  /** An edit could not be captured (it reads values): edits are applied op by op from now on. */
  refuse(): void;
  /**
   * The step's graph with the edits was compiled anew (its ops are not those of an earlier step's): past a few, edits
   * are applied op by op from now on (code whose edits differ at every step would compile a graph at every step).
   */
  compiled(): void;
  /** The edits not done are no longer set aside. */
  release(): void;
}

/** A fused block handing out the values of the modules inside it, through `call` with a forward that gives them. */
export interface Replay {
  /**
   * Whether what is asked of the module at `path` now needs it to really run: a replacement or skip of it, a value
   * of it the replay cannot give (`gives`: whether its input and output are known; `missing` is told which, as
   * `input|PATH` or `output|PATH`), or a value below it that is not one of the modules'.
   */
  needsRun(path: string, gives: { input: boolean; output: boolean }, missing?: (value: string) => void): boolean;
  /** The values below the block asked for when the replay began, as `input|PATH` or `output|PATH`. */
  readonly asked: ReadonlySet<string>;
  /**
   * Keeps a value of the module at `path`'s call in progress that a replacement made as it was handed out (the
   * replay cannot go on after it): the block's run op by op takes it there instead of computing it.
   */
  keep(path: string, kind: "input" | "output", value: unknown): void;
  /** Puts the call counts of the modules back as they were before the replay began (the block then runs op by op). */
  rewind(): void;
  /** The replay is over (handed out, rewound or failed): the counts made since stand. */
  end(): void;
  /**
   * Whether an invoke skips the module at `path` in the call in progress (asked for as its input was handed out):
   * its output for the other rows must then be computed, which the replay cannot do.
   */
  skipping(path: string): boolean;
  /**
   * Calls `heard` with each value a read is answered with from now on (as `input|PATH` or `output|PATH`), until the
   * returned function is called: the run op by op after a replay tells what the code asks, so all of it can be
   * tapped from the next run on (not one value per run).
   */
  hearReads(heard: (value: string) => void): () => void;
  /**
   * Hands out the values asked of the block's calls, in the order op by op would give them (`values`; `at`: by a
   * module's path, the indices of its input and output), without playing each call through `call`; the calls are then
   * counted at once (passWithin), so only a block whose modules, all below it, are each called once can be. True
   * when it did so; false when the block must run op by op instead (a replacement or skip asked for, a value not
   * given, a cache made meanwhile; `learn` is told of a value to tap), its counts as they were. Null when the hooks
   * cannot (the block's calls are then played through `call`).
   */
  readonly inOrder: ((values: readonly InOrderValue[], at: ReadonlyMap<string, readonly [number, number]>, valueOf: (v: InOrderValue) => unknown, learn: (value: string) => void) => Promise<boolean> | boolean) | null;
}

/**
 * A value of a call inside a fused block, in the order op by op gives them (see Replay.inOrder); `valueOf` gives it
 * as in this run, or UNKNOWN_VALUE (tensor/fuse.ts) where the graph did not give it.
 */
export interface InOrderValue {
  path: string;
  kind: "input" | "output";
  /** Which call: its place among the block's calls in order (each before those inside it). */
  call: number;
  /** Computed inside an op of the graph (an operation point passed): only a run op by op gives it. */
  passed: boolean;
}

/** State shared by every module of one tree. */
export interface TreeContext {
  hooks: ModuleHooks | null;
}

export interface ParamInfo {
  module: Module;
  name: string;
  shape: readonly number[];
}

/**
 * A module called the wrong way: its forward called around its hooks (`child.forward(x)` where `child.call(x)`
 * belongs), or a decoder layer called without what the stack passes it (see nn/attention.ts).
 */
export class ModuleCallError extends Error {
  override readonly name = "ModuleCallError";
}

/** A parameter that does not exist, or a value that does not fit it; `parameter` names it. */
export class ParameterError extends Error {
  override readonly name = "ParameterError";
  constructor(
    message: string,
    readonly parameter: string,
  ) {
    super(message);
  }
}

export abstract class Module {
  /** Dotted path from the root, as in Hugging Face ("" for the root). Set by `finalize`. */
  path = "";
  /** @internal */
  tree: TreeContext = { hooks: null };
  private readonly paramShapes = new Map<string, readonly number[]>();

  abstract forward(...args: never[]): Promise<unknown>;

  /** Runs `forward` through the hooks of the tree (intervention points). */
  call<M extends Module>(this: M, ...args: Parameters<M["forward"]>): ReturnType<M["forward"]> {
    // While a fused graph is captured, modules run their forward with no hooks (nothing is provided); the calls are
    // noted, so that a fused block can give the values of the modules inside it.
    const capture = activeCapture();
    if (capture) return capture.recordCall(this, args, () => this.forwardNow(args)) as ReturnType<M["forward"]>;
    const hooks = this.tree.hooks;
    const forward = this.fusible ? (a: unknown[]) => fusedForward(this, a, hooks, (x) => this.forwardNow(x)) ?? this.forwardNow(a) : (a: unknown[]) => this.forwardNow(a);
    return (hooks ? hooks.call(this, args, forward) : forward(args)) as ReturnType<M["forward"]>;
  }

  /** Runs this module's forward (only `call` and the fusion of blocks do). */
  private forwardNow(args: unknown[]): Promise<unknown> {
    this.entered++;
    try {
      return (this.forward as (...x: unknown[]) => Promise<unknown>)(...args);
    } finally {
      this.entered--;
    }
  }

  /**
   * Runs as one fused graph when nothing inside it is watched (set on decoder blocks; see fusion.ts). Its result
   * is the same within float rounding (tests hold it to 1e-6 of the op-by-op forward). "whole": a small model as
   * one graph, for a few tokens (see fusion.ts's WHOLE_MODEL_ROWS).
   */
  fusible: boolean | "whole" = false;

  /**
   * Tensors its forward reads that are neither parameters nor arguments and never change (rotary tables): a graph
   * captured from it takes them as inputs.
   */
  buffers(): Tensor[] {
    return [];
  }

  /**
   * The positions a graph capturing this module can take (its buffers are tables of them, as a RotaryEmbedding's),
   * or null: no bound. Past it, a whole model's step runs op by op.
   */
  get capturedPositions(): number | null {
    return null;
  }

  /**
   * Whether it is an operation point (nn/points.ts's Point, not a module holding points): computed, and counted,
   * wherever the op around it runs.
   */
  get isOperationPoint(): boolean {
    return false;
  }

  /**
   * Whether values of its output are computed from one another (a router's top-k weights from its logits): a trace
   * taking gradients that reads the output has the call record its ops, so a gradient reaches each value through the
   * others, as in PyTorch. Other outputs read first become leaves of their own (their gradients in any order; made
   * from the module's input instead, an attention's output would have to be asked for before a parallel branch's).
   */
  get linkedOutputs(): boolean {
    return false;
  }

  /** Children attached or detached after finalize, in any tree (fused graphs captured before are stale). */
  static treeChanges = 0;

  /** Calls of `forward` that came through `call` and have not returned their promise yet (see guardForward). */
  private entered = 0;

  /**
   * Makes a direct `child.forward(x)` from a parent's forward an error: it would run the child with no hooks, so
   * interventions on it (and everything inside it) would silently not happen. `call` is the way in.
   */
  private guardForward(): void {
    if (Object.prototype.hasOwnProperty.call(this, "forward")) return;
    const forward = this.forward as (...a: unknown[]) => Promise<unknown>;
    Object.defineProperty(this, "forward", {
      configurable: true,
      writable: true,
      value: (...a: unknown[]) => {
        if (this.entered === 0) throw new ModuleCallError(`${this.path || "the model"}.forward(...) was called directly, which skips the hooks interventions use; call ${this.path || "the model"}.call(...) instead`);
        return forward.apply(this, a);
      },
    });
  }

  /** Declares a parameter; until weights load it is a meta tensor of that shape. */
  protected param(name: string, shape: readonly number[], dtype: DType = "float32"): Tensor {
    this.paramShapes.set(name, shape);
    return Tensor.meta(dtype, shape);
  }

  /** Direct children in declaration order. */
  children(): [string, Module][] {
    return Object.entries(this).filter((e): e is [string, Module] => e[1] instanceof Module && e[0] !== "tree");
  }

  /** Every module with its path, parents before children (Hugging Face's named_modules order). */
  namedModules(): [string, Module][] {
    const out: [string, Module][] = [];
    const walk = (m: Module, path: string): void => {
      out.push([path, m]);
      for (const [name, child] of m.children()) walk(child, path ? `${path}.${name}` : name);
    };
    walk(this, this.path);
    return out;
  }

  /** Every declared parameter by full name (`transformer.h.0.attn.c_attn.weight`). */
  namedParameters(): Map<string, ParamInfo> {
    const out = new Map<string, ParamInfo>();
    for (const [path, m] of this.namedModules()) {
      for (const [name, shape] of m.paramShapes) out.set(path ? `${path}.${name}` : name, { module: m, name, shape });
    }
    return out;
  }

  /** The parameter tensor `name` of this module. */
  getParam(name: string): Tensor {
    return (this as unknown as Record<string, Tensor>)[name]!;
  }
  /** @internal replaces a parameter (weight loading); shape checked by the loader */
  setParam(name: string, value: Tensor): void {
    const old = (this as unknown as Record<string, Tensor | undefined>)[name];
    // Graphs holding the old values as constants (a fused block's) are let go of now, not when the block next runs.
    if (old instanceof Tensor && old !== value && !old.isMeta && !old.packed && (value.isMeta || value.packed || value.data !== old.data)) releaseWeight(old.data);
    (this as unknown as Record<string, Tensor>)[name] = value;
    markParameter(value);
  }

  /** Every parameter tensor by full name (`fc1.weight`); meta tensors until weights are set. */
  parameters(): Map<string, Tensor> {
    return new Map([...this.namedParameters()].map(([name, p]) => [name, p.module.getParam(p.name)]));
  }

  /** Sets the parameter `name` (`fc1.weight`) to `value`, which must have its declared shape (float32). */
  setParameter(name: string, value: Tensor): void {
    const p = this.namedParameters().get(name);
    if (!p) throw new ParameterError(`${this.typeName} has no parameter "${name}"; its parameters are: ${[...this.namedParameters().keys()].join(", ") || "none"}`, name);
    if (!(value instanceof Tensor)) throw new ParameterError(`parameter "${name}" must be set to a Tensor`, name);
    if (value.shape.length !== p.shape.length || value.shape.some((d, i) => d !== p.shape[i])) throw new ParameterError(`parameter "${name}" is declared [${p.shape.join(", ")}]; got [${value.shape.join(", ")}]`, name);
    if (value.dtype !== p.module.getParam(p.name).dtype) throw new ParameterError(`parameter "${name}" is ${p.module.getParam(p.name).dtype}; got ${value.dtype}`, name);
    p.module.setParam(p.name, value);
  }

  /**
   * Sets several parameters by full name. `strict` (default): every parameter must be given and no other name,
   * as PyTorch's load_state_dict.
   */
  loadParameters(values: ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>, options: { strict?: boolean } = {}): void {
    const entries = values instanceof Map ? [...values.entries()] : Object.entries(values);
    const declared = this.namedParameters();
    if (options.strict ?? true) {
      const given = new Set(entries.map(([n]) => n));
      const missing = [...declared.keys()].filter((n) => !given.has(n));
      const unexpected = entries.map(([n]) => n).filter((n) => !declared.has(n));
      if (missing.length || unexpected.length) throw new ParameterError(`loadParameters: ${missing.length ? `missing ${missing.join(", ")}` : ""}${missing.length && unexpected.length ? "; " : ""}${unexpected.length ? `unexpected ${unexpected.join(", ")}` : ""}`, missing[0] ?? unexpected[0]!);
    }
    for (const [name, t] of entries) if (declared.has(name)) this.setParameter(name, t);
  }

  /** The module at a dotted path below this one. */
  get(path: string): Module | undefined {
    if (path === "") return this;
    let m: Module | undefined = this;
    for (const part of path.split(".")) m = m?.children().find(([n]) => n === part)?.[1];
    return m;
  }

  /** Sets paths and the shared tree context for the whole tree; call once on the root. */
  finalize(): this {
    const tree: TreeContext = { hooks: null };
    for (const [path, m] of this.namedModules()) {
      m.path = path;
      m.tree = tree;
      m.guardForward();
    }
    return this;
  }

  /**
   * Adds `child` as this module's child `name` in a finalized tree (an SAE spliced in): its subtree gets its paths
   * and the tree's hooks.
   */
  attach(name: string, child: Module): void {
    if (name in this) throw new Error(`${this.path || "the model"} already has "${name}"`);
    Module.treeChanges++;
    (this as unknown as Record<string, Module>)[name] = child;
    child.path = "";
    const base = this.path ? `${this.path}.${name}` : name;
    for (const [p, m] of child.namedModules()) {
      m.path = p ? `${base}.${p}` : base;
      m.tree = this.tree;
      m.guardForward();
    }
  }

  /** Removes the child `name` added with `attach`. */
  detach(name: string): void {
    const child = (this as unknown as Record<string, unknown>)[name];
    if (!(child instanceof Module)) return;
    delete (this as unknown as Record<string, unknown>)[name];
    Module.treeChanges++;
    for (const [, m] of child.namedModules()) m.tree = { hooks: null };
  }

  /** The class name, as Hugging Face would print it. */
  get typeName(): string {
    return this.constructor.name;
  }

  /**
   * The tree as PyTorch prints a module: each child by name and class, parameters by shape, a run of like items of
   * a list folded (`(0-11): 12 x GPT2Block(`), operation points by name. `console.log(model)` prints it too.
   */
  toString(): string {
    return this.describeTree();
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  private describeTree(indent = ""): string {
    const params = [...this.paramShapes].map(([name, shape]) => `${name}: [${shape.join(", ")}]`);
    const children = this.children();
    if (children.length > 0 && children.every(([, c]) => c.isOperationPoint)) return `${this.typeName}(${children.map(([n]) => n).join(", ")})`;
    if (children.length === 0) return `${this.typeName}(${params.join(", ")})`;
    const inner = `${indent}  `;
    const lines = params.map((p) => `${inner}${p}`);
    const described = children.map(([name, c]) => [name, c.describeTree(inner)] as const);
    for (let i = 0; i < described.length; ) {
      let j = i + 1;
      // Runs of equal items in a list (named 0, 1, ...), as PyTorch folds them.
      if (this instanceof ModuleList) while (j < described.length && described[j]![1] === described[i]![1]) j++;
      const [name, text] = described[i]!;
      lines.push(j - i > 1 ? `${inner}(${name}-${described[j - 1]![0]}): ${j - i} x ${text}` : `${inner}(${name}): ${text}`);
      i = j;
    }
    return `${this.typeName}(\n${lines.join("\n")}\n${indent})`;
  }
}

/** An indexable list of modules named "0", "1", ...; it is never called itself, like torch's ModuleList. */
export class ModuleList<M extends Module = Module> extends Module {
  readonly length: number;
  constructor(items: M[]) {
    super();
    items.forEach((m, i) => ((this as unknown as Record<string, M>)[String(i)] = m));
    this.length = items.length;
  }
  at(i: number): M {
    const m = (this as unknown as Record<string, M>)[String(i < 0 ? i + this.length : i)];
    if (!m) throw new RangeError(`ModuleList index ${i} is out of range (length ${this.length})`);
    return m;
  }
  *[Symbol.iterator](): Iterator<M> {
    for (let i = 0; i < this.length; i++) yield this.at(i);
  }
  override async forward(): Promise<never> {
    throw new Error("a ModuleList is not callable; call its items");
  }
}
