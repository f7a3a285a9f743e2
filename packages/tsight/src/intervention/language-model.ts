/**
 * LanguageModel: what users hold. A causal LM with its tokenizer and configs, loaded by name, folder or Hugging
 * Face repo id (with or without weights), and the entry points of interventions: trace, scan, edit, session,
 * generate.
 */
import type { WeightDType } from "../tensor/index.js";
import { dispatchWeights, loadPretrained, type LoadedModel, type LoadOptions, type Tokenizer } from "../hub/index.js";
import { checkGenerateOptions, ConfigError, generate, isSampling, type CausalLM, type GenerateOptions, type GenerateResult, type GPT2LMHeadModel, type LlamaForCausalLM, type RawConfig } from "../models/index.js";
import { Tensor } from "../tensor/index.js";
import type { EnvoyTree } from "./envoy-types.js";
import { TraceError } from "./errors.js";
import { EndForward } from "./interleaver.js";
import { checkInput, checkTextLength, fromRows, InputError, toBatch, type ModelInput } from "./inputs.js";
import { Model, type EditOptions } from "./model.js";
import type { Rename } from "./rename.js";
import type { Batched, Driver, InterventionFn, InvokeTracer, TraceRun, Tracer } from "./tracer.js";
import { checkOptionNames, checkOptions, LOAD_OPTIONS, OptionsError, RUN_OPTIONS } from "./options.js";
import { unawaitedReported } from "./watched.js";
import { MAX_RETURN_SEQUENCES } from "../models/generate-bounds.js";
// Exported from here as it was before the bounds had a module of their own (the package's root gives it).
export { MAX_RETURN_SEQUENCES };

export interface ModelLoadOptions extends LoadOptions {
  /**
   * Extra names for modules in envoy trees: a dotted path becomes a name on the model
   * (`{ "transformer.h": "layers" }` gives `m.layers`); a plain name is an alias wherever that child occurs
   * (`{ attn: "attention" }`).
   */
  rename?: Rename;
  /**
   * The architecture class the model must be (`MixtralForCausalLM`, ...): types the envoy tree of a model loaded
   * from a folder or repo, checked when it loads (a ConfigError naming model_type otherwise).
   */
  architecture?: ArchitectureClass<CausalLM>;
}

/** A model class, as `architecture` takes it. */
export type ArchitectureClass<M extends CausalLM> = abstract new (...args: never[]) => M;

/** Throws unless `model` is an instance of `architecture` (when one is given). */
export function checkArchitecture(model: CausalLM, architecture: ArchitectureClass<CausalLM> | undefined, where: string): void {
  const { typeName, config } = model;
  if (architecture && !(model instanceof architecture)) {
    throw new ConfigError(`${where} is a ${typeName} (model_type "${config.modelType}"), not the ${architecture.name} asked for`, "model_type");
  }
}

export interface GenerateCall extends Omit<GenerateOptions, "onStep" | "decode"> {
  /**
   * Hugging Face's num_return_sequences: each prompt's row repeated this many times, one after another (sampling
   * only, as there: greedy would give copies), so `generated` has rows × this many rows, an intervention's values
   * too.
   */
  numReturnSequences?: number;
  /** Called with each step's new tokens and their decoded text per row (streaming). */
  onToken?: (step: { tokens: number[]; text: string[]; step: number }) => void | Promise<void>;
}

export interface GenerateOutput {
  /** Prompt plus continuation ids, [batch, tokens]. */
  sequences: Tensor;
  /** Only the new tokens. */
  generated: Tensor;
  /** The continuation of each prompt, decoded (empty for a model loaded without a tokenizer: use `generated`). */
  text: string[];
}

export interface TraceOptions {
  /** Values the intervention reads as `tr.vars` (JSON values and tensors). */
  vars?: Record<string, unknown>;
  /** Record gradients from the first module value read, so the intervention can call tr.backward. */
  grad?: boolean;
  /** Called at every module call; throwing stops the run with that error (servers use it to cancel). */
  checkpoint?: () => void;
  /**
   * Invokes are independent jobs batched into one pass (servers use it): an invoke's error or stop ends only that
   * invoke, and the trace resolves even when some failed (their handles carry the errors).
   */
  isolateInvokes?: boolean;
  /**
   * How long intervention code may keep the forward pass waiting without asking for its next value or finishing
   * (computing, or awaiting something outside tsight); then the invoke fails with a StallError. Default 60 s.
   */
  stallTimeoutMs?: number;
  /** Most tokens (rows × positions, generated ones included) a run may have (a server's limit). */
  maxInputTokens?: number;
  /** Where the run's warnings go (default: process warnings); a server sends them to the job's client. */
  onWarning?: (message: string) => void;
}

