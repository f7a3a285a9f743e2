/**
 * The code that runs inside each job's isolate, before the user's: tensors as handles on host tensors, envoys
 * and tracers that forward to the host, console as LOG events. It is installed from its source text
 * (`runtimeSource`), so it must not refer to anything outside itself; the host passes it its callbacks.
 *
 * Values cross as descriptors: plain JSON-like data where a tensor is `{ $h: id, dtype, shape }`, a function the
 * host may call back is `{ $fn: id }`, a cache is `{ $cache: id }`, an error `{ $error: {...} }`.
 */

/** The host callbacks the runtime gets (names as used below). */
export interface HostCallbacks {
  op(id: number, method: string, args: unknown[]): unknown;
  fn(name: string, args: unknown[]): unknown;
  release(id: number): void;
  read(invoke: number, path: string, kind: string, part: string, stack: string): number;
  write(invoke: number, path: string, kind: string, part: string, value: unknown, stack: string): void;
  skip(invoke: number, path: string, value: unknown, stack: string): void;
  call(invoke: number, path: string, args: unknown[]): number;
  tracer(invoke: number, action: string, args: unknown[], stack: string): unknown;
  cache(id: number, action: string, args: unknown[]): unknown;
  grad(scope: number, action: string, args: unknown[], stack: string): unknown;
  session(action: string, args: unknown[]): number;
  log(text: string): void;
  done(invoke: number, ok: boolean, value: unknown): void;
}

/** Module tree as the runtime sees it: names only. */
export interface TreeNode {
  path: string;
  type: string;
  children: [string, TreeNode | TreeNode[]][];
  aliases: [string, string][];
}

/**
 * Installs the runtime on `globalThis` of the isolate. Runs inside the isolate (from its source text).
 * Returns the functions the host calls: settle pending promises, call user functions, start invokes.
 */
