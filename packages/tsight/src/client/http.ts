/**
 * HttpBackend: the remote protocol (protocol.ts) over HTTP with `fetch`. Every request says which protocol it
 * speaks and carries the API key; an error response becomes the typed error its body describes. Job events are
 * read as server-sent events and survive dropped connections: the stream is reopened with `Last-Event-ID`, with
 * backoff, until the job's `done` event.
 *
 *   const backend = new HttpBackend({ url: "http://127.0.0.1:8787", apiKey });
 *   const job = await backend.submit(request, tensors);
 *   for await (const { seq, event } of backend.events(job.id)) ...
 */
import type { Tensor } from "../tensor/index.js";
import type { Backend, EventsOptions, ListJobsOptions, SubmitOptions } from "./backend.js";
import { decodeValue, encodeEnvelope, packValue, unpackValue } from "../protocol/codec.js";
import { ClientError, errorFromInfo, infoFromError, RemoteError } from "../protocol/errors.js";
import { RemoteJob } from "./job.js";
import {
  ENVELOPE_TYPE,
  PROTOCOL_HEADER,
  PROTOCOL_VERSION,
  RETRYABLE,
  type ErrorCode,
  type ErrorInfo,
  type JobEvent,
  type JobRequest,
  type JobState,
  type ModelInfo,
  type ModelMeta,
  type SequencedEvent,
} from "../protocol/wire.js";
import { normalizeServerUrl } from "./server-url.js";
import { parseServerSentEvents } from "./sse.js";

export interface RetryOptions {
  /**
   * How many times to try again after a failure in a row (reconnecting events; idempotent requests). Default 8: with
   * the default waits, about 23 s, longer than a server's restart (5 tries, 7.75 s, gave up on one that took 8 s).
   */
  attempts?: number;
  /** The first wait; it doubles with each failure in a row. Default 250 ms. */
  baseDelayMs?: number;
  maxDelayMs?: number;
}

export interface HttpBackendOptions {
  /** The server's base URL, e.g. `https://tsight.example.org` or `http://127.0.0.1:8787`. */
  url: string;
  /** Sent as `Authorization: Bearer <apiKey>`; without it requests go unauthenticated. */
  apiKey?: string;
  /** Replaces the global fetch (tests, proxies, custom agents). */
  fetch?: typeof fetch;
  retry?: RetryOptions;
}

/** The server could not be reached, or the connection broke and could not be made again. */
export class ConnectionError extends RemoteError {
  override readonly name: string = "ConnectionError";
  constructor(message: string, cause?: unknown) {
    super({ code: "INTERNAL", type: "ConnectionError", message, retryable: true });
    if (cause !== undefined) Object.defineProperty(this, "cause", { value: cause, enumerable: false });
  }
}

/**
 * A job's events broke off before its end and could not be read again; the job goes on on the server. Its message
 * tells code how to follow the job again; `reason` is the same without that advice, for callers (the CLI) that give
 * their own. Named ConnectionError still: it is one, and callers (the workbench) tell errors apart by name.
 */
export class LostEventsError extends ConnectionError {
  constructor(
    readonly jobId: string,
    /** The last event given before the loss (resume after it with `lastEventId`); undefined when none was. */
    readonly lastEventId: number | undefined,
    readonly reason: string,
    cause?: unknown,
  ) {
    super(`${reason}. The job goes on on the server: follow it again with RemoteJob.attach(id, backend).`, cause);
  }
}

type Init = {
  body?: RequestInit["body"];
  type?: string;
  accept?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Safe to send again after a connection failure or a 502/503/504. */
  idempotent?: boolean;
};

/** The wait a refusal's Retry-After asked for (ms), by the error it became: an event stream's reopening waits it. */
const askedWaits = new WeakMap<object, number>();

export class HttpBackend implements Backend {
  /** The base URL, without a trailing slash. */
  readonly url: string;
  private readonly apiKey: string | undefined;
  private readonly fetchImpl: typeof fetch;
  private readonly retry: Required<RetryOptions>;

  constructor(options: HttpBackendOptions) {
    this.url = normalizeServerUrl(options.url);
    this.apiKey = options.apiKey;
    this.fetchImpl = options.fetch ?? ((input, init) => fetch(input, init));
    this.retry = { attempts: 8, baseDelayMs: 250, maxDelayMs: 5000, ...options.retry };
  }

