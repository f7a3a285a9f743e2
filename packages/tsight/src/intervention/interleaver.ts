/**
 * Interleaver: runs the model's forward pass and the invokes' intervention code together.
 *
 * It is the model tree's ModuleHooks. At each module call it provides the call's inputs and then its output, as
 * `path.input.iN` / `path.output.iN` (N: how many times the module was called before). For each mediator, in
 * invoke order, with requests for that value it answers them (reads get the invoke's rows, writes replace them)
 * and then lets the intervention code run until it is blocked on tsight again ("settles", see mediator.ts).
 * Modules nobody asked about cost one map lookup. A fused block whose graph gives the values read inside it has them
 * provided the same way, in the order its calls would give them, without its calls (see handOutInOrder).
 */
import type { InOrderValue, Module, ModuleHooks, Replay, StepEdits } from "../nn/index.js";
import { sameShape, Tensor, UNKNOWN_VALUE } from "../tensor/index.js";
import { isThenable } from "../tensor/async-scope.js";
import { EarlyStop, InterventionError, LeftPassError, MissedProviderError, StallError, SwapError, TraceError } from "./errors.js";
import type { GradSource } from "./backward.js";
import { describe, iterationNote, UNRESOLVED, type Mediator, type Provider, type Request, type ValueKind, type WriteRequest } from "./mediator.js";
import { describeValue, mapTensors, mergeRows, RowsError, selectRows, type Rows } from "./rows.js";

const DOT = ".".charCodeAt(0);

/**
 * Call counts by module path: begun and ended through the hooks, and of fused modules; and the fused calls that did
 * not call modules inside them, by the set of those modules' paths (a fused run's, the same set at every run: one
 * count per fused call, where a count per module missed cost a map write for each of a model's operation points).
 */
interface CallCounts {
  entered: Map<string, number>;
  exited: Map<string, number>;
  fused: Map<string, number>;
  missed: Map<ReadonlySet<string>, number>;
}

/** What a call count is kept by: a module's path, or the modules a fused call missed (see CallCounts). */
type CountKey = string | ReadonlySet<string>;

/** How many times the module at `path` was called (`counts`: entered or exited), fused calls of modules above it included. */
function callsIn(c: Pick<CallCounts, "fused" | "missed">, counts: Map<string, number>, path: string): number {
  let n = counts.get(path) ?? 0;
  for (const [above, k] of c.fused) if (isBelow(path, above)) n += k;
  if (c.missed.size > 0) for (const [uncalled, k] of c.missed) if (uncalled.has(path)) n -= k;
  return n;
}

/** What to do with invokes whose code neither asks for a value nor ends within the stall limit. */
export type StallHandler = (stalled: Mediator[], waitedMs: number) => void;

interface Current {
  path: string;
  kind: ValueKind;
  iteration: number;
  value: unknown;
}

/** Thrown through the model's forward to end it early (stop, or an invoke failed). */
export class EndForward {
  constructor(readonly reason: "stop" | "error") {}
}

/** Something that records module values as the forward goes (tr.cache). */
export interface Recorder {
  record(path: string, kind: ValueKind, value: unknown, batch: number): void;
  /** Whether it records the module at `path` at all. */
  records(path: string): boolean;
  /** Whether it records any module below `path`. */
  recordsWithin(path: string): boolean;
}

/** Most values remembered as given per model (module paths and kinds: a model has a few thousand). */
const MAX_GIVEN = 100_000;

/**
 * Steps whose call counts at their start are kept (for requests made in one step for a step before it); older
 * ones are counted back at the calls per step of the oldest two (see callOf).
 */
const KEPT_STEP_BASES = 64;

/**
 * Step graphs a generation's edits may have compiled before its edits are applied op by op (a prompt's step and a
 * decode step's, and another pair for values read later; see StepEdits.compiled).
 */
const MAX_EDIT_GRAPHS = 4;

/** Microtask turns settle waits before it arms a stall timer (a timer costs more than the turns). */
const SETTLE_TURNS = 8;

/**
 * Whether settle waits for the invoke: while its code runs. After the forward (`final`), an invoke that left the pass
 * is waited for until its code ends too, but one that stalled (its code may never end: it awaits what never comes).
 */
const waitsFor = (m: Mediator, final: boolean): boolean => (final ? !m.finished && !m.stalled : !m.blocked);

export class Interleaver implements ModuleHooks, Provider {
  /** Calls of each module that went through `call` or `pass`, begun and ended. */
  private readonly entered = new Map<string, number>();
  private readonly exited = new Map<string, number>();
  /** Calls of each fused module (passWithin): every module below one counts them as its own calls too. */
  private readonly fusedCalls = new Map<string, number>();
  /** Fused calls by the paths of the modules below them they did not call (not counted, as op by op would not; see calls). */
  private readonly fusedMissed = new Map<ReadonlySet<string>, number>();
  /** Values replaced during a fused block's replay, by kind, path and iteration: the block's op-by-op run takes them. */
  private readonly kept = new Map<string, unknown>();
  private readonly interest = new Map<string, number>();
  private current: Current | null = null;
  /** In a generation (startSteps): the step running, and the call counts as each of the last few steps began. */
  private stepping: { current: number; bases: Map<number, CallCounts> } | null = null;
  /** Calls of module.call that bypass hooks (a module called directly from intervention code). */
  bypass = 0;
  private ending: "stop" | "error" | null = null;
  /** How long intervention code may run (or await things outside tsight) before `onStall` decides. */
  stallTimeoutMs = 60_000;
  onStall: StallHandler | null = null;
  readonly recorders: Recorder[] = [];
  /** Called at every module call (a server's cancel and deadline checks); throwing ends the forward. */
  checkpoint: (() => void) | null = null;

