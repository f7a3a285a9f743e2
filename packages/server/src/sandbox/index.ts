/**
 * SandboxExecutor: runs a job's code in a fresh isolated-vm isolate (no file system, network, process, timers or
 * modules), with a memory limit for the isolate, a budget for what its code makes the host allocate, and a
 * deadline. One isolate per job: nothing of one job is reachable from another's, also when several jobs share one
 * batched forward pass (`executeBatch`).
 */
import { isMainThread } from "node:worker_threads";
import ivm from "isolated-vm";
import { StallError, treatAsLibraryCode, type InterventionFn } from "tsight";
import { localStepSites, packValue, pastDeadline, toBase64, type DecodedJob, type ExecutionContext, type ExecutionModel as LanguageModel, type JobExecutor } from "tsight/protocol";
import { batchable } from "./batchable.js";
import { Bridge } from "./bridge.js";
import { collectGarbage, exposeGc } from "./gc.js";
import { SandboxError } from "./errors.js";

export { SandboxError } from "./errors.js";

// This package's own frames are not a job's line (an error made here, as the host runs a job's request, would show
// the server's file path to the job otherwise).
treatAsLibraryCode(decodeURIComponent(new URL("../..", import.meta.url).pathname));

export interface SandboxOptions {
  /** Heap limit of the isolate in MB (the user's own JavaScript objects; tensors live on the host). */
  isolateMemoryMB?: number;
}

/** Options of one batched pass. */
export interface BatchOptions {
  /**
   * How long one job's code may keep the shared pass waiting in one go (ms); a job that takes longer leaves the
   * pass and runs alone afterwards (default 1000).
   */
  stallMs?: number;
}

/** Largest values a hybrid step may send to the client (bytes of their envelope). */
export const MAX_LOCAL_BYTES = 16 * 2 ** 20;

/** A job set up in its own isolate, ready to run. */
interface Prepared {
  job: DecodedJob;
  ctx: ExecutionContext;
  bridge: Bridge;
  fnId: number;
  /** The model with the job's edits. */
  model: LanguageModel;
  /** Why the job must stop now (cancel, deadline, isolate failure), or null. */
  stopReason(): Error | null;
  /** The CPU time its code has taken so far (ms; Infinity once its isolate is gone). */
  cpuMs(): number;
  /** Disposes of the isolate; resolves once isolated-vm's thread has left it, on a fresh turn (see `quiet`). */
  close(): Promise<void>;
}

/** Isolates of the jobs running in this process (or thread). */
const live = new Set<ivm.Isolate>();
/** Isolates made for jobs to come (see SandboxExecutor.spare): disposed of at exit too, with no wait (none runs code). */
const spares = new Set<ivm.Isolate>();
let exitWatched = false;

/**
 * Counts `isolate` as live until it is disposed of. Exiting, the process stops the code of the jobs still running
 * (a script that fails while a job runs): isolated-vm joins its threads at exit, and one running a job's code kept
 * the exit waiting for ever. A disposed isolate's thread leaves its code after `dispose` returns, and exiting
 * meanwhile crashed the process (SIGSEGV, exit code 139, in 5 of 60 such exits with two busy loops beside it),
 * so the exit then waits EXIT_UNWIND_MS for it (none of 80 crashed with 100 ms); isolated-vm tells no moment to
 * wait for. Then garbage is collected (see collectForExit).
 */
function watchExit(isolate: ivm.Isolate): void {
  live.add(isolate);
  if (exitWatched) return;
  exitWatched = true;
  process.on("exit", () => {
    let stopped = 0;
    for (const running of live) if (!running.isDisposed) running.dispose(), stopped++;
    for (const spare of spares) if (!spare.isDisposed) spare.dispose();
    if (stopped) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, EXIT_UNWIND_MS);
    collectForExit();
  });
}

/**
 * Two full collections as the process (or thread) exits, once the isolates are disposed of: isolated-vm's cleanup
 * hook, run as Node tears the environment down, destroys its environment for this thread, and a collection after
 * it (a GC task V8 had posted, run while Node drains its tasks) would call isolated-vm's weak callbacks for the
 * handles that died since the last collection; without an environment they abort the process
 * ("IsolateEnvironment::GetCurrent(): Assertion `environment != nullptr' failed": a test process that had run
 * `remote: "local"` jobs died so in one CI run, not reproduced here). Collected here, no such handle is left, and
 * no collection is under way: in every process and thread that ran a job, a server's model threads and a script's
 * main thread alike.
 */
function collectForExit(): void {
  collectGarbage();
  collectGarbage();
}

