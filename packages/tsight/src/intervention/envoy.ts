/**
 * Envoy: the user's handle on a module inside an intervention. Mirrors the model tree (`m.transformer.h[2].attn`)
 * and turns property access into requests to the invoke's mediator:
 *
 *   await m.x.output            read the module's output (this invoke's rows)
 *   m.x.output = t              replace it when the module returns (or `= (out) => newOut`)
 *   await m.x.input / .inputs   read the first argument / all arguments; assign to replace them before it runs
 *   m.x.skip(value)             do not run the module; use `value` as its output
 *   await m.x.call(...args)     run the module directly (e.g. lm_head on an earlier layer's output)
 */
import { holderRefusal, Module, ModuleList, NO_SOURCE_HINT, pointRefusal, transformerLensHint, transformerLensNames } from "../nn/index.js";
import { TraceError } from "./errors.js";
import type { Mediator } from "./mediator.js";

/** What the envoy tree needs from its trace: the mediator its requests go to, and how to call a module. */
export interface EnvoyContext {
  mediator: Mediator;
  /** Runs a module outside the hooks (a direct call from intervention code made at `origin`). */
  callDirect(module: Module, args: unknown[], origin: Error): Promise<unknown>;
  /** Alias name -> real child name, per module path (from `rename` at load time). */
  aliases: ReadonlyMap<string, ReadonlyMap<string, string>>;
}

/** A module's children by name, computed once per module (envoy trees are rebuilt for every trace). */
const childMaps = new WeakMap<Module, Map<string, Module>>();
function childrenOf(module: Module): Map<string, Module> {
  let map = childMaps.get(module);
  if (!map) childMaps.set(module, (map = new Map(module.children())));
  return map;
}

/** Forgets a module's children (an SAE was spliced onto it or removed). */
export function forgetChildren(module: Module): void {
  childMaps.delete(module);
}

/**
 * An Error made at the user's call, for the stack of an error raised later. Few frames (`frames`): the user's is
 * near. Requests take the function itself and call it when they need it (see Mediator.read).
 */
function origin(frames = 8): Error {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = frames;
  const e = new Error();
  Error.stackTraceLimit = limit;
  return e;
}

export class Envoy {
  /** @internal */ readonly _module: Module;
  /** @internal */ readonly _ctx: EnvoyContext;
  private readonly _children = new Map<string, unknown>();

  constructor(module: Module, ctx: EnvoyContext) {
    this._module = module;
    this._ctx = ctx;
  }

  /** The module's dotted path ("" for the model). */
  get path(): string {
    return this._module.path;
  }

  /** The path of this module's values; a TraceError at once for a holder of points, which has none. */
  private get valuePath(): string {
    const refusal = holderRefusal(this._module);
    if (refusal) throw new TraceError(refusal, origin());
    return this._module.path;
  }

  get output(): Promise<any> {
    return this._ctx.mediator.read(this.valuePath, "output", "all", origin);
  }
  set output(value: unknown) {
    this._ctx.mediator.write(this.valuePath, "output", "all", value, origin);
  }
  get input(): Promise<any> {
    return this._ctx.mediator.read(this.valuePath, "input", "first", origin, this._module.isOperationPoint);
  }
  set input(value: unknown) {
    this._ctx.mediator.write(this.valuePath, "input", "first", value, origin, this._module.isOperationPoint);
  }
  get inputs(): Promise<any[]> {
    return this._ctx.mediator.read(this.valuePath, "input", "all", origin, this._module.isOperationPoint) as Promise<any[]>;
  }
  set inputs(value: unknown) {
    if (!Array.isArray(value) && typeof value !== "function") throw new TraceError(`${this.path}.inputs must be assigned an array of arguments`);
    this._ctx.mediator.write(this.valuePath, "input", "all", value, origin, this._module.isOperationPoint);
  }

  /** Do not run this module (for this invoke's rows); `value` is its output. */
  skip(value: unknown): void {
    this.refuseAtPoint("skip");
    this._ctx.mediator.skip(this.valuePath, value, origin);
  }

  /** A point is neither skipped nor called, and a holder of points never called (see nn/points.ts). */
  private refuseAtPoint(action: "skip" | "call"): void {
    const refusal = pointRefusal(this._module, action) ?? holderRefusal(this._module);
    if (refusal) throw new TraceError(refusal, origin());
  }

  /**
   * Moves this invoke's later requests for this module `n` calls on (default 1): `m.x.next().output` is the
   * output of x's next call (a module called several times in one pass, or the next generation step).
   */
  next(n = 1): this {
    if (!Number.isSafeInteger(n) || n < 0) throw new TraceError(`${this.path}.next(n): n must be a non-negative whole number, got ${String(n)}`);
    this._ctx.mediator.nextCall(this.valuePath, n);
    return this;
  }

  /** The sparse autoencoder spliced onto this module (`lm.addSae`): its pre, latents, reconstruction and error. */
  get sae(): any {
    const child = this._child("sae");
    if (child === undefined) throw new TraceError(`no SAE is spliced at ${this.path || "the model"}; splice one with lm.addSae(sae, { at: "${this.path}" })`);
    return child;
  }

