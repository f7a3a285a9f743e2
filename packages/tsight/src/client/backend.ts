/**
 * The contract between remote calls and whatever carries them: a Backend submits jobs and answers for them.
 * HttpBackend (http.ts) speaks the HTTP protocol to a server; a test or an in-process server can be another.
 * RemoteJob (job.ts) needs only the JobBackend half, so a job can be picked up again from its id.
 */
import type { Tensor } from "../tensor/index.js";
import type { RemoteJob } from "./job.js";
import type { JobRequest, JobState, JobStatus, ModelInfo, ModelMeta, SequencedEvent } from "../protocol/wire.js";

export interface EventsOptions {
  /** Start after this event (the SSE `Last-Event-ID`); from the first event when absent. */
  lastEventId?: number;
  /** Stops following (the iterator ends quietly). */
  signal?: AbortSignal;
  /**
   * false: only the events stored now, then the iterator ends (for a finished job this includes what was recorded
   * after `done`, such as webhook deliveries). Default true: follow the job until its `done` event.
   */
  follow?: boolean;
}

/** Which of the key's jobs GET /v1/jobs gives. */
export interface ListJobsOptions {
  /** Only jobs in this state. */
  status?: JobStatus;
  /** At most this many (1..100; the server's default is 20). */
  limit?: number;
  /** Only jobs submitted before this one (the last id of the previous page). */
  before?: string;
}

/** What a job handle needs: its state, events, result, cancellation and hybrid-step answers. */
export interface JobBackend {
  job(id: string): Promise<JobState>;
  /** The job's events in order, ending after the `done` event; resumes across dropped connections. */
  events(id: string, options?: EventsOptions): AsyncIterable<SequencedEvent>;
  /** The value the job returned (decoded, tensors restored). */
  result(id: string): Promise<unknown>;
  cancel(id: string): Promise<void>;
  /** The client's answer to a `local` event (a hybrid step); an Error value tells the job the step failed. */
  answerLocal(id: string, call: string, value: unknown): Promise<void>;
}

export interface SubmitOptions {
  /**
   * Names this submission, so sending it again (after a broken connection) does not make a second job: the
   * `idempotency-key` header. A key the API key used for a different request is refused (422 NOT_ALLOWED). Default:
   * a new random key for each call of submit, kept across its retries.
   */
  idempotencyKey?: string;
}

export interface Backend extends JobBackend {
  /** Submits a request whose encoded values refer to `tensors` by name (see codec.ts). */
  submit(request: JobRequest, tensors: ReadonlyMap<string, Tensor>, options?: SubmitOptions): Promise<RemoteJob>;
  /** The API key's jobs, newest first. */
  list(options?: ListJobsOptions): Promise<JobState[]>;
  models(): Promise<ModelInfo[]>;
  meta(key: string): Promise<ModelMeta>;
  /** The server's state (GET /v1/status), as it sends it. */
  status(): Promise<Record<string, unknown>>;
}

/** Whether `x` answers for jobs (what RemoteJob.attach needs). */
export function isJobBackend(x: unknown): x is JobBackend {
  const b = x as Partial<JobBackend> | null;
  return typeof b === "object" && b !== null && (["job", "events", "result", "cancel", "answerLocal"] as const).every((k) => typeof b[k] === "function");
}

/** Whether `x` is a Backend object (rather than a URL). */
export function isBackend(x: unknown): x is Backend {
  const b = x as Partial<Backend> | null;
  return typeof b === "object" && b !== null && typeof b.submit === "function" && typeof b.events === "function" && typeof b.result === "function";
}