export function installRuntime(rawHost: HostCallbacks, tree: TreeNode, tensorMethods: string[]): unknown {
  "use strict";
  const g = globalThis as any;
  // Host callbacks report errors as { $throw: info } (exceptions would lose their class on the way).
  const checked = (r: any): any => {
    if (r && typeof r === "object" && r.$throw) throw new RemoteError(r.$throw);
    return r;
  };
  const host = Object.fromEntries(Object.entries(rawHost).map(([k, f]) => [k, (...a: unknown[]) => checked((f as (...x: unknown[]) => unknown)(...a))])) as unknown as HostCallbacks;
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: unknown): void }>();
  const functions = new Map<number, (...a: unknown[]) => unknown>();
  let nextFn = 1;
  const handleOf = new WeakMap<object, number>();
  const registry = typeof FinalizationRegistry === "function" ? new FinalizationRegistry<number>((id) => host.release(id)) : null;

  class RemoteError extends Error {
    code: string;
    constructor(info: { type: string; message: string; code: string; stack?: string }) {
      super(info.message);
      this.name = info.type;
      this.code = info.code;
      if (info.stack) this.stack = info.stack;
    }
  }

  const stackHere = (): string => {
    const e = new Error();
    return e.stack ?? "";
  };

  function wait(id: number): Promise<any> {
    return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
  }

  // #region values

  function isPlain(v: unknown): v is Record<string, unknown> {
    return typeof v === "object" && v !== null && (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null);
  }

  /** Isolate value -> descriptor for the host. */
  function out(v: unknown): unknown {
    if (v instanceof Tensor) return { $h: handleOf.get(v) };
    if (v instanceof Cache) return { $cache: v._id };
    if (typeof v === "function") {
      const id = nextFn++;
      functions.set(id, v as (...a: unknown[]) => unknown);
      return { $fn: id };
    }
    if (v instanceof Error) return { $error: { type: v.name, message: v.message, stack: v.stack ?? "", code: (v as any).code } };
    if (Array.isArray(v)) return v.map(out);
    if (isPlain(v)) {
      const o: Record<string, unknown> = {};
      for (const k of Object.keys(v)) o[k] = out(v[k]);
      return o;
    }
    return v;
  }

  /** Descriptor from the host -> isolate value. */
  function inn(d: unknown): any {
    if (Array.isArray(d)) return d.map(inn);
    if (d && typeof d === "object") {
      const o = d as Record<string, any>;
      if (typeof o.$h === "number") return wrap(o.$h, o.dtype, o.shape, o.meta === true);
      if (typeof o.$cache === "number") return new Cache(o.$cache);
      if (o.$error) return new RemoteError(o.$error);
      const r: Record<string, unknown> = {};
      for (const k of Object.keys(o)) r[k] = inn(o[k]);
      return r;
    }
    return d;
  }

  // #endregion
  // #region tensors

  class Tensor {
    readonly dtype!: string;
    readonly shape!: readonly number[];
    readonly isMeta!: boolean;
    constructor() {
      throw new TypeError("tensors are made with tensor(), zeros(), ... or come from the model");
    }
    get ndim(): number {
      return this.shape.length;
    }
    toJSON(): unknown {
      return { dtype: this.dtype, shape: this.shape };
    }
  }
  function wrap(id: number, dtype: string, shape: number[], meta: boolean): Tensor {
    const t = Object.create(Tensor.prototype) as Tensor;
    Object.defineProperties(t, {
      dtype: { value: dtype, enumerable: true },
      shape: { value: Object.freeze([...shape]), enumerable: true },
      isMeta: { value: meta, enumerable: true },
    });
    handleOf.set(t, id);
    registry?.register(t, id);
    return Object.freeze(t);
  }
  for (const name of tensorMethods) {
    Object.defineProperty(Tensor.prototype, name, {
      value: function (this: Tensor, ...args: unknown[]) {
        const id = handleOf.get(this);
        if (id === undefined) throw new TypeError(`${name}: not a tensor`);
        return inn(host.op(id, name, args.map(out)));
      },
    });
  }
  Object.freeze(Tensor.prototype);

  const creators = ["tensor", "zeros", "ones", "full", "arange", "eye", "cat", "stack", "where", "randn", "rand"];
  for (const name of creators) g[name] = (...args: unknown[]) => inn(host.fn(name, args.map(out)));
  g.slice = (start?: number | null, stop?: number | null, step?: number) => ({ start, stop, step });
  g.Generator = class Generator {
    seed: number;
    constructor(seed = 0) {
      this.seed = seed;
    }
  };
  g.Tensor = Tensor;

  // #endregion
  // #region caches

  class Cache {
    readonly _id: number;
    constructor(id: number) {
      this._id = id;
    }
    get(module: string | { path: string }) {
      return inn(host.cache(this._id, "get", [typeof module === "string" ? module : module.path]));
    }
    keys(): string[] {
      return host.cache(this._id, "keys", []) as string[];
    }
    toObject(): Record<string, unknown> {
      return inn(host.cache(this._id, "toObject", []));
    }
  }

  // #endregion
  // #region envoys

  function envoy(node: TreeNode, invoke: number): any {
    const children = new Map(node.children);
    const aliases = new Map(node.aliases);
    const made = new Map<string, unknown>();
    const target = {
      get path() {
        return node.path;
      },
      get output() {
        return wait(host.read(invoke, node.path, "output", "all", stackHere()));
      },
      set output(v: unknown) {
        host.write(invoke, node.path, "output", "all", out(v), stackHere());
      },
      get input() {
        return wait(host.read(invoke, node.path, "input", "first", stackHere()));
      },
      set input(v: unknown) {
        host.write(invoke, node.path, "input", "first", out(v), stackHere());
      },
      get inputs() {
        return wait(host.read(invoke, node.path, "input", "all", stackHere()));
      },
      set inputs(v: unknown) {
        host.write(invoke, node.path, "input", "all", out(v), stackHere());
      },
      skip(v: unknown) {
        host.skip(invoke, node.path, out(v), stackHere());
      },
      call(...args: unknown[]) {
        return wait(host.call(invoke, node.path, args.map(out)));
      },
      toString() {
        return `Envoy(${node.path || "<model>"}: ${node.type})`;
      },
    };
    return new Proxy(target, {
      get(t, prop, receiver) {
        if (typeof prop === "symbol" || prop in t) return Reflect.get(t, prop, receiver);
        if (prop === "then") return undefined;
        const name = aliases.get(prop) ?? prop;
        if (made.has(name)) return made.get(name);
        let child: TreeNode | TreeNode[] | undefined = children.get(name);
        if (child === undefined && name.includes(".")) child = name.split(".").reduce<any>((n, part) => n && new Map(n.children).get(part), node);
        if (child === undefined) throw new RemoteError({ type: "TraceError", code: "USER_CODE", message: `${node.path || "the model"} (${node.type}) has no module "${prop}"; its modules are: ${[...children.keys(), ...aliases.keys()].join(", ") || "none"}` });
        const e = Array.isArray(child) ? child.map((c) => envoy(c, invoke)) : envoy(child, invoke);
        made.set(name, e);
        return e;
      },
      set(t, prop, value, receiver) {
        if (prop === "output" || prop === "input" || prop === "inputs") return Reflect.set(t, prop, value, receiver);
        throw new TypeError(`cannot set "${String(prop)}" on ${node.path || "the model"}; assign to .output, .input or .inputs`);
      },
    });
  }

  // #endregion
  // #region tracers

  function tracer(invoke: number, vars: unknown): any {
    const t: any = {
      vars,
      stop() {
        host.tracer(invoke, "stop", [], stackHere());
      },
      cache(options?: { modules?: (string | { path: string })[]; inputs?: boolean; outputs?: boolean }) {
        const opts = options ? { ...options, modules: options.modules?.map((m) => (typeof m === "string" ? m : m.path)) } : {};
        return new Cache(host.tracer(invoke, "cache", [opts], stackHere()) as number);
      },
      get result() {
        return wait(host.tracer(invoke, "result", [], stackHere()) as number);
      },
      next(n = 1) {
        host.tracer(invoke, "next", [n], stackHere());
      },
      iter(start: number | number[], end?: number) {
        return steps(host.tracer(invoke, "iter", [start, end], stackHere()) as number);
      },
      all() {
        return steps(host.tracer(invoke, "all", [], stackHere()) as number);
      },
      local(fn: unknown, vals: unknown) {
        return wait(host.tracer(invoke, "local", [String(fn), out(vals)], stackHere()) as number);
      },
      backward(loss: unknown, fn?: (g: unknown) => unknown) {
        return wait(host.tracer(invoke, "backward", [out(loss), fn ? out(fn) : null], stackHere()) as number);
      },
      invoke(a: unknown, b?: unknown) {
        const [input, fn] = typeof a === "function" ? [undefined, a] : [a, b];
        return wait(host.tracer(invoke, "invoke", [input === undefined ? null : out(input), out(fn)], stackHere()) as number);
      },
      barrier(parties: number) {
        const id = host.tracer(invoke, "barrier", [parties], stackHere()) as number;
        const b = () => wait(host.tracer(invoke, "arrive", [id], stackHere()) as number);
        return Object.assign(b, { parties });
      },
    };
    return t;
  }

  function steps(id: number): AsyncIterable<number> {
    return {
      [Symbol.asyncIterator]() {
        return {
          next: () => wait(host.tracer(-1, "step", [id], stackHere()) as number),
          return: () => Promise.resolve({ value: undefined, done: true }),
        };
      },
    };
  }

  /** A session: traces and generations that run one after another in this job, sharing values. */
  function session(vars: unknown): unknown {
    const traceLike = (action: string) => (a: unknown, b?: unknown, c?: unknown) => {
      const [input, fn, options] = typeof a === "function" ? [null, a, b] : [a, b, c];
      return wait(host.session(action, [input === null ? null : out(input), out(fn), out(options ?? {})]));
    };
    return {
      vars,
      trace: traceLike("trace"),
      scan: traceLike("scan"),
      generate(a: unknown, options: unknown, fn?: unknown, traceOptions?: unknown) {
        const [input, settings, body, topts] = typeof a === "function" ? [null, options, a, fn] : [a, options, fn, traceOptions];
        return wait(host.session("generate", [input === null ? null : out(input), out(settings ?? {}), body === undefined ? null : out(body), out(topts ?? {})]));
      },
    };
  }

  function gradScope(id: number): unknown {
    return {
      grad: (t: unknown) => wait(host.grad(id, "grad", [out(t)], stackHere()) as number),
      setGrad: (t: unknown, v: unknown) => void host.grad(id, "setGrad", [out(t), out(v)], stackHere()),
    };
  }

  // #endregion
  // #region console

  const show = (v: unknown): string => {
    if (typeof v === "string") return v;
    if (v instanceof Tensor) return String(inn(host.op(handleOf.get(v)!, "toString", [])));
    try {
      return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? `${x}n` : x));
    } catch {
      return String(v);
    }
  };
  const log = (...args: unknown[]) => host.log(args.map(show).join(" "));
  g.console = Object.freeze({ log, info: log, warn: log, error: log, debug: log });

  // #endregion

  function settle(promise: unknown, invoke: number): void {
    Promise.resolve(promise).then(
      (v) => host.done(invoke, true, out(v)),
      (e) => host.done(invoke, false, out(e instanceof Error ? e : new Error(String(e)))),
    );
  }

  // What the host calls.
  return {
    resolve(id: number, value: unknown) {
      const p = pending.get(id);
      pending.delete(id);
      p?.resolve(inn(value));
    },
    reject(id: number, error: unknown) {
      const p = pending.get(id);
      pending.delete(id);
      p?.reject(inn(error));
    },
    /** Runs a user function: an invoke's (m, tr), the root (tr) of form "tracer", or a session's (s). */
    start(fnId: number, invoke: number, mode: "invoke" | "root" | "session", vars: unknown) {
      const fn = functions.get(fnId);
      if (!fn) throw new TypeError(`no function ${fnId}`);
      try {
        settle(mode === "session" ? fn(session(inn(vars))) : mode === "root" ? fn(tracer(invoke, inn(vars))) : fn(envoy(tree, invoke), tracer(invoke, inn(vars))), invoke);
      } catch (e) {
        settle(Promise.reject(e), invoke);
      }
    },
    /** Calls a function the user passed as a value (a replacement `(current) => next`); synchronous. */
    call(fnId: number, args: unknown[]) {
      const fn = functions.get(fnId);
      if (!fn) throw new TypeError(`no function ${fnId}`);
      const r = fn(...args.map(inn));
      if (r && typeof (r as { then?: unknown }).then === "function") throw new TypeError("a replacement function must return its value, not a promise");
      return out(r);
    },
    /** Runs a backward function with a gradient scope. */
    backward(fnId: number, scope: number, invoke: number) {
      const fn = functions.get(fnId);
      if (!fn) throw new TypeError(`no function ${fnId}`);
      try {
        settle(fn(gradScope(scope)), invoke);
      } catch (e) {
        settle(Promise.reject(e), invoke);
      }
    },
    /** Registers a compiled user function; returns its id. */
    register(fn: (...a: unknown[]) => unknown) {
      if (typeof fn !== "function") throw new TypeError("the intervention source does not evaluate to a function");
      const id = nextFn++;
      functions.set(id, fn);
      return id;
    },
  };
}

/** The runtime's source text, to evaluate in a fresh isolate. */
export const runtimeSource = `(${installRuntime.toString()})`;