/** How long an exit waits for the threads of the isolates it stopped to leave them (see watchExit). */
const EXIT_UNWIND_MS = 200;

/** Longest wait for a job's isolate to go idle before the host's code goes on regardless. */
const QUIET_WAIT_MS = 2000;

/**
 * Resolves once no call runs in the job's isolate (see Bridge.idle), on a fresh turn of the event loop: when code
 * outside the sandbox may run (the caller's, after the job; a hybrid step's), free to end the process. A job's
 * value and a step's request arrive in callbacks from the isolate, and isolated-vm runs the promise reactions they
 * set off before the isolate's thread, waiting for the callback, goes on. Exiting there (a script's `throw` or
 * `process.exit` after the job) hung the process: at exit isolated-vm joins its threads, one waiting for this one.
 */
async function quiet(bridge: Bridge): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([bridge.idle(), new Promise<void>((resolve) => (timer = setTimeout(resolve, QUIET_WAIT_MS)))]);
  clearTimeout(timer);
  await new Promise<void>((resolve) => setImmediate(resolve));
}

export { batchable } from "./batchable.js";

/** Each job's hybrid steps numbered across its runs (a run left for a shared pass, and the run alone after it). */
const localCalls = new WeakMap<ExecutionContext, number>();

export class SandboxExecutor implements JobExecutor {
  /**
   * An isolate and context made ahead for the next job, in which no code has run: making them took 2.6 ms of a
   * small remote trace's 21 ms round trip here, and is done once a job has ended instead (see takeIsolate). Every
   * job still gets an isolate of its own.
   */
  private spare: Fresh | null = null;
  private refilling = false;

  constructor(private readonly options: SandboxOptions = {}) {}

  /** A fresh isolate for `ctx`'s job: the spare when there is one. */
  private takeIsolate(ctx: ExecutionContext): Fresh {
    const fresh = this.spare ?? this.freshIsolate();
    this.spare = null;
    spares.delete(fresh.isolate);
    fresh.owner.ctx = ctx;
    // Counted as running from now: a spare, which runs nothing, holds no exit up (see watchExit).
    watchExit(fresh.isolate);
    return fresh;
  }

  /**
   * Makes the next job's isolate on a later turn (after the ended job's result is on its way), unless one is made.
   * A server's model threads only: a client running jobs itself (remote: "local") runs one script's few.
   */
  private refill(): void {
    if (isMainThread || this.spare || this.refilling) return;
    this.refilling = true;
    setImmediate(() => {
      this.refilling = false;
      try {
        this.spare ??= this.freshIsolate();
      } catch {
        // Out of memory for one, say: the next job makes its own (and fails alone if it cannot either).
      }
    }).unref();
  }

  /** A new isolate and context, not yet any job's (see takeIsolate): a spare until a job takes it. */
  private freshIsolate(): Fresh {
    const owner: Fresh["owner"] = { ctx: null };
    const isolate = new ivm.Isolate({ memoryLimit: this.options.isolateMemoryMB ?? 64, ...catastrophe(owner) });
    try {
      const context = isolate.createContextSync();
      spares.add(isolate);
      return { isolate, context, owner };
    } catch (e) {
      isolate.dispose();
      throw e;
    }
  }

  /**
   * Tells `listener` when a job's isolate fails beyond recovery on this thread: the thread is lost (see catastrophe).
   * `ctx` is the context of the job whose isolate failed (a shared pass runs several jobs' isolates on the thread).
   */
  onCatastrophe(listener: (message: string, ctx: ExecutionContext) => void): void {
    catastropheListeners.add(listener);
  }

