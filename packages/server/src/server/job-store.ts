/**
 * JobStore: jobs and their events in SQLite. Every state change is a row update plus a `status` event, in one
 * transaction; events are numbered per job from 1 (the SSE id), so a client that reconnects with Last-Event-ID
 * gets exactly what it missed. Listeners hear each event after it is stored, and end listeners each job that
 * reaches a final state. A job's webhook secret is readable only while its delivery is pending.
 */
import type { ErrorInfo, JobEvent, JobKind, JobState, JobStatus, SequencedEvent } from "tsight/protocol";
import type { Db } from "./database.js";
import type { Idempotency } from "./idempotency.js";
import { ACTIVE, canMove, isTerminal } from "./job-status.js";

export type ResultState = "none" | "available" | "expired";
export type WebhookState = "pending" | "delivered" | "failed";

export interface JobRecord {
  id: string;
  keyId: string;
  model: string;
  kind: JobKind;
  status: JobStatus;
  created: number;
  updated: number;
  started: number | null;
  finished: number | null;
  error: ErrorInfo | null;
  result: ResultState;
  resultBytes: number | null;
  expires: number | null;
  lastSeq: number;
  /** The URL to POST to when the job ends. */
  webhook: string | null;
  webhookState: WebhookState | null;
  /** The digest of the body of a submission with an Idempotency-Key (see idempotency.ts); null without one. */
  requestDigest: string | null;
}

export interface NewJob {
  id: string;
  keyId: string;
  model: string;
  kind: JobKind;
  webhook?: { url: string; secret?: string };
  /** The client's key for this submission and its body's digest: the same key and body again give this job. */
  idempotency?: Idempotency;
}

export interface ListOptions {
  status?: JobStatus;
  limit: number;
  /** Only jobs submitted before this one (of the same key). */
  before?: string;
}

export interface MoveDetails {
  /** Place in the queue, for QUEUED. */
  position?: number;
  /** Why the job failed, for ERROR (and CANCELLED, when there is something to say). */
  error?: ErrorInfo;
  /** The kept result, for COMPLETED. */
  result?: { bytes: number; expires: number };
}

export type EventListener = (e: SequencedEvent) => void;
export type EndListener = (job: JobRecord) => void;

interface JobRow {
  id: string;
  key_id: string;
  model: string;
  kind: JobKind;
  status: JobStatus;
  created: number;
  updated: number;
  started: number | null;
  finished: number | null;
  error: string | null;
  result: ResultState;
  result_bytes: number | null;
  expires: number | null;
  last_seq: number;
  webhook: string | null;
  webhook_state: WebhookState | null;
  request_digest: string | null;
}

const fromRow = (r: JobRow): JobRecord => ({
  id: r.id,
  keyId: r.key_id,
  model: r.model,
  kind: r.kind,
  status: r.status,
  created: r.created,
  updated: r.updated,
  started: r.started,
  finished: r.finished,
  error: r.error === null ? null : (JSON.parse(r.error) as ErrorInfo),
  result: r.result,
  resultBytes: r.result_bytes,
  expires: r.expires,
  lastSeq: r.last_seq,
  webhook: r.webhook,
  webhookState: r.webhook_state,
  requestDigest: r.request_digest,
});

export class JobStore {
  private readonly listeners = new Map<string, Set<EventListener>>();
  /**
   * Per key: the bytes of its jobs' events and error records, summed from the database when first asked, then kept
   * as they are written: summed at every submission, a key with 50,000 jobs kept cost 10 ms of the main thread each.
   */
  private readonly kept = new Map<string, number>();
  private readonly endListeners = new Set<EndListener>();
  private readonly q;

