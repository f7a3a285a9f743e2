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
import { cacheIn, type Module } from "../nn/index.js";
import { Tensor } from "../tensor/index.js";
import { GradScope, type GradSource } from "./backward.js";
import { Cache, modulePaths, pointHolderPaths, pointPaths, type CacheOptions, type NavigableCache } from "./cache.js";
import { envoyFor, type EnvoyContext } from "./envoy.js";
import { atCallersLine, EarlyStop, InterventionError, LeftPassError, StallError, TraceError } from "./errors.js";
import type { ModelInput } from "./inputs.js";
import { editCode, invokeInStack, liveRun, newRunId, queuedBehind, runInInvoke } from "./context.js";
import { EndForward, Interleaver } from "./interleaver.js";
import { Mediator } from "./mediator.js";
import { detachAll, RowsError, selectRows, type Rows } from "./rows.js";
import { warn, Watched } from "./watched.js";

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
    /** @internal the invoke's mediator (null for the trace's own tracer); hosts running job code use it */
    readonly mediator: Mediator | null,
  ) {}

  /** Values passed with the trace's `vars` option (what remote code may use besides its parameters). */
  get vars(): Record<string, any> {
    return this.run.vars;
  }

  /**
   * Ends the forward pass at the next module boundary, and this intervention right here: the code after
   * `tr.stop()` does not run. The invoke resolves with `value` (`return tr.stop({ h0 })` reads naturally), the
   * trace with what was gathered before it.
   */
  stop(value?: unknown): never {
    this.run.stop(this.mediator, value);
    throw new EarlyStop();
  }

  /** Records module values (after interventions) as the forward goes; this invoke's rows, or the whole batch. */
  cache(options: CacheOptions = {}): NavigableCache {
    return this.run.addCache(options, this.mediator?.rows ?? null) as NavigableCache;
  }

  /**
   * The run's output once the forward pass (or generation) is over: the model output, or the generated tokens.
   * In an invoke, its own rows.
   */
  get result(): Promise<any> {
    const m = this.mediator;
    if (!m) return this.run.result;
    return this.run.watch(m, m.parkUntil((resume, fail) => this.run.whenResult(resume, fail)).then((out) => this.run.rowsOf(out, m, "tr.result")));
  }

  /**
   * Iterations, in order: generation steps (`for await (const step of tr.iter(0, 3))`), or the calls of a module
   * called several times in one forward pass; or a list of them (`tr.iter([0, 2])`). Inside, module values are
   * that iteration's. After the loop, values refer to the next one. An iteration that never comes is reported when
   * the run ends (a warning, and its values' requests fail).
   */
  iter(start: number | readonly number[], end?: number): AsyncIterable<number> {
    const steps = typeof start === "number" ? stepRange(start, end ?? start + 1) : checkedList(start);
    return awaitedOnly(this.steps(steps));
  }

  /** Every step of a generation; after the loop no module value remains (asking for one is an OutOfOrderError). */
  all(): AsyncIterable<number> {
    return awaitedOnly(this.steps(null));
  }

  /** Moves this invoke to the next step (or `n` steps on): later module values are that step's. */
  next(n = 1): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new TraceError(`tr.next(n): n must be a non-negative whole number, got ${String(n)}`);
    this.invokeMediator("next").moveTo(this.invokeMediator("next").iteration + n);
  }

  private invokeMediator(what: string): Mediator {
    if (!this.mediator) throw new TraceError(`tr.${what}() belongs inside an invoke: use the tracer its function receives`);
    return this.mediator;
  }

  private async *steps(list: Steps | null): AsyncGenerator<number> {
    const m = this.invokeMediator(list ? "iter" : "all");
    // In a trace its loop ends after the pass's only "step", the first call of a module called several times: an
    // invoke's code meaning every call would be silently wrong. An edit's (lm.edit, written for generations and
    // applied to traces too) goes on as that step.
    if (!list && !this.run.generation && m.index >= 0) throw new TraceError("tr.all() steps through a generation's steps; in a trace, step through a module's several calls with tr.iter(0, n) (n: its number of calls; a trace cannot tell ahead how many will come)");
    if (list) {
      // Bounded: no waiting. Each iteration's requests wait for their value; ones past the end are reported.
      let last = -1;
      for (const step of list.values()) {
        this.run.expectStep(step);
        m.moveTo((last = step));
        yield step;
      }
      if (last >= 0) m.moveTo(last + 1);
      return;
    }
    for (let step = m.iteration; ; step++) {
      if (step > m.iteration) {
        const total = await m.parkUntil<number | null>((resume) => this.run.waitStep(step, resume));
        if (total !== null) {
          m.leave(`asked for after tr.all() ran out: the generation ended after ${total} step${total === 1 ? "" : "s"}`);
          return;
        }
      }
      m.moveTo(step);
      yield step;
    }
  }

  /**
   * Backpropagates `loss` (a single number computed in this trace, which must run with `{ grad: true }`).
   * `fn` gets the gradients as they are computed: `await g.grad(t)`, and `g.setGrad(t, x)` to change what flows
   * further back. Ask in reverse forward order. The forward pass waits while this runs. (`origin`, internal: where the
   * code asked, for a caller that is not that code: the sandbox passes the job's own location.)
   */
  backward(loss: Tensor, fn?: (g: GradScope) => unknown, origin: Error = new Error()): Promise<void> {
    if (!this.run.grad) return this.run.watch(this.mediator, Promise.reject(new TraceError("backward: this trace records no gradients; start it with { grad: true }", origin)));
    const scope = new GradScope(this.run.gradSources, this.run.stallTimeoutMs);
    const user = Promise.resolve().then(() => fn?.(scope));
    return this.run.track(this.mediator, Promise.all([scope.run(loss, user, origin), user]).then(() => undefined));
  }

  /**
   * Runs `fn` on the client with `vals` (a hybrid step). Locally that is here and now; the forward waits for it.
   */
  local<V, R>(fn: (vals: V) => R | Promise<R>, vals: V): Promise<R> {
    return this.run.track(this.mediator, Promise.resolve().then(() => fn(vals)));
  }
}

