/**
 * The host side of a job's sandbox: the callbacks the isolate's runtime calls, and the calls into it.
 *
 * Tensors stay on the host; the isolate holds handles (ids into `handles`). Every callback validates what the
 * isolate sends (ids, module paths, method names from a fixed list), and reports errors as data so they keep
 * their class. Calls into the isolate are synchronous with the job's remaining time as their timeout: when one
 * returns, the user's code has run until it waits again, so the interleaver sees a settled invoke.
 */
import ivm from "isolated-vm";
import { type Cache, type GradScope, type InterventionFn, type InvokeTracer, Cache as CacheClass, Tracer, ModuleList, type Module, arange, cat, eye, full, Generator, ones, rand, randn, stack, tensor, Tensor, where, withAllocationGuard, zeros, isDType, sizeOf } from "tsight";
import { type ExecutionModel as LanguageModel, infoFromError } from "tsight/protocol";
import { SandboxError } from "./errors.js";
import type { HostCallbacks, TreeNode } from "./runtime.js";

/** Tensor methods code in the sandbox may call (pure functions of their tensors: nothing that mutates or hooks). */
export const TENSOR_METHODS: readonly string[] = [
  "add", "sub", "mul", "div", "pow", "fmod", "maximum", "minimum", "clamp", "neg", "exp", "log", "sqrt", "rsqrt", "reciprocal", "square",
  "abs", "sign", "floor", "ceil", "round", "tanh", "sigmoid", "relu", "gelu", "silu", "erf", "sin", "cos", "isnan",
  "eq", "ne", "lt", "le", "gt", "ge", "logicalNot", "logicalAnd", "logicalOr", "logicalXor", "where", "maskedFill",
  "to", "float", "long", "int", "bool", "clone", "contiguous", "detach",
  "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "var", "std", "norm", "logsumexp", "softmax", "logSoftmax", "cumsum", "topk",
  "matmul", "reshape", "view", "flatten", "squeeze", "unsqueeze", "transpose", "permute", "expand", "expandAs", "narrow", "split", "chunk",
  "tril", "triu", "indexSelect", "gather", "scatterAdd", "index", "put",
  "numel", "dim", "size", "item", "tolist", "toArray", "toString",
];
const METHODS = new Set(TENSOR_METHODS);
const ITEM_BYTES = { float32: 4, int64: 8, int32: 4, bool: 1 } as const;

interface Open {
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

export interface BridgeLimits {
  deadline: number;
  memoryLimitBytes: number;
}

export class Bridge {
  private readonly handles = new Map<number, Tensor>();
  private readonly handleOf = new Map<Tensor, number>();
  private nextHandle = 1;
  private bytes = 0;
  private nextRequest = 1;
  private nextId = 1;
  /** Invokes (and backward functions) running in the isolate, by id. Invoke 0 is the root of a "tracer" job. */
  private readonly invokes = new Map<number, { envoy: any; tracer: InvokeTracer | Tracer; open?: Open }>();
  private readonly caches = new Map<number, Cache>();
  private readonly iterators = new Map<number, AsyncIterator<number>>();
  private readonly barriers = new Map<number, () => Promise<void>>();
  private readonly scopes = new Map<number, GradScope>();
  private readonly paths: Set<string>;
  /** Set when the job must end (timeout, memory, cancel): every later call fails with it. */
  fatal: Error | null = null;
  private rt!: { start: ivm.Reference; call: ivm.Reference; resolve: ivm.Reference; reject: ivm.Reference; backward: ivm.Reference; register: ivm.Reference };

  constructor(
    private readonly isolate: ivm.Isolate,
    private readonly context: ivm.Context,
    private readonly lm: LanguageModel,
    private readonly limits: BridgeLimits,
    private readonly log: (text: string) => void,
    /** Runs a hybrid step on the client: the function's source and its values; resolves with the answer. */
    private readonly runLocal: ((source: string, vals: unknown) => Promise<unknown>) | null = null,
  ) {
    this.paths = new Set(lm.model.namedModules().map(([p]: [string, unknown]) => p));
    this.model = lm;
  }

