/**
 * Module: a node of a model's tree. Owns its parameters (declared with `param`) and its children (any Module
 * field, discovered in declaration order, so declaring fields in Hugging Face's order gives Hugging Face's
 * `named_modules()` order). `call` runs `forward` through the tree's hooks, which is where interventions attach.
 */
import { Tensor, type DType } from "../tensor/index.js";

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

export abstract class Module {
  /** Dotted path from the root, as in Hugging Face ("" for the root). Set by `finalize`. */
  path = "";
  /** @internal */
  tree: TreeContext = { hooks: null };
  private readonly paramShapes = new Map<string, readonly number[]>();

  abstract forward(...args: never[]): Promise<unknown>;

  /** Runs `forward` through the hooks of the tree (intervention points). */
  call<M extends Module>(this: M, ...args: Parameters<M["forward"]>): ReturnType<M["forward"]> {
    const hooks = this.tree.hooks;
    const forward = (a: unknown[]) => (this.forward as (...x: unknown[]) => Promise<unknown>)(...a);
    return (hooks ? hooks.call(this, args, forward) : forward(args)) as ReturnType<M["forward"]>;
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
    (this as unknown as Record<string, Tensor>)[name] = value;
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
    }
    return this;
  }

  /**
   * Adds `child` as this module's child `name` in a finalized tree (an SAE spliced in): its subtree gets its paths
   * and the tree's hooks.
   */
  attach(name: string, child: Module): void {
    if (name in this) throw new Error(`${this.path || "the model"} already has "${name}"`);
    (this as unknown as Record<string, Module>)[name] = child;
    child.path = "";
    const base = this.path ? `${this.path}.${name}` : name;
    for (const [p, m] of child.namedModules()) {
      m.path = p ? `${base}.${p}` : base;
      m.tree = this.tree;
    }
  }

  /** Removes the child `name` added with `attach`. */
  detach(name: string): void {
    const child = (this as unknown as Record<string, unknown>)[name];
    if (!(child instanceof Module)) return;
    delete (this as unknown as Record<string, unknown>)[name];
    for (const [, m] of child.namedModules()) m.tree = { hooks: null };
  }

  /** The class name, as Hugging Face would print it. */
  get typeName(): string {
    return this.constructor.name;
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
