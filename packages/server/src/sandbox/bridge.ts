/**
 * The host side of a job's sandbox: the isolate, the values that cross (tensors stay on the host; the isolate holds
 * handles), the job's budget, and the callbacks the isolate's runtime calls. Every callback checks what the isolate
 * sends against the declared API table (names, argument kinds, ids of this job's own objects) and reports errors
 * as data, so they keep their class.
 *
 * The job's code runs in the isolate asynchronously (isolated-vm's own threads): this thread stays free, answers
 * the code's calls (they come back to it synchronously), and ends a run that takes too long for real, by disposing
 * of the isolate, from an ordinary timer: at the deadline, or, in a forward pass shared with other jobs, when one
 * turn of the code outlasts its slice. (isolated-vm's per-call timeouts keep a timer per call alive for its whole
 * duration; hundreds of thousands of short calls overflowed its timer thread's stack, so they are used only for
 * the few synchronous calls: compiling, and replacement functions the forward pass calls.)
 */
import ivm from "isolated-vm";
import { buildAliases, Generator, holderRefusal, ITER_NOT_CALLED, ITERATED_WITHOUT_AWAIT, KVCache, MAX_LIST_ARRAYS, ModuleList, nestedArrays, NOT_A_PAIR, pointRefusal, Optimizer, Tensor, TraceError, transformerLensNames, transformerLensNotes, NO_SOURCE_HINT, withAllocationGuard, type InterventionFn, type Module, type Tracer } from "tsight";
import { CONSTRUCTORS, FunctionSource, infoFromError, SANDBOX_OBJECTS, TENSOR_AUTOGRAD, TENSOR_FUNCTIONS, TENSOR_METHODS, type ExecutionModel as LanguageModel } from "tsight/protocol";
import { checkArgs } from "./args.js";
import { HANDLE_BYTES, JobBudget, OBJECT_BYTES, type BudgetLimits } from "./budget.js";
import { SandboxError } from "./errors.js";
import { FUNCTIONS } from "./functions.js";
import { HOST_ACTIONS, type ActionHost } from "./host-actions.js";
import { runtimeSource, type HostCallbacks, type RuntimeApi, type TreeNode } from "./runtime.js";
import { userError, userStack } from "./user-errors.js";

const ITEM_BYTES = { float32: 4, int64: 8, int32: 4, bool: 1 } as const;
/** Longest user stack kept for an error's origin, and longest log line. */
const MAX_STACK_CHARS = 4096;
/**
 * What one value the job's code sends may hold, characters and entries together: the runtime counts it before sending
 * (it is given this), and fromDesc again before building it.
 */
const MAX_SENT_UNITS = 16 * 2 ** 20;
const MAX_LOG_CHARS = 10_000;
/** Hybrid steps (tr.local) a job may have asked for and not yet seen end (see pendingStep). */
const MAX_PENDING_STEPS = 256;
/**
 * Most numbers and arrays `tolist()` and `toArray()` hand the job's code: each takes 8 bytes or more in its isolate
 * (whose heap is 64 MiB by default), and tens of bytes on the host while the list is made and copied in
 * (`ones([2 ** 25]).tolist()`, a tensor within the job's memory, took the server to 2.4 GB before the isolate ran
 * out; 4M values as [4194304, 1], 1.4 GB). Past it the job keeps tensors, or reads a slice.
 */
const MAX_LIST_VALUES = 2 ** 20;

/** An object descriptor's data: the code's own object with `$` keys (see the runtime's out) comes wrapped in `$plain`. */
const plainData = (o: Record<string, unknown>): Record<string, unknown> => ("$plain" in o && o.$plain && typeof o.$plain === "object" ? (o.$plain as Record<string, unknown>) : o);

interface Open {
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

/** A host object the job holds (a tracer, a cache, a step iterator, ...), by kind. */
interface Held {
  kind: string;
  value: unknown;
}

export interface BridgeOptions {
  limits: BudgetLimits;
  log: (text: string) => void;
  /** Runs a hybrid step on the client: the index of its call site in the job's source, and its values. */
  runLocal: ((step: number, vals: unknown) => Promise<unknown>) | null;
  /** The sources of the `tr.local(...)` functions of the job's code, by call site (see localStepSites). */
  localSites: readonly string[];
  /** Extra module names the client gave (its model's `rename`). */
  rename?: Record<string, string | string[]>;
}

export class Bridge implements ActionHost {
  private readonly handles = new Map<number, Tensor>();
  private readonly handleOf = new Map<Tensor, number>();
  private nextHandle = 1;
  private nextRequest = 1;
  /** Action promises (tr.backward, tr.local, ...) the job's code has not used yet, by request id. */
  private readonly watched = new Map<number, { used: boolean }>();
  /** Asynchronous calls into the isolate not settled yet (each settles, never rejects). */
  private readonly inFlight = new Set<Promise<void>>();
  private nextId = 1;
  /** Code of the job running as an invoke, root, session or backward function, by id; settled when it ends. */
  private readonly invokes = new Map<number, Open>();
  private readonly held = new Map<number, Held>();
  private readonly idOf = new Map<unknown, number>();
  readonly paths: Set<string>;
  /** Holders of operation points (never called, no values of their own), with why a request for one is refused. */
  private readonly holders: Map<string, string>;
  /** Paths of operation points, whose input is their output (see Mediator.read). */
  private readonly points: Set<string>;
  readonly budget: JobBudget;
  /** Set when the job must end (timeout, memory, cancel, stall): every later call fails with it. */
  fatal: Error | null = null;
  private rt!: { start: ivm.Reference; call: ivm.Reference; resolve: ivm.Reference; reject: ivm.Reference; register: ivm.Reference; source: ivm.Reference; helpers: ivm.Reference };
  private generator: import("tsight").Generator | null = null;
  /** Refunds tensors the job let go of that a recorded graph may still hold, once the host frees them. */
  private readonly graphHeld = new FinalizationRegistry<number>((bytes) => this.budget.refund(bytes));