  /** Installs the runtime in the isolate. */
  install(runtimeSource: string, vars: Record<string, unknown>): unknown {
    const jail = this.context.global;
    jail.setSync("globalThis", jail.derefInto());
    this.context.evalSync("globalThis.__name = (f) => f;");
    const callbacks = this.callbacks();
    for (const [name, fn] of Object.entries(callbacks)) jail.setSync(`__host_${name}`, new ivm.Callback(this.guarded(fn as (...a: unknown[]) => unknown)));
    jail.setSync("__tree", new ivm.ExternalCopy(treeOf(this.lm.model)).copyInto());
    jail.setSync("__methods", new ivm.ExternalCopy([...TENSOR_METHODS]).copyInto());
    const names = Object.keys(callbacks);
    const hostObject = `{ ${names.map((n) => `${n}: __host_${n}`).join(", ")} }`;
    const rt = this.context.evalSync(`${runtimeSource}(${hostObject}, __tree, __methods)`, { reference: true }) as ivm.Reference;
    this.context.evalSync(`${names.map((n) => `delete globalThis.__host_${n};`).join(" ")} delete globalThis.__tree; delete globalThis.__methods;`);
    const get = (k: string) => rt.getSync(k, { reference: true }) as ivm.Reference;
    this.rt = { start: get("start"), call: get("call"), resolve: get("resolve"), reject: get("reject"), backward: get("backward"), register: get("register") };
    return this.toDesc(vars);
  }

  /** Compiles a function source in the isolate (stack frames name `filename`) and returns its id there. */
  compile(source: string, filename: string): number {
    const fn = this.enter((timeout) => this.context.evalSync(`(${source}\n)`, { filename, reference: true, timeout })) as ivm.Reference;
    return this.enter((timeout) => this.rt.register.applySync(undefined, [fn.derefInto()], { timeout })) as number;
  }

  /** A host InterventionFn that runs the isolate function `fnId` as an invoke `(m, tr)`. */
  interventionFn(fnId: number, varsDesc: unknown): InterventionFn {
    return (envoy, tracer) =>
      new Promise((resolve, reject) => {
        const id = this.nextId++;
        this.invokes.set(id, { envoy, tracer, open: { resolve, reject } });
        this.enterOrFail(id, (timeout) => this.rt.start.applySync(undefined, [fnId, id, "invoke", varsDesc], { arguments: { copy: true }, timeout }));
      });
  }

  /** A host trace function that runs the isolate function `fnId` as the root `(tr)` of a "tracer" job. */
  rootFn(fnId: number, varsDesc: unknown): (tr: Tracer) => Promise<unknown> {
    return (tracer) =>
      new Promise((resolve, reject) => {
        const id = this.nextId++;
        this.invokes.set(id, { envoy: null, tracer, open: { resolve, reject } });
        this.enterOrFail(id, (timeout) => this.rt.start.applySync(undefined, [fnId, id, "root", varsDesc], { arguments: { copy: true }, timeout }));
      });
  }

