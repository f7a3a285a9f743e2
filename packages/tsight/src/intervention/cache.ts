/**
 * tr.cache(): records module values as the forward goes, after every intervention has been applied, keyed by
 * module path. A cache made in an invoke holds that invoke's rows; one made on the trace holds the whole batch.
 */
import type { Module } from "../nn/index.js";
import type { Recorder } from "./interleaver.js";
import type { ValueKind } from "./mediator.js";
import { detachAll, mapTensors, RowsError, selectRows, type Rows } from "./rows.js";

/** The bytes of the tensors in a value. */
function tensorBytes(value: unknown): number {
  let n = 0;
  mapTensors(value, (t) => ((n += t.isMeta ? 0 : t.data.byteLength), t));
  return n;
}

export interface CacheOptions {
  /** Modules to record (paths or envoys), each with everything inside it; all modules when omitted. */
  modules?: readonly (string | { path: string })[];
  /** Record outputs (default true). */
  outputs?: boolean;
  /** Record inputs (all arguments; default false). */
  inputs?: boolean;
}

export interface CacheEntry {
  /** The output of the module's first call. */
  output?: unknown;
  /** The arguments of the module's first call. */
  inputs?: unknown[];
  /** Outputs of every call, in order (one per generation step). */
  outputsByCall: unknown[];
  /** Inputs of every call, in order. */
  inputsByCall: unknown[][];
}

export class Cache implements Recorder {
  private readonly entries = new Map<string, CacheEntry>();
  private readonly prefixes: string[] | null;
  private readonly outputs: boolean;
  private readonly inputs: boolean;

  constructor(
    options: CacheOptions,
    private readonly rows: Rows | null,
    knownPaths: ReadonlySet<string>,
    /** Invokes are separate jobs: values that cannot be split into these rows are not recorded. */
    private readonly strict = false,
  ) {
    this.prefixes = options.modules ? options.modules.map((m) => (typeof m === "string" ? m : m.path)) : null;
    for (const p of this.prefixes ?? []) if (!knownPaths.has(p)) throw new RangeError(`cache: the model has no module "${p}"`);
    this.outputs = options.outputs ?? true;
    this.inputs = options.inputs ?? false;
  }

  private wants(path: string): boolean {
    return this.prefixes === null || this.prefixes.some((p) => p === "" || path === p || path.startsWith(p + "."));
  }

  /**
   * Told the bytes of each value before it is kept (a server counts them toward the job's memory); throwing stops
   * the recording, and `onLimit` hears why.
   */
  limit: ((bytes: number) => void) | null = null;
  onLimit: ((error: unknown) => void) | null = null;
  private stopped = false;

  record(path: string, kind: ValueKind, value: unknown, batch: number): void {
    if (this.stopped || !(kind === "output" ? this.outputs : this.inputs) || !this.wants(path)) return;
    let mine: unknown;
    try {
      mine = detachAll(selectRows(value, this.rows, batch, this.strict ? path : undefined));
      this.limit?.(tensorBytes(mine));
    } catch (e) {
      // A cache must never break the forward pass: it stops, and its owner hears why.
      this.stopped = true;
      this.onLimit?.(typeof e === "string" ? new RowsError(e) : e);
      return;
    }
    let e = this.entries.get(path);
    if (!e) this.entries.set(path, (e = { outputsByCall: [], inputsByCall: [] }));
    if (kind === "output") {
      if (e.outputsByCall.length === 0) e.output = mine;
      e.outputsByCall.push(mine);
    } else {
      if (e.inputsByCall.length === 0) e.inputs = mine as unknown[];
      e.inputsByCall.push(mine as unknown[]);
    }
  }

  /** A cache holding `entries` (what a remote job sent back). */
  static fromEntries(entries: Iterable<[string, CacheEntry]>): Cache {
    const c = new Cache({}, null, new Set());
    for (const [path, e] of entries) c.entries.set(path, e);
    return c;
  }

  /** The entry of a module (by path or envoy), or undefined if it was not recorded. */
  get(module: string | { path: string }): CacheEntry | undefined {
    return this.entries.get(typeof module === "string" ? module : module.path);
  }

  /** Recorded module paths, in the order they first produced a value. */
  keys(): string[] {
    return [...this.entries.keys()];
  }

  /** path -> first-call output, as a plain object (what a remote job would send back). */
  toObject(): Record<string, unknown> {
    return Object.fromEntries([...this.entries].filter(([, e]) => e.outputsByCall.length).map(([p, e]) => [p, e.output]));
  }
}

export function modulePaths(root: Module): Set<string> {
  return new Set(root.namedModules().map(([p]) => p));
}