  constructor(
    readonly mediators: Mediator[],
    /** Rows in the batch. */
    public batch: number,
    /** For grad traces: values read become graph leaves, and what each invoke got is recorded here. */
    private readonly gradSources: WeakMap<Tensor, GradSource> | null = null,
    /** Invokes are separate jobs: a value that cannot be split into an invoke's rows is refused, never shared. */
    readonly strictRows = false,
    /** The values this model has given, at a module's first call in a pass, in this pass or earlier ones (see gaveBefore). */
    private readonly given: Set<string> = new Set(),
  ) {
    for (const m of mediators) {
      m.provider = this;
      for (const r of m.requests) this.watch(r.path, 1);
    }
  }

  // #region Provider (what mediators ask)

  isCurrent(r: Request): boolean {
    const c = this.current;
    return c !== null && c.path === r.path && c.kind === r.kind && c.iteration === r.iteration;
  }

  hasPassed(r: Request): boolean {
    const kind = r.kind === "output" && r.op !== "skip" ? "output" : "input";
    const seen = this.calls(kind === "output" ? this.exited : this.entered, r.path);
    // A value of a block handed out in order: its call is counted once all are, so its index tells.
    const inOrder = this.inOrderAt;
    const at = inOrder && seen === r.iteration && isBelow(r.path, inOrder.block) ? inOrder.at.get(r.path)?.[kind === "input" ? 0 : 1] : undefined;
    if (at !== undefined) return at < inOrder!.position || (at === inOrder!.position && !this.isCurrent(r));
    return seen > r.iteration && !this.isCurrent(r);
  }

  answer(m: Mediator, r: Request): void {
    const c = this.current!;
    if (r.op === "read") {
      if (this.gradSources) c.value = gradLeaves(c.value);
      const whole = pick(c, r);
      let mine: unknown;
      try {
        mine = selectRows(whole, m.rows, this.batch, this.strictRows ? describe(r.path, r.kind, r.part) : undefined);
      } catch (e) {
        return r.reject(typeof e === "string" ? new RowsError(e, r.origin) : e);
      }
      if (this.gradSources) recordSources(this.gradSources, whole, mine, m.rows, this.batch, valueName(r));
      r.resolve(mine);
    } else if (r.op === "write") c.value = this.swap(c, m, r);
  }

  callOf(path: string, step: number, offset: number): number {
    const s = this.stepping;
    if (!s) return step + offset;
    const base = s.bases.get(step);
    if (base) return callsIn(base, base.entered, path) + offset;
    // Before the first step nothing is called: its requests need not wait for it to begin.
    if (step === 0 && s.current < 0) return offset;
    // A step not begun yet is resolved when it begins (beginStep).
    if (step > s.current) return UNRESOLVED;
    // A step whose base is forgotten: counted back from the oldest kept, at the calls per step seen there.
    const [oldest, next] = [s.current - KEPT_STEP_BASES + 1, s.current - KEPT_STEP_BASES + 2];
    const first = s.bases.get(oldest);
    if (!first) return step + offset;
    const second = s.bases.get(next);
    const at = callsIn(first, first.entered, path);
    const perStep = second ? callsIn(second, second.entered, path) - at : 1;
    return at - (oldest - step) * perStep + offset;
  }

  /**
   * The forward passes are a generation's steps: a request's iteration is a step, and its call is counted from the
   * module's first call in that step (not call number `step`: a module called twice a step, Gemma 3's rotary
   * embedding, has calls 2k and 2k + 1 in step k).
   */
  startSteps(): void {
    this.stepping = { current: -1, bases: new Map() };
  }

  /** Step `k` begins: the calls so far are its base, and requests made ahead for it learn their calls. */
  beginStep(k: number): void {
    const s = this.stepping;
    if (!s) return;
    s.current = k;
    s.bases.set(k, this.countsNow());
    for (const step of s.bases.keys()) if (step <= k - KEPT_STEP_BASES) s.bases.delete(step);
    for (const m of this.mediators) for (const r of m.requests) if (r.iteration === UNRESOLVED && r.step === k) r.iteration = this.callOf(r.path, k, r.offset);
  }

  gaveBefore(path: string, kind: ValueKind): boolean {
    return this.given.has(givenKey(path, kind));
  }

  watch(path: string, delta: number): void {
    const n = (this.interest.get(path) ?? 0) + delta;
    if (n > 0) this.interest.set(path, n);
    else this.interest.delete(path);
  }

  // #endregion
  // #region ModuleHooks (what the model calls)

  watches(path: string): boolean {
    return this.interest.has(path) || this.recorders.some((r) => r.records(path)) || this.keeps((p) => p === path);
  }

  watchesWithin(path: string): boolean {
    if (this.bypass > 0) return true;
    for (const p of this.interest.keys()) if (isBelow(p, path)) return true;
    if (this.keeps((p) => isBelow(p, path))) return true;
    return this.recorders.some((r) => r.recordsWithin(path));
  }

  pass(module: Module): void {
    // A module called from intervention code (m.x.call) is not a call of the model's pass: nothing in it counts.
    if (this.bypass > 0) return;
    const path = module.path;
    const direct = (this.entered.get(path) ?? 0) + 1;
    this.count(this.entered, path, direct);
    this.count(this.exited, path, direct);
  }

  passWithin(module: Module, uncalled?: ReadonlySet<string>): void {
    if (this.bypass > 0) return;
    this.count(this.fusedCalls, module.path, (this.fusedCalls.get(module.path) ?? 0) + 1);
    if (uncalled?.size) this.count(this.fusedMissed, uncalled, (this.fusedMissed.get(uncalled) ?? 0) + 1);
  }

  /**
   * While a replay runs, the counts it changes, as they were before (newest last): its rewind puts them back. A
   * replay counts a few dozen calls; a copy of every count at its start would cost more than the few it changes.
   * Replays end in the order they began (a block's replay ends before the next block runs; see Replay.end).
   */
  private journal: (Map<CountKey, number> | CountKey | number | undefined)[] | null = null;
  private spareJournal: NonNullable<typeof this.journal> | null = null;