  /** The model sessions run on (this job's, with its edits); set by the executor. */
  model: LanguageModel;
  /** The job's cancel/deadline check, for the traces a session runs. */
  checkpoint: (() => void) | null = null;
  /** Streams generated tokens of session generations. */
  onToken: ((step: { tokens: number[]; step: number }) => void) | null = null;
  /** Trace options a job's traces run with (stall limit, row isolation), set by the executor. */
  traceDefaults: { stallTimeoutMs?: number; maxInputTokens?: number; onWarning?: (message: string) => void } = {};
  private jobAliases: ReadonlyMap<string, ReadonlyMap<string, string>> | undefined;
  get aliases(): ReadonlyMap<string, ReadonlyMap<string, string>> {
    if (!this.jobAliases) {
      try {
        this.jobAliases = buildAliases(this.lm.model, this.options.rename ?? {});
      } catch (e) {
        // The job's rename is refused as its own mistake: the message alone, never where on the server it was found.
        throw new SandboxError("VALIDATION", (e as Error).message.split("\n    at ")[0]!);
      }
    }
    return this.jobAliases;
  }

  constructor(
    private readonly isolate: ivm.Isolate,
    private readonly context: ivm.Context,
    private readonly lm: LanguageModel,
    private readonly options: BridgeOptions,
  ) {
    this.paths = new Set(lm.model.namedModules().map(([p]: [string, unknown]) => p));
    this.holders = new Map();
    this.points = new Set();
    for (const [p, m] of lm.model.namedModules() as [string, Module][]) {
      const refusal = holderRefusal(m);
      if (refusal) this.holders.set(p, refusal);
      if (m.isOperationPoint) this.points.add(p);
    }
    this.model = lm;
    this.budget = new JobBudget(options.limits, (e) => this.fail(e));
  }

  // #region the isolate

  /** Installs the runtime in the isolate. */
  install(): void {
    const jail = this.context.global;
    jail.setSync("globalThis", jail.derefInto());
    // WebAssembly's memories live outside the isolate's heap, where its memory limit does not see them: a job could
    // hold gigabytes of them. Nothing a job does needs it.
    this.context.evalSync("globalThis.__name = (f) => f; delete globalThis.WebAssembly;");
    // V8's gc (see exposeGc), kept for the host (collectHandles) and out of the job's reach.
    // (The flag's gc is not configurable: it can be overwritten, not deleted.)
    this.context.evalSync("globalThis.__collect = typeof gc === 'function' ? gc : () => undefined; globalThis.gc = undefined;");
    this.collector = jail.getSync("__collect", { reference: true }) as ivm.Reference;
    this.context.evalSync("delete globalThis.__collect;");
    const callbacks = this.callbacks();
    for (const [name, fn] of Object.entries(callbacks)) jail.setSync(`__host_${name}`, new ivm.Callback(this.guarded(fn as (...a: unknown[]) => unknown)));
    const api: RuntimeApi = {
      tensorMethods: Object.keys(TENSOR_METHODS),
      tensorAutograd: Object.fromEntries(Object.entries(TENSOR_AUTOGRAD).map(([name, how]) => [name, { getter: how.getter }])),
      functions: Object.keys(TENSOR_FUNCTIONS),
      constructors: [...CONSTRUCTORS],
      lensNames: { ...transformerLensNames },
      lensNotes: { ...transformerLensNotes },
      noSourceHint: NO_SOURCE_HINT,
      iteratedWithoutAwait: ITERATED_WITHOUT_AWAIT,
      iterNotCalled: ITER_NOT_CALLED,
      notAPair: { values: NOT_A_PAIR("values"), indices: NOT_A_PAIR("indices") },
      maxSentUnits: MAX_SENT_UNITS,
      objects: Object.fromEntries(Object.entries(SANDBOX_OBJECTS).map(([kind, actions]) => [kind, Object.fromEntries(Object.entries(actions).map(([a, spec]) => [a, { answer: spec.answer, getter: "getter" in spec && spec.getter === true }]))])),
    };
    jail.setSync("__tree", new ivm.ExternalCopy(treeOf(this.lm.model, this.aliases)).copyInto());
    jail.setSync("__api", new ivm.ExternalCopy(api).copyInto());
    const names = Object.keys(callbacks);
    const hostObject = `{ ${names.map((n) => `${n}: __host_${n}`).join(", ")} }`;
    const rt = this.context.evalSync(`${runtimeSource}(${hostObject}, __tree, __api)`, { reference: true }) as ivm.Reference;
    this.context.evalSync(`${names.map((n) => `delete globalThis.__host_${n};`).join(" ")} delete globalThis.__tree; delete globalThis.__api;`);
    const get = (k: string) => rt.getSync(k, { reference: true }) as ivm.Reference;
    this.rt = { start: get("start"), call: get("call"), resolve: get("resolve"), reject: get("reject"), register: get("register"), source: get("source"), helpers: get("helpers") };
  }

