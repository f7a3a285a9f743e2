/**
 * The remote protocol, version 1: what clients and servers exchange. Plain data only (no classes), so any
 * language can speak it: JSON, with tensors as safetensors (see codec.ts for the envelope).
 *
 *   POST   /v1/jobs                 submit a JobRequest                 -> 202 { id, status }
 *                                    (an Idempotency-Key used before: the same body gives that job, another 422)
 *   GET    /v1/jobs                 the key's jobs, newest first        -> { jobs: JobState[] }
 *                                    (?status=S, ?limit=1..100, ?before=<id> for the next page)
 *   GET    /v1/jobs/:id             JobState
 *   GET    /v1/jobs/:id/events      server-sent JobEvents, resumable with Last-Event-ID (?follow=0: only those
 *                                    stored now, then the end; an id past the job's last event: 400)
 *   POST   /v1/jobs/:id/local/:call the client's answer to a hybrid step
 *   GET    /v1/jobs/:id/result      the returned value (envelope), while kept
 *   DELETE /v1/jobs/:id             cancel
 *   GET    /v1/models, /v1/models/:key/meta, /v1/status, /healthz, /metrics
 *
 * Every request carries `tsight-protocol: 1`; a server that cannot serve it answers 426 with the versions it
 * speaks. Authentication: `Authorization: Bearer <api key>`.
 *
 * When a job with a `webhook` ends, the server POSTs a WebhookPayload there (see webhook.ts for the signature).
 */

export const PROTOCOL_VERSION = 1;
export const SUPPORTED_PROTOCOLS: readonly number[] = [1];
export const PROTOCOL_HEADER = "tsight-protocol";
/** Content type of the binary envelope: a safetensors file whose metadata holds the JSON. */
export const ENVELOPE_TYPE = "application/vnd.tsight.v1+safetensors";

export type ErrorCode = "AUTH" | "PROTOCOL" | "VALIDATION" | "NOT_ALLOWED" | "USER_CODE" | "TIMEOUT" | "MEMORY" | "CANCELLED" | "PREEMPTED" | "UNAVAILABLE" | "INTERNAL";

/** Whether trying the same job again can help, per code. */
export const RETRYABLE: Readonly<Record<ErrorCode, boolean>> = {
  AUTH: false,
  PROTOCOL: false,
  VALIDATION: false,
  NOT_ALLOWED: false,
  USER_CODE: false,
  TIMEOUT: false,
  MEMORY: false,
  CANCELLED: false,
  PREEMPTED: true,
  UNAVAILABLE: true,
  INTERNAL: true,
};

/** An error as data. `type` is the error class the code raised (e.g. "OutOfOrderError", "RangeError"). */
export interface ErrorInfo {
  code: ErrorCode;
  type: string;
  message: string;
  retryable: boolean;
  /** Where in the intervention source the error arose (1-based), for USER_CODE errors. */
  line?: number;
  column?: number;
  /** The error's stack inside the job, with frames of the intervention source. */
  stack?: string;
}

export type JobKind = "trace" | "generate" | "scan" | "session";

/** Job states, in the order a job moves through them. */
export type JobStatus = "RECEIVED" | "QUEUED" | "DISPATCHED" | "RUNNING" | "COMPLETED" | "ERROR" | "CANCELLED";
export const TERMINAL: readonly JobStatus[] = ["COMPLETED", "ERROR", "CANCELLED"];

/** Options of a generate job (GenerateOptions of the client, as data). */
export interface GenerateSpec {
  maxNewTokens: number;
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  repetitionPenalty?: number;
  minNewTokens?: number;
  stopStrings?: string | string[];
  numReturnSequences?: number;
  eosTokenId?: number | number[] | null;
  padTokenId?: number;
}