export type { EditOptions };

/** A trace function given only the tracer (several invokes). */
export type TraceFn<M extends CausalLM, R> = (tr: Tracer<EnvoyTree<M>>) => R | Promise<R>;

/**
 * Groups traces of one model; locally a session is just its function, values carry across in variables. `vars`
 * are the values passed with the session's `{ vars }` (a remote session function may use nothing else from outside).
 */
export interface Session<M extends CausalLM> {
  vars: Record<string, any>;
  trace: LanguageModel<M>["trace"];
  scan: LanguageModel<M>["scan"];
  generate: LanguageModel<M>["generate"];
}

/** What a language model and its edited copies share besides the module tree: the tokenizer and the weights' state. */
interface Shared {
  tokenizer: Tokenizer;
  dispatched: boolean;
  /** Loads the weights of a model loaded with `dispatch: false` (once); null when there is nothing to load from. */
  load: (() => Promise<void>) | null;
  loading: Promise<void> | null;
}

export class LanguageModel<M extends CausalLM = any> extends Model<M, EnvoyTree<M>, ModelInput> {
  /** The name or path it was loaded from. */
  readonly name: string;
  readonly config: RawConfig;
  readonly generationConfig: RawConfig | null;
  /** What the weights of linear layers and embeddings are kept as (`load`'s dtype; a server model: the server's). */
  readonly dtype: WeightDType;
  private readonly shared: Shared;

  constructor(name: string, loaded: LoadedModel, rename: Rename = {}) {
    super(loaded.model as M, { rename });
    this.name = name;
    this.config = loaded.config;
    this.generationConfig = loaded.generationConfig;
    this.dtype = loaded.dtype;
    this.shared = { tokenizer: loaded.tokenizer, dispatched: loaded.dispatched, load: null, loading: null };
  }

  /** False for a meta model (shapes, no weights) until its weights are loaded. */
  get dispatched(): boolean {
    return this.shared.dispatched;
  }

  /**
   * Loads the weights of a model loaded with `dispatch: false` (its first trace or generation does this by itself,
   * as nnsight does; `scan` never needs them). A model with weights already: nothing to do.
   */
  async dispatch(): Promise<void> {
    const s = this.shared;
    if (s.dispatched) return;
    if (!s.load) throw new TraceError(`${this.name} has no weights here (a meta model from a server): run it with { remote: true }, or load it with LanguageModel.load`);
    s.loading ??= s.load().then(
      () => void (s.dispatched = true),
      (e: unknown) => {
        s.loading = null; // a failed load may be tried again
        throw e;
      },
    );
    await s.loading;
  }

  /**
   * `work` once the weights are there. A meta model with nothing to load from (a server's) fails here, before any
   * code runs: run as it is, it would return tensors with shapes and no values.
   */
  private withWeights<T>(work: () => Promise<T>): Promise<T> {
    return this.shared.dispatched ? work() : this.dispatch().then(work);
  }

  /** Loads `stdlib-gpt2`, `stdlib-llama`, a model folder, or a Hugging Face repo id. */
  static async load(name: "stdlib-gpt2", options?: ModelLoadOptions): Promise<LanguageModel<GPT2LMHeadModel>>;
  static async load(name: "stdlib-llama", options?: ModelLoadOptions): Promise<LanguageModel<LlamaForCausalLM>>;
  static async load<M extends CausalLM>(nameOrPath: string, options: ModelLoadOptions & { architecture: ArchitectureClass<M> }): Promise<LanguageModel<M>>;
  static async load<M extends CausalLM = CausalLM>(nameOrPath: string, options?: ModelLoadOptions): Promise<LanguageModel<M>>;
  static async load(nameOrPath: string, options: ModelLoadOptions = {}): Promise<LanguageModel<any>> {
    checkOptionNames(options, "LanguageModel.load", LOAD_OPTIONS);
    const loaded = await loadPretrained(nameOrPath, options);
    checkArchitecture(loaded.model, options.architecture, nameOrPath);
    const lm = new this(nameOrPath, loaded, options.rename);
    if (!loaded.dispatched) lm.shared.load = () => dispatchWeights(loaded.model, nameOrPath, options);
    return lm;
  }

  get tokenizer(): Tokenizer {
    return this.shared.tokenizer;
  }