  /** A copy of the call counts, for `calls` then. */
  private countsNow(): CallCounts {
    return { entered: new Map(this.entered), exited: new Map(this.exited), fused: new Map(this.fusedCalls), missed: new Map(this.fusedMissed) };
  }

  /** Sets a call count (entered, exited or fusedCalls), noting what it was while a replay runs. */
  private count<K extends CountKey>(counts: Map<K, number>, path: K, n: number): void {
    this.journal?.push(counts, path, counts.get(path));
    counts.set(path, n);
  }

  /** Edits a generation step's graph computes while it is captured and run (see stepEdits): replay passes them by. */
  private setAside: ReadonlySet<Request> | null = null;
  /** An edit could not be captured (it reads values): from then on edits are applied as the forward runs. */
  private editsRefused = false;
  /** Step graphs compiled for edits (see StepEdits.compiled). */
  private editGraphs = 0;

  stepEdits(block: Module): StepEdits | null {
    if (this.editsRefused || this.setAside || this.bypass > 0 || this.gradSources || this.kept.size > 0 || this.recorders.length > 0) return null;
    // An edit is the graph's when it is an invoke's function of a whole output, for all rows (the batch's), and the
    // only request of that value; every other request below the block must be a read (a replay hands it out).
    // Anything else makes the step run op by op anyway.
    const edits = new Map<string, Map<number, { m: Mediator; r: Request }>>();
    let reads: Request[] | null = null;
    for (const m of this.mediators) {
      for (const r of m.requests) {
        if (!isBelow(r.path, block.path)) continue;
        if (r.op === "read") {
          (reads ??= []).push(r);
          continue;
        }
        if (r.op !== "write" || r.kind !== "output" || typeof r.value !== "function" || r.iteration === UNRESOLVED) return null;
        if (m.rows !== null && (m.rows.start !== 0 || m.rows.length !== this.batch)) return null;
        let at = edits.get(r.path);
        if (!at) edits.set(r.path, (at = new Map()));
        if (at.has(r.iteration)) return null;
        at.set(r.iteration, { m, r });
      }
    }
    // A read of an edited value is handed out as edited (the graph gives it so) when it came after the edit, in the
    // same invoke; one made before it, or by another invoke, gets the value as it was, which only op by op gives.
    if (reads) {
      for (const r of reads) {
        const e = r.kind === "output" ? edits.get(r.path)?.get(r.iteration) : undefined;
        if (e && e.m.requests.indexOf(r) < e.m.requests.indexOf(e.r)) return null;
      }
    }
    if (edits.size === 0) return null;
    const setAside = new Set([...edits.values()].flatMap((at) => [...at.values()].map((e) => e.r)));
    this.setAside = setAside;
    let given: { m: Mediator; r: Request }[] = [];
    let done: typeof given = [];
    return {
      paths: new Set(edits.keys()),
      alone: reads === null,
      at: (path, nth) => {
        const e = edits.get(path)?.get(this.calls(this.entered, path) + nth);
        if (!e) return null;
        given.push(e);
        const edit = (e.r as WriteRequest).value as (v: unknown) => unknown;
        const where = `${describe(e.r.path, e.r.kind, e.r.part)}${iterationNote(e.r)}`;
        return (output) => {
          const before = this.mediators.map((m) => m.requests.length);
          const replacement = edit(output);
          // A function that asks tsight for something (another edit, a read) is not pure: what it asked is taken
          // back, and it runs op by op, once, where it asks again.
          if (this.mediators.some((m, i) => m.requests.length > before[i]!)) {
            this.mediators.forEach((m, i) => {
              const made = new Set(m.requests.slice(before[i]));
              m.take((r) => made.has(r));
            });
            throw new TraceError(`${where}: its function asked for module values or edits`);
          }
          return mergeRows(output, replacement, e.m.rows, this.batch, where);
        };
      },
      done: () => {
        for (const e of given) e.m.take((r) => r === e.r);
        done = given;
        given = [];
      },
      restore: () => {
        // First in their queues: a request made since (a read of the edited value, another edit of it) came after it
        // (those made before are of other values: see the checks above).
        for (const { m, r } of [...done].reverse()) {
          m.requests.unshift(r);
          this.watch(r.path, 1);
        }
        done = [];
      },
      refuse: () => {
        this.editsRefused = true;
      },
      compiled: () => {
        if (++this.editGraphs > MAX_EDIT_GRAPHS) this.editsRefused = true;
      },
      release: () => {
        if (this.setAside === setAside) this.setAside = null;
      },
    };
  }

