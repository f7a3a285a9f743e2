/**
 * The LanguageModel users import: the intervention layer's LanguageModel plus remote execution (nnsight's
 * RemoteableMixin). `trace`, `scan` and `generate` take `remote` (true: the configured server; "local": the local
 * sandbox, exactly as a server would run it), `backend` (a server URL or a Backend object) and `blocking` (false:
 * a RemoteJob handle instead of the value).
 *
 * Remote code is sent as source: it may use its parameters, `tr.vars` and the tensor API; a free variable is
 * refused here, before anything is sent, with its name and line.
 */
import { Tokenizer } from "../hub/index.js";
import { saeConfig, SparseAutoencoder } from "../sae/sae.js";
import { LanguageModel as LocalLanguageModel, OptionsError, TraceError, userFrame, type GenerateCall, type GenerateOutput, type InterventionFn, type ModelInput, type TraceOptions, type EnvoyTree, type Tracer } from "../intervention/index.js";
import type { Session } from "../intervention/language-model.js";
import { checkOptionNames, RUN_OPTIONS } from "../intervention/options.js";
import { buildModel, type CausalLM, type GPT2LMHeadModel, type LlamaForCausalLM } from "../models/index.js";
import type { Tensor } from "../tensor/index.js";
import { isBackend, type Backend } from "./backend.js";
import { encodeValue, type FunctionEncoder } from "../protocol/codec.js";
import { resolveRemoteTarget } from "./config.js";
import type { StatusStream } from "./display.js";
import { HttpBackend } from "./http.js";
import type { RemoteJob } from "./job.js";
import { runLocally } from "./local.js";
import { runLocalStep } from "./local-step.js";
import { toModelKey } from "../protocol/model-key.js";
import type { GenerateSpec, JobEvent, JobKind, JobRequest } from "../protocol/wire.js";
import { interventionSource } from "./source.js";
import { locateSourceError, withUserLine } from "./user-location.js";
import { checkArchitecture, type ArchitectureClass, type ModelLoadOptions } from "../intervention/language-model.js";

export interface RemoteOptions extends TraceOptions {
  /** true: run on the configured server (TSIGHT_HOST / config file); "local": in the local sandbox, as a server would. */
  remote?: boolean | "local";
  /** A server URL or a Backend object; implies remote. */
  backend?: string | Backend;
  /** false: return the RemoteJob at once instead of waiting for the value (default true). */
  blocking?: boolean;
  /** The API key for `backend` (default: TSIGHT_API_KEY, then the config file). */
  apiKey?: string;
  /** Where a blocking call shows progress (default: stderr when it is a terminal; null: nowhere). */
  print?: StatusStream | null;
  /**
   * Where the job's `console.log` lines go: a stream, or a function given each line. Default: where `print` shows
   * progress, else stderr, always (a terminal or not; on a terminal above the progress line). null: nowhere (they
   * stay in the job's events).
   */
  logs?: StatusStream | ((line: string) => void) | null;
  /**
   * Seconds the job may run: on a server, at most its own limit (which is also the default); with `remote: "local"`,
   * 60 by default.
   */
  timeout?: number;
  /** A URL the server POSTs to when the job ends (signed with `webhookSecret`; see verifyWebhook). */
  webhook?: string;
  webhookSecret?: string;
  /** How long the server waits for this client to answer a hybrid step (tr.local), in ms (capped by the server). */
  localTimeoutMs?: number;
}

/** The options a remote call takes besides those of a local run. */
export const REMOTE_OPTIONS: readonly string[] = ["remote", "backend", "blocking", "apiKey", "print", "logs", "timeout", "webhook", "webhookSecret", "localTimeoutMs"];

type Nonblocking = RemoteOptions & { blocking: false };
type TraceFn<M extends CausalLM, R> = (tr: Tracer<EnvoyTree<M>>) => R | Promise<R>;

