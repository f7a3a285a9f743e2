/**
 * Model: interventions on any tsight module tree (nnsight's `NNsight(module)`). A class of one's own that extends
 * Module, with its own forward and tensor inputs, is traced like a language model: envoys typed from the class,
 * invokes batched along the first axis, edits, caches, gradients, SAEs. LanguageModel is the Model of a causal
 * LM, with a tokenizer, text inputs and generation.
 *
 * Remote runs are for models a server hosts: a Model of one's own classes cannot run remotely, since only
 * intervention code travels to a server, never module definitions.
 */
import { Conv1D, Embedding, LayerNorm, Linear, Module, RMSNorm } from "../nn/index.js";
import { moduleForHook, type SparseAutoencoder } from "../sae/sae.js";
import { splicedSaes, spliceSae, unspliceSae } from "../sae/splice.js";
import { Tensor } from "../tensor/index.js";
import { codeName, invokeInStack, liveRun, noteLive, noteQueued, runInInvoke, TRACE_FUNCTION } from "./context.js";
import { forgetChildren } from "./envoy.js";
import type { AnyEnvoy, EnvoyOf } from "./envoy-types.js";
import { TraceError } from "./errors.js";
import { buildAliases, type Rename } from "./rename.js";
import { checkOptionNames, checkOptions, OptionsError } from "./options.js";
import { Tracer, TraceRun, type Batched, type Driver, type InterventionFn, type RunOptions, type TraceTarget } from "./tracer.js";
import { unawaitedReported } from "./watched.js";

/** The envoy tree of a module class: typed from its fields; open (any name) for the abstract Module. */
export type ModelEnvoy<M extends Module> = Module extends M ? AnyEnvoy : EnvoyOf<M>;

export interface ModelOptions {
  /** Extra names for modules in envoy trees (see LanguageModel.load's `rename`). */
  rename?: Rename;
}

export interface ModelTraceOptions {
  /** Values the intervention reads as `tr.vars`. */
  vars?: Record<string, unknown>;
  /** Record gradients from the first module value read, so the intervention can call tr.backward. */
  grad?: boolean;
  /** How long intervention code may keep the forward waiting (see TraceOptions); default 60 s. */
  stallTimeoutMs?: number;
}

const MODEL_TRACE_OPTIONS = ["vars", "grad", "stallTimeoutMs"] as const;
const REMOTE_OPTIONS = new Set(["remote", "backend", "apiKey", "blocking"]);

export interface EditOptions {
  /** Change this model rather than return an edited copy (which shares weights). */
  inplace?: boolean;
}

/** The module tree and what every copy of a model shares: it runs one trace at a time. */
interface Tree<M extends Module> {
  model: M;
  aliases: Map<string, Map<string, string>>;
  queue: Promise<unknown>;
}

/** An input of a Model's invoke: the forward's one tensor argument, or all its arguments as an array. */
export type ModelArgs = Tensor | readonly unknown[];

export class Model<M extends Module = Module, E = ModelEnvoy<M>, I = ModelArgs> {
  protected readonly tree: Tree<M>;
  protected edits: InterventionFn[] = [];
  /** The extra module names given at load (`rename`). */
  readonly renames: Readonly<Rename>;

  constructor(module: M, options: ModelOptions = {}) {
    checkOptionNames(options, "new Model", ["rename"]);
    if (!(module instanceof Module)) throw new TypeError("new Model(module): module must be a tsight Module (a class extending Module, with its own forward)");
    if (!module.tree || module.children().some(([, c]) => c.tree !== module.tree)) module.finalize();
    this.renames = { ...(options.rename ?? {}) };
    this.tree = { model: module, aliases: buildAliases(module, options.rename ?? {}), queue: Promise.resolve() };
  }

  /** The module tree. */
  get model(): M {
    return this.tree.model;
  }