/** The trace's own tracer: creates invokes and barriers. `E` is the envoy tree type invokes get, `I` their inputs. */
export class Tracer<E = any, I = ModelInput> extends InvokeTracer {
  /** @internal */
  constructor(run: TraceRun) {
    super(run, null);
  }

  /** Adds an invoke: its input's rows join the batch and `fn` intervenes on them. Without input it sees the whole batch. */
  invoke<R>(input: I, fn: InterventionFn<E, R>): Promise<R>;
  invoke<R>(fn: InterventionFn<E, R>): Promise<R>;
  invoke<R>(a: I | InterventionFn<E, R>, b?: InterventionFn<E, R>): Promise<R> {
    return typeof a === "function" ? this.run.addInvoke(undefined, a as InterventionFn) : this.run.addInvoke(a, b as InterventionFn);
  }

  /** A barrier for `parties` invokes: each `await barrier()` waits until all of them have arrived. */
  barrier(parties: number): Barrier {
    return this.run.addBarrier(parties);
  }
}

interface Invoke {
  input: unknown;
  fn: InterventionFn;
  mediator: Mediator;
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

/** What a run needs from its model. */
export interface TraceTarget {
  model: Module;
  aliases: ReadonlyMap<string, ReadonlyMap<string, string>>;
  /** Persistent interventions (model.edit), applied before the invokes to the whole batch. */
  edits: readonly InterventionFn[];
  /**
   * Makes one batch of the invokes' inputs (in order): the driver's arguments, and how many rows (along the first
   * axis) each input has. `extraTokens` and `maxInputTokens` are a language model's bounds.
   */
  batch(inputs: readonly unknown[], extraTokens: number | undefined, maxInputTokens: number): Batched;
}

/** The driver's arguments, and how many rows (along the first axis) each invoke's input has. */
export interface Batched {
  args: unknown[];
  sizes: number[];
}

/**
 * Drives the model once the batch and hooks are ready: one forward (trace) or a generation loop. It calls
 * `run.beginStep(k)` before each forward pass and returns the run's output (what tr.result gives).
 */
export type Driver = ((model: Module, args: unknown[], run: TraceRun) => Promise<unknown>) & {
  /** Tokens the driver adds to the input (a generation's new tokens), checked against the context up front. */
  extraTokens?: number;
  /** The run's iterations are generation steps (so an iteration past the last one is worth a warning). */
  generation?: boolean;
};

export interface RunOptions {
  /** Values the intervention reads as `tr.vars`. */
  vars?: Record<string, any>;
  /** Record the forward graph from the first value read, for tr.backward. */
  grad?: boolean;
  /** Called at every module call; throwing stops the run with that error. */
  checkpoint?: () => void;
  /**
   * Invokes are independent (a batch of separate jobs): one's error or stop ends that invoke only, the forward
   * pass goes on for the others, each invoke's handle carries its own outcome, and no invoke can read a value
   * that holds other invokes' rows.
   */
  isolated?: boolean;
  /** How long intervention code may keep the forward pass waiting (default 60 s); see Interleaver.settle. */
  stallTimeoutMs?: number;
  /** Most tokens (rows × positions, generated ones included) the batch may have. */
  maxInputTokens?: number;
  /**
   * Where the run's warnings go (a tr.iter step that never came): default, process warnings (at most 20 a minute).
   * A server sends them to the job's client as log lines.
   */
  onWarning?: (message: string) => void;
}

/** One trace: its invokes, their mediators, the interleaver, and the forward pass. */
export class TraceRun {
  /** Names its code's frames (see context.ts). */
  readonly id = newRunId();
  private readonly invokes: Invoke[] = [];
  private readonly barriers: { parties: number; waiting: { resolve(): void; reject(e: unknown): void }[] }[] = [];
  /** Separate jobs' handles resolved when the pass ends (their code returned with replacements still to apply). */
  private readonly endingWithPass: { end(): void; fail(e: unknown): void }[] = [];
  /** Invokes parked on tr.result, resumed when the run ends. */
  private readonly resultWaiters: { resume(v: unknown): void; fail(e: unknown): void }[] = [];
  private output: { value: unknown } | null = null;
  private readonly caches: Cache[] = [];
  private interleaver: Interleaver | null = null;
  private closed = false;
  private stopped = false;
  private firstError: { error: unknown } | null = null;
  /** Failures of promises the trace function's own tracer gave out, checked for use when the forward ends. */
  private readonly unusedFailures: { error: unknown; isUsed(): boolean }[] = [];
  private paths: Set<string> | null = null;
  private points: Set<string> | null = null;
  private pointHolders: Set<string> | null = null;
  /** Rows in the batch (known once it is built). */
  private batch = 0;
  /** Generation steps: the one running, the total once known, and invokes waiting for a step. */
  private step = -1;
  private totalSteps: number | null = null;
  /** The last iteration a bounded tr.iter named. */
  private lastExpected = -1;
  /** Invokes waiting for a step (tr.all), by step; made when one waits (a trace has none). */
  private stepWaiters: Map<number, ((total: number | null) => void)[]> | null = null;
  readonly vars: Record<string, any>;
  readonly grad: boolean;
  readonly isolated: boolean;
  readonly stallTimeoutMs: number;
  private readonly maxInputTokens: number;
  private readonly checkpoint: (() => void) | undefined;
  private readonly onWarning: ((message: string) => void) | undefined;