export class LanguageModel<M extends CausalLM = any> extends LocalLanguageModel<M> {
  static override async load(name: "stdlib-gpt2", options?: ModelLoadOptions): Promise<LanguageModel<GPT2LMHeadModel>>;
  static override async load(name: "stdlib-llama", options?: ModelLoadOptions): Promise<LanguageModel<LlamaForCausalLM>>;
  static override async load<M extends CausalLM>(nameOrPath: string, options: ModelLoadOptions & { architecture: ArchitectureClass<M> }): Promise<LanguageModel<M>>;
  static override async load<M extends CausalLM = CausalLM>(nameOrPath: string, options?: ModelLoadOptions): Promise<LanguageModel<M>>;
  static override async load(nameOrPath: string, options: ModelLoadOptions = {}): Promise<LanguageModel<any>> {
    return (await super.load(nameOrPath, options)) as LanguageModel;
  }

  /**
   * A meta model (config, module tree, tokenizer; no weights) built from what a server says about a model it
   * hosts, so a client needs no files at all.
   */
  static async fromServer(name: "stdlib-gpt2", options?: { backend?: string | Backend; apiKey?: string }): Promise<LanguageModel<GPT2LMHeadModel>>;
  static async fromServer(name: "stdlib-llama", options?: { backend?: string | Backend; apiKey?: string }): Promise<LanguageModel<LlamaForCausalLM>>;
  static async fromServer<M extends CausalLM>(name: string, options: { backend?: string | Backend; apiKey?: string; architecture: ArchitectureClass<M> }): Promise<LanguageModel<M>>;
  static async fromServer<M extends CausalLM = CausalLM>(name: string, options?: { backend?: string | Backend; apiKey?: string; architecture?: ArchitectureClass<CausalLM> }): Promise<LanguageModel<M>>;
  static async fromServer(name: string, options: { backend?: string | Backend; apiKey?: string; architecture?: ArchitectureClass<CausalLM> } = {}): Promise<LanguageModel<any>> {
    checkOptionNames(options, "LanguageModel.fromServer", ["backend", "apiKey", "architecture"]);
    const backend = typeof options.backend === "string" && options.apiKey ? new HttpBackend({ url: options.backend, apiKey: options.apiKey }) : resolveRemoteTarget({ backend: options.backend, remote: true });
    const meta = await backend.meta(name.includes(":") ? name : toModelKey("LanguageModel", name));
    const repo = JSON.parse(meta.key.slice(meta.key.indexOf(":") + 1)).repo_id as string;
    const model = buildModel(meta.config);
    checkArchitecture(model, options.architecture, name);
    // The server's SAEs, spliced here as meta copies: the envoy tree has them, their values come from the server.
    const saes = (meta.saes ?? []).map((s) => ({ at: s.at, sae: new SparseAutoencoder(saeConfig(s.config)) }));
    const tokenizer = meta.tokenizer
      ? new Tokenizer(meta.tokenizer, meta.tokenizerConfig)
      : Tokenizer.idsOnlyFor(meta.config, `the server has no tokenizer.json for ${repo}, so this model takes token ids only (a list of ids, or an int64 tensor)`);
    const lm = new this(repo, { source: { kind: "hub", name: repo, path: "" }, config: meta.config, generationConfig: meta.generationConfig, model, tokenizer, dispatched: false, dtype: meta.dtype ?? "float32" });
    for (const { at, sae } of saes) lm.addSae(sae, { at, useErrorTerm: true });
    lm.server = { name, backend };
    return lm;
  }

  /**
   * For a model from fromServer: its name there (its SAEs are the server's, spliced there) and the server it was
   * found on, where its remote calls go unless a call names another.
   */
  private server: { name: string; backend: Backend } | null = null;

  /** Splices an SAE (see the local model's addSae); a server's model takes its SAEs from the server only. */
  override addSae(sae: SparseAutoencoder, options: { at?: string; useErrorTerm?: boolean } = {}): this {
    this.refuseServerSaes("addSae");
    return super.addSae(sae, options);
  }

  override removeSae(at?: string): void {
    this.refuseServerSaes("removeSae");
    super.removeSae(at);
  }

  private refuseServerSaes(what: string): void {
    if (this.server !== null) {
      throw new TraceError(`${what}: ${this.server.name} is a server's model, whose SAEs are the server's (\`tsight serve --sae\`; lm.saes lists them): an SAE of your own runs on a model loaded here, or is sent in vars and applied in the intervention`);
    }
  }