  /**
   * `vars` with each helper function (FunctionSource, from the client) compiled in the isolate. Top-level helpers
   * see each other by name (a library of helpers may call itself); stack frames name `vars.<name>.js`.
   */
  compileHelpers(vars: Record<string, unknown>): Record<string, unknown> {
    const found: { fn: FunctionSource; name: string | null; where: string }[] = [];
    const walk = (v: unknown, where: string, top: string | null): void => {
      if (v instanceof FunctionSource) found.push({ fn: v, name: top, where });
      else if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${where}.${i}`, null));
      else if (v !== null && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) for (const [k, x] of Object.entries(v)) walk(x, `${where}.${k}`, null);
    };
    for (const [k, v] of Object.entries(vars)) walk(v, k, /^[A-Za-z_$][\w$]*$/.test(k) && k !== "__h" ? k : null);
    if (found.length === 0) return vars;
    const names = found.flatMap((f) => (f.name ? [f.name] : []));
    const bind = names.map((n) => `const ${n} = (...a) => __h[${JSON.stringify(n)}](...a);`).join(" ");
    const factories = found.map((f) => this.compile(`function (__h) { ${bind}\nreturn (${f.fn.source}\n); }`, `vars.${f.where.replace(/[^\w.$-]/g, "_").slice(0, 100)}.js`));
    const ids = this.enter((timeout) => this.rt.helpers.applySync(undefined, [factories, found.map((f) => f.name)], { arguments: { copy: true }, result: { copy: true }, timeout })) as number[];
    const compiled = new Map(found.map((f, i) => [f.fn, new IsolateFunction(ids[i]!)]));
    const replace = (v: unknown): unknown => {
      if (v instanceof FunctionSource) return compiled.get(v);
      if (Array.isArray(v)) return v.map(replace);
      if (v !== null && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, replace(x)]));
      return v;
    };
    return replace(vars) as Record<string, unknown>;
  }

  /** Compiles a function source in the isolate (stack frames name `filename`) and returns its id there. */
  compile(source: string, filename: string): number {
    const fn = this.enter((timeout) => this.context.evalSync(`(${source}\n)`, { filename, reference: true, timeout })) as ivm.Reference;
    return this.enter((timeout) => this.rt.register.applySync(undefined, [fn.derefInto()], { timeout })) as number;
  }

  /**
   * Runs the isolate function `fnId` as `mode` with `self` (the tracer, session or gradient scope it gets) and,
   * for an invoke, its envoy tree; resolves with what it returns.
   */
  run(fnId: number, mode: "invoke" | "root" | "session" | "backward", self: unknown): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.invokes.set(id, { resolve, reject });
      let selfDesc: unknown;
      try {
        selfDesc = this.toDesc(mode === "invoke" || mode === "root" ? this.hold("tracer", self) : self);
      } catch (e) {
        this.invokes.delete(id);
        return reject(e);
      }
      const failed = (e: unknown) => {
        this.invokes.delete(id);
        reject(e);
      };
      // A trace function must declare its invokes before the trace goes on (synchronously, as in process); the rest
      // of the job's code runs asynchronously.
      if (mode === "root") {
        try {
          this.enter((timeout) => this.rt.start.applySync(undefined, [fnId, id, mode, selfDesc], { arguments: { copy: true }, timeout }));
        } catch (e) {
          failed(e);
        }
      } else this.enterAsync(() => this.rt.start.apply(undefined, [fnId, id, mode, selfDesc], { arguments: { copy: true } })).catch(failed);
    });
  }

  /**
   * A host InterventionFn that runs the isolate function `fnId` as an invoke `(m, tr)`; `vars` are what its
   * `tr.vars` gives when they are not the trace's (a job sharing a pass with others has its own).
   */
  interventionFn(fnId: number, vars?: Record<string, unknown>): InterventionFn {
    return (envoy, tracer) => {
      this.envoyOf.set(tracer, envoy);
      if (vars) this.varsOf.set(tracer, vars);
      return this.run(fnId, "invoke", tracer);
    };
  }

  /** Vars of invokes that are not their trace's. */
  readonly varsOf = new WeakMap<object, Record<string, unknown>>();

  /** A host trace function that runs the isolate function `fnId` as the root `(tr)` of a "tracer" job. */
  rootFn(fnId: number): (tr: Tracer) => Promise<unknown> {
    return (tracer) => this.run(fnId, "root", tracer);
  }

  /** Envoy trees of the invokes, by their tracer (envoy actions name the invoke by its tracer's id). */
  readonly envoyOf = new WeakMap<object, unknown>();

  /**
   * Runs a hybrid step: the function must be one written at a `.local(` call of the job's code. A step that cannot
   * run ends the job (its error went only into the step's promise, which code that does not await it drops: such
   * calls in a loop took a server past 8 GB).
   */
  localStep(fn: { fnId: number }): (vals: unknown) => Promise<unknown> {
    const runLocal = this.options.runLocal;
    if (!runLocal) throw this.fail(new SandboxError("NOT_ALLOWED", "tr.local (hybrid steps) needs a client that can answer them; this job has none"));
    const step = this.options.localSites.indexOf(this.sourceOf(fn.fnId));
    if (step < 0) {
      throw this.fail(new SandboxError("NOT_ALLOWED", "tr.local runs a function written at the call, tr.local(async (vals) => ..., vals): the client runs only the steps it can find in the code it sent"));
    }
    return (vals) => runLocal(step, vals);
  }

  private pendingSteps = 0;

  pendingStep<T>(step: () => Promise<T>): Promise<T> {
    // Steps run one after another, each waiting for the client: a job's code that asks for many without awaiting
    // them holds each one's values and work on the host until its turn (9,000 took 1 GB).
    if (this.pendingSteps >= MAX_PENDING_STEPS) {
      throw this.fail(new SandboxError("MEMORY", `the job asked for more than ${MAX_PENDING_STEPS} hybrid steps (tr.local) that had not ended yet; they run one at a time: await each (or a few) before asking for more`));
    }
    this.pendingSteps++;
    const done = () => void this.pendingSteps--;
    const p = step();
    Promise.prototype.then.call(p, done, done);
    return p;
  }

  /** The source text of the isolate function `fnId` (what tr.local matches against its call sites). */
  sourceOf(fnId: number): string {
    return String(this.enter((timeout) => this.rt.source.applySync(undefined, [fnId], { timeout })));
  }

  /** Ends the job: every open invoke fails with `error`, and the isolate refuses further work. */
  abort(error: Error): void {
    this.fatal ??= error;
    for (const open of this.invokes.values()) open.reject(this.fatal);
    this.invokes.clear();
  }

  /**
   * Runs `call` (an asynchronous call into the isolate) within the job's time: a timer disposes of the isolate if
   * the call is still running at the deadline (or, in a shared pass, past the job's slice). Maps isolate failures to
   * job errors.
   */
  private async enterAsync<T>(call: () => Promise<T>): Promise<T> {
    if (this.fatal) throw this.fatal;
    const limit = this.budget.beginTurn();
    const timer = setTimeout(() => this.stop(this.budget.sliceRanOut(limit) ? this.budget.stall("its code") : new SandboxError("TIMEOUT", this.budget.pastDeadline("the job's code"))), limit);
    try {
      return await this.track(call());
    } catch (e) {
      throw this.fatal ?? this.isolateFailure(e);
    } finally {
      clearTimeout(timer);
    }
  }

  /** `running` (an asynchronous call into the isolate), counted as in flight until it settles. */
  private track<T>(running: Promise<T>): Promise<T> {
    const settled = running.then(
      () => undefined,
      () => undefined,
    );
    this.inFlight.add(settled);
    void settled.then(() => this.inFlight.delete(settled));
    return running;
  }

  /**
   * Resolves once no asynchronous call runs in the isolate (after a dispose: once isolated-vm's thread has left
   * it). While one runs, the isolate's thread may be waiting for this thread to answer one of its callbacks.
   */
  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  /** Ends the job with `error` and stops its code at once, wherever it is (the isolate is disposed of). */
  stop(error: Error): Error {
    const e = this.fail(error);
    if (!this.isolate.isDisposed) this.isolate.dispose();
    return e;
  }

  /** The job error for an error an isolate call failed with. */
  private isolateFailure(e: unknown): unknown {
    const msg = (e as Error)?.message ?? "";
    if (/memory limit/i.test(msg) || this.isolate.isDisposed) return this.fail(new SandboxError("MEMORY", "the job's code used more memory than its sandbox allows"));
    return e;
  }

  /**
   * Runs `work` (a synchronous call into the isolate, given the time it may take) within the job's time, for the
   * few calls that must be synchronous; the call's own timeout stops a spinning one.
   */
  private enter<T>(work: (timeout: number) => T): T {
    if (this.fatal) throw this.fatal;
    const timeout = this.budget.beginTurn();
    try {
      return work(timeout);
    } catch (e) {
      if (this.fatal) throw this.fatal;
      const msg = (e as Error)?.message ?? "";
      if (/timed out/i.test(msg)) throw this.budget.sliceRanOut(timeout) ? this.budget.stall("its code") : this.fail(new SandboxError("TIMEOUT", this.budget.pastDeadline("the job's code")));
      throw this.isolateFailure(e);
    }
  }

  fail(e: Error): Error {
    this.abort(e);
    return this.fatal!;
  }

  /** Settles an isolate-side promise `id` when `p` settles; returns `id`. */
  forward(p: Promise<unknown>): number {
    const id = this.nextRequest++;
    const settle = (ref: ivm.Reference, value: unknown) => {
      let desc: unknown;
      try {
        desc = this.toDesc(value);
      } catch (e) {
        return void this.fail(e as Error);
      }
      // A failure is recorded in `fatal` and reported through the invokes.
      this.enterAsync(() => ref.apply(undefined, [id, desc], { arguments: { copy: true } })).catch(() => undefined);
    };
    // Promise.prototype.then itself: passing a value on is not the job's code using it (see tsight's Watched).
    Promise.prototype.then.call(
      p,
      (v) => settle(this.rt.resolve, v),
      (e) => settle(this.rt.reject, e instanceof Error ? e : new Error(String(e))),
    );
    return id;
  }

  // #endregion
  // #region values

  /** Host value -> descriptor for the isolate (tensors become handles, host objects references). */
  toDesc(v: unknown): unknown {
    if (v instanceof Tensor) return { $h: this.handle(v), dtype: v.dtype, shape: [...v.shape], meta: v.isMeta };
    if (v instanceof IsolateFunction) return { $fnref: v.fnId };
    if (Array.isArray(v)) return v.map((x) => this.toDesc(x));
    // The isolate makes the error's stack itself (the user's code): the host's frames never cross.
    if (v instanceof Error) {
      const info = infoFromError(v);
      return { $error: { type: info.type, message: info.message, code: info.code } };
    }
    // A layer's KV cache (in its attention context during generation) crosses as a reference, so the job can pass
    // it back to a module call (layer.call(...(await layer.inputs))).
    if (v instanceof KVCache) this.hold("kvcache", v);
    const id = this.idOf.get(v);
    if (id !== undefined) return { $obj: [this.held.get(id)!.kind, id] };
    if (v && typeof v === "object") {
      if (Object.getPrototypeOf(v) !== Object.prototype) return String(v);
      const o: Record<string, unknown> = {};
      let marked = false;
      for (const [k, x] of Object.entries(v)) {
        setOwn(o, k, this.toDesc(x));
        marked ||= k.startsWith("$");
      }
      // Data whose keys look like a descriptor's ({ $h: 3 } in vars) crosses as data (see the runtime's inn).
      return marked ? { $plain: o } : o;
    }
    if (typeof v === "function") return undefined;
    return v;
  }

  /**
   * A descriptor from the isolate as the host's value. Counted first, each string and entry wherever it is held, and
   * built only then: the copy out of the isolate keeps one array held in many places once, and building it here
   * copies it once per place (the runtime counts the same before sending, but its walk runs in the job's isolate: 12
   * KB of shared arrays sent past it made 1-4 GB here).
   */
  fromDesc(d: unknown): unknown {
    let units = 0;
    const measure = (d: unknown): void => {
      units += typeof d === "string" ? d.length : Array.isArray(d) ? d.length : 0;
      if (units > MAX_SENT_UNITS) throw new SandboxError("MEMORY", `a value sent by the job's code holds more than ${MAX_SENT_UNITS} characters and entries (each string and array counted wherever it is held): send large data as tensors`);
      if (Array.isArray(d)) for (let i = 0; i < d.length; i++) measure(d[i]);
      else if (d && typeof d === "object" && !ArrayBuffer.isView(d)) {
        const data = plainData(d as Record<string, unknown>);
        for (const k of Object.keys(data)) {
          units += 1 + k.length;
          measure(data[k]);
        }
      }
    };
    measure(d);
    const one = (d: unknown): unknown => {
      if (Array.isArray(d)) {
        const r = new Array<unknown>(d.length);
        for (let i = 0; i < d.length; i++) r[i] = one(d[i]);
        return r;
      }
      if (d && typeof d === "object" && !ArrayBuffer.isView(d)) {
        const o = d as Record<string, unknown>;
        if ("$h" in o) return this.tensor(o.$h);
        if ("$fn" in o) return this.callable(o.$fn);
        if ("$obj" in o) return this.object(o.$obj);
        if ("$envoy" in o) return { path: this.modulePath(o.$envoy) };
        if ("$error" in o) return userError(o.$error);
        if ("$unsendable" in o) return unsendable(String(o.$unsendable).slice(0, 64));
        const data = plainData(o);
        const r: Record<string, unknown> = {};
        for (const k of Object.keys(data)) setOwn(r, k, one(data[k]));
        return r;
      }
      return d;
    };
    return one(d);
  }

  /** The isolate's gc (see install), and the bytes of handles made since it last ran. */
  private collector: ivm.Reference | null = null;
  private collecting = false;
  private madeSinceCollect = 0;

  /**
   * Handles the job's code no longer holds are released when the isolate collects their wrappers (the runtime's
   * FinalizationRegistry), which a small heap of small wrappers seldom does: a session looping over traces that read
   * logits held them all, and ran out of memory at a tenth of what it kept. Past half the job's memory, with an
   * eighth of it in handles made since the last collection, the isolate collects, as soon as the code lets it run.
   */
  private collectHandles(bytes: number): void {
    this.madeSinceCollect += bytes;
    const limit = this.options.limits.memoryLimitBytes;
    if (this.collecting || !this.collector || this.budget.bytes + bytes < limit / 2 || this.madeSinceCollect < limit / 8) return;
    this.collecting = true;
    this.madeSinceCollect = 0;
    // Not a turn of the job's code (enterAsync): this runs inside one, whose clock it would set back.
    this.track(this.collector.apply(undefined, [], { timeout: 1000 }))
      .catch(() => undefined)
      .finally(() => (this.collecting = false));
  }

  private handle(t: Tensor): number {
    let id = this.handleOf.get(t);
    if (id === undefined) {
      const bytes = HANDLE_BYTES + (t.isMeta ? 0 : t.numel() * ITEM_BYTES[t.dtype]);
      this.collectHandles(bytes);
      this.budget.charge(bytes);
      id = this.nextHandle++;
      this.handles.set(id, t);
      this.handleOf.set(t, id);
    }
    return id;
  }

  private tensor(id: unknown): Tensor {
    const t = typeof id === "number" ? this.handles.get(id) : undefined;
    if (!t) throw new SandboxError("VALIDATION", `no tensor with handle ${String(id)} in this job`);
    return t;
  }

  /** A host function calling the isolate function `id` synchronously (replacement functions); `fnId` names it. */
  private callable(id: unknown): ((...args: unknown[]) => unknown) & { fnId: number } {
    if (typeof id !== "number" || !Number.isSafeInteger(id)) throw new SandboxError("VALIDATION", "bad function reference");
    const call = (...args: unknown[]) => this.fromDesc(this.enter((timeout) => this.rt.call.applySync(undefined, [id, args.map((a) => this.toDesc(a))], { arguments: { copy: true }, result: { copy: true }, timeout })));
    return Object.assign(call, { fnId: id });
  }

  /** Registers a host object the job may hold; its bookkeeping counts toward the job's memory. */
  hold(kind: string, value: unknown): unknown {
    if (this.idOf.has(value)) return value;
    this.budget.charge(OBJECT_BYTES);
    const id = this.nextId++;
    this.held.set(id, { kind, value });
    this.idOf.set(value, id);
    return value;
  }

  private object(ref: unknown): unknown {
    const [kind, id] = Array.isArray(ref) ? ref : [];
    const held = typeof id === "number" ? this.held.get(id) : undefined;
    if (!held || held.kind !== kind) throw new SandboxError("VALIDATION", `no ${String(kind)} ${String(id)} in this job`);
    return held.value;
  }

  modulePath(path: unknown): string {
    if (typeof path !== "string" || !this.paths.has(path)) throw new SandboxError("VALIDATION", `the model has no module "${String(path).slice(0, 200)}"`);
    return path;
  }

  /** A module's path whose values the job asks for: refused at once for a holder of points (see holderRefusal). */
  private valuePath(path: unknown, stack: unknown): string {
    const at = this.modulePath(path);
    const refusal = this.holders.get(at);
    if (refusal) throw new TraceError(refusal, this.origin(stack));
    return at;
  }

  /** The user's stack (inside the isolate) as an Error, so errors raised later point at their line. */
  origin(stack: unknown): Error {
    const e = new Error();
    e.stack = typeof stack === "string" ? userStack(stack.slice(0, MAX_STACK_CHARS)) : "";
    return e;
  }

  /** A seeded generator for random functions called without one (each job starts from seed 0). */
  defaultGenerator(): import("tsight").Generator {
    return (this.generator ??= FUNCTIONS.Generator([0]) as import("tsight").Generator);
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
        const info = infoFromError(e);
        return { $throw: { type: (e as Error)?.name ?? "Error", message: info.message, code: info.code } };
      }
    };
  }