  /**
   * One forward pass with interventions. With an input, `fn(m, tr)` intervenes on it; without, `fn(tr)` creates
   * invokes (`tr.invoke(input, fn)`) that are batched into the one pass. Resolves to what `fn` returns.
   */
  override trace<R>(input: ModelInput, fn: InterventionFn<EnvoyTree<M>, R>, options?: TraceOptions): Promise<R>;
  override trace<R>(fn: TraceFn<M, R>, options?: TraceOptions): Promise<R>;
  override trace<R>(a: ModelInput | TraceFn<M, R>, b?: InterventionFn<EnvoyTree<M>, R> | TraceOptions, c?: TraceOptions): Promise<R> {
    return this.calling("trace", [a, b, c], () => {
      const batched = this.inputBatch(a, undefined, c);
      return this.withWeights(() => this.run<R>(a, b, c, forward, batched)).then((r) => r.value);
    });
  }

  /**
   * A trace that computes shapes only: module values are meta tensors (shape and dtype, no data), so it works on
   * a meta model and costs almost nothing on a real one.
   */
  override scan<R>(input: ModelInput, fn: InterventionFn<EnvoyTree<M>, R>, options?: TraceOptions): Promise<R>;
  override scan<R>(fn: TraceFn<M, R>, options?: TraceOptions): Promise<R>;
  override scan<R>(a: ModelInput | TraceFn<M, R>, b?: InterventionFn<EnvoyTree<M>, R> | TraceOptions, c?: TraceOptions): Promise<R> {
    return this.calling("scan", [a, b, c], () => this.run<R>(a, b, c, metaForward, this.inputBatch(a, undefined, c)).then((r) => r.value));
  }

  /**
   * The batch of a call's input (none for a trace function, whose invokes give theirs), made in the caller's call
   * rather than when the run starts: a bad input is an InputError at the caller's line.
   */
  private inputBatch(a: unknown, extraTokens: number | undefined, options: unknown): Batched | undefined {
    if (typeof a === "function") return undefined;
    return this.batchFor([a], extraTokens, (options as TraceOptions | undefined)?.maxInputTokens ?? Infinity);
  }

  /** Runs several traces as one unit; locally they share values through ordinary variables. */
  session<R>(fn: (s: Session<M>) => R | Promise<R>, options: { vars?: Record<string, unknown> } = {}): Promise<R> {
    return this.calling("session", [fn, options], async () => fn({ vars: options?.vars ?? {}, trace: this.trace.bind(this), scan: this.scan.bind(this), generate: this.generate.bind(this) } as Session<M>));
  }

  /**
   * Greedy or sampled continuation of each prompt. With an intervention `fn`, it runs across every step with the
   * KV cache on: module values are the prompt's (step 0) unless `tr.iter` / `tr.all` / `tr.next` move it to later
   * steps. `value` is what `fn` returned.
   */
  generate(input: ModelInput, options: GenerateCall): Promise<GenerateOutput>;
  generate<R>(input: ModelInput, options: GenerateCall, fn: InterventionFn<EnvoyTree<M>, R>, traceOptions?: TraceOptions): Promise<GenerateOutput & { value: R }>;
  generate<R>(fn: TraceFn<M, R>, options: GenerateCall, traceOptions?: TraceOptions): Promise<GenerateOutput & { value: R }>;
  generate<R>(a: ModelInput | TraceFn<M, R>, options: GenerateCall, fn?: InterventionFn<EnvoyTree<M>, R> | TraceOptions, traceOptions?: TraceOptions): Promise<GenerateOutput & { value?: R }> {
    return this.calling("generate", [a, options, fn, traceOptions], () => {
      // Without an intervention or edits, the prompt's rows go to the generation as they are (no repadding).
      const plain = typeof a !== "function" && typeof fn !== "function" && this.edits.length === 0;
      const batched = typeof a === "function" ? undefined : this.generationBatch(a, options, plain, (typeof fn === "function" ? traceOptions : fn)?.maxInputTokens ?? Infinity);
      return this.withWeights(() => (plain ? this.exclusive(() => this.plainGenerate(batched!, options)) : this.generateHere(a, options, fn, traceOptions, batched)));
    });
  }