  /** Runs the module on `args` now, outside the forward pass (no hooks fire). */
  call(...args: unknown[]): Promise<any> {
    this.refuseAtPoint("call");
    // Where the user called it, for an error of the run (a module called with the wrong arguments): made now, as the
    // run takes a later turn (a few µs, beside a module's run).
    return this._ctx.callDirect(this._module, args, origin());
  }

  /** @internal child envoy by name (or alias), created on first use */
  _child(name: string): unknown {
    let child = this._children.get(name);
    if (child === undefined) {
      const real = this._ctx.aliases.size === 0 ? name : (this._ctx.aliases.get(this.path)?.get(name) ?? name);
      const target = resolvePath(this._module, real);
      if (!target) return undefined;
      child = target instanceof ModuleList ? listEnvoy(target, this._ctx) : envoyFor(target, this._ctx);
      this._children.set(name, child);
    }
    return child;
  }

  toString(): string {
    return `Envoy(${this.path || "<model>"}: ${this._module.typeName})`;
  }
}

function resolvePath(module: Module, path: string): Module | undefined {
  return path.includes(".") ? module.get(path) : childrenOf(module).get(path);
}

const passthrough = new Set<string | symbol>(["then", "toJSON", "constructor", "asymmetricMatch", "$$typeof", "nodeType", "inspect"]);

/** What every envoy's proxy does (one object for all: a trace makes an envoy for each module on a path it names). */
const envoyHandler: ProxyHandler<Envoy> = {
  get(target, prop, receiver) {
    if (typeof prop === "symbol" || prop in target || passthrough.has(prop)) return Reflect.get(target, prop, receiver);
    const child = target._child(prop);
    if (child !== undefined) return child;
    const module = target._module;
    const aliases = [...(target._ctx.aliases.get(module.path)?.keys() ?? [])];
    const hint = prop === "source" ? NO_SOURCE_HINT : lensHint(module, prop);
    throw new TraceError(`${module.path || "the model"} (${module.typeName}) has no module "${prop}"${hint}; its modules are: ${[...childrenOf(module).keys(), ...aliases].join(", ") || "none"}`);
  },
  set(target, prop, value, receiver) {
    if (prop === "output" || prop === "input" || prop === "inputs") return Reflect.set(target, prop, value, receiver);
    throw new TraceError(`cannot set "${String(prop)}" on ${target._module.path || "the model"}; assign to .output, .input or .inputs`);
  },
  has(target, prop) {
    return prop in target || (typeof prop === "string" && target._child(prop) !== undefined);
  },
};

/** An Envoy wrapped so children read as properties and unknown names fail with the list of real ones. */
export function envoyFor(module: Module, ctx: EnvoyContext): Envoy {
  return new Proxy(new Envoy(module, ctx), envoyHandler);
}

/** Where TransformerLens's hook `name` is among the module's points (`pattern`, or `source.pattern` from attention), as a hint. */
function lensHint(module: Module, name: string): string {
  const lens = transformerLensNames[name];
  if (lens === undefined) return "";
  const children = childrenOf(module);
  const source = children.get("source");
  const at = children.has(lens) ? lens : source && childrenOf(source).has(lens) ? `source.${lens}` : undefined;
  return at ? transformerLensHint(name, at) : "";
}

/**
 * A ModuleList's envoy: an array of its items' envoys where, as in Python, a negative index counts from the end
 * (`h[-1]`); an index past either end is a TraceError naming the valid range (the sandbox's runtime does the same).
 */
function listEnvoy(list: ModuleList, ctx: EnvoyContext): Envoy[] {
  // Each item's envoy is made when first used (code names one layer of many); the slots exist from the start, so
  // array methods, spreading and iteration see every item (they read each through `get`).
  const items: (Envoy | undefined)[] = new Array(list.length).fill(undefined);
  const item = (at: number): Envoy => (items[at] ??= envoyFor(list.at(at), ctx));
  // Node's inspect (console.log) looks at the array itself, not through the proxy: it is shown whole.
  Object.defineProperty(items, Symbol.for("nodejs.util.inspect.custom"), { value: () => items.map((_, at) => item(at)) });
  return new Proxy(items as Envoy[], {
    get(target, prop, receiver) {
      if (isIndex(prop)) {
        const i = Number(prop);
        const at = i < 0 ? target.length + i : i;
        if (at < 0 || at >= target.length) throw new TraceError(listIndexMessage(list.path, i, target.length), origin());
        return item(at);
      }
      return Reflect.get(target, prop, receiver);
    },
    getOwnPropertyDescriptor(target, prop) {
      if (isIndex(prop) && Number(prop) >= 0 && Number(prop) < target.length) item(Number(prop));
      return Reflect.getOwnPropertyDescriptor(target, prop);
    },
  });
}

/** Whether a property of a module list's envoy is an index (`h[2]`, `h[-1]`). */
const isIndex = (prop: string | symbol): prop is string => typeof prop === "string" && /^-?\d+$/.test(prop);

/** The message for an index outside a module list (the sandbox's runtime words it the same). */
export function listIndexMessage(path: string, index: number, length: number): string {
  return `${path || "the list"}[${index}] is out of range: ${path || "it"} has ${length} module${length === 1 ? "" : "s"} (indices 0..${length - 1}, or -${length}..-1 from the end)`;
}