  private callbacks(): HostCallbacks {
    const args = (a: unknown): unknown[] => (Array.isArray(a) ? a : []).map((x) => this.fromDesc(x));
    return {
      op: (id, method, raw) => {
        if (typeof method === "string" && Object.hasOwn(TENSOR_AUTOGRAD, method)) return this.autograd(this.tensor(id), method as keyof typeof TENSOR_AUTOGRAD, args(raw));
        if (typeof method !== "string" || !Object.hasOwn(TENSOR_METHODS, method)) throw new SandboxError("NOT_ALLOWED", `tensor method "${String(method).slice(0, 100)}" is not available in remote code`);
        const t = this.tensor(id);
        const values = args(raw);
        checkArgs(`tensor.${method}`, TENSOR_METHODS[method as keyof typeof TENSOR_METHODS], values);
        if (method === "tolist" || method === "toArray") {
          const arrays = method === "tolist" ? nestedArrays(t.shape) : 0;
          const units = t.numel() + arrays;
          // Past MAX_LIST_ARRAYS the tensor's own tolist refuses (a ShapeError, as in process): the job gets that.
          if (units > MAX_LIST_VALUES && arrays <= MAX_LIST_ARRAYS) {
            throw new SandboxError("MEMORY", `${method}() of ${t.numel()} values${units > t.numel() ? ` in ${units - t.numel()} arrays` : ""}: a job's code may get at most ${MAX_LIST_VALUES} numbers and arrays of a tensor's values (each takes its sandbox's memory); keep it a tensor (reduce it, or index a slice) and read that`);
          }
        }
        const result = withAllocationGuard(this.budget.guard, () => (t as unknown as Record<string, (...a: unknown[]) => unknown>)[method]!(...values));
        return this.toDesc(result);
      },
      fn: (name, raw) => {
        if (typeof name !== "string" || !Object.hasOwn(TENSOR_FUNCTIONS, name)) throw new SandboxError("NOT_ALLOWED", `"${String(name).slice(0, 100)}" is not a function of the sandbox`);
        const values = args(raw);
        checkArgs(name, TENSOR_FUNCTIONS[name as keyof typeof TENSOR_FUNCTIONS], values);
        const impl = FUNCTIONS[name as keyof typeof FUNCTIONS] as (a: unknown[], ctx: unknown) => unknown;
        const ctx = { fits: (bytes: number) => this.budget.guard(bytes, 0), charge: (bytes: number) => this.budget.charge(bytes), generator: () => this.defaultGenerator() };
        const made = withAllocationGuard(this.budget.guard, () => impl(values, ctx));
        return this.toDesc(made instanceof Generator ? this.hold("generator", made) : made instanceof Optimizer ? this.hold("optimizer", made) : made);
      },
      release: (id) => {
        const t = typeof id === "number" ? this.handles.get(id) : undefined;
        if (!t) return;
        this.handles.delete(id as number);
        this.handleOf.delete(t);
        const bytes = HANDLE_BYTES + (t.isMeta ? 0 : t.numel() * ITEM_BYTES[t.dtype]);
        // A tensor in a recorded graph stays alive while later tensors of the graph do (a backward needs it):
        // it stays charged until the host frees it, so a graph grown in a loop runs into the job's limit.
        if (t.gradNode) this.graphHeld.register(t, bytes);
        else this.budget.refund(bytes);
      },
      read: (invoke, path, kind, part, stack) => {
        if ((kind !== "input" && kind !== "output") || (part !== "first" && part !== "all")) throw new SandboxError("VALIDATION", "bad value kind");
        const at = this.valuePath(path, stack);
        return this.forward(this.mediatorOf(invoke).read(at, kind, part, this.origin(stack), this.points.has(at)));
      },
      write: (invoke, path, kind, part, value, stack) => {
        if ((kind !== "input" && kind !== "output") || (part !== "first" && part !== "all")) throw new SandboxError("VALIDATION", "bad value kind");
        const at = this.valuePath(path, stack);
        this.mediatorOf(invoke).write(at, kind, part, this.fromDesc(value), this.origin(stack), this.points.has(at));
      },
      act: (kind, id, action, raw, stack, path) => this.act(String(kind), id, String(action), args(raw), stack, path),
      log: (text) => {
        try {
          this.options.log(String(text).slice(0, MAX_LOG_CHARS));
        } catch (e) {
          // Over the job's event limits: the job ends (MEMORY), it does not go on without its logs.
          throw this.fail(e as Error);
        }
      },
      used: (id) => {
        const w = typeof id === "number" ? this.watched.get(id) : undefined;
        if (!w) return;
        w.used = true;
        this.watched.delete(id as number);
      },
      done: (invoke, ok, value) => {
        const open = typeof invoke === "number" ? this.invokes.get(invoke) : undefined;
        if (!open) return;
        this.invokes.delete(invoke as number);
        const v = this.fromDesc(value);
        if (ok) open.resolve(v);
        else open.reject(v);
      },
    };
  }