  /** Where tensors handed to invokes sit in the forward graph (grad traces; made for those alone). */
  private sources: WeakMap<Tensor, GradSource> | null = null;
  /** Whether the run is a generation (its iterations are steps), known once it executes. */
  generation = false;

  /** Where tensors handed to invokes sit in the forward graph (see `sources`). */
  get gradSources(): WeakMap<Tensor, GradSource> {
    return (this.sources ??= new WeakMap());
  }

  /** What the driver returned (undefined before it is done). */
  get outputValue(): unknown {
    return this.output?.value;
  }

  /** The run's output once the driver is done (see InvokeTracer.result, and `output`). */
  get result(): Promise<unknown> {
    const output = this.output;
    return output ? Promise.resolve(output.value) : new Promise((resume, fail) => this.whenResult(resume, fail));
  }

  constructor(
    readonly target: TraceTarget,
    options: RunOptions = {},
    /** Its one invoke's input as a batch, made already (see LanguageModel's inputBatch). */
    private readonly batched?: Batched,
  ) {
    this.vars = options.vars ?? {};
    this.grad = options.grad === true;
    this.isolated = options.isolated === true;
    this.checkpoint = options.checkpoint;
    this.onWarning = options.onWarning;
    this.stallTimeoutMs = options.stallTimeoutMs ?? 60_000;
    this.maxInputTokens = options.maxInputTokens ?? Infinity;
  }

