/**
 * Tracer and invokes: the objects intervention code gets, and the run that ties invokes, mediators and the
 * interleaver to one forward pass (or one generation).
 *
 *   lm.trace(input, async (m, tr) => ...)          one invoke
 *   lm.trace(async (tr) => {                        several invokes batched into one forward pass
 *     tr.invoke(inputA, async (m, it) => ...);
 *     tr.invoke(inputB, async (m, it) => ...);
 *   })
 *
 * Invokes must be created before the trace function's first `await`: the batch is built from them.
 */
import type { Tokenizer } from "../hub/index.js";
import type { CausalLM } from "../models/index.js";
import type { Module } from "../nn/index.js";
import { Tensor } from "../tensor/index.js";
import { GradScope, type GradSource } from "./backward.js";
import { Cache, modulePaths, type CacheOptions } from "./cache.js";
import { envoyFor, type EnvoyContext } from "./envoy.js";
import { InterventionError, TraceError } from "./errors.js";
import { fromRows, toBatch, type ModelInput } from "./inputs.js";
import { EndForward, Interleaver } from "./interleaver.js";
import { Mediator } from "./mediator.js";
import { detachAll, type Rows } from "./rows.js";

/** Intervention code: gets the invoke's envoy tree and tracer, returns what the caller should get back. */
export type InterventionFn<E = any, R = unknown> = (m: E, tr: InvokeTracer) => R | Promise<R>;

/** A point where `n` invokes wait for each other (for passing values between invokes at the same module). */
export interface Barrier {
  (): Promise<void>;
  readonly parties: number;
}

/** What intervention code can do besides touching modules. Every invoke gets one. */
export class InvokeTracer {
  /** @internal */
  constructor(
    protected readonly run: TraceRun,
    protected readonly mediator: Mediator | null,
  ) {}

  /** Values passed with the trace's `vars` option (what remote code may use besides its parameters). */
  get vars(): Record<string, any> {
    return this.run.vars;
  }

  /** Ends the forward pass at the next module boundary; values computed so far are returned. */
  stop(): void {
    this.run.stop(this.mediator);
  }

  /** Records module values (after interventions) as the forward goes; this invoke's rows, or the whole batch. */
  cache(options: CacheOptions = {}): Cache {
    return this.run.addCache(options, this.mediator?.rows ?? null);
  }

  /** The run's output once the forward pass (or generation) is over: the model output, or the generated tokens. */
  get result(): Promise<any> {
    return this.run.result;
  }

  /**
   * Steps of a generation, in order: `for await (const step of tr.iter(0, 3))`, or a list of steps
   * (`tr.iter([0, 2])`). Inside, module values are that step's. After the loop, values refer to the next step.
   * A step past the generation's last ends the loop with a warning naming it.
   */
  iter(start: number | readonly number[], end?: number): AsyncIterable<number> {
    const list = typeof start === "number" ? range(start, end ?? start + 1) : [...start];
    if (list.some((k) => !Number.isInteger(k) || k < 0)) throw new TraceError(`iter: steps must be non-negative integers, got ${JSON.stringify(list)}`);
    if (list.some((k, i) => i > 0 && k <= list[i - 1]!)) throw new TraceError(`iter: steps must increase, got ${JSON.stringify(list)}`);
    return this.steps(list);
  }

  /** Every step of a generation; after the loop no module value remains (asking for one is an OutOfOrderError). */
  all(): AsyncIterable<number> {
    return this.steps(null);
  }

  /** Moves this invoke to the next step (or `n` steps on): later module values are that step's. */
  next(n = 1): void {
    this.invokeMediator("next").iteration += n;
  }

  private invokeMediator(what: string): Mediator {
    if (!this.mediator) throw new TraceError(`tr.${what}() belongs inside an invoke: use the tracer its function receives`);
    return this.mediator;
  }

  private async *steps(list: number[] | null): AsyncGenerator<number> {
    const m = this.invokeMediator(list ? "iter" : "all");
    for (let i = 0; list === null || i < list.length; i++) {
      const step = list ? list[i]! : m.iteration + (i === 0 ? 0 : 1);
      const total = await this.run.waitStep(step);
      if (total !== null) {
        const done = `the generation ended after ${total} step${total === 1 ? "" : "s"}`;
        if (list) this.run.warn(`tr.iter: step ${step} never came (${done}); the loop ended early`);
        m.pastEnd = `asked for after tr.${list ? "iter" : "all"}() ran out: ${done}`;
        return;
      }
      m.iteration = step;
      yield step;
    }
    m.iteration = list[list.length - 1]! + 1;
  }

