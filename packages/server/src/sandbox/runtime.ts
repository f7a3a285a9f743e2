/**
 * The code that runs inside each job's isolate, before the user's: tensors as handles on host tensors, envoys,
 * tracers, caches and the rest as thin objects whose methods are made from the declared API table
 * (tsight/protocol's sandbox-api.ts, passed in as data), and console as LOG events. It is installed from its
 * source text (`runtimeSource`), so it must not refer to anything outside itself; the host passes it its callbacks.
 *
 * Values cross as descriptors: plain JSON-like data where a tensor is `{ $h: id, dtype, shape }`, a function the
 * host may call back is `{ $fn: id }`, a host object is `{ $obj: [kind, id] }`, an error `{ $error: {...} }`, any other object (which cannot cross) `{ $unsendable: its class's name }`, and a plain object whose keys start with `$` `{ $plain: it }`.
 */

/** The host callbacks the runtime gets (names as used below). */
export interface HostCallbacks {
  /** A tensor method on handle `id`. */
  op(id: number, method: string, args: unknown[]): unknown;
  /** A global tensor function (or `Generator`). */
  fn(name: string, args: unknown[]): unknown;
  release(id: number): void;
  read(invoke: number, path: string, kind: string, part: string, stack: string): number;
  write(invoke: number, path: string, kind: string, part: string, value: unknown, stack: string): void;
  /** An action of a host object: `kind` is a key of SANDBOX_OBJECTS, `id` the object (for an envoy: its invoke). */
  act(kind: string, id: number, action: string, args: unknown[], stack: string, path: string): unknown;
  log(text: string): void;
  done(invoke: number, ok: boolean, value: unknown): void;
  /** The job's code used (awaited, or called `then` on) the promise of pending request `id`. */
  used(id: number): void;
}

/** Module tree as the runtime sees it: names only. */
export interface TreeNode {
  path: string;
  type: string;
  children: [string, TreeNode | TreeNode[]][];
  aliases: [string, string][];
}

/** The API table as data: names, and for host objects how each action answers. */
export interface RuntimeApi {
  tensorMethods: string[];
  /** Autograd on tensors: methods, and properties (getter: true) read through the host. */
  tensorAutograd: Record<string, { getter: boolean }>;
  functions: string[];
  /** Functions that are classes: called with `new`. */
  constructors: string[];
  objects: Record<string, Record<string, { answer: string; getter?: boolean }>>;
  /** TransformerLens's hook names for the operation points, for a hint (tsight's transformerLensNames). */
  lensNames: Record<string, string | undefined>;
  /** What the hint adds for some of them (tsight's transformerLensNotes). */
  lensNotes: Record<string, string | undefined>;
  /** The hint for `source` asked of a module without operation points (tsight's NO_SOURCE_HINT). */
  noSourceHint: string;
  /** What tr.iter and tr.all iterated without await say (tsight's ITERATED_WITHOUT_AWAIT). */
  iteratedWithoutAwait: string;
  /** What tr.iter or tr.all iterated uncalled say (tsight's ITER_NOT_CALLED). */
  iterNotCalled: string;
  /** What reading `.values` or `.indices` of a tensor says (tsight's NOT_A_PAIR). */
  notAPair: { values: string; indices: string };
  /** Characters and entries one value sent to the host may hold (the bridge's MAX_SENT_UNITS). */
  maxSentUnits: number;
}

/**
 * Installs the runtime on `globalThis` of the isolate. Runs inside the isolate (from its source text).
 * Returns the functions the host calls: settle pending promises, call user functions, start invokes.
 */