  /**
   * The batch of generate's input, its rows repeated for numReturnSequences: made in the caller's call (a bad input
   * fails at the caller's line).
   */
  private generationBatch(input: ModelInput, options: GenerateCall, plain: boolean, maxInputTokens: number): Batched {
    if (options.numReturnSequences !== undefined && options.numReturnSequences !== 1) input = repeatRows(input, this.tokenizer, options, maxInputTokens);
    if (!plain) return this.batchFor([input], options.maxNewTokens, maxInputTokens);
    const batch = toBatch(input, this.tokenizer);
    checkInput(batch.ids, this.model.config, options.maxNewTokens);
    return { args: [batch.ids, batch.mask], sizes: [batch.ids.shape[0]!] };
  }

  private async generateHere<R>(
    a: ModelInput | TraceFn<M, R>,
    options: GenerateCall,
    fn: InterventionFn<EnvoyTree<M>, R> | TraceOptions | undefined,
    traceOptions: TraceOptions | undefined,
    batched: Batched | undefined,
  ): Promise<GenerateOutput & { value?: R }> {
    const drive: Driver = Object.assign(
      (_model: unknown, [ids, mask]: unknown[], run: TraceRun) =>
        generate(this.model, ids as Tensor, mask as Tensor, {
          ...this.streaming(options, (ids as Tensor).shape[0]!),
          beforeStep: (k) => run.beginStep(k),
          // tr.stop() in a later step ends the generation with the tokens made before it.
          endsEarly: (e) => e instanceof EndForward && e.reason === "stop",
        }),
      { extraTokens: options.maxNewTokens, generation: true },
    );
    const { value, output } =
      typeof a === "function"
        ? await this.run(a, fn as TraceOptions | undefined, undefined, drive)
        : typeof fn === "function"
          ? await this.run(a, fn, traceOptions, drive, batched)
          : await this.run(a, async () => undefined, undefined, drive, batched);
    // A stop in any step, the prompt's too, ends the generation with the tokens before it (GenerateOptions.endsEarly).
    return { ...this.decodeResult(output as GenerateResult), value: value as R };
  }

  private generateSettings(options: GenerateCall): GenerateOptions {
    const eos = options.eosTokenId === undefined ? (this.generationConfig?.eos_token_id as number | number[] | undefined) : options.eosTokenId;
    const { numReturnSequences: _, ...settings } = options;
    const decode = settings.stopStrings === undefined || !this.tokenizer.hasText ? undefined : (ids: number[]) => this.tokenizer.decode(ids);
    return { ...settings, eosTokenId: eos, padTokenId: options.padTokenId ?? this.tokenizer.padTokenId, decode };
  }

  private decodeResult(result: GenerateResult): GenerateOutput {
    // A model without a tokenizer (token ids only) gives ids, and empty text.
    const text = Array.from({ length: result.generated.shape[0]! }, (_, b) => (this.tokenizer.hasText ? this.tokenizer.decode(result.generated.index(b).toArray(), { skipSpecialTokens: true }) : ""));
    return { sequences: result.sequences, generated: result.generated, text };
  }

  private async plainGenerate({ args: [ids, mask] }: Batched, options: GenerateCall): Promise<GenerateOutput> {
    return this.decodeResult(await generate(this.model, ids as Tensor, mask as Tensor, this.streaming(options, (ids as Tensor).shape[0]!)));
  }

  /** Generation settings with the model's defaults, and onToken turned into per-row streamed text. */
  private streaming(options: GenerateCall, rows: number): GenerateOptions {
    const decoders = Array.from({ length: rows }, () => this.tokenizer.decodeStream());
    return {
      ...this.generateSettings(options),
      onStep: options.onToken && ((tokens, step) => options.onToken!({ tokens, step, text: tokens.map((t, b) => (this.tokenizer.hasText ? decoders[b]!.push(t) : "")) })),
    };
  }

  /** Names of the run options this model takes (the client's LanguageModel adds the remote ones). */
  protected runOptionNames(): readonly string[] {
    return RUN_OPTIONS;
  }

  /**
   * Checks a call's arguments by position and option names before anything runs (a misplaced option is an
   * OptionsError naming where it belongs), then starts it. A failure nobody awaits is printed, not a crash.
   */
  protected calling<T>(method: "trace" | "scan" | "generate" | "session", args: unknown[], start: () => Promise<T>): Promise<T> {
    let work: Promise<T>;
    try {
      this.checkCall(method, args);
      work = start();
    } catch (e) {
      work = Promise.reject(e);
    }
    return unawaitedReported(work, `${method}()`);
  }