  /**
   * Backpropagates `loss` (a single number computed in this trace, which must run with `{ grad: true }`).
   * `fn` gets the gradients as they are computed: `await g.grad(t)`, and `g.setGrad(t, x)` to change what flows
   * further back. Ask in reverse forward order. The forward pass waits while this runs.
   */
  backward(loss: Tensor, fn?: (g: GradScope) => unknown): Promise<void> {
    if (!this.run.grad) return Promise.reject(new TraceError("backward: this trace records no gradients; start it with { grad: true }"));
    const scope = new GradScope(this.run.gradSources);
    const user = Promise.resolve().then(() => fn?.(scope));
    return this.run.track(Promise.all([scope.run(loss, user), user]).then(() => undefined));
  }

  /**
   * Runs `fn` on the client with `vals` (a hybrid step). Locally that is here and now; the forward waits for it.
   */
  local<V, R>(fn: (vals: V) => R | Promise<R>, vals: V): Promise<R> {
    return this.run.track(Promise.resolve().then(() => fn(vals)));
  }
}

/** The trace's own tracer: creates invokes and barriers. `E` is the envoy tree type invokes get. */
export class Tracer<E = any> extends InvokeTracer {
  /** @internal */
  constructor(run: TraceRun) {
    super(run, null);
  }

  /** Adds an invoke: its input's rows join the batch and `fn` intervenes on them. Without input it sees the whole batch. */
  invoke<R>(input: ModelInput, fn: InterventionFn<E, R>): Promise<R>;
  invoke<R>(fn: InterventionFn<E, R>): Promise<R>;
  invoke<R>(a: ModelInput | InterventionFn<E, R>, b?: InterventionFn<E, R>): Promise<R> {
    return typeof a === "function" ? this.run.addInvoke(undefined, a as InterventionFn) : this.run.addInvoke(a, b as InterventionFn);
  }

  /** A barrier for `parties` invokes: each `await barrier()` waits until all of them have arrived. */
  barrier(parties: number): Barrier {
    return this.run.addBarrier(parties);
  }
}

interface Invoke {
  input: ModelInput | undefined;
  fn: InterventionFn;
  mediator: Mediator;
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

/** What a run needs from its model. */
export interface TraceTarget {
  model: CausalLM;
  tokenizer: Tokenizer;
  aliases: ReadonlyMap<string, ReadonlyMap<string, string>>;
  /** Persistent interventions (model.edit), applied before the invokes to the whole batch. */
  edits: readonly InterventionFn[];
}

/**
 * Drives the model once the batch and hooks are ready: one forward (trace) or a generation loop. It calls
 * `run.beginStep(k)` before each forward pass and returns the run's output (what tr.result gives).
 */
export type Driver = (model: CausalLM, ids: Tensor, mask: Tensor, run: TraceRun) => Promise<unknown>;

/** One trace: its invokes, their mediators, the interleaver, and the forward pass. */
export class TraceRun {
  private readonly invokes: Invoke[] = [];
  private readonly barriers: { parties: number; waiting: { resolve(): void; reject(e: unknown): void }[] }[] = [];
  private readonly caches: Cache[] = [];
  private interleaver: Interleaver | null = null;
  private closed = false;
  private stopped = false;
  private firstError: { error: unknown } | null = null;
  private paths: Set<string> | null = null;
  /** Generation steps: the one running, the total once known, and invokes waiting for a step. */
  private step = -1;
  private totalSteps: number | null = null;
  private readonly stepWaiters = new Map<number, ((total: number | null) => void)[]>();
  private resolveResult!: (v: unknown) => void;
  /** The run's output (see InvokeTracer.result). */
  readonly result: Promise<unknown> = new Promise((r) => (this.resolveResult = r));
  /** Warnings for the caller (locally: process warnings). */
  readonly warnings: string[] = [];

  /** Where tensors handed to invokes sit in the forward graph (grad traces). */
  readonly gradSources = new WeakMap<Tensor, GradSource>();

  constructor(
    readonly target: TraceTarget,
    readonly vars: Record<string, any> = {},
    /** Record the forward graph from the first value read, for tr.backward. */
    readonly grad = false,
    /** Called at every module call; throwing stops the run with that error. */
    readonly checkpoint?: () => void,
    /**
     * Invokes are independent (a batch of separate jobs): one's error or stop ends that invoke only, the forward
     * pass goes on for the others, and each invoke's handle carries its own outcome.
     */
    readonly isolated = false,
  ) {}

