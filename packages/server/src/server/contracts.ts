/**
 * The contracts between the HTTP app and what stands behind it, so that one app serves both modes: embedded (the
 * SQLite JobStore and KeyStore, results on disk, the in-process JobManager; see server.ts) and distributed (Redis
 * stores, BullMQ queues and worker processes; see redis/). Methods may answer at once or with a promise: the
 * SQLite stores are synchronous, the Redis ones are not.
 */
import type { JobRequest, JobState, ModelInfo } from "tsight/protocol";
import type { Idempotency } from "./idempotency.js";
import type { JobRecord, ListOptions } from "./job-store.js";
import type { Caller, KeyCheck } from "./key-store.js";
import type { LocalAnswer } from "./worker-messages.js";

export type MaybePromise<T> = T | Promise<T>;

/** Checks the API key a request presents. */
export interface KeyVerifier {
  verify(key: string): MaybePromise<KeyCheck>;
}

/** The jobs' records, as the routes read them. */
export interface JobRecords {
  /** The job if `keyId` submitted it; undefined otherwise (so others' ids look like unknown ones). */
  getOwned(id: string, keyId: string): MaybePromise<JobRecord | undefined>;
  markResultExpired(id: string): MaybePromise<void>;
}

/** The envelope bytes of completed jobs. */
export interface ResultReader {
  /** The result's bytes, or undefined when there are none (never written, or deleted). */
  read(id: string): Promise<Uint8Array | undefined>;
  remove(id: string): Promise<void>;
}

/** A job's events as server-sent events, resumable with Last-Event-ID (see event-stream.ts). */
export interface EventFeed {
  /**
   * The events after `after`; `follow` false: only those stored now, and the stream does not count as a client.
   * `sent` hears the bytes of each event as it is written (a key's stream bytes are metered: see byte-budget.ts).
   */
  open(id: string, after: number, follow: boolean, sent?: (bytes: number) => void): MaybePromise<Response>;
}

/** What /v1/status says about one worker: a thread of the embedded server, or a worker process. */
export interface WorkerInfo {
  id: string;
  /** The names of the models it serves. */
  models: string[];
  busy: boolean;
  /** Jobs it runs now (several when they share a forward pass). */
  running: number;
  /** When it last said it was alive (ISO time). */
  lastHeartbeat: string;
}

/** What /v1/status says about one model. */
export interface ModelLoad extends ModelInfo {
  /** Mean seconds of model time per job lately (a pass of several jobs counts a share each); null until one ran. */
  averageJobSeconds: number | null;
  /** Seconds a job submitted now would wait before it runs (null until a job ran). */
  estimatedWaitSeconds: number | null;
  /** Mean jobs per forward pass handed to a worker (null until one ran; above 1 when jobs were batched). */
  jobsPerPass: number | null;
}

/** GET /v1/status, less what the route adds itself (protocol, uptime). */
export interface ClusterStatus {
  mode: "embedded" | "distributed";
  /** Jobs waiting, all models. */
  queued: number;
  /** Models with a job running (embedded), or jobs running (distributed). */
  running: number;
  models: ModelLoad[];
  workers: WorkerInfo[];
  /** Most jobs one forward pass takes (1: no batching). */
  maxBatch: number;
}

/** Takes jobs and moves them along: queues them for a worker of their model, cancels them, passes hybrid-step answers. */
export interface Dispatcher {
  /**
   * Checks and queues a request; the caller's key owns the job. With an idempotency key the key has used before,
   * nothing new is made: the earlier job's state is the answer when the body is the same, else a 422 (idempotency.ts).
   */
  submit(caller: Caller, body: Uint8Array | JobRequest, idempotency?: Idempotency): MaybePromise<JobState>;
  /** The job's state, if `keyId` owns it (else 404). */
  state(id: string, keyId: string): MaybePromise<JobState>;
  /** The key's jobs, newest first. */
  list(keyId: string, options: ListOptions): MaybePromise<JobState[]>;
  /** Cancels a job: a waiting one at once, a running one once it has stopped. */
  cancel(id: string, keyId: string): MaybePromise<JobState>;
  /** Passes the client's answer to hybrid step `call` of a running job. */
  answerLocal(id: string, keyId: string, call: string, answer: LocalAnswer): MaybePromise<void>;
  /** The served models (GET /v1/models). */
  models(): MaybePromise<ModelInfo[]>;
  status(): MaybePromise<ClusterStatus>;
}
