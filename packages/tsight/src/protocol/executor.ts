/**
 * Running a job: the contract between whoever receives a job (the server's workers, or `remote: "local"`) and
 * what executes its code (the sandbox). Requests are checked here, so every runner refuses the same bad input
 * with the same VALIDATION errors.
 */
import type { ModelInput } from "../intervention/index.js";
import type { LanguageModel } from "../intervention/index.js";
import type { Tensor } from "../tensor/index.js";
import { CodecError, decodeEnvelope, decodeValue, FunctionSource, MAX_JSON_VALUES } from "./codec.js";
import { ClientError } from "./errors.js";
import { canonicalModelKey } from "./model-key.js";
// The engine's own bounds on stop strings and returned sequences, checked at submission (a module of constants alone).
import { MAX_RETURN_SEQUENCES, MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS } from "../models/generate-bounds.js";
import type { GenerateSpec, JobEvent, JobKind, JobRequest } from "./wire.js";

/** A job with its values decoded (tensors restored). */
export interface DecodedJob {
  model: string;
  kind: JobKind;
  form: "invoke" | "tracer";
  source: string;
  input?: ModelInput;
  vars: Record<string, unknown>;
  edits: string[];
  rename: Record<string, string | string[]>;
  grad: boolean;
  generate?: GenerateSpec;
  webhook?: string;
  webhookSecret?: string;
  /** The job's own limit for a hybrid step's answer (ms); the runner caps it with its own. */
  localTimeoutMs?: number;
  /** The job's own run-time limit (ms); the runner caps it with its own. */
  timeoutMs?: number;
}