  /** Throws an OptionsError when the arguments of `method` are not in one of its forms. */
  protected checkCall(method: "trace" | "scan" | "generate" | "session", args: unknown[]): void {
    const run = this.runOptionNames();
    const [a, b, c, d] = args;
    if (method === "session") {
      if (typeof a !== "function") throw new OptionsError("session(fn, options): the session function is missing; call session(async (s) => ..., options)");
      return checkOptions(b, "session", run);
    }
    if (method === "generate") {
      if (b === undefined || b === null || typeof b !== "object") {
        throw new OptionsError(`generate(input, options, ...): the generation options are missing; call generate(input, { maxNewTokens: 8 }), with an intervention generate(input, { maxNewTokens: 8 }, async (m, tr) => ...)`);
      }
      checkOptions(b, "generation", run);
      checkGeneration(b as GenerateCall, typeof a === "function");
      if (typeof a === "function" || typeof c !== "function") {
        if (d !== undefined) throw new OptionsError("generate: too many arguments; with an intervention, call generate(input, { maxNewTokens: 8 }, async (m, tr) => ..., options)");
        return checkOptions(c, "generate-run", run);
      }
      return checkOptions(d, "generate-run", run);
    }
    if (typeof a === "function") {
      if (c !== undefined) throw new OptionsError(`${method}(fn, options) takes the trace function and options; to ${method} an input, call ${method}(input, async (m, tr) => ..., options)`);
      if (typeof b === "function") throw new OptionsError(`${method}(fn) takes one function; to ${method} an input, call ${method}(input, async (m, tr) => ...)`);
      return checkOptions(b, method, run);
    }
    if (typeof b !== "function") {
      const got = b === undefined ? "" : ` (got ${b !== null && typeof b === "object" ? "an options object" : typeof b} in its place)`;
      throw new OptionsError(`${method}(input, fn, options): the intervention function is missing${got}; call ${method}(input, async (m, tr) => ..., options)`);
    }
    checkOptions(c, method, run);
  }

  /**
   * Throws the InputError (or TokenizerError) a trace of `input` would, before anything runs: text too long for
   * `maxInputTokens`, ids outside the vocabulary or past the context. Else gives the tokens of each of its rows
   * (padding left out) and the width it runs at alone (its padding kept where it is left-padded already, see
   * batchFor). A server checks each job's input with it before the job shares a forward pass, so that one job's bad
   * input fails that job alone, and groups jobs by both: jobs alike in both run in a pass as they run alone.
   */
  checkInput(input: ModelInput, maxInputTokens = Infinity): { counts: number[]; width: number } {
    const mask = this.batchFor([input], undefined, maxInputTokens).args[1] as Tensor;
    return { counts: (mask.sum(1).tolist() as number[]).map(Number), width: mask.shape[1]! };
  }

  /** This model without its edits (sharing weights). */
  protected unedited(): LanguageModel<M> {
    const c = this.copy();
    c.edits = [];
    return c;
  }

  /** Token ids of the invokes' inputs, each stripped of its padding and all left-padded to one length: [ids, mask]. */
  protected override batchFor(inputs: readonly unknown[], extraTokens: number | undefined, maxInputTokens: number): Batched {
    for (const input of inputs) checkTextLength(input, maxInputTokens);
    const batches = inputs.map((input) => {
      const b = toBatch(input as ModelInput, this.tokenizer);
      checkInput(b.ids, this.model.config, extraTokens);
      return b;
    });
    // Inputs already left-padded to one length (the usual trace: one input, no padding) are taken as given, the ids
    // at their padding too (as Hugging Face embeds them: a value read there, or a gradient at a padded key, is the
    // same as there), with no round trip through lists.
    const T = batches[0]!.ids.shape[1]!;
    if (T > 0 && batches.every((b) => b.ids.shape[1] === T && isLeftPadded(b.mask))) {
      // The run's own tensors: one input's as they are where toBatch made them, else copied (they may be the
      // caller's), several joined by cat (batches' ids and masks are int64).
      const own = (t: Tensor, given: boolean | undefined) => (given ? new Tensor("int64", (t.data as BigInt64Array).slice(), t.shape) : t);
      const one = batches.length === 1 ? batches[0]! : null;
      const ids = one ? own(one.ids, one.given?.ids) : Tensor.cat(batches.map((b) => b.ids), 0);
      const mask = one ? own(one.mask, one.given?.mask) : Tensor.cat(batches.map((b) => b.mask), 0);
      // One input's ids were checked against the model above; only the tokens a job may have are left.
      if (!one || maxInputTokens !== Infinity) checkInput(ids, this.model.config, extraTokens, maxInputTokens);
      return { args: [ids, mask], sizes: batches.map((b) => b.ids.shape[0]!) };
    }
    // Others (right padding, gaps, lengths that differ) are stripped of their padding and left-padded again.
    const rows: number[][] = [];
    const sizes = batches.map((b) => {
      const ids = b.ids.tolist() as number[][];
      const mask = b.mask.tolist() as number[][];
      ids.forEach((r, i) => rows.push(r.filter((_, j) => mask[i]![j] === 1)));
      return ids.length;
    });
    const { ids, mask } = fromRows(rows, this.tokenizer.padTokenId);
    checkInput(ids, this.model.config, extraTokens, maxInputTokens);
    return { args: [ids, mask], sizes };
  }
}

