/** The job routes: submit, list, state, events (SSE), hybrid-step answers, result, cancel. Only the submitting key sees a job. */
import type { Hono } from "hono";
import { type ErrorInfo, type JobRequest, type JobStatus, ENVELOPE_TYPE, MAX_DEPTH } from "tsight/protocol";
import { ApiError, jobNotFound } from "./api-error.js";
import { BodyGate } from "./body-gate.js";
import { ByteBudget } from "./byte-budget.js";
import { bodyDigest, idempotencyKey } from "./idempotency.js";
import { PerKeyLimit, responseEnds } from "./per-key-limit.js";
import type { AppDeps } from "./app.js";
import type { AppEnv } from "./guards.js";
import { isJobId } from "./ids.js";
import { isTerminal } from "./job-status.js";
import { DamagedResultError } from "./result-check.js";
import type { LocalAnswer } from "./worker-messages.js";

const DEFAULT_LIST = 20;
const MAX_LIST = 100;
const STATUSES: readonly JobStatus[] = ["RECEIVED", "QUEUED", "DISPATCHED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED"];

export function jobsRoutes(app: Hono<AppEnv>, deps: AppDeps): void {
  const { jobs, store, results, config, events } = deps;
  // Each open response holds what it sends until read: a key may have only so many (see per-key-limit.ts).
  const streamsPerKey = new PerKeyLimit("event streams", MAX_EVENT_STREAMS_PER_KEY, "open");
  const downloadsPerKey = new PerKeyLimit("result downloads", MAX_DOWNLOADS_PER_KEY, "read");
  // And so many bytes of event streams a second, on average (see byte-budget.ts): a job's whole log a second, four at once.
  const streamBytes = new ByteBudget("event streams", config.maxEventBytesPerJob, STREAM_BURST_LOGS * config.maxEventBytesPerJob);
  // Bodies are held while they come in and are parsed: so many per key, so many bytes in all (see body-gate.ts).
  const bodies = new BodyGate({ maxBytes: config.maxBodyBytes, maxJsonBytes: config.maxJsonBytes, timeoutMs: config.bodyTimeoutMs, perKey: config.maxBodiesPerKey, bytesInFlight: config.maxBodyBytesInFlight });
  deps.metrics.registry.gauge("tsight_request_bodies_in_flight", "Request bodies being received and parsed.", () => [{ labels: {}, value: bodies.inFlight.bodies }]);
  deps.metrics.registry.gauge("tsight_request_body_bytes_in_flight", "Bytes counted for request bodies being received and parsed (each its Content-Length, or its limit without one).", () => [{ labels: {}, value: bodies.inFlight.bytes }]);

  /** The job `id` names, if the caller owns it. */
  const owned = async (id: string, keyId: string) => {
    const job = isJobId(id) ? await store.getOwned(id, keyId) : undefined;
    if (!job) throw jobNotFound(id);
    return job;
  };

  app.post("/v1/jobs", async (c) => {
    const key = idempotencyKey(c.req.header("idempotency-key"));
    const body = await bodies.parse(c.req.raw, c.get("caller").keyId);
    const idempotency = key === undefined ? undefined : { key, digest: bodyDigest(body) };
    const state = await jobs.submit(c.get("caller"), body.kind === "envelope" ? body.bytes : (body.value as JobRequest), idempotency);
    c.header("location", `/v1/jobs/${state.id}`);
    return c.json(state, 202);
  });

  app.get("/v1/jobs", async (c) => {
    const status = c.req.query("status");
    const limit = c.req.query("limit") ?? String(DEFAULT_LIST);
    const before = c.req.query("before");
    if (status !== undefined && !STATUSES.includes(status as JobStatus)) throw new ApiError(400, "VALIDATION", `"status" must be one of ${STATUSES.join(", ")}, not "${status}"`);
    if (!/^\d+$/.test(limit) || Number(limit) < 1 || Number(limit) > MAX_LIST) throw new ApiError(400, "VALIDATION", `"limit" must be a whole number from 1 to ${MAX_LIST}, not "${limit}"`);
    const list = await jobs.list(c.get("caller").keyId, { status: status as JobStatus | undefined, limit: Number(limit), before });
    return c.json({ jobs: list });
  });

  app.get("/v1/jobs/:id", async (c) => {
    const id = c.req.param("id");
    await owned(id, c.get("caller").keyId);
    return c.json(await jobs.state(id, c.get("caller").keyId));
  });

  app.get("/v1/jobs/:id/events", async (c) => {
    const id = c.req.param("id");
    const job = await owned(id, c.get("caller").keyId);
    const header = c.req.header("last-event-id");
    const [name, given] = header !== undefined ? ["Last-Event-ID", header] : ['"after"', c.req.query("after")];
    const after = given === undefined ? 0 : Number(given.trim());
    if (given !== undefined && !(/^\d+$/.test(given.trim()) && Number.isSafeInteger(after))) throw new ApiError(400, "VALIDATION", `${name} must be the id of one of the job's events (a whole number), not "${given}"`);
    // No client has seen an event past the job's last (the store numbers them as it keeps them): the id is another
    // job's, or made up, and a stream after it would end with nothing, which a client takes for a dropped connection.
    if (after > job.lastSeq) {
      const state = isTerminal(job.status) ? `the job ended ${job.status}` : `the job is ${job.status}`;
      throw new ApiError(400, "VALIDATION", `${name} ${after} is past the last event of job ${id} (event ${job.lastSeq}; ${state}); resume after an id its event stream sent, or without ${name} for all its events`);
    }
    const keyId = c.get("caller").keyId;
    streamBytes.admit(keyId);
    // ?follow=0: what is stored now, then the end (not counted as a client following the job).
    return streamsPerKey.counted(keyId, responseEnds(c.env), () => events.open(id, after, !["0", "false"].includes(c.req.query("follow") ?? ""), (bytes) => streamBytes.spend(keyId, bytes)));
  });

  app.post("/v1/jobs/:id/local/:call", async (c) => {
    const id = c.req.param("id");
    await owned(id, c.get("caller").keyId);
    const body = await bodies.parse(c.req.raw, c.get("caller").keyId);
    let answer: LocalAnswer;
    if (body.kind === "envelope") answer = { kind: "envelope", bytes: body.bytes };
    else {
      const v = body.value as { value?: unknown; error?: ErrorInfo } | null;
      if (typeof v !== "object" || v === null || (("value" in v) === ("error" in v))) throw new ApiError(400, "VALIDATION", 'a local answer is {"value": <encoded value>} or {"error": <ErrorInfo>}, or an envelope');
      if ("error" in v) {
        const e = v.error as ErrorInfo;
        if (typeof e !== "object" || e === null || typeof e.message !== "string") throw new ApiError(400, "VALIDATION", '"error" must be an ErrorInfo with a message');
        answer = { kind: "error", error: { code: "USER_CODE", type: String(e.type ?? "Error"), message: e.message, retryable: false, stack: typeof e.stack === "string" ? e.stack : undefined } };
      } else {
        // Checked here, before the step counts as answered: too deep a value cannot be handed to the worker.
        if (nestsDeeper(v.value, MAX_DEPTH)) throw new ApiError(400, "VALIDATION", `the answer nests arrays or objects more than ${MAX_DEPTH} deep, more than a remote value may`);
        answer = { kind: "json", value: v.value };
      }
    }
    await jobs.answerLocal(id, c.get("caller").keyId, c.req.param("call"), answer);
    return c.body(null, 204);
  });

  /** Marks a job's result expired and deletes its bytes (past its retention, or asked to). */
  const discardResult = async (id: string): Promise<void> => {
    await store.markResultExpired(id);
    await results.remove(id);
  };

  app.get("/v1/jobs/:id/result", async (c) => {
    const id = c.req.param("id");
    const job = await owned(id, c.get("caller").keyId);
    if (!isTerminal(job.status)) throw new ApiError(409, "NOT_ALLOWED", `job ${id} is ${job.status}; its result is ready after its "done" event`, { retryable: true });
    if (job.status !== "COMPLETED") throw new ApiError(409, "NOT_ALLOWED", `job ${id} ended ${job.status} and has no result${job.error ? `: ${job.error.message}` : ""}`);
    // Gone before its expiry: deleted by its owner (DELETE), not expired.
    const expired = () =>
      new ApiError(
        410,
        "NOT_ALLOWED",
        job.expires! > Date.now()
          ? `the result of job ${id} was deleted before it was due to expire at ${new Date(job.expires!).toISOString()} (by DELETE /v1/jobs/${id}/result, or removed from the server's storage)`
          : `the result of job ${id} expired at ${new Date(job.expires!).toISOString()}; results are kept ${config.resultRetentionMs / 1000} s`,
      );
    if (job.result !== "available") throw expired();
    if (job.expires! <= Date.now()) {
      await discardResult(id);
      throw expired();
    }
    // Counted before the result is read (a key's downloads are bounded in the memory they hold, see per-key-limit.ts).
    return downloadsPerKey.counted(c.get("caller").keyId, responseEnds(c.env), async () => {
      let bytes: Uint8Array | undefined;
      try {
        bytes = await results.read(id);
      } catch (e) {
        if (e instanceof DamagedResultError) throw new ApiError(500, "INTERNAL", e.message);
        throw e;
      }
      // Its file is gone before its time (removed by hand, or the disk lost it): said so, not "deleted at" a time to come.
      if (!bytes) {
        await store.markResultExpired(id);
        throw new ApiError(410, "NOT_ALLOWED", `the result of job ${id} is no longer stored: it was removed before it was due to expire at ${new Date(job.expires!).toISOString()}`);
      }
      // Cut off when its reader stops taking it (what it holds is let go); the time to read it is not the reader's.
      cutWhenStalled(c.env, config.downloadStallMs);
      return new Response(bytes, { headers: { "content-type": ENVELOPE_TYPE, "content-length": String(bytes.byteLength), "cache-control": "no-store" } });
    });
  });

  // A completed job's result, deleted before its expiry (its key's kept results and events count against maxStoredResultBytesPerKey).
  app.delete("/v1/jobs/:id/result", async (c) => {
    const id = c.req.param("id");
    const job = await owned(id, c.get("caller").keyId);
    if (!isTerminal(job.status)) throw new ApiError(409, "NOT_ALLOWED", `job ${id} is ${job.status}; its result can be deleted once it has one`, { retryable: true });
    if (job.result === "available") await discardResult(id);
    return c.body(null, 204);
  });

  app.delete("/v1/jobs/:id", async (c) => {
    const id = c.req.param("id");
    await owned(id, c.get("caller").keyId);
    const state = await jobs.cancel(id, c.get("caller").keyId);
    return c.json(state, isTerminal(state.status) ? 200 : 202);
  });
}