/** What the runner gives the executor. */
/** What a job that ran past its deadline is told: the limit it had, where it is known. */
export function pastDeadline(timeLimitMs: number | undefined, what = "the job"): string {
  return `${what} ran past its deadline${timeLimitMs === undefined ? "" : ` (its time limit: ${formatLimit(timeLimitMs)}; a job asks for less with its timeout option, up to the server's limit)`}`;
}

function formatLimit(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}

export interface ExecutionContext {
  /** Sends an event to the client (log lines, streamed tokens, hybrid-step requests). */
  emit(event: JobEvent): void;
  /** Aborted when the job is cancelled. */
  signal: AbortSignal;
  /** Wall-clock deadline (ms since the epoch). */
  deadline: number;
  /** The time the job had from its start to its deadline (ms), for messages that say the limit. */
  timeLimitMs?: number;
  /** Bytes of tensors the job's code may create, in all. */
  memoryLimitBytes: number;
  /** Most tokens (rows × positions, generated ones included) the job's inputs may have. */
  maxInputTokens?: number;
  /** Told, when the job's code is done, the most memory it held at once (so a host can give big jobs' memory back). */
  onFinish?(stats: { peakBytes: number }): void;
  /** For hybrid steps: resolves with the client's answer to call `call` (see the local event). */
  awaitLocal?(call: string): Promise<unknown>;
  /**
   * Whether the job was told to stop, read without the event loop (a forward pass keeps the thread busy, so the
   * abort event may not have been delivered yet). Executors check it, with the deadline, at every module call.
   */
  stopRequested?(): boolean;
}

/** The model an executor runs jobs on: tsight's tracing LanguageModel (the remote-capable one users import is a subclass). */
export type ExecutionModel = LanguageModel;

/** Executes a job's code on a loaded model and returns the value to send back. Errors carry a code. */
export interface JobExecutor {
  execute(job: DecodedJob, model: ExecutionModel, ctx: ExecutionContext): Promise<unknown>;
}

export class ValidationError extends ClientError {}

const KINDS: readonly JobKind[] = ["trace", "generate", "scan", "session"];
const MAX_SOURCE = 256 * 1024;
const MAX_URL = 2048;
const MAX_RENAMES = 256;

/** Checks and decodes a request given as an envelope (binary) or as JSON without tensors. */
export function decodeJob(body: Uint8Array | JobRequest): DecodedJob {
  let req: unknown;
  let tensors: Map<string, Tensor> = new Map();
  if (body instanceof Uint8Array) {
    try {
      ({ payload: req, tensors } = decodeEnvelope(body, MAX_JSON_VALUES));
    } catch (e) {
      throw new ValidationError(`the request body is not a valid envelope: ${(e as Error).message}`);
    }
  } else req = body;
  const r = req as Partial<JobRequest>;
  if (typeof r !== "object" || r === null) throw new ValidationError("the request must be a JSON object");
  if (typeof r.model !== "string") throw new ValidationError('"model" (a model key) is required');
  let model: string;
  try {
    model = canonicalModelKey(r.model);
  } catch (e) {
    throw new ValidationError((e as Error).message);
  }
  if (!KINDS.includes(r.kind as JobKind)) throw new ValidationError(`"kind" must be one of ${KINDS.join(", ")}`);
  if (r.form !== "invoke" && r.form !== "tracer") throw new ValidationError('"form" must be "invoke" or "tracer"');
  if (typeof r.source !== "string" || !r.source.trim()) throw new ValidationError('"source" (the intervention function) is required');
  if (r.source.length > MAX_SOURCE) throw new ValidationError(`"source" is longer than ${MAX_SOURCE} characters`);
  if (r.form === "invoke" && r.input === undefined) throw new ValidationError('form "invoke" needs an "input"');
  const edits = r.edits ?? [];
  if (!Array.isArray(edits) || !edits.every((e) => typeof e === "string" && e.length <= MAX_SOURCE)) throw new ValidationError('"edits" must be a list of function sources');
  const rename = r.rename ?? {};
  const alias = (v: unknown) => typeof v === "string" && v.length <= 256;
  const aliases = (v: unknown) => alias(v) || (Array.isArray(v) && v.length >= 1 && v.length <= 16 && v.every(alias));
  if (typeof rename !== "object" || rename === null || Array.isArray(rename) || Object.keys(rename).length > MAX_RENAMES || !Object.entries(rename).every(([k, v]) => k.length <= 256 && aliases(v))) {
    throw new ValidationError(`"rename" must be an object of at most ${MAX_RENAMES} module names (strings) to aliases (a string, or a list of at most 16)`);
  }
  if (r.kind === "generate") {
    const g = r.generate as GenerateSpec | undefined;
    if (!g || !Number.isInteger(g.maxNewTokens) || g.maxNewTokens < 0 || g.maxNewTokens > 4096) throw new ValidationError('a generate job needs "generate": { "maxNewTokens": 0..4096 }');
    checkGenerateSpec(g);
  }
  if (r.webhook !== undefined && !isHttpUrl(r.webhook)) throw new ValidationError(`"webhook" must be an http or https URL of at most ${MAX_URL} characters`);
  if (r.webhookSecret !== undefined) {
    if (typeof r.webhookSecret !== "string" || r.webhookSecret.length < 16 || r.webhookSecret.length > 256) throw new ValidationError('"webhookSecret" must be a string of 16 to 256 characters');
    if (r.webhook === undefined) throw new ValidationError('"webhookSecret" signs a webhook: give "webhook" too');
  }
  if (r.grad !== undefined && typeof r.grad !== "boolean") throw new ValidationError(`"grad" must be true or false, got ${JSON.stringify(r.grad)?.slice(0, 40)}`);
  if (r.localTimeoutMs !== undefined && !(Number.isSafeInteger(r.localTimeoutMs) && r.localTimeoutMs > 0)) throw new ValidationError('"localTimeoutMs" must be a whole number of milliseconds, more than 0');
  if (r.timeoutMs !== undefined && !(Number.isSafeInteger(r.timeoutMs) && r.timeoutMs > 0)) throw new ValidationError('"timeoutMs" must be a whole number of milliseconds, more than 0');
  let input: unknown, vars: unknown;
  try {
    input = r.input === undefined ? undefined : decodeValue(r.input, tensors);
    vars = r.vars === undefined ? {} : decodeValue(r.vars, tensors);
  } catch (e) {
    throw new ValidationError(e instanceof CodecError ? e.message : `bad encoded value: ${(e as Error).message}`);
  }
  if (typeof vars !== "object" || vars === null || Array.isArray(vars)) throw new ValidationError('"vars" must be an object');
  if (input !== undefined && helpersIn(input).length) throw new ValidationError('"input" cannot hold functions (helpers go in "vars")');
  const helpers = helpersIn(vars);
  if (helpers.length > MAX_HELPERS) throw new ValidationError(`"vars" holds ${helpers.length} functions; a job may send at most ${MAX_HELPERS}`);
  for (const h of helpers) if (h.source.length > MAX_HELPER_CHARS) throw new ValidationError(`a function in "vars" is ${h.source.length} characters long; at most ${MAX_HELPER_CHARS}`);
  return {
    model,
    kind: r.kind as JobKind,
    form: r.form,
    source: r.source,
    input: input as ModelInput | undefined,
    vars: vars as Record<string, unknown>,
    edits,
    rename,
    grad: r.grad === true,
    generate: r.generate,
    webhook: r.webhook,
    webhookSecret: r.webhookSecret,
    localTimeoutMs: r.localTimeoutMs,
    timeoutMs: r.timeoutMs,
  };
}

function isHttpUrl(s: unknown): boolean {
  if (typeof s !== "string" || s.length > MAX_URL) return false;
  try {
    const url = new URL(s);
    return (url.protocol === "http:" || url.protocol === "https:") && url.hostname !== "";
  } catch {
    return false;
  }
}

/** Most helper functions one job's vars may hold, and the longest source of one. */
const MAX_HELPERS = 64;
const MAX_HELPER_CHARS = 64 * 1024;

/** The functions (by source) in a decoded value, through arrays and objects. */
export function helpersIn(value: unknown, out: FunctionSource[] = [], depth = 0): FunctionSource[] {
  if (value instanceof FunctionSource) out.push(value);
  else if (depth < 64 && Array.isArray(value)) for (const v of value) helpersIn(v, out, depth + 1);
  else if (depth < 64 && value !== null && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) for (const v of Object.values(value)) helpersIn(v, out, depth + 1);
  return out;
}


/** The generation settings checked at submission (a bad one is the request's error, not the job's). */
function checkGenerateSpec(g: GenerateSpec): void {
  const id = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 31;
  const bad = (field: string, want: string, v: unknown) => new ValidationError(`"generate.${field}" must be ${want}, got ${JSON.stringify(v)?.slice(0, 80)}`);
  if (g.doSample !== undefined && typeof g.doSample !== "boolean") throw bad("doSample", "true or false", g.doSample);
  if (g.temperature !== undefined && !(typeof g.temperature === "number" && g.temperature > 0 && Number.isFinite(g.temperature))) throw bad("temperature", "a number > 0", g.temperature);
  if (g.topK !== undefined && !(id(g.topK) && g.topK > 0)) throw bad("topK", "a whole number from 1", g.topK);
  if (g.topP !== undefined && !(typeof g.topP === "number" && g.topP > 0 && g.topP <= 1)) throw bad("topP", "a number in (0, 1]", g.topP);
  if (g.seed !== undefined && !Number.isSafeInteger(g.seed)) throw bad("seed", "a whole number", g.seed);
  if (g.repetitionPenalty !== undefined && !(typeof g.repetitionPenalty === "number" && g.repetitionPenalty > 0 && Number.isFinite(g.repetitionPenalty))) throw bad("repetitionPenalty", "a number > 0", g.repetitionPenalty);
  if (g.minNewTokens !== undefined && !(id(g.minNewTokens) && g.minNewTokens <= 4096)) throw bad("minNewTokens", "a whole number from 0 to 4096", g.minNewTokens);
  if (g.padTokenId !== undefined && !id(g.padTokenId)) throw bad("padTokenId", "a token id", g.padTokenId);
  const stops = typeof g.stopStrings === "string" ? [g.stopStrings] : g.stopStrings;
  const stop = (s: unknown) => typeof s === "string" && s.length > 0 && s.length <= MAX_STOP_STRING_CHARS;
  if (stops !== undefined && !(Array.isArray(stops) && stops.length <= MAX_STOP_STRINGS && stops.every(stop))) throw bad("stopStrings", `a string or a list of at most ${MAX_STOP_STRINGS}, each of 1 to ${MAX_STOP_STRING_CHARS} characters`, g.stopStrings);
  if (g.numReturnSequences !== undefined && !(id(g.numReturnSequences) && g.numReturnSequences >= 1 && g.numReturnSequences <= MAX_RETURN_SEQUENCES)) throw bad("numReturnSequences", `a whole number from 1 to ${MAX_RETURN_SEQUENCES}`, g.numReturnSequences);
  const eos = g.eosTokenId;
  if (eos !== undefined && eos !== null && !id(eos) && !(Array.isArray(eos) && eos.length <= 64 && eos.every(id))) throw bad("eosTokenId", "a token id, a list of at most 64, or null", eos);
}