  async execute(job: DecodedJob, model: LanguageModel, ctx: ExecutionContext): Promise<unknown> {
    const p = this.prepare(job, model, ctx);
    try {
      // Cancel and deadline, checked at every module call: timers and abort events cannot fire while a forward
      // pass keeps the thread busy.
      const checkpoint = () => {
        const stop = p.stopReason();
        if (stop) throw stop;
      };
      p.bridge.checkpoint = checkpoint;
      // A run's warnings are the job's: its client prints them with its log lines (not the server's stderr).
      const onWarning = (message: string) => ctx.emit({ type: "log", text: `TsightWarning: ${message}` });
      p.bridge.traceDefaults = { maxInputTokens: ctx.maxInputTokens, onWarning };
      const lm = p.model;
      const options = { vars: p.job.vars, grad: job.grad, checkpoint, maxInputTokens: ctx.maxInputTokens, onWarning };
      const invoke = p.bridge.interventionFn(p.fnId);
      const root = p.bridge.rootFn(p.fnId);
      let value: unknown;
      switch (job.kind) {
        case "trace":
          value = job.form === "invoke" ? await lm.trace(job.input!, invoke, options) : await lm.trace(root, options);
          break;
        case "scan":
          value = job.form === "invoke" ? await lm.scan(job.input!, invoke, options) : await lm.scan(root, options);
          break;
        case "generate": {
          const settings = { ...job.generate!, onToken: ({ tokens, step }: { tokens: number[]; step: number }) => ctx.emit({ type: "stream", step, tokens }) };
          const out = job.form === "invoke" ? await lm.generate(job.input!, settings, invoke as InterventionFn, options) : await lm.generate(root, settings, options);
          value = { sequences: out.sequences, generated: out.generated, text: out.text, value: out.value };
          break;
        }
        case "session":
          value = await p.bridge.run(p.fnId, "session", p.bridge.hold("session", { vars: p.job.vars }));
          break;
      }
      if (p.bridge.fatal) throw p.bridge.fatal;
      return value;
    } catch (e) {
      throw p.bridge.fatal ?? e;
    } finally {
      await p.close();
    }
  }

  /**
   * Runs several jobs (each `batchable`) as invokes of shared forward passes: jobs whose inputs have the same
   * number of tokens (so no row is padded and every job sees exactly the shapes it sees alone) and the same
   * gradient setting share one pass. Each job runs in its own isolate, sees only its rows, and ends with its own
   * value or error: one job's failure, stop, cancel or timeout leaves the others running. A job whose code keeps
   * the pass waiting longer than `stallMs` (computing, or waiting for a hybrid step) leaves the pass, and runs
   * alone once the pass is over, from the start, with the time it has left.
   */
  executeBatch(items: readonly { job: DecodedJob; ctx: ExecutionContext }[], model: LanguageModel, options: BatchOptions = {}): Promise<PromiseSettledResult<unknown>>[] {
    // Each job's outcome is told as soon as it is known: a job that runs alone after the pass holds up nobody.
    const outcomes = items.map(() => {
      let tell!: (r: PromiseSettledResult<unknown>) => void;
      return { promise: new Promise<PromiseSettledResult<unknown>>((r) => (tell = r)), tell: (r: PromiseSettledResult<unknown>) => tell(r) };
    });
    void this.runBatch(items, model, options.stallMs ?? 1000, (index, r) => outcomes[index]!.tell(r));
    return outcomes.map((o) => o.promise);
  }