  /** Runs the isolate function `fnId` as a session `(s)` with `s.vars`; resolves with what it returns. */
  session(fnId: number, varsDesc: unknown): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.invokes.set(id, { envoy: null, tracer: null as never, open: { resolve, reject } });
      this.enterOrFail(id, (timeout) => this.rt.start.applySync(undefined, [fnId, id, "session", varsDesc], { arguments: { copy: true }, timeout }));
    });
  }

  /** The model sessions run on (this job's, with its edits); set by the executor. */
  model!: LanguageModel;

  /** The job's cancel/deadline check, for the traces a session runs. */
  checkpoint: (() => void) | null = null;

  /** Streams generated tokens of session generations. */
  onToken: ((step: { tokens: number[]; step: number }) => void) | null = null;

  /** Ends the job: every open invoke fails with `error`, and the isolate refuses further work. */
  abort(error: Error): void {
    this.fatal ??= error;
    for (const inv of this.invokes.values()) inv.open?.reject(this.fatal);
  }

  // #region values

  /** Host value -> descriptor for the isolate (tensors become handles). */
  toDesc(v: unknown): unknown {
    if (v instanceof Tensor) return { $h: this.handle(v), dtype: v.dtype, shape: [...v.shape], meta: v.isMeta };
    if (Array.isArray(v)) return v.map((x) => this.toDesc(x));
    if (v instanceof Error) return { $error: infoFromError(v) };
    if (v instanceof CacheClass) return { $cache: this.register(this.caches, v) };
    if (v && typeof v === "object") {
      if (Object.getPrototypeOf(v) !== Object.prototype) return String(v);
      const o: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) o[k] = this.toDesc(x);
      return o;
    }
    if (typeof v === "function") return undefined;
    return v;
  }

  /** Descriptor from the isolate -> host value. */
  fromDesc(d: unknown): unknown {
    if (Array.isArray(d)) return d.map((x) => this.fromDesc(x));
    if (d && typeof d === "object") {
      const o = d as Record<string, unknown>;
      if ("$h" in o) return this.tensor(o.$h);
      if ("$fn" in o) return this.callable(Number(o.$fn));
      if ("$cache" in o) {
        const c = this.caches.get(Number(o.$cache));
        if (!c) throw new SandboxError("VALIDATION", "unknown cache");
        return c;
      }
      if ("$error" in o) return errorOf(o.$error);
      const r: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(o)) r[k] = this.fromDesc(x);
      return r;
    }
    return d;
  }

  private handle(t: Tensor): number {
    let id = this.handleOf.get(t);
    if (id === undefined) {
      id = this.nextHandle++;
      this.handles.set(id, t);
      this.handleOf.set(t, id);
      if (!t.isMeta) this.bytes += t.numel() * ITEM_BYTES[t.dtype];
    }
    return id;
  }

  private tensor(id: unknown): Tensor {
    const t = typeof id === "number" ? this.handles.get(id) : undefined;
    if (!t) throw new SandboxError("VALIDATION", `no tensor with handle ${String(id)} in this job`);
    return t;
  }

  /** A host function calling the isolate function `id` synchronously (replacement functions). */
  private callable(id: number): (...args: unknown[]) => unknown {
    return (...args) => this.fromDesc(this.enter((timeout) => this.rt.call.applySync(undefined, [id, args.map((a) => this.toDesc(a))], { arguments: { copy: true }, result: { copy: true }, timeout })));
  }

  private register<T>(map: Map<number, T>, value: T): number {
    const id = this.nextId++;
    map.set(id, value);
    return id;
  }

  // #endregion
  // #region calls into the isolate

  /**
   * Runs `work` (a synchronous call into the isolate, given the time it may take) within the job's time; maps
   * isolate failures to job errors. While the isolate runs, this thread waits, so the call's own timeout is what
   * stops a spinning job.
   */
  private enter<T>(work: (timeout: number) => T): T {
    if (this.fatal) throw this.fatal;
    const left = this.limits.deadline - Date.now();
    if (left <= 0) throw this.fail(new SandboxError("TIMEOUT", "the job ran past its deadline"));
    try {
      return work(Math.max(1, Math.ceil(left)));
    } catch (e) {
      const msg = (e as Error)?.message ?? "";
      if (/timed out/i.test(msg)) throw this.fail(new SandboxError("TIMEOUT", "the job's code ran past its deadline"));
      if (/memory limit/i.test(msg) || this.isolate.isDisposed) throw this.fail(new SandboxError("MEMORY", "the job's code used more memory than its sandbox allows"));
      throw e;
    }
  }

  private enterOrFail(invoke: number, work: (timeout: number) => unknown): void {
    try {
      this.enter(work);
    } catch (e) {
      this.invokes.get(invoke)?.open?.reject(e);
    }
  }

  private fail(e: SandboxError): SandboxError {
    this.abort(e);
    return this.fatal as SandboxError;
  }

  /** Settles an isolate-side promise `id` when `p` settles. */
  private forward(p: Promise<unknown>): number {
    const id = this.nextRequest++;
    p.then(
      (v) => this.enterQuiet((timeout) => this.rt.resolve.applySync(undefined, [id, this.toDesc(v)], { arguments: { copy: true }, timeout })),
      (e) => this.enterQuiet((timeout) => this.rt.reject.applySync(undefined, [id, this.toDesc(e instanceof Error ? e : new Error(String(e)))], { arguments: { copy: true }, timeout })),
    );
    return id;
  }

  private enterQuiet(work: (timeout: number) => unknown): void {
    try {
      this.enter(work);
    } catch {
      // the failure is recorded in `fatal` and reported through the invokes
    }
  }

  // #endregion
  // #region callbacks

  /** Wraps a callback so exceptions come back as data ({ $throw }) and keep their class. */
  private guarded(fn: (...a: unknown[]) => unknown): (...a: unknown[]) => unknown {
    return (...args) => {
      try {
        if (this.fatal) throw this.fatal;
        return fn(...args);
      } catch (e) {
        return { $throw: { ...infoFromError(e), type: (e as Error)?.name ?? "Error" } };
      }
    };
  }

  private invoke(id: unknown): { envoy: any; tracer: InvokeTracer | Tracer } {
    const inv = typeof id === "number" ? this.invokes.get(id) : undefined;
    if (!inv) throw new SandboxError("VALIDATION", `unknown invoke ${String(id)}`);
    return inv;
  }

  private modulePath(path: unknown): string {
    if (typeof path !== "string" || !this.paths.has(path)) throw new SandboxError("VALIDATION", `the model has no module "${String(path)}"`);
    return path;
  }

  /** The user's stack (inside the isolate) as an Error, so errors raised later point at their line. */
  private origin(stack: unknown): Error {
    const e = new Error();
    e.stack = typeof stack === "string" ? stack : "";
    return e;
  }

  /** Bytes an op may still allocate. */
  private budget = (bytes: number): void => {
    if (Date.now() > this.limits.deadline) throw this.fail(new SandboxError("TIMEOUT", "the job ran past its deadline"));
    if (this.bytes + bytes > this.limits.memoryLimitBytes) {
      throw new SandboxError("MEMORY", `this would allocate ${bytes} bytes; the job's tensors may take ${this.limits.memoryLimitBytes} bytes in all and hold ${this.bytes}`);
    }
  };

  private callbacks(): HostCallbacks {
    return {
      op: (id, method, args) => {
        if (typeof method !== "string" || !METHODS.has(method)) throw new SandboxError("NOT_ALLOWED", `tensor method "${String(method)}" is not available in remote code`);
        const t = this.tensor(id);
        const values = (Array.isArray(args) ? args : []).map((a) => this.fromDesc(a));
        const result = withAllocationGuard(this.budget, () => (t as unknown as Record<string, (...a: unknown[]) => unknown>)[method]!(...values));
        return this.toDesc(result);
      },
      fn: (name, args) => this.toDesc(withAllocationGuard(this.budget, () => this.create(String(name), (Array.isArray(args) ? args : []).map((a) => this.fromDesc(a))))),
      release: (id) => {
        const t = typeof id === "number" ? this.handles.get(id) : undefined;
        if (!t) return;
        this.handles.delete(id as number);
        this.handleOf.delete(t);
        if (!t.isMeta) this.bytes -= t.numel() * ITEM_BYTES[t.dtype];
      },
      read: (invoke, path, kind, part, stack) => {
        const { envoy } = this.invoke(invoke);
        const mediator = envoy?._ctx?.mediator;
        if (!mediator) throw new SandboxError("VALIDATION", "module values are read inside an invoke");
        if ((kind !== "input" && kind !== "output") || (part !== "first" && part !== "all")) throw new SandboxError("VALIDATION", "bad value kind");
        return this.forward(mediator.read(this.modulePath(path), kind, part, this.origin(stack)));
      },
      write: (invoke, path, kind, part, value, stack) => {
        const { envoy } = this.invoke(invoke);
        const mediator = envoy?._ctx?.mediator;
        if (!mediator) throw new SandboxError("VALIDATION", "module values are set inside an invoke");
        if ((kind !== "input" && kind !== "output") || (part !== "first" && part !== "all")) throw new SandboxError("VALIDATION", "bad value kind");
        mediator.write(this.modulePath(path), kind, part, this.fromDesc(value), this.origin(stack));
      },
      skip: (invoke, path, value, stack) => {
        const mediator = this.invoke(invoke).envoy?._ctx?.mediator;
        if (!mediator) throw new SandboxError("VALIDATION", "modules are skipped inside an invoke");
        mediator.skip(this.modulePath(path), this.fromDesc(value), this.origin(stack));
      },
      call: (invoke, path, args) => {
        const { envoy } = this.invoke(invoke);
        const target = this.modulePath(path).split(".").filter(Boolean).reduce((e: any, k: string) => e[k], envoy);
        const values = (Array.isArray(args) ? args : []).map((a) => this.fromDesc(a));
        return this.forward(Promise.resolve().then(() => target.call(...values)));
      },
      tracer: (invoke, action, args, stack) => this.tracerAction(invoke, String(action), Array.isArray(args) ? args : [], stack),
      cache: (id, action, args) => {
        const c = typeof id === "number" ? this.caches.get(id) : undefined;
        if (!c) throw new SandboxError("VALIDATION", "unknown cache");
        const list = Array.isArray(args) ? args : [];
        if (action === "get") return this.toDesc(c.get(String(list[0])) ?? null);
        if (action === "keys") return c.keys();
        if (action === "toObject") return this.toDesc(c.toObject());
        throw new SandboxError("VALIDATION", "bad cache action");
      },
      grad: (scopeId, action, args, stack) => {
        const scope = typeof scopeId === "number" ? this.scopes.get(scopeId) : undefined;
        if (!scope) throw new SandboxError("VALIDATION", "unknown gradient scope");
        const list = Array.isArray(args) ? args : [];
        const t = this.fromDesc(list[0]);
        if (!(t instanceof Tensor)) throw new TypeError(`${String(action)}: expected a tensor`);
        if (action === "grad") return this.forward(scope.grad(t));
        if (action === "setGrad") return void scope.setGrad(t, this.fromDesc(list[1]) as Tensor);
        throw new SandboxError("VALIDATION", "bad gradient action");
        void stack;
      },
      session: (action, args) => this.sessionAction(String(action), Array.isArray(args) ? args : []),
      log: (text) => this.log(String(text).slice(0, 10_000)),
      done: (invoke, ok, value) => {
        const inv = typeof invoke === "number" ? this.invokes.get(invoke) : undefined;
        if (!inv?.open) return;
        const open = inv.open;
        inv.open = undefined;
        const v = this.fromDesc(value);
        if (ok) open.resolve(v);
        else open.reject(v);
      },
    };
  }

  private tracerAction(invokeId: unknown, action: string, args: unknown[], stack: unknown): unknown {
    if (action === "step") {
      const it = this.iterators.get(Number(args[0]));
      if (!it) throw new SandboxError("VALIDATION", "unknown step iterator");
      return this.forward(it.next());
    }
    const { tracer } = this.invoke(invokeId);
    switch (action) {
      case "stop":
        return tracer.stop();
      case "cache":
        return this.register(this.caches, tracer.cache(this.fromDesc(args[0] ?? {}) as object));
      case "result":
        return this.forward(tracer.result);
      case "next":
        return tracer.next(Number(args[0] ?? 1));
      case "iter":
        return this.register(this.iterators, tracer.iter(args[0] as number | number[], args[1] === null ? undefined : (args[1] as number))[Symbol.asyncIterator]());
      case "all":
        return this.register(this.iterators, tracer.all()[Symbol.asyncIterator]());
      case "backward": {
        const loss = this.fromDesc(args[0]);
        if (!(loss instanceof Tensor)) throw new TypeError("backward: the loss must be a tensor");
        const fnId = args[1] && typeof args[1] === "object" ? Number((args[1] as { $fn: unknown }).$fn) : null;
        const body =
          fnId === null
            ? undefined
            : (scope: GradScope) =>
                new Promise((resolve, reject) => {
                  const sid = this.register(this.scopes, scope);
                  const id = this.nextId++;
                  this.invokes.set(id, { envoy: null, tracer, open: { resolve, reject } });
                  this.enterOrFail(id, (timeout) => this.rt.backward.applySync(undefined, [fnId, sid, id], { timeout }));
                });
        return this.forward(tracer.backward(loss, body));
      }
      case "invoke": {
        if (!(tracer instanceof Tracer)) throw new TypeError("tr.invoke belongs to the trace's own tracer");
        const input = args[0] === null ? undefined : this.fromDesc(args[0]);
        const fnId = Number((args[1] as { $fn?: unknown } | null)?.$fn);
        if (!Number.isInteger(fnId)) throw new TypeError("invoke needs an intervention function");
        const fn = this.interventionFn(fnId, this.toDesc(tracer.vars));
        return this.forward(input === undefined ? tracer.invoke(fn) : tracer.invoke(input as never, fn));
      }
      case "barrier": {
        if (!(tracer instanceof Tracer)) throw new TypeError("tr.barrier belongs to the trace's own tracer");
        return this.register(this.barriers, tracer.barrier(Number(args[0])));
      }
      case "arrive": {
        const b = this.barriers.get(Number(args[0]));
        if (!b) throw new SandboxError("VALIDATION", "unknown barrier");
        return this.forward(b());
      }
      case "local": {
        if (!this.runLocal) throw new SandboxError("NOT_ALLOWED", "tr.local (hybrid steps) needs a client that can answer them; this job has none");
        const source = String(args[0]);
        const vals = this.fromDesc(args[1]);
        const run = this.runLocal;
        return this.forward(tracer.local(() => run(source, vals), undefined));
      }
    }
    void stack;
    throw new SandboxError("VALIDATION", `unknown tracer action "${action}"`);
  }

  private sessionAction(action: string, args: unknown[]): number {
    const fnOf = (d: unknown): number => {
      const id = Number((d as { $fn?: unknown } | null)?.$fn);
      if (!Number.isInteger(id)) throw new TypeError(`session.${action} needs an intervention function`);
      return id;
    };
    const traceOptions = (d: unknown) => {
      const o = (this.fromDesc(d) ?? {}) as { vars?: Record<string, unknown>; grad?: boolean };
      if (typeof o !== "object") throw new TypeError("trace options must be an object");
      return { vars: o.vars ?? {}, grad: o.grad === true, checkpoint: this.checkpoint ?? undefined };
    };
    const lm = this.model;
    if (action === "trace" || action === "scan") {
      const input = args[0] === null ? undefined : this.fromDesc(args[0]);
      const options = traceOptions(args[2]);
      const fnId = fnOf(args[1]);
      const vars = this.toDesc(options.vars);
      const run = action === "trace" ? lm.trace.bind(lm) : lm.scan.bind(lm);
      return this.forward(input === undefined ? run(this.rootFn(fnId, vars), options) : run(input as never, this.interventionFn(fnId, vars), options));
    }
    if (action === "generate") {
      const input = args[0] === null ? undefined : this.fromDesc(args[0]);
      const settings = { ...((this.fromDesc(args[1]) ?? {}) as { maxNewTokens: number }), onToken: this.onToken ?? undefined };
      const options = traceOptions(args[3]);
      const vars = this.toDesc(options.vars);
      if (input === undefined) return this.forward(lm.generate(this.rootFn(fnOf(args[2]), vars), settings, options));
      const body = args[2] === null ? async () => undefined : this.interventionFn(fnOf(args[2]), vars);
      return this.forward(lm.generate(input as never, settings, body, options));
    }
    throw new SandboxError("VALIDATION", `unknown session action "${action}"`);
  }

  /** The tensor creation functions of the sandbox, with sizes checked before anything is allocated. */
  private create(name: string, args: unknown[]): unknown {
    const shapeArg = (v: unknown): number[] => {
      if (!Array.isArray(v) || !v.every((d) => Number.isInteger(d) && d >= 0)) throw new TypeError(`${name}: the shape must be a list of non-negative integers`);
      return v as number[];
    };
    const dtypeArg = (v: unknown, fallback: "float32" | "int64" = "float32") => {
      if (v === undefined || v === null) return fallback;
      if (!isDType(v)) throw new TypeError(`${name}: unknown dtype ${String(v)}`);
      return v;
    };
    const check = (shape: number[], dtype: keyof typeof ITEM_BYTES) => this.budget(sizeOf(shape) * ITEM_BYTES[dtype]);
    const gen = (v: unknown) => new Generator(Number((v as { seed?: unknown } | undefined)?.seed ?? 0));
    switch (name) {
      case "tensor":
        return tensor(args[0] as never, args[1] === undefined || args[1] === null ? undefined : dtypeArg(args[1]), args[2] === undefined ? undefined : shapeArg(args[2]));
      case "zeros":
      case "ones": {
        const shape = shapeArg(args[0]);
        const dtype = dtypeArg(args[1]);
        check(shape, dtype);
        return name === "zeros" ? zeros(shape, dtype) : ones(shape, dtype);
      }
      case "full": {
        const shape = shapeArg(args[0]);
        const dtype = dtypeArg(args[2]);
        check(shape, dtype);
        return full(shape, Number(args[1]), dtype);
      }
      case "arange": {
        const [a, b, step] = [Number(args[0]), args[1] === undefined || args[1] === null ? undefined : Number(args[1]), args[2] === undefined || args[2] === null ? 1 : Number(args[2])];
        const n = Math.ceil(((b ?? a) - (b === undefined ? 0 : a)) / step);
        if (!(n >= 0) || n > 1e9) throw new RangeError("arange: bad range");
        check([n], "int64");
        return arange(a, b, step);
      }
      case "eye": {
        const n = Number(args[0]);
        check([n, n], "float32");
        return eye(n);
      }
      case "randn":
      case "rand": {
        const shape = shapeArg(args[0]);
        check(shape, "float32");
        return name === "randn" ? randn(shape, gen(args[1])) : rand(shape, gen(args[1]));
      }
      case "cat":
        return cat(args[0] as Tensor[], args[1] as number | undefined);
      case "stack":
        return stack(args[0] as Tensor[], args[1] as number | undefined);
      case "where":
        return where(args[0] as Tensor, args[1] as Tensor, args[2] as Tensor);
    }
    throw new SandboxError("NOT_ALLOWED", `"${name}" is not a function of the sandbox`);
  }

  // #endregion
}

/** The module tree as names for the isolate; ModuleLists become arrays. */
function treeOf(module: Module, aliases: TreeNode["aliases"] = []): TreeNode {
  return {
    path: module.path,
    type: module.typeName,
    aliases,
    children: module.children().map(([name, child]) => [name, child instanceof ModuleList ? [...child].map((c) => treeOf(c)) : treeOf(child)]),
  };
}

/** A host Error from an isolate error descriptor, keeping its class name, message and stack. */
function errorOf(info: unknown): Error {
  const i = (info ?? {}) as { type?: string; message?: string; stack?: string; code?: string };
  const e = new Error(String(i.message ?? "error"));
  e.name = String(i.type ?? "Error");
  e.stack = String(i.stack ?? `${e.name}: ${e.message}`);
  if (typeof i.code === "string") (e as { code?: string }).code = i.code;
  return e;
}