  addInvoke<R = unknown>(input: unknown, fn: InterventionFn): Promise<R> {
    if (this.closed) {
      throw new TraceError(
        "tr.invoke was called after the trace function's first await: invokes are declared first, before anything is awaited, because the batch of the one forward pass is built from them; move every tr.invoke(...) above the first await",
      );
    }
    if (typeof fn !== "function") throw new TraceError("invoke needs an intervention function");
    let resolve!: (v: unknown) => void, reject!: (e: unknown) => void;
    const done = new Promise<R>((res, rej) => ((resolve = res as (v: unknown) => void), (reject = rej)));
    done.catch(() => undefined); // reported through the trace; awaiting the handle is optional
    this.invokes.push({ input, fn, mediator: new Mediator(this.invokes.length, null), resolve, reject });
    return done;
  }

  addBarrier(parties: number): Barrier {
    if (!Number.isInteger(parties) || parties < 1 || parties > 1_000_000) throw new TraceError(`barrier needs a positive whole number of invokes, got ${parties}`);
    const b = { parties, waiting: [] as { resolve(): void; reject(e: unknown): void }[] };
    this.barriers.push(b);
    const arrive = (): Promise<void> => {
      const join = (resolve: () => void, reject: (e: unknown) => void) => {
        b.waiting.push({ resolve, reject });
        if (b.waiting.length === b.parties) for (const w of b.waiting.splice(0)) w.resolve();
      };
      // Parked: the forward may go on to let the other parties arrive. Code whose invoke is not known here (a
      // sandboxed job's, or code its invoke's code did not await: see context.ts) is counted as parked instead.
      // The invoke of the trace running now (a barrier kept from an earlier trace is reached by this one's code; the
      // code of an earlier trace's stalled invoke, still running, is not this one's).
      const tree = this.target.model.tree;
      const index = invokeInStack(tree, liveRun(tree));
      const live = tree.hooks instanceof Interleaver ? tree.hooks : null;
      const mediator = index === undefined ? undefined : live?.mediators.find((m) => m.index === index);
      if (mediator) return this.watch(mediator, mediator.parkUntil<void>((resume, fail) => join(() => resume(), fail)));
      const arrived = new Promise<void>(join);
      return this.watch(null, this.interleaver ? this.interleaver.atBarrier(arrived) : arrived);
    };
    return Object.assign(arrive, { parties });
  }

  addCache(options: CacheOptions, rows: Rows | null): Cache {
    this.paths ??= modulePaths(this.target.model);
    this.points ??= pointPaths(this.target.model);
    this.pointHolders ??= pointHolderPaths(this.target.model);
    const cache = new Cache(options, rows, this.paths, this.isolated, this.target.aliases, this.points, this.pointHolders);
    this.caches.push(cache);
    this.interleaver?.recorders.push(cache);
    return cache;
  }

  /** Ends the forward early; with isolated invokes, only `caller`'s part (its later values are not waited for). */
  stop(caller: Mediator | null = null, value?: unknown): void {
    if (caller) caller.stopping = { value };
    if (this.isolated && caller) return caller.leave("it called tr.stop()");
    this.stopped = true;
    this.interleaver?.end("stop");
  }

  /** An invoke's rows of a whole-batch value (tr.result); refused when invokes are separate jobs and it cannot be split. */
  rowsOf(value: unknown, m: Mediator, what: string): unknown {
    try {
      return selectRows(value, m.rows, this.batch, this.isolated ? what : undefined);
    } catch (e) {
      throw typeof e === "string" ? new RowsError(e) : e;
    }
  }

  warn(message: string): void {
    if (this.onWarning) this.onWarning(message);
    else warn(message);
  }