  addInvoke<R = unknown>(input: ModelInput | undefined, fn: InterventionFn): Promise<R> {
    if (this.closed) throw new TraceError("invokes must be created before the trace function's first await (the batch is built from them)");
    if (typeof fn !== "function") throw new TraceError("invoke needs an intervention function");
    let resolve!: (v: unknown) => void, reject!: (e: unknown) => void;
    const done = new Promise<R>((res, rej) => ((resolve = res as (v: unknown) => void), (reject = rej)));
    done.catch(() => undefined); // reported through the trace; awaiting the handle is optional
    this.invokes.push({ input, fn, mediator: new Mediator(this.invokes.length, null), resolve, reject });
    return done;
  }

  addBarrier(parties: number): Barrier {
    if (!Number.isInteger(parties) || parties < 1) throw new TraceError(`barrier needs a positive number of invokes, got ${parties}`);
    const b = { parties, waiting: [] as { resolve(): void; reject(e: unknown): void }[] };
    this.barriers.push(b);
    const arrive = () =>
      new Promise<void>((resolve, reject) => {
        b.waiting.push({ resolve, reject });
        if (b.waiting.length === b.parties) {
          if (this.interleaver) this.interleaver.mustDrain = true;
          for (const w of b.waiting.splice(0)) w.resolve();
        }
      });
    return Object.assign(arrive, { parties });
  }

  addCache(options: CacheOptions, rows: Rows | null): Cache {
    this.paths ??= modulePaths(this.target.model);
    const cache = new Cache(options, rows, this.paths);
    this.caches.push(cache);
    this.interleaver?.recorders.push(cache);
    return cache;
  }

  /** Ends the forward early; with isolated invokes, only `caller`'s part (its later values are not waited for). */
  stop(caller: Mediator | null = null): void {
    if (this.isolated && caller) return this.detach(caller, "it called tr.stop()");
    this.stopped = true;
    this.interleaver?.end("stop");
  }

  /** Takes an invoke out of the pass: its pending requests are dropped, later ones refused. */
  private detach(m: Mediator, why: string): void {
    m.pastEnd = `this invoke has left the forward pass (${why})`;
    for (const r of m.take(() => true)) if (r.op === "read") r.reject(new TraceError(`${r.path || "the model"} was never reached: ${m.pastEnd}`, r.origin));
  }

  warn(message: string): void {
    this.warnings.push(message);
    const proc = (globalThis as { process?: { emitWarning?: (m: string, type: string) => void } }).process;
    if (proc?.emitWarning) proc.emitWarning(message, "TsightWarning");
    else console.warn(`TsightWarning: ${message}`);
  }

  /** Resolves when step `k` starts (null), or when the run ended without it (the number of steps). */
  waitStep(k: number): Promise<number | null> {
    if (this.totalSteps !== null && k >= this.totalSteps) return Promise.resolve(this.totalSteps);
    if (k <= this.step) return Promise.resolve(null);
    return new Promise((resolve) => {
      const list = this.stepWaiters.get(k) ?? [];
      list.push(resolve);
      this.stepWaiters.set(k, list);
    });
  }

  /** Called by the driver before each forward pass: invokes waiting for this step run until they wait again. */
  async beginStep(k: number): Promise<void> {
    this.step = k;
    const waiting = this.stepWaiters.get(k);
    if (!waiting) return;
    this.stepWaiters.delete(k);
    this.interleaver!.mustDrain = true;
    for (const w of waiting) w(null);
    await this.interleaver!.settle();
    this.interleaver!.checkEnding();
  }

  /** The driver is done: `total` steps ran; `output` is what tr.result gives. */
  async endSteps(total: number, output: unknown): Promise<void> {
    this.totalSteps = total;
    this.resolveResult(output);
    const waiting = [...this.stepWaiters.values()].flat();
    this.stepWaiters.clear();
    for (const w of waiting) w(total);
    if (this.interleaver && waiting.length) {
      this.interleaver.mustDrain = true;
      await this.interleaver.settle();
    }
  }

  track<T>(work: Promise<T>): Promise<T> {
    return this.interleaver ? this.interleaver.track(work) : work;
  }

  /** No more invokes: the batch can be built. */
  close(): void {
    this.closed = true;
  }