  constructor(private readonly db: Db) {
    this.q = {
      insert: db.prepare(
        "INSERT INTO jobs (id, key_id, model, kind, status, created, updated, webhook, webhook_secret, webhook_state, idempotency_key, request_digest) VALUES (?, ?, ?, ?, 'RECEIVED', ?, ?, ?, ?, ?, ?, ?)",
      ),
      get: db.prepare("SELECT * FROM jobs WHERE id = ?"),
      bumpSeq: db.prepare("UPDATE jobs SET last_seq = last_seq + 1, event_bytes = event_bytes + ? WHERE id = ? RETURNING last_seq"),
      insertEvent: db.prepare("INSERT INTO events (job_id, seq, event, created) VALUES (?, ?, ?, ?)"),
      eventsAfter: db.prepare("SELECT seq, event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq"),
      move: db.prepare(
        "UPDATE jobs SET status = @status, updated = @now, started = coalesce(@started, started), finished = coalesce(@finished, finished), " +
          "error = coalesce(@error, error), result = coalesce(@result, result), result_bytes = coalesce(@bytes, result_bytes), expires = coalesce(@expires, expires) WHERE id = @id",
      ),
      active: db.prepare(`SELECT count(*) AS n FROM jobs WHERE key_id = ? AND status IN (${ACTIVE.map((s) => `'${s}'`).join(", ")})`),
      activeIds: db.prepare(`SELECT id FROM jobs WHERE status IN (${ACTIVE.map((s) => `'${s}'`).join(", ")}) ORDER BY created`),
      due: db.prepare("SELECT id FROM jobs WHERE result = 'available' AND expires <= ?"),
      // A key's kept results (few: they count against its bound), and its events and errors (see keptBytes).
      storedResults: db.prepare("SELECT coalesce(sum(result_bytes), 0) AS n FROM jobs WHERE key_id = @key AND result = 'available' AND expires > @now"),
      // A failed job's error is kept twice, as an event and in its record (up to 8 KB): both count.
      keptBytes: db.prepare("SELECT coalesce(sum(event_bytes), 0) + coalesce(sum(length(CAST(error AS BLOB))), 0) AS n FROM jobs WHERE key_id = ?"),
      expire: db.prepare("UPDATE jobs SET result = 'expired' WHERE id = ? AND result = 'available'"),
      // Newest first: by submission time, then insertion order (rowid) within one millisecond.
      list: db.prepare(
        "SELECT * FROM jobs WHERE key_id = @key AND (@status IS NULL OR status = @status) " +
          "AND (@created IS NULL OR created < @created OR (created = @created AND rowid < @row)) ORDER BY created DESC, rowid DESC LIMIT @limit",
      ),
      cursor: db.prepare("SELECT created, rowid AS row FROM jobs WHERE id = ? AND key_id = ?"),
      webhookSecret: db.prepare("SELECT webhook, webhook_secret FROM jobs WHERE id = ? AND webhook_state = 'pending'"),
      webhookDone: db.prepare("UPDATE jobs SET webhook_state = ?, webhook_secret = NULL WHERE id = ?"),
      byIdempotency: db.prepare("SELECT * FROM jobs WHERE key_id = ? AND idempotency_key = ?"),
      ended: db.prepare(`SELECT id FROM jobs WHERE status NOT IN (${ACTIVE.map((s) => `'${s}'`).join(", ")}) AND finished <= ? AND (webhook_state IS NULL OR webhook_state != 'pending') AND result != 'available' LIMIT 1000`),
      deleteEvents: db.prepare("DELETE FROM events WHERE job_id = ?"),
      deleteJob: db.prepare("DELETE FROM jobs WHERE id = ?"),
      webhooksPending: db.prepare(`SELECT id FROM jobs WHERE webhook_state = 'pending' AND status NOT IN (${ACTIVE.map((s) => `'${s}'`).join(", ")}) ORDER BY finished`),
    };
  }

  /** Records a new job (RECEIVED) and its first event. */
  create(job: NewJob): JobRecord {
    const now = Date.now();
    const pending: SequencedEvent[] = [];
    const written = { bytes: 0 };
    this.db.transaction(() => {
      const hook = job.webhook;
      this.q.insert.run(job.id, job.keyId, job.model, job.kind, now, now, hook?.url ?? null, hook?.secret ?? null, hook ? "pending" : null, job.idempotency?.key ?? null, job.idempotency?.digest ?? null);
      pending.push(this.insertEvent(job.id, { type: "status", status: "RECEIVED" }, now, written));
    })();
    this.addKept(job.keyId, written.bytes);
    this.notify(job.id, pending);
    return this.get(job.id)!;
  }

  get(id: string): JobRecord | undefined {
    const row = this.q.get.get(id) as JobRow | undefined;
    return row && fromRow(row);
  }

  /** The job if `keyId` submitted it; undefined otherwise (so others' ids look like unknown ones). */
  getOwned(id: string, keyId: string): JobRecord | undefined {
    const job = this.get(id);
    return job && job.keyId === keyId ? job : undefined;
  }