  /** The key servers know this model by: `LanguageModel:{"repo_id":..., "revision":null}`. */
  toModelKey(): string {
    return toModelKey("LanguageModel", this.name, null);
  }

  override trace<R>(input: ModelInput, fn: InterventionFn<EnvoyTree<M>, R>, options: Nonblocking): Promise<RemoteJob<R>>;
  override trace<R>(input: ModelInput, fn: InterventionFn<EnvoyTree<M>, R>, options?: RemoteOptions): Promise<R>;
  override trace<R>(fn: TraceFn<M, R>, options: Nonblocking): Promise<RemoteJob<R>>;
  override trace<R>(fn: TraceFn<M, R>, options?: RemoteOptions): Promise<R>;
  override trace<R>(a: ModelInput | TraceFn<M, R>, b?: InterventionFn<EnvoyTree<M>, R> | RemoteOptions, c?: RemoteOptions): Promise<R | RemoteJob<R>> {
    const opts = (typeof a === "function" ? b : c) as RemoteOptions | undefined;
    if (!isRemote(opts)) return typeof a === "function" ? super.trace(a as TraceFn<M, R>, opts) : super.trace(a, b as InterventionFn<EnvoyTree<M>, R>, opts);
    return this.calling("trace", [a, b, c], () => this.remote<R>("trace", a, typeof a === "function" ? undefined : (b as InterventionFn), opts!, undefined));
  }

  override scan<R>(input: ModelInput, fn: InterventionFn<EnvoyTree<M>, R>, options: Nonblocking): Promise<RemoteJob<R>>;
  override scan<R>(input: ModelInput, fn: InterventionFn<EnvoyTree<M>, R>, options?: RemoteOptions): Promise<R>;
  override scan<R>(fn: TraceFn<M, R>, options: Nonblocking): Promise<RemoteJob<R>>;
  override scan<R>(fn: TraceFn<M, R>, options?: RemoteOptions): Promise<R>;
  override scan<R>(a: ModelInput | TraceFn<M, R>, b?: InterventionFn<EnvoyTree<M>, R> | RemoteOptions, c?: RemoteOptions): Promise<R | RemoteJob<R>> {
    const opts = (typeof a === "function" ? b : c) as RemoteOptions | undefined;
    if (!isRemote(opts)) return typeof a === "function" ? super.scan(a as TraceFn<M, R>, opts) : super.scan(a, b as InterventionFn<EnvoyTree<M>, R>, opts);
    return this.calling("scan", [a, b, c], () => this.remote<R>("scan", a, typeof a === "function" ? undefined : (b as InterventionFn), opts!, undefined));
  }

  override generate(input: ModelInput, options: GenerateCall): Promise<GenerateOutput>;
  override generate(input: ModelInput, options: GenerateCall, traceOptions: Nonblocking): Promise<RemoteJob<GenerateOutput>>;
  override generate(input: ModelInput, options: GenerateCall, traceOptions: RemoteOptions): Promise<GenerateOutput>;
  override generate<R>(input: ModelInput, options: GenerateCall, fn: InterventionFn<EnvoyTree<M>, R>, traceOptions: Nonblocking): Promise<RemoteJob<GenerateOutput & { value: R }>>;
  override generate<R>(input: ModelInput, options: GenerateCall, fn: InterventionFn<EnvoyTree<M>, R>, traceOptions?: RemoteOptions): Promise<GenerateOutput & { value: R }>;
  override generate<R>(fn: TraceFn<M, R>, options: GenerateCall, traceOptions?: RemoteOptions): Promise<GenerateOutput & { value: R }>;
  override generate<R>(a: ModelInput | TraceFn<M, R>, options: GenerateCall, fn?: InterventionFn<EnvoyTree<M>, R> | RemoteOptions, traceOptions?: RemoteOptions): Promise<unknown> {
    // (input, options, traceOptions): a generation with no intervention.
    const opts = (typeof a === "function" || (fn !== undefined && typeof fn !== "function") ? fn : traceOptions) as RemoteOptions | undefined;
    if (!isRemote(opts)) return (super.generate as (...x: unknown[]) => Promise<unknown>)(a, options, fn, traceOptions);
    return this.calling("generate", [a, options, fn, traceOptions], () => {
      const spec: GenerateSpec = { maxNewTokens: options.maxNewTokens, doSample: options.doSample, temperature: options.temperature, topK: options.topK, topP: options.topP, seed: options.seed, repetitionPenalty: options.repetitionPenalty, minNewTokens: options.minNewTokens, stopStrings: options.stopStrings as string | string[] | undefined, numReturnSequences: options.numReturnSequences, eosTokenId: options.eosTokenId, padTokenId: options.padTokenId };
      const body = typeof a === "function" ? undefined : typeof fn === "function" ? (fn as InterventionFn) : async () => undefined;
      return this.remote("generate", a, body, opts!, spec, options.onToken);
    });
  }