  /** A bounded tr.iter named iteration `k` (checked against the steps that ran, at the end). */
  expectStep(k: number): void {
    this.lastExpected = Math.max(this.lastExpected, k);
  }

  /** Calls `resume` when step `k` starts (null), or when the run ended without it (the number of steps). */
  waitStep(k: number, resume: (total: number | null) => void): void {
    if (this.totalSteps !== null && k >= this.totalSteps) return resume(this.totalSteps);
    if (k <= this.step) return resume(null);
    this.stepWaiters ??= new Map();
    const list = this.stepWaiters.get(k) ?? [];
    list.push(resume);
    this.stepWaiters.set(k, list);
  }

  /** Calls `resume` with the run's output when it ends (at once if it has). */
  whenResult(resume: (v: unknown) => void, fail: (e: unknown) => void): void {
    if (this.output) return resume(this.output.value);
    this.resultWaiters.push({ resume, fail });
  }

  /** Called by the driver before each forward pass: invokes waiting for this step run until they wait again. */
  beginStep(k: number): Promise<void> | undefined {
    this.step = k;
    const interleaver = this.interleaver!;
    interleaver.beginStep(k);
    const waiting = this.stepWaiters?.get(k);
    if (!waiting) return;
    this.stepWaiters!.delete(k);
    for (const w of waiting) w(null);
    // No promise where nothing is to wait for (see Interleaver.settle).
    const settling = interleaver.settle();
    if (!settling) {
      interleaver.checkEnding();
      return;
    }
    return settling.then(() => interleaver.checkEnding());
  }

  /** The driver is done: `total` steps ran; `output` is what tr.result gives. */
  endSteps(total: number, output: unknown): Promise<void> | undefined {
    this.totalSteps = total;
    this.output = { value: output };
    for (const w of this.resultWaiters.splice(0)) w.resume(output);
    if (this.stepWaiters) {
      const waiting = [...this.stepWaiters.values()].flat();
      this.stepWaiters = null;
      for (const w of waiting) w(total);
    }
    return this.interleaver?.settle();
  }

  /** Work tsight runs for an invoke (a hybrid step, a backward pass): the forward waits for it. */
  track<T>(m: Mediator | null, work: Promise<T>): Promise<T> {
    return this.watch(m, m ? m.track(work) : work);
  }

  /**
   * A promise for intervention code that may forget to await it: if it fails and the code never used it, the
   * failure becomes the invoke's error (or the trace's, for the trace function's own tracer) instead of an
   * unhandled rejection.
   */
  watch<T>(m: Mediator | null, work: Promise<T>): Promise<T> {
    return Watched.of(work, (error, isUsed) => {
      if (error instanceof LeftPassError || error instanceof EarlyStop) return;
      if (m?.done) {
        if (!isUsed()) m.fail(error);
      } else (m?.unusedFailures ?? this.unusedFailures).push({ error, isUsed });
    });
  }