  /** The module tree as PyTorch prints it (nnsight's print(model)); console.log(lm) prints it too. */
  toString(): string {
    return this.tree.model.toString();
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  /**
   * One forward pass with interventions. `input` is the forward's tensor argument, or its arguments as an array
   * (tensors batched along their first axis across invokes; other arguments must be the same in every invoke).
   * Without an input, `fn(tr)` creates invokes with `tr.invoke(input, fn)`.
   */
  trace<R>(input: I, fn: InterventionFn<E, R>, options?: ModelTraceOptions): Promise<R>;
  trace<R>(fn: (tr: Tracer<E, I>) => R | Promise<R>, options?: ModelTraceOptions): Promise<R>;
  trace<R>(a: I | ((tr: Tracer<E, I>) => R | Promise<R>), b?: InterventionFn<E, R> | ModelTraceOptions, c?: ModelTraceOptions): Promise<R> {
    return this.traced("trace", a, b, c, moduleForward);
  }

  /**
   * A trace that computes shapes only: the inputs' tensors become meta tensors (shape and dtype, no data), and so
   * does every module value, so it costs almost nothing (LanguageModel's scan).
   */
  scan<R>(input: I, fn: InterventionFn<E, R>, options?: ModelTraceOptions): Promise<R>;
  scan<R>(fn: (tr: Tracer<E, I>) => R | Promise<R>, options?: ModelTraceOptions): Promise<R>;
  scan<R>(a: I | ((tr: Tracer<E, I>) => R | Promise<R>), b?: InterventionFn<E, R> | ModelTraceOptions, c?: ModelTraceOptions): Promise<R> {
    return this.traced("scan", a, b, c, metaModuleForward);
  }

  private traced<R>(name: "trace" | "scan", a: unknown, b: unknown, c: ModelTraceOptions | undefined, drive: Driver): Promise<R> {
    let work: Promise<R>;
    try {
      const options = (typeof a === "function" ? b : c) as ModelTraceOptions | undefined;
      const remote = options && Object.keys(options).find((k) => REMOTE_OPTIONS.has(k));
      if (remote) {
        throw new OptionsError(
          `${name}: "${remote}" is for models a server hosts (LanguageModel.fromServer / load); a Model of your own module classes runs here only, because a server receives intervention code, never module definitions`,
        );
      }
      checkOptions(options, name, MODEL_TRACE_OPTIONS);
      if (name === "trace") checkParameters(this.model);
      work = this.run(a as never, b as never, c, drive).then((r) => r.value as R);
    } catch (e) {
      work = Promise.reject(e);
    }
    return unawaitedReported(work, `${name}()`);
  }

  /**
   * A persistent intervention applied (to the whole batch, before the invokes) in every later trace. Returns an
   * edited copy sharing this model's weights, or this model itself with `inplace`.
   */
  edit(fn: InterventionFn<E, unknown>, options: EditOptions = {}): this {
    const target = options.inplace ? this : this.copy();
    target.edits = [...target.edits, fn as InterventionFn];
    return target;
  }

  /** Removes one edit, or all of them. */
  clearEdits(fn?: InterventionFn<E, unknown>): void {
    this.edits = fn ? this.edits.filter((e) => e !== fn) : [];
  }

  /**
   * Splices a sparse autoencoder onto a module (default: where it was trained, its cfg's `hf_hook_point`): the
   * module's output goes through the SAE, whose points read and edit like module values
   * (`m.transformer.h[2].sae.latents.output`). With `useErrorTerm` the reconstruction error of the unedited SAE is
   * added back (SAELens `use_error_term`), so only edits of the SAE change what the model computes. Changes the
   * model in place, for every copy sharing it, until `removeSae`.
   */
  addSae(sae: SparseAutoencoder, options: { at?: string; useErrorTerm?: boolean } = {}): this {
    checkOptionNames(options, "addSae", ["at", "useErrorTerm"]);
    const layers = (this.model as { layerPaths?: () => string[] }).layerPaths?.() ?? [];
    const hook = sae.cfg.hookName;
    const at = options.at ?? sae.cfg.hookPoint ?? (hook === null ? null : moduleForHook(hook, layers));
    if (at === null || at === undefined) {
      const example = layers[Math.min(2, layers.length - 1)] ?? "a.module.path";
      const says = hook === null ? "names no module (metadata.hf_hook_point) and no hook_name" : `names no module (metadata.hf_hook_point), and its hook_name "${hook}" is not one tsight finds a module for (blocks.N.hook_resid_post, blocks.N.hook_resid_pre for N >= 1, blocks.N.hook_mlp_out)`;
      throw new TraceError(`addSae: this SAE's config ${says}; pass the module whose output it reads, e.g. { at: "${example}" }`);
    }
    const target = this.model.get(at.replace(/^\./, ""));
    if (!target || target === this.model) throw new TraceError(`addSae: the model has no module "${at}"`);
    // On a model with values (a meta model, a server's, takes meta SAEs: shapes only).
    const unset = unsetParameters(sae);
    if (unset.length && unsetParameters(this.model).length < this.model.namedParameters().size) throw new TraceError(`addSae: the SAE's ${unset.join(", ")} have no values yet: load it with loadSae, or set them (setParameter) first`);
    const width = outputWidth(target);
    if (width !== null && width !== sae.cfg.dIn) throw new TraceError(`addSae: ${target.path} (${target.typeName}) gives ${width} features, and this SAE reads ${sae.cfg.dIn} (d_in): it belongs elsewhere`);
    try {
      spliceSae(target, sae, options.useErrorTerm ?? false);
    } catch (e) {
      throw e instanceof TraceError ? e : new TraceError(`addSae: ${(e as Error).message}`);
    }
    forgetChildren(target);
    return this;
  }

  /** Removes the SAE spliced at `at`, or every spliced SAE. */
  removeSae(at?: string): void {
    const spliced = splicedSaes(this.model).map((s) => s.at);
    const path = at?.replace(/^\./, "");
    if (path !== undefined && !spliced.includes(path)) throw new TraceError(`removeSae: no SAE is spliced at "${at}"; ${spliced.length ? `there are SAEs at ${spliced.join(", ")}` : "none is spliced"}`);
    const targets = (path === undefined ? spliced : [path]).map((p) => this.model.get(p));
    for (const t of targets) {
      if (t && unspliceSae(t)) forgetChildren(t);
    }
  }

  /** The SAEs spliced into this model, by module path. */
  get saes(): { at: string; sae: SparseAutoencoder }[] {
    return splicedSaes(this.model);
  }

  /**
   * One batch of the invokes' inputs: each argument position's tensors concatenated along the first axis; other
   * arguments must be equal in every invoke. A language model batches token ids instead (and checks token counts
   * against `extraTokens` and `maxInputTokens`).
   */
  protected batchFor(inputs: readonly unknown[], _extraTokens: number | undefined, _maxInputTokens: number): Batched {
    const lists = inputs.map((input, i) => {
      const args = input instanceof Tensor ? [input] : Array.isArray(input) ? (input as unknown[]) : null;
      if (!args || args.length === 0) throw new TraceError(`invoke ${i}: a Model's input is its forward's tensor argument, or an array of its arguments`);
      return args;
    });
    const arity = lists[0]!.length;
    const sizes = lists.map((args, i) => {
      if (args.length !== arity) throw new TraceError(`invoke ${i} gives ${args.length} arguments and invoke 0 gives ${arity}; every invoke passes the forward the same arguments`);
      const tensors = args.filter((a): a is Tensor => a instanceof Tensor);
      if (tensors.length === 0) throw new TraceError(`invoke ${i}: no argument is a tensor, so there is nothing to batch`);
      const rows = tensors[0]!.shape[0];
      if (rows === undefined || tensors.some((t) => t.shape[0] !== rows)) throw new TraceError(`invoke ${i}: its tensor arguments must share their first axis (the batch), got ${tensors.map((t) => `[${t.shape.join(", ")}]`).join(" and ")}`);
      return rows;
    });
    const args = lists[0]!.map((first, p) => {
      if (!(first instanceof Tensor)) {
        lists.forEach((args, i) => {
          if (args[p] instanceof Tensor || JSON.stringify(args[p]) !== JSON.stringify(first)) throw new TraceError(`argument ${p} of invoke ${i} differs from invoke 0's; only tensors differ between invokes (they are batched)`);
        });
        return first;
      }
      const parts = lists.map((args, i) => {
        const t = args[p];
        if (!(t instanceof Tensor) || t.shape.slice(1).join() !== first.shape.slice(1).join() || t.dtype !== first.dtype) {
          throw new TraceError(`argument ${p} of invoke ${i} cannot be batched with invoke 0's ([${first.shape.join(", ")}] ${first.dtype}): the same shape after the first axis and dtype are needed`);
        }
        return t;
      });
      return parts.length === 1 ? parts[0] : Tensor.cat(parts, 0);
    });
    return { args, sizes };
  }

  /** What a trace runs on: the tree, its aliases and edits, and how inputs become one batch. */
  protected target(): TraceTarget {
    return { model: this.model, aliases: this.tree.aliases, edits: this.edits, batch: (inputs, extraTokens, maxInputTokens) => this.batchFor(inputs, extraTokens, maxInputTokens) };
  }

  /** The persistent interventions (model.edit) of this model, in order. */
  protected editFunctions(): readonly InterventionFn[] {
    return this.edits;
  }

  /** A copy sharing the module tree (and its queue), with its own list of edits. */
  protected copy(): this {
    const c = Object.create(Object.getPrototypeOf(this)) as this;
    Object.assign(c, this);
    c.edits = [...this.edits];
    return c;
  }

  /**
   * Runs `work` when no other trace of this module tree is running; refused at once when started inside the
   * intervention code of a trace of this tree, which it would wait for forever.
   */
  protected exclusive<T>(work: () => Promise<T>): Promise<T> {
    // Only while a trace of this tree runs can this one be inside its code (reading the stack costs a few µs).
    const tree = this.tree.model.tree;
    const live = liveRun(tree);
    const outer = live === null ? undefined : invokeInStack(tree, live);
    if (outer !== undefined) {
      return Promise.reject(
        new TraceError(
          `a trace of this model was started inside the intervention of another trace of it (${codeName(outer)}): a model runs one trace at a time, so the inner one would wait for the outer one forever. Start it after the outer trace, or use m.<module>.call(...) to run a module on other values inside this one`,
        ),
      );
    }
    // Counted while it waits for a trace running now (whose stall, if this one was started by its code, says so).
    const waits = live !== null;
    if (waits) noteQueued(tree, 1);
    const result = this.tree.queue.then(async () => {
      if (waits) noteQueued(tree, -1);
      try {
        return await work();
      } finally {
        noteLive(tree, null);
      }
    });
    this.tree.queue = result.catch(() => undefined);
    return result;
  }

  /** Runs one trace (an input and its intervention, or a trace function making invokes) with `drive`. */
  protected run<R>(a: unknown, b: unknown, c: RunOptionsLike | undefined, drive: Driver, batched?: Batched): Promise<{ value: R; output: unknown }> {
    return this.exclusive(async () => {
      const traceFunction = typeof a === "function";
      if (traceFunction && typeof b === "function") throw new TraceError("trace(fn) takes one function; to trace an input use trace(input, fn)");
      if (!traceFunction && typeof b !== "function") throw new TraceError("trace(input, fn): the intervention function is missing");
      const run = new TraceRun(this.target(), runOptions((traceFunction ? b : c) as RunOptionsLike | undefined), batched);
      noteLive(this.tree.model.tree, run.id);
      const tracer = traceFunction ? new Tracer(run) : undefined;
      // A trace function runs named as an invoke's code is (see context.ts): a trace of this model started in it is
      // refused too.
      const result: Promise<R> = tracer
        ? runInInvoke(this.tree.model.tree, run.id, TRACE_FUNCTION, () => (a as (tr: Tracer<unknown>) => R | Promise<R>)(tracer))
        : run.addInvoke<R>(a, b as InterventionFn);
      let settled = false;
      result.then(
        () => void (settled = true),
        () => void (settled = true),
      );
      run.close();
      await run.execute(drive);
      // A trace function still running after the forward is waited for, within the stall timeout.
      return { value: await (settled ? result : run.functionSettled(result)), output: run.outputValue };
    });
  }
}

/** The run options any trace takes (LanguageModel's TraceOptions has a few more). */
interface RunOptionsLike extends ModelTraceOptions {
  checkpoint?: () => void;
  isolateInvokes?: boolean;
  maxInputTokens?: number;
  onWarning?: (message: string) => void;
}

function runOptions(o: RunOptionsLike | undefined): RunOptions {
  return { vars: o?.vars, grad: o?.grad, checkpoint: o?.checkpoint, isolated: o?.isolateInvokes, stallTimeoutMs: o?.stallTimeoutMs, maxInputTokens: o?.maxInputTokens, onWarning: o?.onWarning };
}

/** One forward pass of the module on the batch's arguments. */
const moduleForward: Driver = async (model, args, run) => {
  const begun = run.beginStep(0);
  if (begun) await begun;
  return (model.call as (...a: unknown[]) => Promise<unknown>)(...args);
};

/** One forward pass of the module on meta copies of the batch's tensors (scan): shapes only. */
const metaModuleForward: Driver = async (model, args, run) => {
  const begun = run.beginStep(0);
  if (begun) await begun;
  return (model.call as (...a: unknown[]) => Promise<unknown>)(...args.map((a) => (a instanceof Tensor ? Tensor.meta(a.dtype, a.shape) : a)));
};

/** The width of what a layer with a known output gives (its last axis), or null where only a run would tell. */
function outputWidth(m: Module): number | null {
  const weight = (i: number) => m.getParam("weight")?.shape[i] ?? null;
  if (m instanceof Linear || m instanceof LayerNorm || m instanceof RMSNorm) return weight(0);
  if (m instanceof Conv1D || m instanceof Embedding) return weight(1);
  return null;
}

/** The names of the module's parameters that hold no values yet (meta tensors). */
function unsetParameters(module: Module): string[] {
  return [...module.namedParameters()].filter(([, p]) => p.module.getParam(p.name).isMeta).map(([name]) => name);
}

/** Module trees whose parameters all hold values, as of their tree's last change (see checkParameters). */
const parametersSet = new WeakMap<Module, number>();

/**
 * A Model of the user's own modules runs only with values in every parameter: one never set (a meta tensor) would
 * make the trace return shapes without values. Checked once per change of the tree.
 */
function checkParameters(model: Module): void {
  if (parametersSet.get(model) === Module.treeChanges) return;
  const unset = unsetParameters(model);
  if (unset.length) {
    throw new TraceError(`the model's parameters ${unset.slice(0, 8).join(", ")}${unset.length > 8 ? `, ... (${unset.length} in all)` : ""} have no values yet: set them (module.setParameter(name, tensor), or loadParameters) before tracing`);
  }
  parametersSet.set(model, Module.treeChanges);
}