export function installRuntime(rawHost: HostCallbacks, tree: TreeNode, api: RuntimeApi): unknown {
  "use strict";
  const g = globalThis as any;

  class RemoteError extends Error {
    code: string;
    constructor(info: { type: string; message: string; code: string }) {
      super(info.message);
      this.name = info.type;
      this.code = info.code;
      // The stack is this isolate's own (the user's code): the host's never crosses.
    }
  }

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
  const objectOf = new WeakMap<object, [string, number]>();
  const envoyPath = new WeakMap<object, string>();
  // One wrapper per handle: the host gives a tensor that crosses again the same handle, which is released when its
  // wrapper is collected, so a second wrapper of it would be left holding a released handle. A wrapper made for the
  // handle after the one collected (before its release came) keeps it.
  const wrappers = new Map<number, WeakRef<object>>();
  const registry =
    typeof FinalizationRegistry === "function"
      ? new FinalizationRegistry<number>((id) => {
          if (wrappers.get(id)?.deref()) return;
          wrappers.delete(id);
          host.release(id);
        })
      : null;

  // What the runtime calls to make what it sends the host, taken now: the job's code runs later and may replace
  // Array.prototype.map, String, JSON.stringify, Error (and its prepareStackTrace), String.prototype.slice and the
  // like. What crosses to the host is copied by isolated-vm, which copies a string once per place it is held, before
  // any host code can count it: a value the runtime did not make itself (a replaced map's array of one 8 MB string
  // held 200 times) took the host 2.4 GB. So everything sent is made by `out` (which counts as it walks), or is a
  // string cut to a bound here.
  const { isArray } = Array;
  const objectKeys = Object.keys;
  const getPrototypeOf = Object.getPrototypeOf;
  const objectPrototype = Object.prototype;
  const isView = ArrayBuffer.isView;
  const toStr = String;
  const stringify = JSON.stringify;
  const apply = Reflect.apply;
  const sliceString = String.prototype.slice;
  const ErrorClass = Error;
  /** `s` as a string (String's own conversion) of at most `n` characters. */
  const cut = (s: unknown, n: number): string => {
    const t = typeof s === "string" ? s : toStr(s);
    return t.length > n ? (apply(sliceString, t, [0, n]) as string) : t;
  };

  const stackHere = (): string => cut(new ErrorClass().stack ?? "", 32_768);

  /** o[k] = v as data, "__proto__" too (assigned plainly, that key would set the object's prototype and be lost). */
  function setOwn(o: Record<string, unknown>, k: string, v: unknown): void {
    if (k === "__proto__") Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
    else o[k] = v;
  }

  function wait(id: number): Promise<any> {
    return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
  }

  /**
   * The promise of a host action (tr.backward, tr.local, ...). The host learns when the code first uses it: as in
   * process, a failure the code never awaited becomes its invoke's error.
   */
  class ActionPromise<T> extends Promise<T> {
    request = 0;
    static override get [Symbol.species](): PromiseConstructor {
      return Promise;
    }
    override then<A = T, B = never>(onFulfilled?: ((v: T) => A | PromiseLike<A>) | null, onRejected?: ((e: any) => B | PromiseLike<B>) | null): Promise<A | B> {
      if (this.request) host.used(this.request);
      this.request = 0;
      return super.then(onFulfilled, onRejected);
    }
  }
  function waitUsed(id: number): Promise<any> {
    const p = new ActionPromise((resolve, reject) => pending.set(id, { resolve, reject }));
    p.request = id;
    return p;
  }

  // #region values

  // The walks below call only what was taken at install (see `cut`): a replaced map made the count below see one
  // array where the value held a million.
  function isPlain(v: unknown): v is Record<string, unknown> {
    if (typeof v !== "object" || v === null) return false;
    const proto = getPrototypeOf(v);
    return proto === objectPrototype || proto === null;
  }

  /**
   * What one value sent to the host may hold: string characters and array or object entries together (the host's
   * MAX_SENT_UNITS, which it counts again). Counted as it is walked, before anything is copied: one string held many
   * times (an array filled with it) is copied once per place it is in, and such a value made in a few megabytes of the
   * sandbox took the host's thread gigabytes.
   */
  const MAX_SENT_UNITS = api.maxSentUnits;
  /** Sends under way: a getter the walk runs may send a value of its own, which counts toward the outer one. */
  let sending = 0;
  let sentUnits = 0;

  /** A call's arguments as descriptors, counted as one value (never through a job-replaceable `map`). */
  const outArgs = (args: unknown[]): unknown[] => out(args) as unknown[];

  /** Isolate value -> descriptor for the host (see MAX_SENT_UNITS). */
  function out(v: unknown): unknown {
    if (sending === 0) sentUnits = 0;
    sending++;
    try {
      return outOne(v);
    } finally {
      sending--;
    }
  }

  function count(units: number): void {
    sentUnits += units;
    if (sentUnits > MAX_SENT_UNITS) throw new RangeError(`a value sent out of the job holds more than ${MAX_SENT_UNITS} characters and entries (each string counted wherever it is held): send large data as tensors`);
  }

  function outOne(v: unknown): unknown {
    if (typeof v === "string") count(v.length);
    if (typeof v === "object" && v !== null) {
      const h = handleOf.get(v);
      if (h !== undefined) return { $h: h };
      const o = objectOf.get(v);
      if (o) return { $obj: o };
      const p = envoyPath.get(v);
      if (p !== undefined) return { $envoy: p };
    }
    if (typeof v === "function") {
      const o = objectOf.get(v);
      if (o) return { $obj: o };
      const id = nextFn++;
      functions.set(id, v as (...a: unknown[]) => unknown);
      return { $fn: id };
    }
    // An error's text is cut here, before it is copied out of the isolate (the host keeps less still: user-errors.ts).
    if (v instanceof ErrorClass) return { $error: { type: cut(v.name, 200), message: cut(v.message, 16_384), stack: cut(v.stack ?? "", 32_768), code: typeof (v as any).code === "string" ? cut((v as any).code, 64) : undefined } };
    if (isArray(v)) {
      const n = v.length;
      count(n);
      const a: unknown[] = [];
      for (let i = 0; i < n; i++) a[i] = outOne(v[i]);
      return a;
    }
    if (isPlain(v)) {
      const o: Record<string, unknown> = {};
      let marked = false;
      const keys = objectKeys(v);
      count(keys.length);
      for (const k of keys) {
        count(k.length);
        setOwn(o, k, outOne(v[k]));
        marked ||= k.charCodeAt(0) === 36; // "$"
      }
      // The code's own object whose keys look like a descriptor's ({ $h: 3 }) crosses as data.
      return marked ? { $plain: o } : o;
    }
    // Any other object (a Map, a Set, a Date, a promise, a class's instance) would be copied out
    // as something else, or not at all: the host is told its kind, and refuses it where it is used.
    // Typed arrays are copied out as they are (tensor(new Float32Array(...))).
    if (typeof v === "object" && v !== null && !isView(v)) return { $unsendable: kindOf(v) };
    return v;
  }

  function kindOf(v: object): string {
    if (typeof (v as { then?: unknown }).then === "function") return "Promise";
    let name: unknown;
    try {
      name = Object.getPrototypeOf(v)?.constructor?.name;
    } catch {
      name = undefined;
    }
    return typeof name === "string" && /^[A-Za-z_$][\w$]{0,63}$/.test(name) ? name : "Object";
  }

  /** Descriptor from the host -> isolate value. */
  function inn(d: unknown): any {
    if (Array.isArray(d)) return d.map(inn);
    if (d && typeof d === "object") {
      const o = d as Record<string, any>;
      if (typeof o.$h === "number") return wrap(o.$h, o.dtype, o.shape, o.meta === true);
      if (Array.isArray(o.$obj)) return hostObject(o.$obj[0], o.$obj[1]);
      if (o.$error) return new RemoteError(o.$error);
      if (typeof o.$fnref === "number") return functions.get(o.$fnref);
      const data = o.$plain && typeof o.$plain === "object" ? (o.$plain as Record<string, unknown>) : o;
      const r: Record<string, unknown> = {};
      for (const k of Object.keys(data)) setOwn(r, k, inn(data[k]));
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
    const live = wrappers.get(id)?.deref();
    if (live) return live as Tensor;
    const t = Object.create(Tensor.prototype) as Tensor;
    Object.defineProperties(t, {
      dtype: { value: dtype, enumerable: true },
      shape: { value: Object.freeze([...shape]), enumerable: true },
      isMeta: { value: meta, enumerable: true },
    });
    handleOf.set(t, id);
    registry?.register(t, id);
    wrappers.set(id, new WeakRef(t));
    return Object.freeze(t);
  }
  for (const name of api.tensorMethods) {
    Object.defineProperty(Tensor.prototype, name, {
      value: function (this: Tensor, ...args: unknown[]) {
        const id = handleOf.get(this);
        if (id === undefined) throw new TypeError(`${name}: not a tensor`);
        return inn(host.op(id, name, outArgs(args)));
      },
    });
  }
  for (const [name, how] of Object.entries(api.tensorAutograd)) {
    const call = function (this: Tensor, ...args: unknown[]) {
      const id = handleOf.get(this);
      if (id === undefined) throw new TypeError(`${name}: not a tensor`);
      return inn(host.op(id, name, outArgs(args)));
    };
    Object.defineProperty(Tensor.prototype, name, how.getter ? { get: call } : { value: call });
  }
  // torch's `x.max(dim).values` / `.indices`: max gives the values themselves here (as in process, see NOT_A_PAIR).
  for (const name of ["values", "indices"] as const) {
    Object.defineProperty(Tensor.prototype, name, {
      get(): never {
        throw new TypeError(api.notAPair[name]);
      },
    });
  }
  Object.freeze(Tensor.prototype);
  g.Tensor = Tensor;

  for (const name of api.functions) {
    if (!api.constructors.includes(name)) {
      g[name] = (...args: unknown[]) => inn(host.fn(name, outArgs(args)));
      continue;
    }
    // A class in tsight (Generator, the optimizers): made with `new`, as in process.
    g[name] = function (...args: unknown[]) {
      if (!new.target) throw new TypeError(`${name} is made with new ${name}(...)`);
      return inn(host.fn(name, outArgs(args)));
    };
  }
  // tsight's Tensor has static constructors too (the README's Tensor.zeros): here they are the global functions
  // behind them, whose arguments the host checks and whose sizes it charges before allocating, as for the globals.
  const make = (name: string, args: unknown[]): unknown => inn(host.fn(name, outArgs(args)));
  const notRemote = (name: string, why: string) => (): never => {
    throw new RemoteError({ type: "NotAllowedError", code: "NOT_ALLOWED", message: `Tensor.${name} is not available in remote code: ${why}` });
  };
  const statics: Record<string, (...args: any[]) => unknown> = {
    zeros: (shape, dtype) => make("zeros", [shape, dtype]),
    ones: (shape, dtype) => make("ones", [shape, dtype]),
    // Tensor.full takes a boolean too (as its number: 1 or 0), where full takes numbers.
    full: (shape, value, dtype) => make("full", [shape, typeof value === "boolean" ? Number(value) : value, dtype]),
    scalar: (value, dtype = "float32") => make("tensor", [value, dtype, []]),
    cat: (tensors, dim) => make("cat", [tensors, dim]),
    stack: (tensors, dim) => make("stack", [tensors, dim]),
    where: (condition, a, b) => make("where", [condition, a, b]),
    meta: notRemote("meta", "a job's tensors hold values (make them with zeros, full, tensor, ...)"),
    fromPacked: notRemote("fromPacked", "a model's packed weights stay on the host"),
  };
  for (const [name, fn] of Object.entries(statics)) Object.defineProperty(Tensor, name, { value: fn });
  g.slice = (start?: number | null, stop?: number | null, step?: number) => ({ start, stop, step });

  // #endregion
  // #region host objects (tracers, caches, gradient scopes, sessions, barriers, step iterators)

  /** A thin object whose methods are the table's actions of `kind`, sent to the host object `id`. */
  function hostObject(kind: string, id: number): any {
    const actions = api.objects[kind];
    if (!actions) throw new TypeError(`unknown host object ${kind}`);
    const call = (name: string, args: unknown[]) => host.act(kind, id, name, outArgs(args), stackHere(), "");
    const o: any = kind === "barrier" ? () => answer("promise", call("arrive", [])) : {};
    for (const [name, how] of Object.entries(actions)) {
      if (how.getter) Object.defineProperty(o, name, { get: () => answer(how.answer, call(name, [])) });
      else o[name] = (...args: unknown[]) => answer(how.answer, call(name, args));
    }
    if (kind === "steps") {
      o[Symbol.asyncIterator] = () => ({ next: () => o.next(), return: () => Promise.resolve({ value: undefined, done: true }) });
      // As in process: a plain for...of over the steps says to await them.
      o[Symbol.iterator] = () => {
        throw new RemoteError({ type: "TraceError", code: "USER_CODE", message: api.iteratedWithoutAwait });
      };
    }
    if (kind === "tracer") {
      // As in process: the methods themselves iterated (`for await (const s of tr.iter)`) say to call them.
      const refuse = () => {
        throw userError(api.iterNotCalled);
      };
      for (const method of [o.iter, o.all]) method[Symbol.asyncIterator] = method[Symbol.iterator] = refuse;
    }
    // As in process, manualSeed gives the generator back (randn([4], g.manualSeed(5))).
    if (kind === "generator") o.manualSeed = (seed: unknown) => (call("manualSeed", [seed]), o);
    objectOf.set(o, [kind, id]);
    if (kind !== "cache") return o;
    // A cache reads like the model: cache.transformer.h[0].output.
    const nav = new Proxy(o, { get: (t, prop, receiver) => (typeof prop === "symbol" || prop in t ? Reflect.get(t, prop, receiver) : prop === "then" ? undefined : cacheNode(o, tree, "")[prop]) });
    objectOf.set(nav, [kind, id]);
    return nav;
  }

  const userError = (message: string) => new RemoteError({ type: "TraceError", code: "USER_CODE", message });

  /** The node of module `path` (its tree `at`) in cache `o`: its values, and its children by name, alias or index. */
  function cacheNode(o: any, at: TreeNode | TreeNode[], path: string): any {
    // The host's cache says why a path was not recorded, in the words a cache in process uses.
    const entry = () => o.entryAt(path);
    // As a cache in process words it: inputs only with { inputs: true }, outputs unless { outputs: false }.
    const what = path || "the model";
    const outputs = () => {
      const e = entry();
      if (!e.outputsByCall?.length) throw userError(`cache: ${what}'s output was not recorded: this cache was made with { outputs: false }`);
      return e;
    };
    const inputs = () => {
      const e = entry();
      if (e.inputs === undefined || e.inputs === null) throw userError(`cache: ${what}'s inputs were not recorded: a cache records them when made with tr.cache({ inputs: true })`);
      return e;
    };
    const values: Record<string, () => unknown> = {
      output: () => outputs().output,
      outputs: () => outputs().outputsByCall,
      inputs: () => inputs().inputs,
      input: () => inputs().inputs[0],
      inputsByCall: () => inputs().inputsByCall,
    };
    return new Proxy(
      {},
      {
        get(_t, prop) {
          if (typeof prop === "symbol" || prop === "then") return undefined;
          if (prop === "path") return path;
          if (Object.hasOwn(values, prop)) return values[prop]!();
          const join = (rel: string) => (path ? `${path}.${rel}` : rel);
          if (Array.isArray(at)) {
            if (!/^-?\d+$/.test(prop)) throw userError(`cache: ${path || "the model"} is a list of modules; index it with a number`);
            const i = Number(prop);
            const k = i < 0 ? at.length + i : i;
            if (k < 0 || k >= at.length) throw userError(`cache: ${path || "the model"}[${i}] is out of range: it has ${at.length} modules`);
            return cacheNode(o, at[k]!, join(String(k)));
          }
          const rel = new Map(at.aliases).get(prop) ?? prop;
          let node: TreeNode | TreeNode[] | undefined = at;
          for (const part of rel.split(".")) node = node === undefined ? undefined : Array.isArray(node) ? node[Number(part)] : new Map(node.children).get(part);
          if (node === undefined) throw userError(`cache: ${path || "the model"} has no module "${prop}"`);
          return cacheNode(o, node, join(rel));
        },
      },
    );
  }

  function answer(how: string, r: unknown): unknown {
    if (how === "promise") return waitUsed(r as number);
    return inn(r);
  }

  // #endregion
  // #region envoys

  function envoy(node: TreeNode, invoke: number): any {
    const children = new Map(node.children);
    const aliases = new Map(node.aliases);
    const made = new Map<string, unknown>();
    const read = (kind: string, part: string) => wait(host.read(invoke, node.path, kind, part, stackHere()));
    const write = (kind: string, part: string, v: unknown) => host.write(invoke, node.path, kind, part, out(v), stackHere());
    const target: any = {
      get path() {
        return node.path;
      },
      get output() {
        return read("output", "all");
      },
      set output(v: unknown) {
        write("output", "all", v);
      },
      get input() {
        return read("input", "first");
      },
      set input(v: unknown) {
        write("input", "first", v);
      },
      get inputs() {
        return read("input", "all");
      },
      set inputs(v: unknown) {
        write("input", "all", v);
      },
      toString() {
        return `Envoy(${node.path || "<model>"}: ${node.type})`;
      },
    };
    for (const [name, how] of Object.entries(api.objects.envoy!)) {
      target[name] = (...args: unknown[]) => {
        const r = answer(how.answer, host.act("envoy", invoke, name, outArgs(args), stackHere(), node.path));
        return name === "next" ? proxy : r;
      };
    }
    const proxy: any = new Proxy(target, {
      get(t, prop, receiver) {
        if (typeof prop === "symbol" || prop in t) return Reflect.get(t, prop, receiver);
        if (prop === "then") return undefined;
        const name = aliases.get(prop) ?? prop;
        if (made.has(name)) return made.get(name);
        let child: TreeNode | TreeNode[] | undefined = children.get(name);
        if (child === undefined && name.includes(".")) child = name.split(".").reduce<any>((n, part) => (n === undefined ? undefined : Array.isArray(n) ? n[Number(part)] : new Map(n.children).get(part)), node);
        if (child === undefined) {
          const lens = Object.prototype.hasOwnProperty.call(api.lensNames, prop) ? api.lensNames[prop] : undefined;
          // Asked of attention itself (TransformerLens's attn.hook_pattern), the point is in its source.
          const source = children.get("source");
          const at = lens === undefined ? undefined : children.has(lens) ? lens : source && !Array.isArray(source) && new Map(source.children).has(lens) ? `source.${lens}` : undefined;
          const note = Object.prototype.hasOwnProperty.call(api.lensNotes, prop) ? api.lensNotes[prop] : undefined;
          const hint = prop === "source" ? api.noSourceHint : at !== undefined ? ` (TransformerLens's ${prop} is ${at} here${note ? `, ${note}` : ""})` : "";
          throw new RemoteError({ type: "TraceError", code: "USER_CODE", message: `${node.path || "the model"} (${node.type}) has no module "${prop}"${hint}; its modules are: ${[...children.keys(), ...aliases.keys()].join(", ") || "none"}` });
        }
        const e = Array.isArray(child) ? listEnvoy(child, invoke) : envoy(child, invoke);
        made.set(name, e);
        return e;
      },
      set(t, prop, value, receiver) {
        if (prop === "output" || prop === "input" || prop === "inputs") return Reflect.set(t, prop, value, receiver);
        throw new TypeError(`cannot set "${String(prop)}" on ${node.path || "the model"}; assign to .output, .input or .inputs`);
      },
    });
    envoyPath.set(proxy, node.path);
    return proxy;
  }

  /** A module list's envoy: an array of its items' envoys, where negative indices count from the end. */
  function listEnvoy(nodes: TreeNode[], invoke: number): unknown {
    const items = nodes.map((c) => envoy(c, invoke));
    return new Proxy(items, {
      get(t, prop, receiver) {
        if (typeof prop === "string" && /^-?\d+$/.test(prop)) {
          const i = Number(prop);
          const at = i < 0 ? t.length + i : i;
          if (at < 0 || at >= t.length) {
            // Worded as tsight's listIndexMessage (the runtime cannot import it: it is installed from its text).
            const path = nodes[0] ? nodes[0].path.split(".").slice(0, -1).join(".") : "";
            const n = t.length;
            throw new RemoteError({ type: "TraceError", code: "USER_CODE", message: `${path || "the list"}[${i}] is out of range: ${path || "it"} has ${n} module${n === 1 ? "" : "s"} (indices 0..${n - 1}, or -${n}..-1 from the end)` });
          }
          return t[at];
        }
        return Reflect.get(t, prop, receiver);
      },
    });
  }

  // #endregion
  // #region console

  /** What a log line may hold (the host keeps less still). */
  const MAX_LOG_CHARS = 10_000;
  const show = (v: unknown): string => {
    if (typeof v === "string") return cut(v, MAX_LOG_CHARS);
    if (v instanceof Tensor) return cut(inn(host.op(handleOf.get(v)!, "toString", [])), MAX_LOG_CHARS);
    try {
      return cut(stringify(v, (_k, x) => (typeof x === "bigint" ? `${x}n` : x)), MAX_LOG_CHARS);
    } catch {
      return cut(v, MAX_LOG_CHARS);
    }
  };
  const log = (...args: unknown[]) => {
    let line = "";
    for (let i = 0; i < args.length && line.length < MAX_LOG_CHARS; i++) line += (i ? " " : "") + show(args[i]);
    host.log(cut(line, MAX_LOG_CHARS));
  };
  g.console = Object.freeze({ log, info: log, warn: log, error: log, debug: log });

  // #endregion

  function settle(promise: unknown, invoke: number): void {
    Promise.resolve(promise).then(
      (v) => host.done(invoke, true, out(v)),
      (e) => host.done(invoke, false, out(e instanceof ErrorClass ? e : new ErrorClass(cut(e, 16_384)))),
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
    /**
     * Runs a user function as invoke `invoke`: an invoke's (m, tr), the root (tr) of form "tracer", a session's
     * (s), or a backward function's (g). `self` is the host object given as tr, s or g.
     */
    start(fnId: number, invoke: number, mode: "invoke" | "root" | "session" | "backward", self: unknown) {
      const fn = functions.get(fnId);
      if (!fn) throw new TypeError(`no function ${fnId}`);
      try {
        const given = inn(self);
        // An invoke's envoys name it by its tracer.
        settle(mode === "invoke" ? fn(envoy(tree, objectOf.get(given)![1]), given) : fn(given), invoke);
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
    /** The source text of a user function (what tr.local matches against the job's call sites). */
    source(fnId: number) {
      return toStr(functions.get(fnId) ?? "");
    },
    /**
     * Makes the job's helper functions from their factories (compiled `function (__h) { ... return (source); }`):
     * each gets the table of the named ones, so they may call each other. Returns their ids.
     */
    helpers(factoryIds: number[], names: (string | null)[]) {
      const table: Record<string, unknown> = Object.create(null);
      return factoryIds.map((fid, i) => {
        const fn = functions.get(fid)!(table);
        if (typeof fn !== "function") throw new TypeError(`vars${names[i] ? `.${names[i]}` : ""}: a helper's source does not evaluate to a function`);
        if (names[i]) table[names[i]!] = fn;
        const id = nextFn++;
        functions.set(id, fn as (...a: unknown[]) => unknown);
        return id;
      });
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