  private async runBatch(items: readonly { job: DecodedJob; ctx: ExecutionContext }[], model: LanguageModel, stallMs: number, tell: (index: number, r: PromiseSettledResult<unknown>) => void): Promise<void> {
    const results: PromiseSettledResult<unknown>[] = new Array(items.length);
    // A job's outcome in its pass: a value is told at once, a failure once the pass is over (see sharedFailures). The
    // first outcome is the job's: an invoke's handle that settles after its pass failed (its isolate closed meanwhile)
    // tells nothing new.
    const settle = (index: number, r: PromiseSettledResult<unknown>) => {
      if (results[index]) return;
      results[index] = r;
      if (r.status === "fulfilled") tell(index, r);
    };
    const groups = new Map<string, { index: number; p: Prepared }[]>();
    const alone: number[] = [];
    // What each job's code took in its pass: those that took least run again first (see below).
    const cpuInPass = new Map<number, number>();
    items.forEach(({ job, ctx }, index) => {
      try {
        if (!batchable(job)) throw new SandboxError("VALIDATION", "this job cannot share a forward pass with others");
        // Its own input, checked alone (in the pass, one job's bad input would fail every job's); jobs whose rows have
        // equal token counts and run at one width share a pass as each runs alone (a left-padded job keeps its
        // padding alone, and beside another at its width; beside a job stripped of its padding it would lose it).
        const { counts, width } = model.checkInput(job.input!, ctx.maxInputTokens);
        const p = this.prepare(job, model, ctx, stallMs);
        const key = `${job.grad}|${counts.join(",")}|${width}`;
        groups.set(key, [...(groups.get(key) ?? []), { index, p }]);
      } catch (e) {
        results[index] = { status: "rejected", reason: e };
        // Making its functions (a helper that loops while it is made) kept the pass waiting: it runs alone later.
        if (e instanceof StallError) alone.push(index);
        else tell(index, results[index]);
      }
    });
    for (const group of groups.values()) {
      const settled: Promise<void>[] = [];
      // Each job's cancel and deadline end only its own invoke.
      const checkpoint = () => {
        for (const { p } of group) {
          const stop = p.stopReason();
          if (stop) p.bridge.abort(stop);
        }
      };
      try {
        await model.trace(
          async (tr) => {
            for (const { index, p } of group) {
              const handle = tr.invoke(p.job.input!, p.bridge.interventionFn(p.fnId, p.job.vars));
              settled.push(
                handle.then(
                  (value) => settle(index, p.bridge.fatal ? { status: "rejected", reason: p.bridge.fatal } : { status: "fulfilled", value }),
                  (e) => settle(index, { status: "rejected", reason: p.bridge.fatal ?? e }),
                ),
              );
            }
          },
          { grad: group[0]!.p.job.grad, checkpoint, isolateInvokes: true, stallTimeoutMs: stallMs, maxInputTokens: group[0]!.p.ctx.maxInputTokens === undefined ? undefined : group[0]!.p.ctx.maxInputTokens * group.length },
        );
        await Promise.all(settled);
      } catch (e) {
        for (const { index } of group) if (!results[index]) settle(index, { status: "rejected", reason: e });
      } finally {
        for (const { index, p } of group) cpuInPass.set(index, p.cpuMs());
        await Promise.all(group.map(({ p }) => p.close()));
      }
      const shared = sharedFailures(group.map(({ index }) => results[index]));
      group.forEach(({ index }, i) => {
        const r = results[index];
        if (r?.status !== "rejected") return;
        if (r.reason instanceof StallError || shared.has(i)) alone.push(index);
        else tell(index, r);
      });
    }
    // Jobs that left a shared pass, or whose pass failed as a whole, run alone now, from the start (in fresh isolates),
    // those whose code took least in the pass first: jobs that spun until just short of the stall limit and then
    // failed the pass would otherwise run again ahead of the ones they held up (a victim waited 7.8 s behind three).
    alone.sort((a, b) => (cpuInPass.get(a) ?? Infinity) - (cpuInPass.get(b) ?? Infinity));
    for (const index of alone) {
      const { job, ctx } = items[index]!;
      try {
        const reason = (results[index] as PromiseRejectedResult).reason as Error;
        const why = reason instanceof StallError ? `this job left a forward pass shared with other jobs (${reason.message})` : `a forward pass shared with other jobs failed (${String(reason.message).slice(0, 300)}), which a job of the pass may have caused`;
        ctx.emit({ type: "log", text: `[tsight] ${why}; it runs again, alone` });
        tell(index, { status: "fulfilled", value: await this.execute(job, model, ctx) });
      } catch (e) {
        tell(index, { status: "rejected", reason: e });
      }
    }
  }