  /**
   * Submits a job; values in `request` refer to `tensors` by name. Sent as an envelope, or JSON without tensors.
   * A broken connection or a 429/502/503/504 sends it again, with backoff and the same `idempotency-key` and bytes,
   * so a server that honours the key makes one job however often it arrives. A key used before for another request
   * is refused (RemoteError, 422 NOT_ALLOWED), not sent again.
   */
  async submit(request: JobRequest, tensors: ReadonlyMap<string, Tensor> = new Map(), options: SubmitOptions = {}): Promise<RemoteJob> {
    const key = options.idempotencyKey ?? newIdempotencyKey();
    // The server's limit: a longer key would be refused there (400), after the body was sent.
    if (typeof key !== "string" || !/^[\x21-\x7e]{1,200}$/.test(key)) throw new ClientError("idempotencyKey must be 1 to 200 printable ASCII characters without spaces");
    const body = tensors.size > 0 ? { body: encodeEnvelope(request, tensors), type: ENVELOPE_TYPE } : { body: JSON.stringify(request), type: "application/json" };
    const init: Init = { ...body, headers: { [IDEMPOTENCY_HEADER]: key }, idempotent: true };
    const answer = await this.json<{ id?: unknown }>(await this.request("POST", "/v1/jobs", init), "POST /v1/jobs");
    if (typeof answer.id !== "string" || !answer.id) throw protocolError(`POST /v1/jobs answered without a job id: ${JSON.stringify(answer).slice(0, 200)}`);
    return new RemoteJob(answer.id, this);
  }

  /** The API key's jobs, newest first; page with `before` (the last id of the previous page). */
  async list(options: ListJobsOptions = {}): Promise<JobState[]> {
    const query = new URLSearchParams();
    if (options.status !== undefined) query.set("status", options.status);
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    if (options.before !== undefined) query.set("before", options.before);
    const path = `/v1/jobs${query.size ? `?${query}` : ""}`;
    const body = await this.getJson<{ jobs?: JobState[] }>(path);
    if (!Array.isArray(body.jobs)) throw protocolError(`GET ${path} answered without a list of jobs`);
    return body.jobs;
  }

  async models(): Promise<ModelInfo[]> {
    const body = await this.getJson<ModelInfo[] | { models?: ModelInfo[] }>("/v1/models");
    const list = Array.isArray(body) ? body : body.models;
    if (!Array.isArray(list)) throw protocolError("GET /v1/models answered without a list of models");
    return list;
  }

  meta(key: string): Promise<ModelMeta> {
    return this.getJson<ModelMeta>(`/v1/models/${encodeURIComponent(key)}/meta`);
  }

  status(): Promise<Record<string, unknown>> {
    return this.getJson<Record<string, unknown>>("/v1/status");
  }

  job(id: string): Promise<JobState> {
    return this.getJson<JobState>(jobPath(id));
  }

  /** The value the job returned, with its tensors. */
  async result(id: string): Promise<unknown> {
    const path = `${jobPath(id)}/result`;
    const res = await this.request("GET", path, { accept: `${ENVELOPE_TYPE}, application/json`, idempotent: true });
    const type = res.headers.get("content-type") ?? "";
    try {
      if (type.startsWith("application/json")) return decodeValue((await this.json<{ value?: unknown }>(res, `GET ${path}`)).value, new Map());
      return unpackValue(new Uint8Array(await res.arrayBuffer()));
    } catch (e) {
      if (e instanceof RemoteError) throw e;
      throw protocolError(`GET ${path}: the result does not decode: ${(e as Error).message}`);
    }
  }

  /** The job's result as the server keeps it: envelope bytes (see codec.ts), for saving or passing on. */
  async resultEnvelope(id: string): Promise<Uint8Array> {
    const path = `${jobPath(id)}/result`;
    const res = await this.request("GET", path, { accept: ENVELOPE_TYPE, idempotent: true });
    if ((res.headers.get("content-type") ?? "").startsWith("application/json")) return packValue(decodeValue((await this.json<{ value?: unknown }>(res, `GET ${path}`)).value, new Map()));
    return new Uint8Array(await res.arrayBuffer());
  }

  async cancel(id: string): Promise<void> {
    const res = await this.request("DELETE", jobPath(id), { idempotent: true });
    await res.body?.cancel();
  }

  /** Deletes a finished job's result on the server before it expires (a key's kept results are bounded there). */
  async deleteResult(id: string): Promise<void> {
    const res = await this.request("DELETE", `${jobPath(id)}/result`, { idempotent: true });
    await res.body?.cancel();
  }

