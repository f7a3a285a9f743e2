/**
 * tr.cache(): records module values as the forward goes, after every intervention has been applied, keyed by
 * module path. A cache made in an invoke holds that invoke's rows; one made on the trace holds the whole batch.
 * It records exactly the modules asked for (all of them when none are named), and reads like the model:
 * `cache.transformer.h[0].output` (rename aliases too), or `cache.get("transformer.h.0")`.
 */
import { isPoint, Points, type Module } from "../nn/index.js";
import { isBelow, type Recorder } from "./interleaver.js";
import type { ValueKind } from "./mediator.js";
import { TraceError } from "./errors.js";
import { resolveAliases } from "./rename.js";
import { detachAll, mapTensors, RowsError, selectRows, type Rows } from "./rows.js";

/** A module named in CacheOptions.modules: a path, or an envoy (anything with a string `path`). */
function modulePathOf(m: unknown, i: number): string {
  if (typeof m === "string") return m;
  const path = m !== null && typeof m === "object" ? (m as { path?: unknown }).path : undefined;
  if (typeof path === "string") return path;
  throw new TraceError(`cache: modules[${i}] must be a module's path or its envoy (m.transformer.h[0]), got ${m === null ? "null" : typeof m}`);
}

/** The bytes of the tensors in a value. */
function tensorBytes(value: unknown): number {
  let n = 0;
  mapTensors(value, (t) => ((n += t.isMeta ? 0 : t.data.byteLength), t));
  return n;
}

export interface CacheOptions {
  /**
   * Modules to record (paths, through rename aliases too, or envoys), exactly these (not what is inside them, but
   * for a module holding operation points, `attn.source`: its points); all modules when omitted.
   */
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

/** A cache as `tr.cache()` gives it: its methods, and the model's modules by name (`cache.transformer.h[0].output`). */
export type NavigableCache = Cache & { readonly [module: string]: any };

export class Cache implements Recorder {
  private readonly entries = new Map<string, CacheEntry>();
  /** The modules named (each once), or null for all. */
  private readonly prefixes: ReadonlySet<string> | null;
  private readonly outputs: boolean;
  private readonly inputs: boolean;

  constructor(
    options: CacheOptions,
    private readonly rows: Rows | null,
    private readonly knownPaths: ReadonlySet<string>,
    /** Invokes are separate jobs: values that cannot be split into these rows are not recorded. */
    private readonly strict = false,
    /** Rename aliases (parent path -> alias -> name or relative path), for navigation. */
    private readonly aliases: ReadonlyMap<string, ReadonlyMap<string, string>> = new Map(),
    /** Paths of operation points (recorded only when named). */
    private readonly points: ReadonlySet<string> = new Set(),
    /** Paths of the modules holding points (`attn.source`): naming one names its points. */
    private readonly holders: ReadonlySet<string> = new Set(),
  ) {
    this.prefixes = options.modules ? new Set(options.modules.flatMap((m, i) => this.named(modulePathOf(m, i)))) : null;
    this.outputs = options.outputs ?? true;
    this.inputs = options.inputs ?? false;
    // Navigation by module names: what the class does not have is a module of the model.
    return new Proxy(this, {
      get: (target, prop, receiver) => (typeof prop === "symbol" || prop in target ? Reflect.get(target, prop, receiver) : prop === "then" ? undefined : target.at("").child(prop)),
    });
  }

  /**
   * The paths a module named records: its own (a path may go through rename aliases), or for a module holding
   * operation points (`attn.source`, never called itself) every point in it.
   */
  private named(path: string): string[] {
    const real = this.knownPaths.has(path) ? path : resolveAliases(path, this.aliases);
    // Quoted at most 200 characters long.
    if (!this.knownPaths.has(real)) throw new TraceError(`cache: the model has no module "${path.length > 200 ? `${path.slice(0, 200)}..." (${path.length} characters)` : `${path}"`}`);
    // Its own points only (a point with an SAE spliced on is recorded itself, as named); a module with points of
    // its own (an SAE's pre, latents, reconstruction and error) records them with its value.
    const own = [...this.points].filter((p) => isBelow(p, real) && p.lastIndexOf(".") === real.length);
    return this.holders.has(real) ? own : [real, ...own];
  }

  /**
   * Modules named, or else every module but the points inside modules (`attn.source.*`, only when named, as
   * nnsight's cache leaves out `.source`); an SAE's points are its values, recorded with the rest.
   */
  private wants(path: string): boolean {
    return this.prefixes === null ? !this.points.has(path) || !this.holders.has(path.slice(0, path.lastIndexOf("."))) : this.prefixes.has(path);
  }

  records(path: string): boolean {
    return !this.stopped && this.wants(path);
  }