  /**
   * Builds the batch, runs the mediators with the model's forward (through `drive`), and settles every invoke.
   * Throws the first error any intervention raised.
   */
  async execute(drive: Driver): Promise<void> {
    this.close();
    const { model, tokenizer } = this.target;
    if (this.invokes.length === 0) throw new TraceError("the trace has no invokes: give an input, or call tr.invoke(input, fn)");
    // The batch: every invoke's rows, left-padded to one length.
    const rows: number[][] = [];
    for (const inv of this.invokes) {
      if (inv.input === undefined) continue;
      const b = toBatch(inv.input, tokenizer);
      const ids = b.ids.tolist() as number[][];
      const mask = b.mask.tolist() as number[][];
      inv.mediator.rows = { start: rows.length, length: ids.length };
      ids.forEach((r, i) => rows.push(r.filter((_, j) => mask[i]![j] === 1)));
    }
    if (rows.length === 0) throw new TraceError("no invoke has an input: at least one tr.invoke(input, fn) is needed to make a batch");
    const { ids, mask } = fromRows(rows, tokenizer.padTokenId);

    const edits = this.target.edits.map((fn) => ({ fn, mediator: new Mediator(-1, null) }));
    const all = [...edits, ...this.invokes];
    const interleaver = new Interleaver(
      all.map((x) => x.mediator),
      rows.length,
      this.grad ? this.gradSources : null,
    );
    interleaver.recorders.push(...this.caches);
    interleaver.checkpoint = this.checkpoint ?? null;
    this.interleaver = interleaver;
    const context = (mediator: Mediator): EnvoyContext => ({
      mediator,
      aliases: this.target.aliases,
      callDirect: async (module: Module, args: unknown[]) => {
        interleaver.bypass++;
        try {
          return await (module.call as (...a: unknown[]) => Promise<unknown>)(...args);
        } finally {
          interleaver.bypass--;
        }
      },
    });

    if (model.tree.hooks) throw new TraceError("this model is already being traced (traces of one model run one at a time)");
    model.tree.hooks = interleaver;
    try {
      for (const x of all) {
        const m = x.mediator;
        m.onError = (e) => this.recordError(e, m);
        const settle = (ok: boolean, v: unknown) => {
          m.done = true;
          m.signal();
          if (ok) {
            m.result = detachAll(v);
            (x as Invoke).resolve?.(m.result);
          } else {
            m.fail(v);
            (x as Invoke).reject?.(v);
          }
        };
        try {
          Promise.resolve(x.fn(envoyFor(model, context(m)), new InvokeTracer(this, m))).then(
            (v) => settle(true, v),
            (e) => settle(false, e),
          );
        } catch (e) {
          settle(false, e);
        }
      }
      let output: unknown;
      try {
        // Invokes usually ask for their first value (or end) before they first wait; only the others need a
        // drain. A few microtask turns let quick ones end.
        for (let i = 0; i < 4; i++) await null;
        if (!all.every((x) => x.mediator.done || x.mediator.requests.some((r) => r.op === "read"))) await interleaver.settle();
        interleaver.checkEnding();
        output = await drive(model, ids, mask, this);
      } catch (e) {
        if (!(e instanceof EndForward)) throw e;
      }
      await this.endSteps(this.step + 1, output);
      const abandon = this.stopped || this.firstError !== null;
      await interleaver.finish(abandon);
      await this.failBarriers();
      // Invokes still running (awaiting tr.result, say) get one more chance to finish.
      if (all.some((x) => !x.mediator.done)) await interleaver.settle();
      for (const x of all) {
        if (!x.mediator.done) x.mediator.fail(new TraceError(`invoke ${x.mediator.index} never finished: it is waiting for something the trace cannot provide`));
      }
    } finally {
      model.tree.hooks = null;
      this.interleaver = null;
    }
    if (this.firstError) throw this.firstError.error;
  }

  private recordError(e: unknown, m: Mediator): void {
    if (this.isolated) return this.detach(m, "it failed");
    // After a stop (or another invoke's failure), invokes left waiting are abandoned, not failed.
    if ((this.stopped || this.firstError) && e instanceof TraceError && /was never reached/.test(e.message)) return;
    this.firstError ??= { error: e };
    this.interleaver?.end("error");
  }

  private async failBarriers(): Promise<void> {
    const stuck = this.barriers.filter((b) => b.waiting.length > 0);
    for (const b of stuck) {
      const e = new TraceError(`a barrier for ${b.parties} invokes was reached by only ${b.waiting.length}`);
      for (const w of b.waiting.splice(0)) w.reject(e);
    }
    if (stuck.length) await this.interleaver?.settle().catch(() => undefined);
  }
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}

export function isInterventionError(e: unknown): e is InterventionError {
  return e instanceof InterventionError;
}