  /**
   * Several traces and generations as one unit. Remotely it is one job: values stay on the server between the
   * traces (inner functions may use the session function's variables) and only what it returns comes back.
   */
  override session<R>(fn: (s: Session<M>) => R | Promise<R>, options: Nonblocking): Promise<RemoteJob<R>>;
  override session<R>(fn: (s: Session<M>) => R | Promise<R>, options?: RemoteOptions): Promise<R>;
  override session<R>(fn: (s: Session<M>) => R | Promise<R>, options?: RemoteOptions): Promise<R | RemoteJob<R>> {
    if (!isRemote(options)) return super.session(fn, options);
    return this.calling("session", [fn, options], () => this.remote<R>("session", fn, undefined, options!, undefined));
  }

  /** Run options include the remote ones. */
  protected override runOptionNames(): readonly string[] {
    return [...RUN_OPTIONS, ...REMOTE_OPTIONS];
  }

  /** Builds the job, checks its code, and runs it where the options say. */
  private async remote<R>(kind: JobKind, a: unknown, fn: InterventionFn | undefined, options: RemoteOptions, generate: GenerateSpec | undefined, onToken?: GenerateCall["onToken"]): Promise<R | RemoteJob<R>> {
    const callSite = userFrame(new Error().stack);
    const form = typeof a === "function" ? "tracer" : "invoke";
    const code = form === "tracer" ? (a as Function) : fn!;
    let source: string;
    try {
      source = interventionSource(code).source;
    } catch (e) {
      throw locateSourceError(e, Function.prototype.toString.call(code), callSite, code);
    }
    // Text for a model served without a tokenizer is refused here, with the reason, before anything is sent.
    const text = typeof a === "string" ? a : Array.isArray(a) ? a.find((x) => typeof x === "string") : undefined;
    if (form === "invoke" && text !== undefined && !this.tokenizer.hasText) this.tokenizer.encode(text as string);
    const edits = this.editFunctions().map((e) => interventionSource(e).source);
    const tensors = new Map<string, Tensor>();
    const request: JobRequest = {
      model: this.toModelKey(),
      kind,
      form,
      source,
      input: form === "invoke" ? encodeValue(a, tensors, "input") : undefined,
      vars: encodeValue(options.vars ?? {}, tensors, "vars", helperEncoder(options.vars ?? {})),
      edits,
      rename: Object.keys(this.renames).length ? (JSON.parse(JSON.stringify(this.renames)) as Record<string, string | string[]>) : undefined,
      grad: options.grad === true,
      generate,
      webhook: options.webhook,
      webhookSecret: options.webhookSecret,
      localTimeoutMs: options.localTimeoutMs,
      timeoutMs: timeoutMs(options.timeout),
    };
    const located = (e: unknown) => Promise.reject(withUserLine(e, callSite, source, code));
    const print = options.print === undefined ? (stderr()?.isTTY ? stderr() : undefined) : (options.print ?? undefined);
    // A blocking server job's progress display prints log lines itself (on a terminal, above its status line).
    const sandboxed = options.remote === "local" && options.backend === undefined;
    const log = logSink(options.logs, print, !sandboxed && options.blocking !== false);
    const tokens = onToken ? this.tokenStream(onToken) : undefined;
    const onEvent = async (event: JobEvent) => {
      if (event.type === "log") log?.(event.text);
      else if (event.type === "stream") await tokens?.(event);
    };
    if (options.remote === "local" && options.backend === undefined) {
      const pending: Promise<void>[] = [];
      const value = await runLocally(request, tensors, this.unedited() as unknown as LocalLanguageModel, { timeout: options.timeout, onEvent: (e) => void pending.push(onEvent(e)) }).catch(located);
      await Promise.all(pending);
      return value as R;
    }
    const backend = isBackend(options.backend)
      ? options.backend
      : typeof options.backend === "string" && options.apiKey
        ? new HttpBackend({ url: options.backend, apiKey: options.apiKey })
        : options.backend === undefined && options.apiKey === undefined && this.server
          ? this.server.backend
          : resolveRemoteTarget({ backend: options.backend as string | undefined, remote: true });
    const job = (await backend.submit(request, tensors)) as RemoteJob<R>;
    const submitted = [request.source, ...edits];
    job.localHandler = (event) => runLocalStep(event, submitted);
    if (options.blocking === false) return job;
    return job.wait({ print, decode: (ids) => this.tokenizer.decode(ids), onEvent: ({ event }) => onEvent(event), onLocal: (event) => runLocalStep(event, submitted) }).catch(located);
  }