  /**
   * `result` (a trace function's, after the forward), failed with a StallError if it has not settled within the stall
   * timeout: code that awaits something that never comes would hold the model forever.
   */
  functionSettled<R>(result: Promise<R>): Promise<R> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new StallError(`the trace function neither returned nor failed for ${this.stallTimeoutMs} ms after the forward pass (it awaits something that never comes?); the limit is the trace option stallTimeoutMs`)), this.stallTimeoutMs);
    });
    return Promise.race([result, late]).finally(() => clearTimeout(timer));
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
    this.generation = drive.generation === true;
    const { model } = this.target;
    if (this.invokes.length === 0) {
      throw new TraceError("the trace has no invokes: give an input (trace(input, fn)), or call tr.invoke(input, fn) in the trace function before its first await (invokes are declared first; the batch is built from them)");
    }
    const withInput = this.invokes.filter((inv) => inv.input !== undefined);
    if (withInput.length === 0) throw new TraceError("no invoke has an input: at least one tr.invoke(input, fn) is needed to make a batch");
    const { args, sizes } = this.batched ?? this.target.batch(
      withInput.map((inv) => inv.input),
      drive.extraTokens,
      this.maxInputTokens,
    );
    let start = 0;
    withInput.forEach((inv, i) => {
      inv.mediator.rows = { start, length: sizes[i]! };
      start += sizes[i]!;
    });
    this.batch = start;

    const edits = this.target.edits.map((fn, i) => ({ fn, mediator: new Mediator(editCode(i), null) }));
    const all = [...edits, ...this.invokes];
    const interleaver = new Interleaver(
      all.map((x) => x.mediator),
      this.batch,
      this.grad ? this.gradSources : null,
      this.isolated,
      givenBy(model),
    );
    if (drive.generation) interleaver.startSteps();
    interleaver.recorders.push(...this.caches);
    interleaver.checkpoint = this.checkpoint ?? null;
    interleaver.stallTimeoutMs = this.stallTimeoutMs;
    interleaver.stallHint = () => {
      const n = queuedBehind(this.target.model.tree);
      return n === 0 ? "" : `. ${n === 1 ? "A trace" : `${n} traces`} of this model started while this one ran ${n === 1 ? "waits" : "wait"} for it to end: if its code started ${n === 1 ? "it" : "them"} (in a .then callback or a timer, where tsight cannot tell whose code runs), that is what it waited for; start ${n === 1 ? "it" : "them"} after this trace`;
    };
    if (this.isolated) {
      // A job that keeps a shared pass waiting leaves it (the server runs it alone); the others go on.
      interleaver.onStall = (stalled, ms) => {
        for (const m of stalled) m.fail(new StallError(`invoke ${m.index} kept a forward pass it shares with other jobs waiting ${Math.round(ms)} ms in all, so it left that pass`));
      };
    }
    this.interleaver = interleaver;
    const context = (mediator: Mediator): EnvoyContext => ({
      mediator,
      aliases: this.target.aliases,
      callDirect: (module: Module, args: unknown[], origin: Error) =>
        this.watch(
          mediator,
          (async () => {
            interleaver.bypass++;
            try {
              return await sideCall(module, args, mediator.rows);
            } catch (e) {
              throw atCallersLine(e, origin);
            } finally {
              interleaver.bypass--;
            }
          })(),
        ),
    });

    if (model.tree.hooks) throw new TraceError("this model is already being traced (traces of one model run one at a time)");
    model.tree.hooks = interleaver;
    try {
      for (const x of all) this.start(x, envoyFor(model, context(x.mediator)));
      let output: unknown;
      // Each wait below is awaited only when there is one (see Interleaver.settle).
      let waited: Promise<void> | undefined;
      try {
        if ((waited = interleaver.settle())) await waited;
        // A generation's driver meets an ending at its first step's first call, which ends it with the tokens of
        // the steps before: none, for a stop made already (see GenerateOptions.endsEarly).
        if (!drive.generation) interleaver.checkEnding();
        output = await drive(model, args, this);
      } catch (e) {
        if (!(e instanceof EndForward)) throw interleaver.explain(e);
      }
      if ((waited = this.endSteps(this.step + 1, output))) await waited;
      if (drive.generation && this.lastExpected >= this.totalSteps!) {
        const missed = this.lastExpected === this.totalSteps! ? `step ${this.lastExpected}` : `steps ${this.totalSteps} to ${this.lastExpected}`;
        this.warn(`tr.iter: ${missed} never came (the generation ended after ${this.totalSteps} step${this.totalSteps === 1 ? "" : "s"}); values asked for in ${this.lastExpected === this.totalSteps! ? "it" : "them"} are not provided`);
      }
      if ((waited = interleaver.finish(this.stopped || this.firstError !== null, drive.generation ? this.totalSteps! : null))) await waited;
      if ((waited = this.failBarriers())) await waited;
      // Code still running (its last steps after the forward) ends, or waits for something that will not come.
      if ((waited = interleaver.settle(true))) await waited;
      // Their replacements applied or refused (a refusal has rejected the handle already, which this leaves as it is).
      for (const { end } of this.endingWithPass.splice(0)) end();
      const ended = this.stopped ? "tr.stop() ended the trace" : this.firstError ? "another invoke failed" : null;
      for (const x of all) {
        if (x.mediator.done) continue;
        // Its code stalled (and may never end): its handle gets its StallError.
        if (x.mediator.stalled && x.mediator.error !== undefined) {
          (x as Partial<Invoke>).reject?.(x.mediator.error);
          continue;
        }
        // Its code waits for a value that will never come; it is not resumed. Its handle settles, so code awaiting it goes on.
        const e = ended
          ? new LeftPassError(`invoke ${x.mediator.index} was still waiting when ${ended}; the rest of its code does not run`)
          : new TraceError(`invoke ${x.mediator.index} never finished: after the forward pass its code still waits for something tsight does not provide`);
        x.mediator.fail(e);
        (x as Partial<Invoke>).reject?.(e);
      }
      const unused = this.unusedFailures.find((f) => !f.isUsed());
      if (unused) this.firstError ??= { error: unused.error };
    } catch (e) {
      // The forward failed: those jobs' replacements were never applied.
      for (const { fail } of this.endingWithPass.splice(0)) fail(e);
      throw e;
    } finally {
      model.tree.hooks = null;
      this.interleaver = null;
    }
    if (this.firstError) throw this.firstError.error;
  }

  /** Starts an invoke's code in its own context; its end settles the invoke's handle. */
  private start(x: { fn: InterventionFn; mediator: Mediator; resolve?: (v: unknown) => void; reject?: (e: unknown) => void }, envoy: unknown): void {
    const m = x.mediator;
    m.onError = (e) => {
      this.recordError(e, m);
      // A separate job ends with its first error at once (what its code does after that is not waited for).
      if (this.isolated) x.reject?.(e);
    };
    const settle = (ok: boolean, v: unknown) => {
      m.done = true;
      // tr.stop() leaves the code by throwing EarlyStop: a normal end, with nothing returned.
      if (!ok && m.stopping && (v instanceof EarlyStop || (v as Error | null)?.name === "EarlyStop")) [ok, v] = [true, m.stopping.value];
      // A promise tsight gave the code failed and the code never awaited it: that failure is the invoke's.
      const unused = ok ? m.unusedFailures.find((f) => !f.isUsed()) : undefined;
      if (unused) [ok, v] = [false, unused.error];
      if (ok) {
        m.result = detachAll(v);
        // A separate job whose code returned with replacements still to apply ends with them: one that does not fit
        // is its error, as when it runs alone (where the trace's error is thrown after the forward).
        if (this.isolated && m.requests.some((r) => r.op !== "read")) this.endingWithPass.push({ end: () => x.resolve?.(m.result), fail: (e) => x.reject?.(e) });
        else x.resolve?.(m.result);
      } else {
        m.fail(v);
        x.reject?.(v);
      }
      m.signal();
    };
    runInInvoke(this.target.model.tree, this.id, m.index, () => x.fn(envoy, new InvokeTracer(this, m))).then(
      (v) => settle(true, v),
      (e) => settle(false, e),
    );
  }

  private recordError(e: unknown, m: Mediator): void {
    if (this.isolated) return m.leave(e instanceof StallError ? "it kept the shared forward pass waiting" : "it failed");
    // After a stop (or another invoke's failure), invokes left waiting are abandoned, not failed.
    if ((this.stopped || this.firstError) && (e instanceof LeftPassError || m.abandoned)) return;
    this.firstError ??= { error: e };
    this.interleaver?.end("error");
  }

  private failBarriers(): Promise<void> | undefined {
    if (this.barriers.length === 0) return;
    const stuck = this.barriers.filter((b) => b.waiting.length > 0);
    for (const b of stuck) {
      const e = new TraceError(`a barrier for ${b.parties} invokes was reached by only ${b.waiting.length}`);
      for (const w of b.waiting.splice(0)) w.reject(e);
    }
    return stuck.length ? this.interleaver?.settle() : undefined;
  }
}