  /** `loss.backward()`, `p.grad`, `p.requiresGrad` on a tensor of the job (TENSOR_AUTOGRAD). */
  private autograd(t: Tensor, name: keyof typeof TENSOR_AUTOGRAD, values: unknown[]): unknown {
    checkArgs(`tensor.${name}`, [], values);
    switch (name) {
      case "grad":
        return this.toDesc(t.grad);
      case "requiresGrad":
        return t.requiresGrad;
      case "backward":
        // The walk's work is guarded like any op's (time and output bytes); its gradients land on the job's leaves.
        withAllocationGuard(this.budget.guard, () => t.backward());
        return undefined;
    }
  }

  /** The mediator of invoke `tracerId` (envoy reads and writes name the invoke by its tracer). */
  private mediatorOf(tracerId: unknown): import("tsight").Mediator {
    const tracer = this.object(["tracer", tracerId]) as { mediator?: import("tsight").Mediator | null };
    const m = tracer.mediator;
    if (!m) throw new SandboxError("VALIDATION", "module values are read and set inside an invoke");
    return m;
  }

  /** An action of a host object (SANDBOX_OBJECTS), checked against the table, run by its handler. */
  private act(kind: string, id: unknown, action: string, values: unknown[], stack: unknown, path: unknown): unknown {
    const table = Object.hasOwn(SANDBOX_OBJECTS, kind) ? (SANDBOX_OBJECTS[kind as keyof typeof SANDBOX_OBJECTS] as Record<string, { args: readonly string[]; answer: string }>) : undefined;
    const spec = table && Object.hasOwn(table, action) ? table[action]! : undefined;
    if (!spec) throw new SandboxError("NOT_ALLOWED", `${kind.slice(0, 40)}.${action.slice(0, 100)} is not available in remote code`);
    checkArgs(`${kind === "tracer" ? "tr" : kind}.${action}`, spec.args as never, values);
    const at = kind === "envoy" ? this.valuePath(path, stack) : undefined;
    if (at !== undefined && (action === "skip" || action === "call")) {
      const refusal = pointRefusal(this.model.model.get(at)!, action);
      if (refusal) throw new TraceError(refusal, this.origin(stack));
    }
    const target = at !== undefined ? { tracer: this.object(["tracer", id]), path: at } : this.object([kind, id]);
    const handlers = HOST_ACTIONS[kind as keyof typeof HOST_ACTIONS] as Record<string, (host: ActionHost, target: any, args: any[], origin: Error) => unknown>;
    const result = withAllocationGuard(this.budget.guard, () => handlers[action]!(this, target, values, this.origin(stack)));
    switch (spec.answer) {
      case "promise": {
        const id = this.forward(result instanceof Promise ? result : Promise.resolve(result));
        // A session's trace or generation: a warning on the server's stderr would tell the job's author nothing, and
        // the job's code, on the isolate's thread, may await it only after the host's check for it.
        if (isWatched(result) && result.warnsUnused) result.used = true;
        else if (isWatched(result)) this.watched.set(id, result);
        return id;
      }
      case "steps":
      case "cache":
      case "barrier":
        return this.toDesc(this.hold(spec.answer, result));
      default:
        return this.toDesc(result);
    }
  }

