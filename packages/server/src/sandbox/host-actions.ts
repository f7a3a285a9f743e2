/**
 * What each action of the declared API table (tsight/protocol's SANDBOX_OBJECTS) does on the host: one handler per
 * table entry, typed so that an action added to the table without a handler (or a handler without an entry) does
 * not compile. Arguments arrive checked against the table's kinds.
 */
import { Cache, GradScope, InputError, InvokeTracer, resolveAliases, Tensor, Tracer, type CacheOptions, type InterventionFn, type Generator, type KVCache, type Mediator, type Optimizer } from "tsight";
import type { ExecutionModel as LanguageModel, SANDBOX_OBJECTS } from "tsight/protocol";
import type { JobBudget } from "./budget.js";
import { SandboxError } from "./errors.js";

/** A function of the job's code, as the host holds it: callable, and named by `fnId` in the isolate. */
type JobFunction = ((...args: unknown[]) => unknown) & { fnId: number };

/** What the handlers need from the job's bridge. */
export interface ActionHost {
  readonly model: LanguageModel;
  readonly budget: JobBudget;
  readonly checkpoint: (() => void) | null;
  readonly onToken: ((step: { tokens: number[]; step: number }) => void) | null;
  readonly traceDefaults: { stallTimeoutMs?: number; maxInputTokens?: number; onWarning?: (message: string) => void };
  readonly envoyOf: WeakMap<object, unknown>;
  /** The job's rename aliases (parent path -> alias -> name), which the host's model does not have. */
  readonly aliases: ReadonlyMap<string, ReadonlyMap<string, string>>;
  readonly varsOf: WeakMap<object, Record<string, unknown>>;
  /** Registers a host object the job may hold (charged to its memory). */
  hold(kind: string, value: unknown): unknown;
  interventionFn(fnId: number): InterventionFn;
  rootFn(fnId: number): (tr: Tracer) => Promise<unknown>;
  run(fnId: number, mode: "invoke" | "root" | "session" | "backward", self: unknown): Promise<unknown>;
  /**
   * The hybrid step whose function is `fn`, run on the client with the values it is given; checked when asked for
   * (one that cannot run ends the job).
   */
  localStep(fn: JobFunction): (vals: unknown) => Promise<unknown>;
  /** Counts a hybrid step asked for until `step` settles (past MAX_PENDING_STEPS unsettled, the job ends). */
  pendingStep<T>(step: () => Promise<T>): Promise<T>;
  fail(e: Error): Error;
}

type Handlers<K extends keyof typeof SANDBOX_OBJECTS, T> = { [A in keyof (typeof SANDBOX_OBJECTS)[K]]: (host: ActionHost, target: T, args: any[], origin: Error) => unknown };

const jobFunction = (v: unknown, what: string): JobFunction => {
  if (typeof v !== "function" || typeof (v as { fnId?: unknown }).fnId !== "number") throw new TypeError(`${what} needs a function`);
  return v as JobFunction;
};

