/**
 * API keys barred for a while after one of their jobs broke a worker thread (see ModelWorker's lose): each such job
 * costs the server a thread and what it held, and a few fail the model until a restart, so one key must not be able
 * to send them one after another. The embedded server keeps the bars in memory (JobManager); a distributed
 * deployment in Redis, where every API process sees a bar a worker process set.
 */
import { ApiError } from "./api-error.js";

/** A key's bar: until when, and the job and model that earned it. */
export interface Barred {
  until: number;
  jobId: string;
  model: string;
}

/** The bar job `jobId`, which broke a worker thread of `model`, earns its key, for `forMs`. */
export function newBar(jobId: string, model: string, forMs: number): Barred {
  return { until: Date.now() + forMs, jobId, model };
}

/** Refuses a barred key's submission (429) while its bar holds, saying when it may submit again. */
export function checkBarred(barred: Barred | undefined, now = Date.now()): void {
  if (!barred || barred.until <= now) return;
  const seconds = Math.max(1, Math.ceil((barred.until - now) / 1000));
  throw new ApiError(429, "NOT_ALLOWED", `job ${barred.jobId} of this API key broke a worker thread of ${barred.model} (its sandbox ran out of memory beyond recovery, which costs the server a thread and its memory): this key may submit jobs again in ${seconds} s`, { retryable: true, headers: { "retry-after": String(seconds) } });
}

/** The operator's log line for a new bar. */
export function barredNote(keyId: string, barred: Barred): string {
  return `tsight: API key ${keyId} may not submit jobs for ${Math.round((barred.until - Date.now()) / 1000)} s: its job ${barred.jobId} broke a worker thread of ${barred.model}`;
}

/** A bar as Redis keeps it (JSON), or undefined for anything else (absent, or not one). */
export function parseBarred(text: string | null): Barred | undefined {
  if (text === null) return undefined;
  try {
    const v = JSON.parse(text) as Partial<Barred>;
    return typeof v.until === "number" && typeof v.jobId === "string" && typeof v.model === "string" ? { until: v.until, jobId: v.jobId, model: v.model } : undefined;
  } catch {
    return undefined;
  }
}