  /**
   * Moves a job to `status`, storing the status event (after an `error` event when one is given, and followed by
   * `done` when the state is final). Returns false, changing nothing, when the job is unknown or cannot move there
   * (e.g. it already finished: a cancel and a completion may race).
   */
  move(id: string, status: JobStatus, details: MoveDetails = {}): boolean {
    const now = Date.now();
    const errorJson = details.error ? JSON.stringify(details.error) : null;
    const pending: SequencedEvent[] = [];
    const written = { bytes: 0 };
    let keyId = "";
    const moved = this.db.transaction(() => {
      const job = this.get(id);
      if (!job || !canMove(job.status, status)) return false;
      keyId = job.keyId;
      const final = isTerminal(status);
      this.q.move.run({
        id,
        status,
        now,
        started: status === "RUNNING" ? now : null,
        finished: final ? now : null,
        error: errorJson,
        result: details.result ? "available" : null,
        bytes: details.result?.bytes ?? null,
        expires: details.result?.expires ?? null,
      });
      if (details.error) pending.push(this.insertEvent(id, { type: "error", error: details.error }, now, written));
      pending.push(this.insertEvent(id, details.position === undefined ? { type: "status", status } : { type: "status", status, position: details.position }, now, written));
      if (final) pending.push(this.insertEvent(id, { type: "done", status }, now, written));
      return true;
    })();
    if (moved) this.addKept(keyId, written.bytes + (errorJson === null ? 0 : Buffer.byteLength(errorJson)));
    this.notify(id, pending);
    if (moved && isTerminal(status)) {
      const job = this.get(id)!;
      for (const l of [...this.endListeners]) l(job);
    }
    return moved;
  }

  /** Stores an event of a job (log, stream, local); returns its sequence number, or undefined for an unknown job. */
  append(id: string, event: JobEvent): number | undefined {
    const written = { bytes: 0 };
    let keyId = "";
    const stored = this.db.transaction(() => {
      const job = this.get(id);
      if (!job) return undefined;
      keyId = job.keyId;
      return this.insertEvent(id, event, Date.now(), written);
    })();
    if (!stored) return undefined;
    this.addKept(keyId, written.bytes);
    this.notify(id, [stored]);
    return stored.seq;
  }

  /** The job's events after sequence number `seq` (0: all), in order. */
  eventsAfter(id: string, seq: number): SequencedEvent[] {
    return (this.q.eventsAfter.all(id, seq) as { seq: number; event: string }[]).map((r) => ({ seq: r.seq, event: JSON.parse(r.event) as JobEvent }));
  }