/** Whether `value` nests arrays or objects more than `limit` deep (walked without recursion: it may be deep). */
function nestsDeeper(value: unknown, limit: number): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== "object") continue;
    if (depth > limit) return true;
    for (const x of Array.isArray(v) ? v : Object.values(v)) stack.push([x, depth + 1]);
  }
  return false;
}

/** Event streams one key may have open at once (a job's log is at most maxEventBytesPerJob). */
export const MAX_EVENT_STREAMS_PER_KEY = 16;
/** Event logs (of maxEventBytesPerJob) a key may be sent at once after a pause; then one a second (see byte-budget.ts). */
export const STREAM_BURST_LOGS = 4;
/** Result downloads one key may have in flight at once (a result is at most maxResultBytes). */
export const MAX_DOWNLOADS_PER_KEY = 4;

/** What cutWhenStalled needs of Node's request socket and response (none in process). */
interface StallEnds {
  incoming?: { socket?: { setTimeout(ms: number, listener?: () => void): unknown; off(event: "timeout", listener: () => void): unknown; destroy(): void } | null };
  outgoing?: { once(event: "close", listener: () => void): unknown };
}

/**
 * Closes the connection of a response that makes no progress for `ms` (its reader stopped taking bytes: Node's
 * socket timeout, which a write the operating system keeps taking does not trip), until the response is over. The
 * timeout is left as it is then: Node sets the keep-alive one as a response ends (clearing it afterwards left an idle
 * connection open for good), or a response pipelined behind this one has set its own.
 */
function cutWhenStalled(env: StallEnds | undefined, ms: number): void {
  const socket = env?.incoming?.socket;
  if (!socket || !env?.outgoing) return;
  const cut = () => socket.destroy();
  socket.setTimeout(ms, cut);
  env.outgoing.once("close", () => socket.off("timeout", cut));
}