/**
 * generate's settings, checked at the call (an OptionsError at the caller's line) rather than once it runs:
 * the ranges generate checks, and numReturnSequences (sampling only, with an input, within the bound).
 */
function checkGeneration(options: GenerateCall, traceFunction: boolean): void {
  try {
    checkGenerateOptions(options);
  } catch (e) {
    throw e instanceof RangeError ? new OptionsError(`generate: ${e.message}`) : e;
  }
  const n = options.numReturnSequences;
  if (n === undefined) return;
  if (!(Number.isInteger(n) && n >= 1 && n <= MAX_RETURN_SEQUENCES)) throw new OptionsError(`numReturnSequences must be a whole number from 1 to ${MAX_RETURN_SEQUENCES}, got ${String(n).slice(0, 40)}`);
  if (n === 1) return;
  if (!isSampling(options)) throw new OptionsError(`numReturnSequences of ${n} needs sampling (doSample: true): greedy generation would return ${n} copies of one continuation (Hugging Face refuses it too)`);
  if (traceFunction) throw new OptionsError("generate: numReturnSequences takes an input, generate(input, { numReturnSequences, ... }, fn); in a trace function, give each invoke its input repeated");
}

/**
 * `input`'s rows each repeated `numReturnSequences` times in a row (torch's repeat_interleave, as Hugging Face's
 * generate expands them; its value checked at the call), within `maxInputTokens` once repeated (checked before the
 * copies are made).
 */
function repeatRows(input: ModelInput, tokenizer: Tokenizer, options: GenerateCall, maxInputTokens: number): ModelInput {
  const n = options.numReturnSequences;
  checkTextLength(input, maxInputTokens);
  const { ids, mask } = toBatch(input, tokenizer);
  const [B, T] = ids.shape as [number, number];
  const tokens = B * n! * (T + (options.maxNewTokens ?? 0));
  if (tokens > maxInputTokens) throw new InputError(`the input is ${B} row${B === 1 ? "" : "s"} × ${n} sequences of ${T + options.maxNewTokens} tokens (${tokens}), more than the ${maxInputTokens} tokens a job may have here; ask for fewer sequences or tokens`);
  const rows = Array.from({ length: B * n! }, (_, i) => Math.floor(i / n!));
  const index = new Tensor("int64", BigInt64Array.from(rows, BigInt), [rows.length]);
  return { input_ids: ids.long().indexSelect(0, index), attention_mask: mask.long().indexSelect(0, index) };
}

/** Whether every row of a [B, T] mask is 0s then 1s, with at least one 1 (nothing but 0 and 1). */
function isLeftPadded(mask: Tensor): boolean {
  const [B, T] = mask.shape as [number, number];
  const m = mask.data as ArrayLike<number | bigint>;
  for (let b = 0; b < B; b++) {
    let seen = false;
    for (let j = 0; j < T; j++) {
      const v = Number(m[b * T + j]);
      if (v !== 0 && v !== 1) return false;
      if (v === 1) seen = true;
      else if (seen) return false;
    }
    if (!seen) return false;
  }
  return true;
}

const forward: Driver = async (model, [ids, mask], run) => {
  const begun = run.beginStep(0);
  if (begun) await begun;
  return (model as CausalLM).call(ids as Tensor, { attentionMask: mask as Tensor });
};

/** One forward pass on meta tensors (scan): shapes only. */
const metaForward: Driver = async (model, [ids, mask], run) => {
  const begun = run.beginStep(0);
  if (begun) await begun;
  return (model as CausalLM).call(Tensor.meta((ids as Tensor).dtype, (ids as Tensor).shape), { attentionMask: mask as Tensor });
};

export type { InvokeTracer };

export { buildAliases, resolveAliases, type Rename } from "./rename.js";