/** What a client submits. Encoded values may hold tensors (see codec.ts). */
export interface JobRequest {
  /** Model key, e.g. `LanguageModel:{"repo_id":"stdlib-gpt2","revision":null}`. */
  model: string;
  kind: JobKind;
  /**
   * The intervention: the source of a JavaScript function. For `form: "invoke"` it is `(m, tr) => ...` and runs
   * on `input`; for `form: "tracer"` it is `(tr) => ...` and creates invokes itself.
   */
  source: string;
  form: "invoke" | "tracer";
  /** The model input for form "invoke" (encoded value). */
  input?: unknown;
  /** Values the code reads as `tr.vars` (encoded value: an object). */
  vars?: unknown;
  /** Persistent interventions (model.edit) to apply first, as sources of `(m, tr) => ...`. */
  edits?: string[];
  /** Extra module names (the client model's `rename`): child name, dotted path or pattern -> alias or aliases. */
  rename?: Record<string, string | string[]>;
  /** Record gradients (trace option `grad`). */
  grad?: boolean;
  generate?: GenerateSpec;
  /** Where to POST a WebhookPayload when the job ends (an http or https URL). */
  webhook?: string;
  /**
   * Signs the webhook's body (16 to 256 characters; header `tsight-signature`, see webhook.ts). The server keeps it
   * only until the delivery is over.
   */
  webhookSecret?: string;
  /**
   * How long a hybrid step (tr.local) may wait for the client's answer, in ms; at most the server's own limit
   * (which is also the default). Past it the job ends with TIMEOUT.
   */
  localTimeoutMs?: number;
  /** How long the job may run once dispatched, in ms; at most the server's own limit (which is also the default). */
  timeoutMs?: number;
}

export interface JobState {
  id: string;
  status: JobStatus;
  model: string;
  kind: JobKind;
  /** Place in the queue (0: next) while QUEUED. */
  position?: number;
  created: string;
  updated: string;
  error?: ErrorInfo;
  /** Whether GET /result can give the value now. */
  result: "none" | "available" | "expired";
  /** When the result will be deleted (ISO time). */
  expires?: string;
  /** Where the job's webhook delivery stands, for a job submitted with one. */
  webhook?: "pending" | "delivered" | "failed";
}

/** What the server POSTs to a job's webhook when the job ends. */
export interface WebhookPayload {
  id: string;
  status: "COMPLETED" | "ERROR" | "CANCELLED";
  model: string;
  kind: JobKind;
  error?: ErrorInfo;
  /** When the result will be deleted (ISO time), for a COMPLETED job. */
  resultExpires?: string;
}

/** The header of a webhook's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. */
export const WEBHOOK_SIGNATURE_HEADER = "tsight-signature";

/** Events of a job, in order; each has a sequence number (the SSE id). */
export type JobEvent =
  | { type: "status"; status: JobStatus; position?: number }
  | { type: "log"; text: string }
  | { type: "stream"; step: number; tokens: number[] }
  /**
   * A hybrid step: run on the client, with `vals` (base64 envelope), the function at call site `step` of the code
   * the client submitted (the `step`-th function written at a `.local(` call, in source order, over the source
   * and then its edits; see localStepSites).
   */
  | { type: "local"; call: string; step: number; vals: string }
  | { type: "error"; error: ErrorInfo }
  | { type: "done"; status: JobStatus };

export interface SequencedEvent {
  seq: number;
  event: JobEvent;
}

/** What a served model's weights are kept as (tensor/packed.ts's WeightDType). */
export type ServedDType = "float32" | "bfloat16" | "float16" | "int8" | "int4";

/** What GET /v1/models lists. */
export interface ModelInfo {
  key: string;
  name: string;
  modelType: string;
  /**
   * loaded: ready to run jobs; loading; available: served, not loaded yet; unserved: no live worker runs it now (jobs
   * wait for one); failed: it runs no jobs (it failed to load and is retried, or its jobs broke too many worker threads
   * and it runs none until the server restarts: submissions get 503).
   */
  state: "loaded" | "loading" | "available" | "unserved" | "failed";
  queued: number;
  /** What the served weights are kept as; absent (a server from before dtypes): float32. */
  dtype?: ServedDType;
}

/** What GET /v1/models/:key/meta gives: enough to build a meta model with no weights. */
export interface ModelMeta {
  key: string;
  config: Record<string, unknown>;
  generationConfig: Record<string, unknown> | null;
  /** tokenizer.json; null for a model served without one (it takes token ids only). */
  tokenizer: Record<string, unknown> | null;
  tokenizerConfig: Record<string, unknown>;
  /** SAEs the server splices into this model (with the error term): where, and each one's cfg.json. */
  saes?: { at: string; config: Record<string, unknown> }[];
  /** What the served weights are kept as; absent: float32. */
  dtype?: ServedDType;
}

/** The body of every error response. */
export interface ErrorBody {
  error: ErrorInfo;
  /** For 426: the protocol versions the server speaks. */
  supported?: number[];
}