  /**
   * Answers the job's hybrid step `call`: `{value}` as an envelope, or, when `value` is an Error, `{error}` (JSON,
   * an ErrorInfo) so the job raises it.
   */
  async answerLocal(id: string, call: string, value: unknown): Promise<void> {
    const init: Init =
      value instanceof Error ? { body: JSON.stringify({ error: infoFromError(value) }), type: "application/json" } : { body: packValue(value), type: ENVELOPE_TYPE };
    // Sent again after a broken connection: a second answer to the same call is refused (409), which jobs ignore.
    const res = await this.request("POST", `${jobPath(id)}/local/${encodeURIComponent(call)}`, { ...init, idempotent: true });
    await res.body?.cancel();
  }

  /**
   * The job's events in order, ending after `done`. A connection that drops (or ends) before `done` is opened
   * again with `Last-Event-ID`, waiting longer after each failure in a row; events already given are skipped.
   * After `retry.attempts` failures in a row it throws a LostEventsError (the job itself goes on).
   */
  async *events(id: string, options: EventsOptions = {}): AsyncGenerator<SequencedEvent> {
    const follow = options.follow !== false;
    const path = `${jobPath(id)}/events${follow ? "" : "?follow=0"}`;
    const { signal } = options;
    let last = options.lastEventId;
    let failures = 0;
    let serverDelay: number | undefined;
    for (;;) {
      if (signal?.aborted) return;
      const connection = new AbortController();
      const stop = () => connection.abort();
      signal?.addEventListener("abort", stop);
      let progressed = false;
      let asked: number | undefined;
      let cause: unknown = "the stream ended before the job's done event";
      try {
        const headers: Record<string, string> = last === undefined ? {} : { "Last-Event-ID": String(last) };
        const res = await this.request("GET", path, { accept: "text/event-stream", headers, signal: connection.signal });
        if (!res.body) throw new ConnectionError(`GET ${path} answered without a body`);
        for await (const sse of parseServerSentEvents(res.body)) {
          if (sse.retry !== undefined) serverDelay = sse.retry;
          const seq = /^\d+$/.test(sse.id) ? Number(sse.id) : undefined;
          if (seq !== undefined && last !== undefined && seq <= last) continue;
          const event = parseEvent(sse.data, path);
          if (seq !== undefined) last = seq;
          progressed = true;
          yield { seq: last ?? 0, event };
          if (event.type === "done" && follow) return;
        }
        if (!follow) return;
      } catch (e) {
        if (signal?.aborted) return;
        if (!canRetry(e)) throw e;
        cause = e;
        // A 429 (a key sent its streams' bytes too fast: the server's byte-budget.ts) says how long to wait.
        asked = typeof e === "object" && e !== null ? askedWaits.get(e) : undefined;
      } finally {
        connection.abort();
        signal?.removeEventListener("abort", stop);
      }
      failures = progressed ? 1 : failures + 1;
      if (failures > this.retry.attempts) {
        const why = cause instanceof Error ? cause.message : String(cause);
        const reason = `lost the events of job ${id} from ${this.url} and could not reconnect (${this.retry.attempts} tries${last === undefined ? "" : `, after event ${last}`}): ${why}`;
        throw new LostEventsError(id, last, reason, cause);
      }
      await sleep(Math.max(this.delay(failures, serverDelay), asked ?? 0), signal);
    }
  }

  // #region requests

  private async getJson<T>(path: string): Promise<T> {
    return this.json<T>(await this.request("GET", path, { accept: "application/json", idempotent: true }), `GET ${path}`);
  }

  /** Sends one request; a non-2xx answer throws the error it describes. */
  private async request(method: string, path: string, init: Init = {}): Promise<Response> {
    const headers: Record<string, string> = { [PROTOCOL_HEADER]: String(PROTOCOL_VERSION), ...init.headers };
    if (this.apiKey !== undefined) headers.authorization = `Bearer ${this.apiKey}`;
    if (init.type) headers["content-type"] = init.type;
    if (init.accept) headers.accept = init.accept;
    for (let failures = 0; ; ) {
      let res: Response;
      try {
        res = await this.fetchImpl(this.url + path, { method, headers, body: init.body, signal: init.signal });
      } catch (e) {
        if (init.signal?.aborted) throw e;
        const error = new ConnectionError(`${method} ${this.url}${path} failed: ${describeFailure(e)}`, e);
        if (!init.idempotent || ++failures > this.retry.attempts) throw error;
        await sleep(this.delay(failures), init.signal);
        continue;
      }
      if (res.ok) return res;
      const error = await errorFromResponse(res, `${method} ${path}`);
      const asked = retryAfter(res, this.retry.maxDelayMs);
      if (asked > 0) askedWaits.set(error, asked);
      if (!init.idempotent || !RETRY_STATUSES.includes(res.status) || ++failures > this.retry.attempts) throw error;
      await sleep(Math.max(this.delay(failures), asked), init.signal);
    }
  }