  // #endregion
}

/** A promise tsight hands to intervention code that records whether the code used it (tsight's Watched). */
function isWatched(p: unknown): p is Promise<unknown> & { used: boolean; warnsUnused?: boolean } {
  return p instanceof Promise && typeof (p as { used?: unknown }).used === "boolean";
}

/** A helper function of the job's vars, compiled in its isolate (id in the runtime's function table). */
class IsolateFunction {
  constructor(readonly fnId: number) {}
}

/** The module tree as names for the isolate, with the client's aliases; ModuleLists become arrays. */
/**
 * A stand-in for an object of the job's that cannot leave its isolate (a Map, a promise, ...): of a class named as
 * the object's, so that the codec refuses a result holding it with its path ("value.p is a Map ...") as it does
 * such an object in process, and ops refuse it as they refuse any object.
 */
function unsendable(kind: string): object {
  const name = kind === "Promise" ? "Promise (a value not awaited: await it first)" : kind;
  const stand = class {};
  Object.defineProperty(stand, "name", { value: name });
  return new stand();
}

function treeOf(module: Module, aliases: ReadonlyMap<string, ReadonlyMap<string, string>>): TreeNode {
  return {
    path: module.path,
    type: module.typeName,
    aliases: [...(aliases.get(module.path) ?? [])],
    children: module.children().map(([name, child]) => [name, child instanceof ModuleList ? [...child].map((c) => treeOf(c, aliases)) : treeOf(child, aliases)]),
  };
}

/**
 * o[k] = v as a data property, whatever k is: a job's "__proto__" key (JSON.parse makes one) assigned plainly would
 * set the object's prototype, to a host tensor or error the job named, and the object would pass as one.
 */
function setOwn(o: Record<string, unknown>, k: string, v: unknown): void {
  if (k === "__proto__") Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
  else o[k] = v;
}