/** Per module tree: the values its passes have given (see Interleaver.gaveBefore). */
const given = new WeakMap<object, Set<string>>();

function givenBy(model: Module): Set<string> {
  let set = given.get(model.tree);
  if (!set) given.set(model.tree, (set = new Set()));
  return set;
}

/** Said by tr.iter and tr.all iterated without `await` (the sandbox's runtime says the same). */
export const ITERATED_WITHOUT_AWAIT = "tr.iter and tr.all are async: loop with `for await (const step of tr.iter(...))`; a plain for...of (or a spread) cannot wait for the generation's steps";

/** Said by the methods themselves iterated (`for await (const s of tr.iter)`, as nnsight's `tracer.iter[:]` reads). */
export const ITER_NOT_CALLED = "tr.iter and tr.all are methods: loop over tr.iter(start, end), tr.iter([steps]) or tr.all() (every step)";

// JavaScript's own word for it is "tr.iter is not async iterable".
const refuseUncalled = (): never => {
  throw new TraceError(ITER_NOT_CALLED);
};
for (const method of [InvokeTracer.prototype.iter, InvokeTracer.prototype.all]) Object.assign(method, { [Symbol.asyncIterator]: refuseUncalled, [Symbol.iterator]: refuseUncalled });

/**
 * The steps, iterated with `for await`; a plain `for...of` or a spread of them is a TraceError saying so (JavaScript's
 * own: "is not iterable"). The types leave the sync iterator out, so TypeScript refuses that loop before it runs.
 */