const tracer: Handlers<"tracer", InvokeTracer> = {
  vars: (host, tr) => host.varsOf.get(tr) ?? tr.vars,
  stop: (_h, tr, [value]) => tr.stop(value),
  cache: (host, tr, [options]) => {
    // Paths named with the job's rename aliases (which the host's model does not have) as the model's own.
    const given = (options ?? {}) as CacheOptions;
    const modules = given.modules?.map((m) => (typeof m === "string" ? resolveAliases(m, host.aliases) : m));
    const cache = tr.cache(modules ? { ...given, modules } : given);
    // What a cache keeps counts toward the job's memory; past it the job ends (MEMORY).
    cache.limit = (bytes) => host.budget.charge(bytes);
    cache.onLimit = (e) => host.fail(e instanceof Error ? e : new SandboxError("MEMORY", String(e)));
    return host.hold("cache", cache);
  },
  result: (_h, tr) => tr.result,
  next: (_h, tr, [n]) => tr.next(n ?? 1),
  iter: (_h, tr, [start, end]) => tr.iter(start, end ?? undefined)[Symbol.asyncIterator](),
  all: (_h, tr) => tr.all()[Symbol.asyncIterator](),
  local: (host, tr, [fn, vals]) => {
    const run = host.localStep(jobFunction(fn, "tr.local"));
    return host.pendingStep(() => tr.local(() => run(vals), undefined));
  },
  backward: (host, tr, [loss, fn], origin) => {
    const body = fn === undefined || fn === null ? undefined : (scope: GradScope) => host.run(jobFunction(fn, "tr.backward").fnId, "backward", host.hold("grad", scope));
    return tr.backward(loss as Tensor, body, origin);
  },
  invoke: (host, tr, [a, b]) => {
    if (!(tr instanceof Tracer)) throw new TypeError("tr.invoke belongs to the trace's own tracer (the one the trace function gets)");
    const [input, fn] = typeof a === "function" && b === undefined ? [undefined, a] : [a, b];
    const body = host.interventionFn(jobFunction(fn, "tr.invoke").fnId);
    return input === undefined ? tr.invoke(body) : tr.invoke(input as never, body);
  },
  barrier: (_h, tr, [parties]) => {
    if (!(tr instanceof Tracer)) throw new TypeError("tr.barrier belongs to the trace's own tracer (the one the trace function gets)");
    return tr.barrier(parties);
  },
};

/** An envoy action names its invoke (by the invoke's tracer) and the module's path. */
interface EnvoyTarget {
  tracer: InvokeTracer;
  path: string;
}

function mediator(t: EnvoyTarget): Mediator {
  if (!t.tracer.mediator) throw new SandboxError("VALIDATION", "modules are used inside an invoke");
  return t.tracer.mediator;
}

const envoy: Handlers<"envoy", EnvoyTarget> = {
  skip: (_h, t, [value], origin) => mediator(t).skip(t.path, value, origin),
  call: (host, t, args) => {
    const root = host.envoyOf.get(t.tracer) as Record<string, any> | undefined;
    if (!root) throw new SandboxError("VALIDATION", "modules are called inside an invoke");
    checkCallRows(t.path, args, host.traceDefaults.maxInputTokens);
    const target = t.path.split(".").filter(Boolean).reduce((e: any, k: string) => e[k], root);
    return target.call(...args);
  },
  next: (_h, t, [n]) => void mediator(t).nextCall(t.path, n ?? 1),
};

/**
 * A module called by a job takes no more rows (tokens) than the job's input may have: a job-made batch of 128 x 512
 * token ids through the model, gradients on, took the server 1.6 GB past a 512 MiB job, since what ONNX Runtime and
 * the gradient graph keep during a call is not charged to the job. Rows of a tensor argument: its values for integer
 * ids, its vectors (all but the last dimension) for activations.
 */
function checkCallRows(path: string, args: readonly unknown[], maxInputTokens: number | undefined): void {
  // The first tensor argument is what the module runs on (ids, hidden states); later ones are its context (masks,
  // an MoE's chosen experts), sized by it. A meta tensor costs nothing to run.
  const a = args.find((x): x is Tensor => x instanceof Tensor);
  if (maxInputTokens === undefined || !a || a.ndim === 0 || a.isMeta) return;
  const rows = a.dtype === "float32" ? a.numel() / Math.max(1, a.shape[a.ndim - 1]!) : a.numel();
  if (rows > maxInputTokens) throw new InputError(`${path || "the model"}.call: its argument of shape [${a.shape.join(", ")}] has ${rows} rows (tokens), more than the ${maxInputTokens} a job's input may have here`);
}

const cache: Handlers<"cache", Cache> = {
  get: (_h, c, [module]) => c.get(module) ?? null,
  entryAt: (_h, c, [path]) => c.entryAt(path),
  keys: (_h, c) => c.keys(),
  toObject: (_h, c) => c.toObject(),
};