  /** onToken for streamed steps: each row's new token and its text, decoded incrementally as locally. */
  private tokenStream(onToken: NonNullable<GenerateCall["onToken"]>): (event: Extract<JobEvent, { type: "stream" }>) => Promise<void> {
    const decoders: ReturnType<Tokenizer["decodeStream"]>[] = [];
    return async ({ tokens, step }) => {
      const text = tokens.map((t, row) => (this.tokenizer.hasText ? (decoders[row] ??= this.tokenizer.decodeStream()).push(t) : ""));
      await onToken({ tokens, step, text });
    };
  }
}

function isRemote(o: RemoteOptions | undefined): boolean {
  return !!o && typeof o === "object" && (o.remote === true || o.remote === "local" || o.backend !== undefined);
}

function stderr(): (StatusStream & { isTTY?: boolean }) | undefined {
  return (globalThis as { process?: { stderr?: StatusStream } }).process?.stderr;
}

/**
 * Where log lines go: the `logs` option, else where progress is printed, else stderr; nowhere twice (a progress
 * display that shows them on the same stream prints them itself).
 */
function logSink(logs: RemoteOptions["logs"], print: StatusStream | undefined, displayed: boolean): ((line: string) => void) | undefined {
  if (logs === null) return undefined;
  if (typeof logs === "function") return logs;
  const stream = logs ?? print ?? stderr();
  if (!stream || (displayed && stream === print)) return undefined;
  return (text) => void stream.write(text.endsWith("\n") ? text : `${text}\n`);
}

/**
 * How functions in a remote job's vars travel: by source, each checked like an intervention (no free variables),
 * where the top-level helpers may call each other by name. A researcher's small library of helpers goes explicitly.
 */
function helperEncoder(vars: Record<string, unknown>): FunctionEncoder {
  const siblings = Object.entries(vars).flatMap(([k, v]) => (typeof v === "function" ? [k] : []));
  return (fn, where) => {
    try {
      return interventionSource(fn, { extraAllowed: siblings }).source;
    } catch (e) {
      if (e instanceof Error) e.message = `${where}: ${e.message}`;
      throw e;
    }
  };
}

/** The `timeout` option (seconds) as a job's timeoutMs; anything but a positive number of seconds is an OptionsError. */
function timeoutMs(seconds: unknown): number | undefined {
  if (seconds === undefined) return undefined;
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds <= 0) throw new OptionsError(`timeout is a number of seconds, more than 0; got ${typeof seconds === "string" ? JSON.stringify(seconds.slice(0, 40)) : String(seconds)}`);
  return Math.max(1, Math.round(seconds * 1000));
}