function awaitedOnly(steps: AsyncGenerator<number>): AsyncIterable<number> {
  return Object.assign(steps, {
    [Symbol.iterator](): never {
      throw new TraceError(ITERATED_WITHOUT_AWAIT);
    },
  });
}

/** Iterations `from` .. `to` - 1, lazily (a range is never turned into an array, however long). */
interface Steps {
  values(): Iterable<number>;
}

const MAX_STEP = Number.MAX_SAFE_INTEGER;

function stepRange(from: number, to: number): Steps {
  for (const [name, v] of [["start", from], ["end", to]] as const) {
    if (!Number.isSafeInteger(v) || v < 0 || v > MAX_STEP) throw new TraceError(`iter: ${name} must be a non-negative whole number, got ${String(v)}`);
  }
  if (to < from) throw new TraceError(`iter: end (${to}) is before start (${from}); steps go forward (tr.iter(start, end) runs start, ..., end - 1)`);
  return {
    *values() {
      for (let k = from; k < to; k++) yield k;
    },
  };
}

function checkedList(list: readonly number[]): Steps {
  if (!Array.isArray(list)) throw new TraceError("iter: give a start (and end), or a list of steps");
  if (list.some((k) => !Number.isSafeInteger(k) || k < 0)) throw new TraceError(`iter: steps must be non-negative whole numbers, got ${JSON.stringify(list.slice(0, 20))}`);
  if (list.some((k, i) => i > 0 && k <= list[i - 1]!)) throw new TraceError(`iter: steps must increase, got ${JSON.stringify(list.slice(0, 20))}`);
  const copy = [...list];
  return { values: () => copy };
}

export function isInterventionError(e: unknown): e is InterventionError {
  return e instanceof InterventionError;
}

/**
 * A module called from intervention code (`m.x.call(...)`). A KV cache among its arguments (a decoder layer's, during
 * generation) is read as the model's own call would read it and left as it was (see KVCache.aside): the model's own
 * call then writes its keys and values once. An invoke of a batch, whose arguments are its rows, calls it with a copy
 * of its rows of the cache.
 */
function sideCall(module: Module, args: unknown[], rows: Rows | null): Promise<unknown> {
  const call = (a: unknown[]) => (module.call as (...x: unknown[]) => Promise<unknown>)(...a);
  const cache = cacheIn(args);
  if (!cache) return call(args);
  const batch = cache.batchSize;
  if (!rows || batch === null || rows.length === batch) return cache.aside(() => call(args));
  const own = cache.rows(rows.start, rows.length);
  const swap = (v: unknown): unknown => (v === cache ? own : v);
  // The cache is an argument, or a value of one (an attention context, copied with the invoke's cache in it).
  const isContext = (a: unknown): a is object => a !== null && typeof a === "object" && Object.getPrototypeOf(a) === Object.prototype;
  return call(args.map((a) => (isContext(a) ? Object.fromEntries(Object.entries(a).map(([k, v]) => [k, swap(v)])) : swap(a))));
}