  private async json<T>(res: Response, what: string): Promise<T> {
    const text = await res.text();
    try {
      return JSON.parse(text) as T;
    } catch {
      throw protocolError(`${what} answered with a body that is not JSON: ${text.slice(0, 200)}`);
    }
  }

  /** How long to wait after `failures` failures in a row. */
  private delay(failures: number, base = this.retry.baseDelayMs): number {
    return Math.min(this.retry.maxDelayMs, base * 2 ** (failures - 1));
  }

  // #endregion
}

/** The typed error an error response describes: its ErrorBody, or one made from the status. */
export async function errorFromResponse(res: Response, what: string): Promise<Error> {
  const text = await res.text().catch(() => "");
  let body: { error?: Partial<ErrorInfo>; supported?: unknown } | undefined;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const given = body?.error;
  const code: ErrorCode = typeof given?.code === "string" && given.code in RETRYABLE ? given.code : codeForStatus(res.status);
  const info: ErrorInfo = {
    code,
    type: typeof given?.type === "string" ? given.type : "HttpError",
    message: typeof given?.message === "string" ? given.message : `${what}: HTTP ${res.status} ${res.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`,
    retryable: typeof given?.retryable === "boolean" ? given.retryable : RETRYABLE[code] || RETRY_STATUSES.includes(res.status),
  };
  if (given?.stack) info.stack = given.stack;
  if (res.status === 426) {
    const supported = Array.isArray(body?.supported) ? body.supported.filter((v): v is number => typeof v === "number") : [];
    const speaks = supported.length ? `the server speaks protocol ${supported.join(", ")}` : "the server did not say which protocol versions it speaks";
    const advice = supported.includes(PROTOCOL_VERSION)
      ? `the request's ${PROTOCOL_HEADER} header did not reach it (a proxy may drop it)`
      : supported.some((v) => v > PROTOCOL_VERSION)
        ? "update tsight"
        : "the server is older than this client";
    info.message = `${info.message} (${speaks}; this client speaks ${PROTOCOL_VERSION}: ${advice})`;
  }
  return errorFromInfo(info, res.status);
}

function codeForStatus(status: number): ErrorCode {
  if (status === 401 || status === 403) return "AUTH";
  if (status === 426) return "PROTOCOL";
  if (status === 408 || status === 504) return "TIMEOUT";
  if (status === 413) return "MEMORY";
  if (status >= 500) return "INTERNAL";
  return "VALIDATION";
}

function parseEvent(data: string, path: string): JobEvent {
  let event: unknown;
  try {
    event = JSON.parse(data);
  } catch {
    throw protocolError(`GET ${path} sent an event that is not JSON: ${data.slice(0, 200)}`);
  }
  if (typeof event !== "object" || event === null || typeof (event as { type?: unknown }).type !== "string") {
    throw protocolError(`GET ${path} sent an event without a type: ${data.slice(0, 200)}`);
  }
  return event as JobEvent;
}

/** Whether following events may try again after `e`: broken connections and server-side failures. */
function canRetry(e: unknown): boolean {
  if (e instanceof ConnectionError) return true;
  if (e instanceof RemoteError) return e.retryable && e.status !== undefined && (e.status >= 500 || e.status === 429);
  // Anything else typed (a ClientError, a job's error class) is an answer, not a broken connection.
  const code = (e as { code?: unknown } | null)?.code;
  return !(e instanceof ClientError) && !(typeof code === "string" && code in RETRYABLE);
}

function describeFailure(e: unknown): string {
  const err = e as Error & { cause?: { code?: string; message?: string } };
  const detail = err.cause?.code ?? err.cause?.message;
  return detail ? `${err.message} (${detail})` : String(err?.message ?? e);
}

/** The header naming a submission, so the server can answer a repeat with the job it already made. */
export const IDEMPOTENCY_HEADER = "idempotency-key";

/** A random key (crypto.getRandomValues works in every browser context, randomUUID only in secure ones). */
function newIdempotencyKey(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return `tsk-submit-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Statuses after which an idempotent request is sent again. */
const RETRY_STATUSES = [429, 502, 503, 504];

/** The wait a 429/503 asks for with Retry-After (seconds), at most `max` ms. */
function retryAfter(res: Response, max: number): number {
  const seconds = Number(res.headers.get("retry-after"));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(max, seconds * 1000) : 0;
}

const protocolError = (message: string) => new RemoteError({ code: "PROTOCOL", type: "ProtocolError", message, retryable: false });

const jobPath = (id: string) => `/v1/jobs/${encodeURIComponent(id)}`;

/** Waits `ms`, or less if `signal` aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done);
  });
}