  replay(block: Module, modules: ReadonlySet<string>): Replay | null {
    // Values that become gradient leaves, records of modules inside and direct calls need the block to run op by op.
    if (this.bypass > 0 || this.gradSources || this.recorders.some((r) => r.recordsWithin(block.path))) return null;
    const asked = new Set<string>();
    for (const m of this.mediators) {
      for (const r of m.requests) {
        if (!isBelow(r.path, block.path) || this.setAside?.has(r)) continue;
        if (r.op !== "read" || !modules.has(r.path)) return null;
        asked.add(`${r.kind}|${r.path}`);
      }
    }
    const recordersBefore = this.recorders.length;
    const outer = this.journal;
    // A journal of an ended replay is reused (a trace reading a value inside a fused model runs a replay per pass).
    const journal: NonNullable<typeof this.journal> = this.spareJournal ?? [];
    this.spareJournal = null;
    this.journal = journal;
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      if (this.journal === journal) this.journal = outer;
      journal.length = 0;
      this.spareJournal = journal;
    };
    return {
      asked,
      needsRun: (path, gives, missing) => {
        // A cache made while the values are handed out records this call: it needs its real values.
        if (!(gives.input && gives.output) && this.recorders.some((r) => r.records(path))) return true;
        const inner = `${path}.`;
        let needs = false;
        for (const m of this.mediators) {
          for (const r of m.requests) {
            if (this.setAside?.has(r)) continue;
            if (r.path === path) {
              if (r.op !== "read") return true;
              if (!(r.kind === "input" ? gives.input : gives.output)) (needs = true), missing?.(`${r.kind}|${path}`);
            } else if (r.path.startsWith(inner) && !modules.has(r.path)) return true;
          }
        }
        return needs;
      },
      keep: (path, kind, value) => this.kept.set(`${kind}|${path}|${this.calls(this.entered, path) - 1}`, value),
      skipping: (path) => this.mediators.some((m) => m.skipping.has(path)),
      inOrder: this.kept.size === 0 && this.recorders.length === 0 ? (values, at, valueOf, learn) => this.handOutInOrder(block.path, values, at, valueOf, learn) : null,
      hearReads: (heard) => {
        this.hearers.add(heard);
        return () => this.hearers.delete(heard);
      },
      rewind: () => {
        // A cache made while the values were handed out already has the calls made before that: the run op by op
        // does them again, and must not record them twice (or record calls from before the cache was made). The
        // counts it compares with include the calls counted inside fused modules (see calls).
        const made = this.recorders.slice(recordersBefore);
        if (made.length) {
          const done = this.countsNow();
          for (const r of made) this.muted.set(r, done);
        }
        if (ended) return;
        for (let i = journal.length - 3; i >= 0; i -= 3) {
          const [counts, path, was] = journal.slice(i, i + 3) as [Map<CountKey, number>, CountKey, number | undefined];
          if (was === undefined) counts.delete(path);
          else counts.set(path, was);
        }
        end();
      },
      end,
    };
  }

  /**
   * Whether a value kept for a run op by op (replaced while a fused model's values were handed out) is of a module
   * `test` accepts: a block inside the model must then run its modules to take it, not hand out its graph's values.
   */
  private keeps(test: (path: string) => boolean): boolean {
    if (this.kept.size === 0) return false;
    for (const key of this.kept.keys()) if (test(key.slice(key.indexOf("|") + 1, key.lastIndexOf("|")))) return true;
    return false;
  }

  /**
   * While a fused block's values are handed out in order (see handOutInOrder): the block's path, the index of each
   * of its values, and the index of the value handed out last. Its calls are counted only once all are handed out,
   * so whether a request's value has gone by is told by its index (see hasPassed).
   */
  private inOrderAt: { block: string; at: ReadonlyMap<string, readonly [number, number]>; position: number } | null = null;

  /**
   * Replay.inOrder: the values asked of a block's calls handed out in the order op by op gives them, each to the
   * invokes that asked for it, which run until they wait again; nothing is played through `call`. False (the block
   * runs op by op, its calls counted as before) as soon as something needs that: a replacement or skip inside the
   * block, a value the graph did not give (`learn` is told, to tap it from the next run), an operation point computed
   * inside an op, a cache made meanwhile.
   */
  private async handOutInOrder(block: string, values: readonly InOrderValue[], at: ReadonlyMap<string, readonly [number, number]>, valueOf: (v: InOrderValue) => unknown, learn: (value: string) => void): Promise<boolean> {
    this.checkpoint?.();
    const recorders = this.recorders.length;
    const state = { block, at, position: -1 };
    this.inOrderAt = state;
    try {
      for (let i = this.nextAsked(state); i >= 0; i = this.nextAsked(state)) {
        const v = values[i]!;
        state.position = i;
        const iteration = this.calls(v.kind === "input" ? this.entered : this.exited, v.path);
        if (this.needsCall(v.path, v.kind, iteration)) return this.inOrderGaveUp(values, i, recorders);
        if (!this.isDue(v.path, v.kind, iteration, "read")) continue;
        if (v.passed) return this.inOrderGaveUp(values, i, recorders);
        const value = valueOf(v);
        if (value === UNKNOWN_VALUE) {
          learn(`${v.kind}|${v.path}`);
          return this.inOrderGaveUp(values, i, recorders);
        }
        let given = this.provide(v.path, v.kind, iteration, value);
        if (given instanceof Promise) given = await given;
        this.checkEnding();
        // Replaced as it was handed out (code that reads a value and then replaces it): the run op by op takes it.
        if (given !== value) {
          this.kept.set(`${v.kind}|${v.path}|${iteration}`, given);
          return this.inOrderGaveUp(values, i, recorders);
        }
        // Skipped as its input was handed out (code that reads a module's input and then skips it): the calls inside
        // it must not be given, and the other rows' output must be computed.
        if (v.kind === "input" && this.needsCall(v.path, v.kind, iteration)) return this.inOrderGaveUp(values, i + 1, recorders);
        // A cache made meanwhile records this value (as it would once it was given) and the calls from here on, which
        // must then really be made.
        if (this.recorders.length !== recorders) {
          for (const r of this.recorders.slice(recorders)) r.record(v.path, v.kind, given, this.batch);
          return this.inOrderGaveUp(values, i + 1, recorders);
        }
      }
      return true;
    } finally {
      if (this.inOrderAt === state) this.inOrderAt = null;
    }
  }

  /**
   * Whether a request for this call of the module at `path` needs it to really run: a skip of it (asked before its
   * input is given, or as it is), or a replacement of this value.
   */
  private needsCall(path: string, kind: ValueKind, iteration: number): boolean {
    for (const m of this.mediators) for (const r of m.requests) if (r.path === path && r.iteration === iteration && (r.op === "skip" || (r.op === "write" && r.kind === kind))) return true;
    return false;
  }

  /**
   * The index of the next value after the one handed out last that something is asked of (by path: its kind and
   * call are checked by the caller), or -1.
   */
  private nextAsked(state: { block: string; at: ReadonlyMap<string, readonly [number, number]>; position: number }): number {
    let next = -1;
    for (const path of this.interest.keys()) {
      const both = isBelow(path, state.block) ? state.at.get(path) : undefined;
      if (!both) continue;
      // Its input comes before its output: the first of them after the position.
      const i = both[0] > state.position ? both[0] : both[1];
      if (i > state.position && (next < 0 || i < next)) next = i;
    }
    return next;
  }

  /**
   * The block must run op by op after all. A cache made while its values were handed out has the calls up to where
   * it was made counted (as played through `call` they would be) for the rewind to tell it they are done: it records
   * the calls after them (see Replay.rewind).
   */
  private inOrderGaveUp(values: readonly InOrderValue[], upTo: number, recorders: number): false {
    if (this.recorders.length !== recorders) {
      for (let i = 0; i < upTo; i++) {
        const v = values[i]!;
        const counts = v.kind === "input" ? this.entered : this.exited;
        this.count(counts, v.path, (counts.get(v.path) ?? 0) + 1);
      }
    }
    return false;
  }

  /** Listeners of answered reads (see Replay.hearReads). */
  private readonly hearers = new Set<(value: string) => void>();

  /** Per recorder: the calls begun and ended when a replay it saw gave up; it does not record them again (see rewind). */
  private readonly muted = new Map<Recorder, CallCounts>();

  /** Whether `r` has recorded this call's value already, before the replay that gave up went back to run op by op. */
  private isMuted(r: Recorder, kind: ValueKind, path: string, iteration: number): boolean {
    const done = this.muted.get(r);
    return done !== undefined && iteration < callsIn(done, kind === "input" ? done.entered : done.exited, path);
  }

  private takeKept(kind: "input" | "output", path: string, iteration: number): unknown {
    const key = `${kind}|${path}|${iteration}`;
    const value = this.kept.get(key);
    this.kept.delete(key);
    return value;
  }

  /** See callsIn. */
  private calls(counts: Map<string, number>, path: string): number {
    return callsIn({ fused: this.fusedCalls, missed: this.fusedMissed }, counts, path);
  }

  /** `forward` may return its result itself (a replay's calls do; see ModuleHooks.replay). */
  call(module: Module, args: unknown[], forward: (args: unknown[]) => unknown): Promise<unknown> {
    try {
      return this.enter(module, args, forward);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private enter(module: Module, args: unknown[], forward: (args: unknown[]) => unknown): Promise<unknown> {
    if (this.bypass > 0) return Promise.resolve(forward(args));
    this.checkpoint?.();
    this.checkEnding();
    const path = module.path;
    const iteration = this.calls(this.entered, path);
    const direct = (this.entered.get(path) ?? 0) + 1;
    this.count(this.entered, path, direct);
    // Nothing asks for or records its values (most calls): counted, and run without an async frame of its own.
    if (this.unwatched(path)) {
      return Promise.resolve(forward(args)).then((out) => {
        this.count(this.exited, path, direct);
        // Asked for, or recorded (a cache made), while it ran: by code that went on meanwhile.
        if (this.unwatched(path)) {
          this.checkEnding();
          return out;
        }
        return this.returned(path, iteration, out);
      });
    }
    return this.callWatched(module, iteration, direct, args, forward);
  }

  /** Whether nothing asks for, replaces or records the values of the module at `path` now. */
  private unwatched(path: string): boolean {
    return this.kept.size === 0 && this.recorders.length === 0 && !this.interest.has(path);
  }

  private async callWatched(module: Module, iteration: number, direct: number, args: unknown[], forward: (args: unknown[]) => unknown): Promise<unknown> {
    const path = module.path;
    if (this.kept.size > 0) args = (this.takeKept("input", path, iteration) as unknown[] | undefined) ?? args;
    const watched = this.interest.has(path);
    if (watched) {
      const given = this.provide(path, "input", iteration, args);
      args = (given instanceof Promise ? await given : given) as unknown[];
    }
    for (const r of this.recorders) if (!this.isMuted(r, "input", path, iteration)) r.record(path, "input", args, this.batch);
    // A trace taking gradients that reads the output of a module whose output values are computed from one another
    // has the call record its ops, from a leaf in place of its input: the values keep that link (the gradient of a
    // router's logits comes through its top-k weights, as in PyTorch). Made leaves afterwards, they would be unrelated.
    if (this.gradSources && watched && module.linkedOutputs && args[0] instanceof Tensor && this.isDue(path, "output", iteration, "read")) args = [gradLeaves(args[0]), ...args.slice(1)];
    const skips = watched ? this.collectSkips(path, iteration) : [];
    let out: unknown;
    try {
      const ran = skips.length ? this.runSkipping(module, skips, args, forward) : forward(args);
      out = isThenable(ran) ? await ran : ran;
    } catch (e) {
      // The call did not happen (a fused block's replay goes back to run op by op): that run skips it again.
      for (const { mediator, request } of skips) {
        mediator.requests.push(request);
        this.watch(request.path, 1);
      }
      throw e;
    } finally {
      for (const { mediator } of skips) mediator.skipping.delete(path);
    }
    this.count(this.exited, path, direct);
    const result = this.returned(path, iteration, out);
    return result instanceof Promise ? await result : result;
  }

  /**
   * A module's call has returned `out`: replaced, provided and recorded as asked. Synchronous unless an invoke is
   * answered (it then runs until it settles): every await costs a microtask turn, and a trace takes many of these.
   */
  private returned(path: string, iteration: number, out: unknown): unknown {
    if (this.kept.size > 0) out = this.takeKept("output", path, iteration) ?? out;
    if (this.interest.has(path)) {
      const given = this.provide(path, "output", iteration, out);
      if (given instanceof Promise) return given.then((v) => this.recordOutput(path, iteration, v));
      out = given;
    }
    return this.recordOutput(path, iteration, out);
  }

  private recordOutput(path: string, iteration: number, out: unknown): unknown {
    for (const r of this.recorders) if (!this.isMuted(r, "output", path, iteration)) r.record(path, "output", out, this.batch);
    this.checkEnding();
    return out;
  }

  // #endregion

  /** Gives a module's value to the invokes that asked for it: at once (no promise) when none did. */
  private provide(path: string, kind: ValueKind, iteration: number, value: unknown): unknown {
    if (iteration === 0 && this.given.size < MAX_GIVEN) this.given.add(givenKey(path, kind));
    return this.isDue(path, kind, iteration) ? this.answerDue(path, kind, iteration, value) : value;
  }

  /** Whether an invoke asked for (or replaces) this value; with `op`, asked it so ("read": to read it). */
  private isDue(path: string, kind: ValueKind, iteration: number, op?: Request["op"]): boolean {
    for (const m of this.mediators) for (const r of m.requests) if ((op === undefined || r.op === op) && isFor(r, path, kind, iteration)) return true;
    return false;
  }

  private async answerDue(path: string, kind: ValueKind, iteration: number, value: unknown): Promise<unknown> {
    const c: Current = { path, kind, iteration, value };
    this.current = c;
    try {
      for (const m of this.mediators) {
        const due = m.take((r) => isFor(r, path, kind, iteration));
        if (!due.length) continue;
        if (this.hearers.size > 0 && due.some((r) => r.op === "read")) for (const heard of this.hearers) heard(`${kind}|${path}`);
        for (const r of due) this.answer(m, r);
        const settling = this.settle();
        if (settling) await settling;
      }
      return c.value;
    } finally {
      this.current = null;
    }
  }

  /**
   * Replacements that changed a value's shape, and skips (whose value the module's callers take as its output), for
   * explaining a later op's failure: what happened, and where the user's code asked for it.
   */
  private readonly reshaped: { note: string; origin: Error | undefined }[] = [];

  /**
   * The error of a forward pass that failed after a replacement changed a shape: a SwapError at the assignment's
   * line naming both shapes, with the op's error as its cause. Other errors are returned as they are.
   */
  explain(error: unknown): unknown {
    const last = this.reshaped.at(-1);
    if (!last || !(error instanceof Error) || error instanceof TraceError) return error;
    const e = new SwapError(`${error.message}\n  after ${last.note}`, last.origin);
    (e as { cause?: unknown }).cause = error;
    return e;
  }

  /** Applies a write to the current value; a misfit is the writing invoke's error. */
  private swap(c: Current, m: Mediator, r: Request & { op: "write" }): unknown {
    // Which call: in a generation, the step (iteration N is step N).
    const where = `${describe(r.path, r.kind, r.part)}${iterationNote(r)}`;
    try {
      const replacement = typeof r.value === "function" ? (r.value as (v: unknown) => unknown)(selectRows(pick(c, r), m.rows, this.batch, this.strictRows ? where : undefined)) : r.value;
      const before = pick(c, r);
      const after = r.kind === "input" && r.part === "first" ? [mergeRows((c.value as unknown[])[0], replacement, m.rows, this.batch, where), ...(c.value as unknown[]).slice(1)] : mergeRows(c.value, replacement, m.rows, this.batch, where);
      const now = r.kind === "input" && r.part === "first" ? (after as unknown[])[0] : after;
      if (before instanceof Tensor && now instanceof Tensor && !sameShape(before.shape, now.shape)) {
        this.reshaped.push({ note: `${where} was replaced with shape [${now.shape.join(", ")}] where the model gives [${before.shape.join(", ")}]`, origin: r.origin });
      }
      return after;
    } catch (e) {
      m.fail(typeof e === "string" ? new SwapError(`cannot replace ${where}: ${e}`, r.origin) : typeof r.value === "function" ? inFunctionEdit(e, where) : e);
      return c.value;
    }
  }

  private collectSkips(path: string, iteration: number): { mediator: Mediator; value: unknown; request: Request }[] {
    const skips: { mediator: Mediator; value: unknown; request: Request }[] = [];
    for (const m of this.mediators) {
      const [r] = m.take((x) => x.op === "skip" && x.path === path && x.iteration === iteration);
      if (!r) continue;
      const value = (r as { value: unknown }).value;
      skips.push({ mediator: m, value, request: r });
      m.skipping.add(path);
      // Its callers take the value as what the module returns: one of another structure fails in their code.
      this.reshaped.push({ note: `${path} was skipped with ${describeSkip(value)} as its output: a skip value must have the structure of what the module returns (read ${path}.output to see it)`, origin: r.origin });
      // Requests already made for values inside the skipped module in this call can never be answered (those of its
      // later calls can: the modules inside are counted as called once here; see runSkipping).
      for (const inner of m.take((x) => x.path.startsWith(path + ".") && x.iteration === this.calls(this.entered, x.path))) {
        const e = new MissedProviderError(`${describe(inner.path, inner.kind, inner.part)} is inside ${path}, which this invoke skips: it does not run`, inner.origin);
        if (inner.op === "read") inner.reject(e);
        else m.fail(e);
      }
    }
    return skips;
  }

  /**
   * Runs a module some invokes skip: not at all if the skips cover the batch, else for all and then replaced. Not
   * run, the modules inside it are counted as called all the same, so that their later calls keep the numbers of
   * the module's (a generation step's values inside a layer skipped at an earlier step are that step's).
   */
  private async runSkipping(module: Module, skips: { mediator: Mediator; value: unknown }[], args: unknown[], forward: (args: unknown[]) => unknown): Promise<unknown> {
    // A skip value of shapes without values in a run with values would make shapes of everything after it, the other
    // invokes' rows of a shared batch too: that invoke fails instead, and the module runs for it.
    if (hasTensor(args, (t) => !t.isMeta)) {
      skips = skips.filter((s) => {
        if (!hasTensor(s.value, (t) => t.isMeta)) return true;
        s.mediator.fail(new SwapError(`skip: ${module.path} runs with values; the skip value holds a meta tensor (a shape without values)`));
        return false;
      });
      if (!skips.length) return forward(args);
    }
    const whole = skips.find((s) => s.mediator.rows === null);
    const covered = skips.reduce((n, s) => n + (s.mediator.rows?.length ?? this.batch), 0);
    const allRows = !whole && covered >= this.batch && disjoint(skips.map((s) => s.mediator.rows!), this.batch);
    let out: unknown;
    if (whole) out = whole.value;
    else if (allRows) out = concatRows(skips.map((s) => ({ rows: s.mediator.rows!, value: s.value })));
    else out = await forward(args);
    if (whole || allRows) this.passWithin(module);
    for (const s of skips) {
      if (s === whole) continue;
      try {
        out = mergeRows(out, s.value, s.mediator.rows, this.batch, "skip value");
      } catch (e) {
        s.mediator.fail(typeof e === "string" ? new SwapError(`skip: ${e}`) : e);
      }
    }
    return out;
  }

  // #region settling and ending

  /**
   * Waits until every invoke is blocked on tsight (see Mediator.blocked): done, asking for a value, or parked.
   * Work tsight runs for an invoke (a hybrid step, a backward pass) is waited for as long as it takes; code that
   * runs, or awaits something outside tsight, longer than `stallTimeoutMs` is handed to `onStall`.
   */
  settle(final = false): Promise<void> | undefined {
    // Most calls find every invoke blocked already: answered at once, without a promise (nor, where the caller
    // checks, a microtask turn: a trace makes several of these calls, and what each allocates is what the forward's
    // next graph run finds evicted from the CPU's caches).
    return this.allBlocked(final) ? undefined : this.settleLater(final);
  }

  private async settleLater(final: boolean): Promise<void> {
    // Code that reaches tsight again within a few microtasks (most of it) is waited for without a stall timer, or
    // the lists and clock readings below.
    for (let turns = SETTLE_TURNS; turns > 0; turns--) {
      await undefined;
      if (this.allBlocked(final)) return;
    }
    let since = Date.now();
    for (;;) {
      const waiting = this.mediators.filter((m) => waitsFor(m, final));
      // Invokes counted at barriers (see atBarrier) are blocked too, without being told apart.
      const atBarriers = !final && waiting.every((m) => !m.working) && waiting.length <= this.atBarriers;
      if (waiting.length === 0 || atBarriers) return;
      // Time spent in work tsight runs for an invoke (a hybrid step, a backward pass) is not a stall, unless the
      // invokes are separate jobs: then nothing one job does may hold the others up, and its holds add up over the
      // pass (see Mediator.heldMs).
      const stalling = this.strictRows ? waiting : waiting.filter((m) => !m.working);
      if (stalling.length < waiting.length) since = Date.now();
      const start = Date.now();
      const held = (m: Mediator) => (this.strictRows ? m.heldMs : start - since);
      const over = stalling.filter((m) => held(m) >= this.stallTimeoutMs);
      if (over.length > 0) {
        this.stalled(over, Math.max(...over.map(held)));
        since = Date.now();
        continue;
      }
      const left = this.stallTimeoutMs - Math.max(0, ...stalling.map(held));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const changes = waiting.map((m) => m.changed());
      if (stalling.length > 0) changes.push(new Promise<void>((r) => (timer = setTimeout(r, left))));
      await Promise.race(changes);
      clearTimeout(timer);
      if (this.strictRows) for (const m of stalling) m.heldMs += Date.now() - start;
    }
  }

  private allBlocked(final: boolean): boolean {
    for (const m of this.mediators) if (waitsFor(m, final)) return false;
    return true;
  }

  /**
   * Invokes waiting at a barrier that could not tell which invoke arrived (code running outside any invoke's async
   * context, as a sandboxed job's is): counted, so the forward still goes on to let the other parties arrive.
   */
  private atBarriers = 0;

  atBarrier<T>(p: Promise<T>): Promise<T> {
    this.atBarriers++;
    const wake = () => this.mediators.forEach((m) => m.signal());
    wake();
    const end = () => {
      this.atBarriers--;
      wake();
    };
    return p.then(
      (v) => (end(), v),
      (e) => {
        end();
        throw e;
      },
    );
  }

  private stalled(running: Mediator[], waitedMs: number): void {
    for (const m of running) m.stalled = true;
    if (this.onStall) return this.onStall(running, waitedMs);
    for (const m of running) {
      const held = this.strictRows ? `kept the forward pass waiting ${Math.round(waitedMs)} ms in all, between its requests` : `neither asked for its next value nor finished for ${Math.round(waitedMs)} ms while the forward pass waited for it`;
      m.fail(new StallError(`invoke ${m.index}'s code ${held} (it awaits something outside tsight, or computes, for that long; the limit is the trace option stallTimeoutMs)${this.stallHint?.() ?? ""}`));
      m.leave("it stalled the forward pass");
    }
  }

  /** More for a stall's message, from the trace (a trace of this model waiting for this one, which its code may have started). */
  stallHint: (() => string) | null = null;

  /** A mediator failed or asked to stop: end the forward at the next module boundary. */
  end(reason: "stop" | "error"): void {
    if (this.ending !== "error") this.ending = reason;
  }

  /** Ends the forward here if an invoke failed or asked to stop. */
  checkEnding(): void {
    if (this.ending) throw new EndForward(this.ending);
  }

  /**
   * After the forward (or generation, of `steps` steps): every request still pending names a module that never
   * produced that value. Rejects them, lets the code react, and reports invokes still stuck.
   */
  finish(stopped: boolean, steps: number | null = null): Promise<void> | undefined {
    this.ending = null;
    let rejected = false;
    for (const m of this.mediators) {
      for (const r of m.take(() => true)) {
        rejected = true;
        const what = `${describe(r.path, r.kind, r.part)}${iterationNote(r)}`;
        const e = stopped
          ? new LeftPassError(`${what} was never reached: the trace ended before it`, r.origin)
          : new MissedProviderError(`${what} was never provided: the module was not called${r.step + r.offset ? " that many times" : ""} in ${steps === null ? "this forward pass" : `the generation's ${steps} step${steps === 1 ? "" : "s"}`}`, r.origin);
        if (r.op === "read") {
          m.abandoned ||= stopped;
          r.reject(e);
        } else if (!stopped) m.fail(e);
      }
    }
    // The pass is over: what an invoke asks for from now on is refused at once (it would otherwise wait for a
    // module that will not run again, which a sandboxed job's code, asking later than in process, can do).
    for (const m of this.mediators) {
      m.passEnded ||= stopped;
      m.pastEnd ??= stopped ? "the trace ended before it" : "it was asked for after the forward pass ended";
    }
    const settling = rejected ? this.settle() : undefined;
    if (!settling) return;
    return settling.then(() => void (this.ending = null));
  }
}

/**
 * An error a function edit threw (a tensor op's ShapeError, the code's own), told where it ran: its message and stack
 * name the value and the step (`... in the function assigned to model.layers.1.self_attn.source.z.output (step 2)`),
 * its class stays. tsight's own intervention errors and tr.stop() pass as they are.
 */
function inFunctionEdit(e: unknown, where: string): unknown {
  if (!(e instanceof Error) || e instanceof InterventionError || e instanceof EarlyStop) return e;
  const note = `\n  in the function assigned to ${where}`;
  const head = `${e.name}: ${e.message}`;
  if (typeof e.stack === "string" && e.stack.startsWith(head)) e.stack = `${head}${note}${e.stack.slice(head.length)}`;
  e.message += note;
  return e;
}

/** Whether `r` reads or replaces this value of this call (a skip is of the call, not a value). */
function isFor(r: Request, path: string, kind: ValueKind, iteration: number): boolean {
  return r.op !== "skip" && r.path === path && r.kind === kind && r.iteration === iteration;
}

/** The key of a module's value in the set of values given (see gaveBefore). */
function givenKey(path: string, kind: ValueKind): string {
  return kind === "output" ? path : `${path}|input`;
}

/** Whether the module at `path` is inside the one at `above` (every module is inside the model, at ""). */
export function isBelow(path: string, above: string): boolean {
  if (above === "") return path !== "";
  return path.length > above.length && path.charCodeAt(above.length) === DOT && path.startsWith(above);
}

/** Float tensors in `value` that record no graph become leaves that do (same data), so gradients can reach them. */
function gradLeaves(value: unknown): unknown {
  return mapTensors(value, (t) => (t.dtype === "float32" && !t.requiresGrad && !t.isMeta ? t.detach().requiresGrad_() : t));
}

/** Remembers, for each tensor an invoke got, the batch-wide tensor and rows it came from. */
/** What a read value is called in errors about its gradient: `transformer.h.1.attn.output[1]`, with its call past the first. */
function valueName(r: Request): string {
  const value = r.kind === "output" ? "output" : r.part === "first" ? "input" : "inputs";
  return `${r.path}.${value}${iterationNote(r)}`;
}

function recordSources(sources: WeakMap<Tensor, GradSource>, whole: unknown, mine: unknown, rows: Rows | null, batch: number, name: string): void {
  if (whole instanceof Tensor && mine instanceof Tensor) sources.set(mine, mine === whole ? { leaf: whole, rows: null, batch, name } : { leaf: whole, rows, batch, name });
  else if (Array.isArray(whole) && Array.isArray(mine)) whole.forEach((w, i) => recordSources(sources, w, mine[i], rows, batch, `${name}[${i}]`));
  else if (whole && mine && typeof whole === "object" && typeof mine === "object") for (const k of Object.keys(whole)) recordSources(sources, (whole as Record<string, unknown>)[k], (mine as Record<string, unknown>)[k], rows, batch, `${name}.${k}`);
}

function pick(c: Current, r: { kind: ValueKind; part: string }): unknown {
  return r.kind === "input" && r.part === "first" ? (c.value as unknown[])[0] : c.value;
}

function disjoint(rows: Rows[], batch: number): boolean {
  const seen = new Uint8Array(batch);
  for (const r of rows) for (let i = r.start; i < r.start + r.length; i++) if (seen[i]++) return false;
  return true;
}

/** Joins per-invoke values (in row order) into one batch value. */
function concatRows(parts: { rows: Rows; value: unknown }[]): unknown {
  if (parts.length === 1) return parts[0]!.value;
  const sorted = [...parts].sort((a, b) => a.rows.start - b.rows.start);
  const first = sorted[0]!.value;
  // A part of a tuple every invoke leaves empty (attention weights not computed).
  if ((first === null || first === undefined) && sorted.every((p) => p.value === first)) return first;
  if (first instanceof Tensor) return Tensor.cat(sorted.map((p) => p.value as Tensor), 0);
  if (Array.isArray(first)) return first.map((_, i) => concatRows(sorted.map((p) => ({ rows: p.rows, value: (p.value as unknown[])[i] }))));
  throw new TraceError("skip values of several invokes can only be joined when they are tensors or tuples of tensors");
}

/** A skip value, for an error about it: as describeValue, a tuple's parts each. */
function describeSkip(v: unknown): string {
  return Array.isArray(v) ? `[${v.slice(0, 4).map(describeValue).join(", ")}${v.length > 4 ? ", ..." : ""}]` : describeValue(v);
}


/** Whether `value` holds a tensor (in arrays and plain objects, as module values nest them) that passes `test`. */
function hasTensor(value: unknown, test: (t: Tensor) => boolean): boolean {
  let found = false;
  mapTensors(value, (t) => ((found ||= test(t)), t));
  return found;
}