const grad: Handlers<"grad", GradScope> = {
  // The job's own location, not this file's, is where an error about the request points.
  grad: (_h, scope, [t], origin) => scope.grad(t, origin),
  setGrad: (_h, scope, [t, value], origin) => void scope.setGrad(t, value, origin),
};

/** Options a session's trace may set. */
function traceOptions(host: ActionHost, o: unknown, what: string): { vars: Record<string, unknown>; grad: boolean; checkpoint?: () => void; stallTimeoutMs?: number; maxInputTokens?: number } {
  if (o !== undefined && o !== null && (typeof o !== "object" || Array.isArray(o))) throw new TypeError(`${what}: the trace options must be an object`);
  const opts = (o ?? {}) as { vars?: unknown; grad?: unknown };
  if (opts.vars !== undefined && (typeof opts.vars !== "object" || opts.vars === null || Array.isArray(opts.vars))) throw new TypeError(`${what}: vars must be an object`);
  return { vars: (opts.vars ?? {}) as Record<string, unknown>, grad: opts.grad === true, checkpoint: host.checkpoint ?? undefined, ...host.traceDefaults };
}

function traceLike(kind: "trace" | "scan") {
  return (host: ActionHost, _s: object, [a, b, c]: unknown[]) => {
    const lm = host.model;
    const run = kind === "trace" ? lm.trace.bind(lm) : lm.scan.bind(lm);
    if (typeof a === "function") return run(host.rootFn(jobFunction(a, `s.${kind}`).fnId), traceOptions(host, b, `s.${kind}`));
    return run(a as never, host.interventionFn(jobFunction(b, `s.${kind}`).fnId), traceOptions(host, c, `s.${kind}`));
  };
}

/** A session job's `s`: its vars. */
interface SessionTarget {
  vars: Record<string, unknown>;
}

const session: Handlers<"session", SessionTarget> = {
  vars: (_h, s) => s.vars,
  trace: traceLike("trace"),
  scan: traceLike("scan"),
  generate: (host, _s, [a, settings, c, d]) => {
    const lm = host.model;
    if (typeof settings !== "object" || settings === null) throw new TypeError("s.generate needs settings: { maxNewTokens }");
    const opts = { ...(settings as { maxNewTokens: number }), onToken: host.onToken ?? undefined };
    if (typeof a === "function") return lm.generate(host.rootFn(jobFunction(a, "s.generate").fnId), opts, traceOptions(host, c, "s.generate"));
    const body = c === undefined || c === null ? async () => undefined : host.interventionFn(jobFunction(c, "s.generate").fnId);
    return lm.generate(a as never, opts, body, traceOptions(host, d, "s.generate"));
  },
};

const barrier: Handlers<"barrier", () => Promise<void>> = {
  arrive: (_h, arrive) => arrive(),
};

const steps: Handlers<"steps", AsyncIterator<number>> = {
  next: (_h, it) => it.next(),
};

const optimizer: Handlers<"optimizer", Optimizer> = {
  step: (_h, opt) => void opt.step(),
  zeroGrad: (_h, opt) => void opt.zeroGrad(),
  lr: (_h, opt) => opt.lr,
  currentLr: (_h, opt) => opt.currentLr,
  steps: (_h, opt) => opt.steps,
  setLr: (_h, opt, [lr]) => void opt.setLr(lr),
};

// Returns nothing: the job's own object stands for it (a reseeded generator is the same generator).
const generator: Handlers<"generator", Generator> = {
  manualSeed: (_h, g, [seed]) => void g.manualSeed(seed),
};

const kvcache: Handlers<"kvcache", KVCache> = {
  length: (_h, c) => c.length,
};

export const HOST_ACTIONS = { tracer, envoy, cache, grad, session, barrier, steps, optimizer, generator, kvcache } satisfies { [K in keyof typeof SANDBOX_OBJECTS]: Handlers<K, any> };

export { InvokeTracer };