  recordsWithin(path: string): boolean {
    if (this.stopped) return false;
    if (this.prefixes === null) return true;
    for (const p of this.prefixes) if (isBelow(p, path)) return true;
    return false;
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

  /**
   * A cache holding `entries` (what a remote job sent back); it navigates by the paths recorded, with `lists` (see
   * listLengths) giving how many modules the lists among them have.
   */
  static fromEntries(entries: Iterable<[string, CacheEntry]>, lists: Iterable<[string, number]> = []): Cache {
    const c = new Cache({}, null, new Set());
    for (const [path, e] of entries) c.entries.set(path, e);
    for (const [path, n] of lists) c.lists.set(path, n);
    return c;
  }

  /** How many modules each list has that a recorded path goes through (from the model; sent with a remote cache). */
  private readonly lists = new Map<string, number>();

  /** @internal the lengths of the module lists the recorded paths go through (`transformer.h` -> 12). */
  listLengths(): Map<string, number> {
    const out = new Map<string, number>();
    for (const key of this.keys()) {
      const parts = key.split(".");
      parts.forEach((part, i) => {
        if (!/^\d+$/.test(part)) return;
        const list = parts.slice(0, i).join(".");
        if (!out.has(list)) out.set(list, this.listLength(list));
      });
    }
    return out;
  }

  /** The navigation node of a module path (what `cache.transformer.h[0]` gives). */
  at(path: string): CacheNode {
    return new CacheNode(this, path);
  }

  /** @internal the entry of `path`, or an error naming what was recorded near it. */
  entryAt(path: string): CacheEntry {
    const e = this.entries.get(path);
    if (e) return e;
    const under = this.keys().filter((k) => k.startsWith(path ? path + "." : ""));
    const what = path || "the model";
    // Points live in a module's `source` (a cache sent back by a server does not know the model's points).
    const point = this.points.has(path) || /(^|\.)source\.[^.]+$/.test(path);
    if (point && !this.prefixes?.has(path)) {
      throw new TraceError(`cache: ${what} was not recorded: operation points are recorded only when named (tr.cache({ modules: ["${path}"] }), or its holder "${path.slice(0, path.lastIndexOf("."))}" for all of them)`);
    }
    throw new TraceError(`cache: ${what} was not recorded${under.length ? `; recorded inside it: ${under.slice(0, 8).join(", ")}${under.length > 8 ? ", ..." : ""}` : this.prefixes ? ` (this cache records ${[...this.prefixes].slice(0, 8).join(", ")}${this.prefixes.size > 8 ? ", ..." : ""})` : ""}`);
  }

  /** @internal the path of child `name` of `path` (an alias, a list index, or a name), or an error. */
  childPath(path: string, name: string): string {
    const join = (rel: string) => (path ? `${path}.${rel}` : rel);
    if (/^-?\d+$/.test(name)) {
      const n = this.listLength(path);
      const i = Number(name);
      const at = i < 0 ? n + i : i;
      if (at < 0 || at >= n) throw new TraceError(`cache: ${path || "the model"}[${i}] is out of range: it has ${n} module${n === 1 ? "" : "s"}`);
      return join(String(at));
    }
    const real = this.aliases.get(path)?.get(name) ?? name;
    const child = join(real);
    // A cache sent back by a server does not know the model's paths: a name it lacks is reported when read.
    if (this.knownPaths.size && !this.knownPaths.has(child)) throw new TraceError(`cache: ${path || "the model"} has no module "${name}"`);
    return child;
  }

  /**
   * How many numbered children `path` has (a module list), from the model's paths or, remotely, the lengths sent
   * with the cache (else the recorded paths numbered from 0 without a gap).
   */
  private listLength(path: string): number {
    if (!this.knownPaths.size && this.lists.has(path)) return this.lists.get(path)!;
    const paths = this.knownPaths.size ? this.knownPaths : new Set(this.keys().flatMap((k) => k.split(".").map((_, i, parts) => parts.slice(0, i + 1).join("."))));
    let n = 0;
    while (paths.has(path ? `${path}.${n}` : String(n))) n++;
    return n;
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

/**
 * A module's place in a cache: `output`, `input`, `inputs` of its first call, `outputs` and `inputsByCall` of
 * every call (one per generation step), and its children by name, alias or index.
 */
export class CacheNode {
  constructor(
    private readonly cache: Cache,
    readonly path: string,
  ) {
    return new Proxy(this, {
      get: (target, prop, receiver) => (typeof prop === "symbol" || prop in target ? Reflect.get(target, prop, receiver) : prop === "then" ? undefined : target.child(prop)),
    });
  }

  get output(): unknown {
    return this.recorded("output").output;
  }
  /** Outputs of every call, in order (one per generation step). */
  get outputs(): unknown[] {
    return this.recorded("output").outputsByCall;
  }
  get inputs(): unknown[] {
    return this.recorded("input").inputs!;
  }
  get input(): unknown {
    return this.recorded("input").inputs![0];
  }
  get inputsByCall(): unknown[][] {
    return this.recorded("input").inputsByCall;
  }

  /** The module's entry, if the cache recorded that kind of value (inputs only with `{ inputs: true }`). */
  private recorded(kind: "input" | "output"): CacheEntry {
    const e = this.cache.entryAt(this.path);
    const what = this.path || "the model";
    if (kind === "input" && e.inputs === undefined) throw new TraceError(`cache: ${what}'s inputs were not recorded: a cache records them when made with tr.cache({ inputs: true })`);
    if (kind === "output" && e.outputsByCall.length === 0) throw new TraceError(`cache: ${what}'s output was not recorded: this cache was made with { outputs: false }`);
    return e;
  }

  /** The node of child `name` (a module name, rename alias, or list index). */
  child(name: string): CacheNode {
    return this.cache.at(this.cache.childPath(this.path, name));
  }
}

export function modulePaths(root: Module): Set<string> {
  return new Set(root.namedModules().map(([p]) => p));
}

/** The paths of a model's operation points and of the `source` modules holding them. */
export function pointPaths(root: Module): Set<string> {
  return new Set(root.namedModules().flatMap(([p, m]) => (isPoint(m) ? [p] : [])));
}

/** The paths of the modules holding a model's operation points (`attn.source`, `mlp.source`). */
export function pointHolderPaths(root: Module): Set<string> {
  return new Set(root.namedModules().flatMap(([p, m]) => (m instanceof Points ? [p] : [])));
}