  /** Calls `listener` with each event of job `id` stored from now on; returns the function that stops it. */
  subscribe(id: string, listener: EventListener): () => void {
    let set = this.listeners.get(id);
    if (!set) this.listeners.set(id, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.listeners.get(id) === set) this.listeners.delete(id);
    };
  }

  /** Calls `listener` with each job that reaches a final state from now on; returns the function that stops it. */
  onEnd(listener: EndListener): () => void {
    this.endListeners.add(listener);
    return () => void this.endListeners.delete(listener);
  }

  /** How many listeners follow job `id` (open event streams). */
  listenerCount(id: string): number {
    return this.listeners.get(id)?.size ?? 0;
  }

  /** Unfinished jobs of an API key. */
  activeCount(keyId: string): number {
    return (this.q.active.get(keyId) as { n: number }).n;
  }

  /**
   * Bytes the server keeps now for the key: its results (not expired, nor deleted) and its jobs' events (log lines,
   * streamed tokens: kept until the job's record is deleted). Event logs filled a disk at 65 MB/s when only results
   * were counted.
   */
  storedBytes(keyId: string, now = Date.now()): number {
    const { results, logs } = this.storedParts(keyId, now);
    return results + logs;
  }

  /** storedBytes in its parts: the key's results, and its jobs' events and errors. */
  storedParts(keyId: string, now = Date.now()): { results: number; logs: number } {
    let logs = this.kept.get(keyId);
    if (logs === undefined) this.kept.set(keyId, (logs = (this.q.keptBytes.get(keyId) as { n: number }).n));
    return { results: (this.q.storedResults.get({ key: keyId, now }) as { n: number }).n, logs };
  }

  /** Adds `bytes` written for `keyId`'s jobs (events, an error's record copy) to its sum, once that is known. */
  private addKept(keyId: string, bytes: number): void {
    const kept = this.kept.get(keyId);
    if (kept !== undefined) this.kept.set(keyId, kept + bytes);
  }

  /** Ids of every unfinished job, oldest first. */
  activeIds(): string[] {
    return (this.q.activeIds.all() as { id: string }[]).map((r) => r.id);
  }

  /**
   * A key's jobs, newest first. Undefined when `before` is not one of the key's jobs (so others' ids look like
   * unknown ones).
   */
  list(keyId: string, options: ListOptions): JobRecord[] | undefined {
    let cursor: { created: number; row: number } | undefined;
    if (options.before !== undefined) {
      cursor = this.q.cursor.get(options.before, keyId) as typeof cursor;
      if (!cursor) return undefined;
    }
    const rows = this.q.list.all({ key: keyId, status: options.status ?? null, created: cursor?.created ?? null, row: cursor?.row ?? null, limit: options.limit }) as JobRow[];
    return rows.map(fromRow);
  }

  /** Where and with what secret to deliver a job's webhook, while the delivery is pending. */
  webhookDelivery(id: string): { url: string; secret: string | undefined } | undefined {
    const row = this.q.webhookSecret.get(id) as { webhook: string; webhook_secret: string | null } | undefined;
    return row && { url: row.webhook, secret: row.webhook_secret ?? undefined };
  }

  /** Records the end of a webhook delivery, and wipes its secret. */
  finishWebhook(id: string, state: "delivered" | "failed"): void {
    this.q.webhookDone.run(state, id);
  }

  /** Finished jobs whose webhook was not delivered yet (the server stopped first), oldest first. */
  pendingWebhooks(): string[] {
    return (this.q.webhooksPending.all() as { id: string }[]).map((r) => r.id);
  }

  /** The key's job submitted with `idempotencyKey`, if there is one. */
  byIdempotencyKey(keyId: string, idempotencyKey: string): JobRecord | undefined {
    const row = this.q.byIdempotency.get(keyId, idempotencyKey) as JobRow | undefined;
    return row && fromRow(row);
  }

  /**
   * Deletes jobs that ended before `before` (and their events), once nothing of them is kept (no result, no
   * pending webhook); returns how many.
   */
  deleteEnded(before: number): number {
    const ids = (this.q.ended.all(before) as { id: string }[]).map((r) => r.id);
    this.db.transaction(() => {
      for (const id of ids) {
        this.q.deleteEvents.run(id);
        this.q.deleteJob.run(id);
      }
    })();
    // Summed again from what is left when next asked (once per key after each sweep that deleted anything).
    if (ids.length) this.kept.clear();
    return ids.length;
  }

  /** Jobs whose kept result is past its expiry at `now`. */
  resultsDue(now: number): string[] {
    return (this.q.due.all(now) as { id: string }[]).map((r) => r.id);
  }

  markResultExpired(id: string): void {
    this.q.expire.run(id);
  }

  /** A job as the protocol shows it. */
  state(job: JobRecord, position?: number): JobState {
    return jobState(job, position);
  }

  /** Stores an event of job `id`, adding its bytes to `written` (counted for its key once the transaction is done). */
  private insertEvent(id: string, event: JobEvent, now: number, written: { bytes: number }): SequencedEvent {
    const json = JSON.stringify(event);
    // Bytes as stored (UTF-8): a log line of "€" takes three a character.
    const bytes = Buffer.byteLength(json);
    written.bytes += bytes;
    const { last_seq: seq } = this.q.bumpSeq.get(bytes, id) as { last_seq: number };
    this.q.insertEvent.run(id, seq, json, now);
    return { seq, event };
  }

  private notify(id: string, events: SequencedEvent[]): void {
    const set = this.listeners.get(id);
    if (!set) return;
    for (const e of events) for (const l of [...set]) l(e);
  }
}

/** A job as the protocol shows it (with its place in the queue while QUEUED). */
export function jobState(job: JobRecord, position?: number): JobState {
  const s: JobState = {
    id: job.id,
    status: job.status,
    model: job.model,
    kind: job.kind,
    created: new Date(job.created).toISOString(),
    updated: new Date(job.updated).toISOString(),
    result: job.result,
  };
  if (position !== undefined && job.status === "QUEUED") s.position = position;
  if (job.error) s.error = job.error;
  if (job.expires !== null && job.result !== "none") s.expires = new Date(job.expires).toISOString();
  if (job.webhookState) s.webhook = job.webhookState;
  return s;
}