  /**
   * A fresh isolate with the runtime, the job's code compiled, and its edits applied. In a shared pass
   * (`sliceMs` given) making the job's functions is a turn like any other: one that spins leaves the pass.
   */
  private prepare(job: DecodedJob, model: LanguageModel, ctx: ExecutionContext, sliceMs?: number): Prepared {
    exposeGc();
    const { isolate, context } = this.takeIsolate(ctx);
    const runLocal = ctx.awaitLocal
      ? async (step: number, vals: unknown) => {
          const bytes = packValue(vals);
          if (bytes.byteLength > MAX_LOCAL_BYTES) throw new SandboxError("MEMORY", `a hybrid step may send the client at most ${MAX_LOCAL_BYTES} bytes; these values take ${bytes.byteLength}`);
          // Numbered for the job, not the run: the client answers each call once, and a run again from the start
          // would ask "c1" again, which it had answered already, and wait for its answer forever.
          const n = (localCalls.get(ctx) ?? 0) + 1;
          localCalls.set(ctx, n);
          const call = `c${n}`;
          try {
            ctx.emit({ type: "local", call, step, vals: toBase64(bytes) });
          } catch (e) {
            // Over the job's event limits (or past its deadline): the job ends here, as a log line over them ends
            // it. Thrown only into tr.local's promise, code that never awaits it went on calling (20,000 calls took
            // the server to 4 GB, past which it died).
            throw bridge.fail(e as Error);
          }
          // The client may be this process (remote: "local"), running the step's code here, where it may end the process.
          await quiet(bridge);
          return ctx.awaitLocal!(call);
        }
      : null;
    const bridge = new Bridge(isolate, context, model, {
      limits: { deadline: ctx.deadline, timeLimitMs: ctx.timeLimitMs, memoryLimitBytes: ctx.memoryLimitBytes },
      log: (text) => ctx.emit({ type: "log", text }),
      runLocal,
      localSites: [job.source, ...job.edits].flatMap(localStepSites),
      rename: job.rename,
    });
    if (sliceMs !== undefined) bridge.budget.sliceMs = sliceMs;
    // Cancel and deadline stop the job's code at once, wherever it is.
    const onAbort = () => bridge.stop(new SandboxError("CANCELLED", "the job was cancelled"));
    ctx.signal.addEventListener("abort", onAbort);
    const timer = setTimeout(() => bridge.stop(new SandboxError("TIMEOUT", pastDeadline(ctx.timeLimitMs))), Math.max(0, ctx.deadline - Date.now()));
    const close = (): Promise<void> => {
      clearTimeout(timer);
      ctx.signal.removeEventListener("abort", onAbort);
      if (!isolate.isDisposed) isolate.dispose();
      live.delete(isolate);
      this.refill();
      ctx.onFinish?.({ peakBytes: bridge.budget.peak });
      return quiet(bridge);
    };
    try {
      if (ctx.signal.aborted) throw new SandboxError("CANCELLED", "the job was cancelled");
      bridge.install();
      const fnId = bridge.compile(job.source, "intervention.js");
      // Helper functions in vars become functions of this isolate (their sources are compiled here, never run on the host).
      job = { ...job, vars: bridge.compileHelpers(job.vars) };
      let lm = model;
      job.edits.forEach((source, i) => (lm = lm.edit(bridge.interventionFn(bridge.compile(source, `edit${i}.js`)))));
      bridge.model = lm;
      bridge.onToken = ({ tokens, step }) => ctx.emit({ type: "stream", step, tokens });
      const stopReason = (): Error | null => {
        if (ctx.signal.aborted || ctx.stopRequested?.()) return bridge.fatal ?? new SandboxError("CANCELLED", "the job was cancelled");
        if (Date.now() > ctx.deadline) return new SandboxError("TIMEOUT", pastDeadline(ctx.timeLimitMs));
        return bridge.fatal;
      };
      const cpuMs = () => (isolate.isDisposed ? Infinity : Number(isolate.cpuTime) / 1e6);
      return { job, ctx, bridge, fnId, model: lm, stopReason, cpuMs, close };
    } catch (e) {
      // Nothing of the job runs asynchronously yet: there is nothing to wait for.
      void close();
      throw bridge.fatal ?? e;
    }
  }
}

/** An isolate with its context, and the job it is for (set when a job takes it: see SandboxExecutor.takeIsolate). */
interface Fresh {
  isolate: ivm.Isolate;
  context: ivm.Context;
  owner: { ctx: ExecutionContext | null };
}

/**
 * What an isolate does when V8 loses control of its heap (an allocation it cannot serve even past isolated-vm's
 * limit: a Map or array grown without end): without a handler isolated-vm aborts the whole process, every user's
 * jobs with it. On a worker thread (a server's model worker) the handler is set: the thread running the job stops
 * there instead, the server gives up on it when the job's deadline passes, and a fresh thread takes the model's
 * jobs (see the server's model-worker.ts). On the main thread (a client's `remote: "local"`) the process aborts, as
 * a script's own out-of-memory would end it. The handler tells of the job `owner` names when it happens (a spare,
 * which runs no code, names none).
 */
function catastrophe(owner: Fresh["owner"]): { onCatastrophicError?: (message: string) => void } {
  if (isMainThread) return {};
  return {
    onCatastrophicError: (message) => {
      const ctx = owner.ctx;
      if (ctx) catastropheListeners.forEach((listener) => listener(message, ctx));
    },
  };
}

const catastropheListeners = new Set<(message: string, ctx: ExecutionContext) => void>();

/**
 * The jobs of a pass (by position) whose failure was the pass's own: one error that ended two or more of them, which
 * their own code did not throw (a job's code fails only its own invoke). The model's forward failed on the batch,
 * e.g. on token ids one job put in place of an embedding's input: which job caused it is not known, so each runs
 * again alone, where it gets its own outcome (one job's replacement failed every job of its pass, with its error).
 */
function sharedFailures(outcomes: readonly (PromiseSettledResult<unknown> | undefined)[]): Set<number> {
  const seen = new Map<unknown, number[]>();
  outcomes.forEach((r, i) => {
    if (r?.status === "rejected" && !(r.reason instanceof StallError)) seen.set(r.reason, [...(seen.get(r.reason) ?? []), i]);
  });
  return new Set([...seen.values()].filter((jobs) => jobs.length > 1).flat());
}
