/**
 * Which waiting jobs may share a forward pass. A job gets a batch key when the sandbox's `executeBatch` takes it
 * (`batchable`: a plain trace, no edits, no hybrid step) and its input's token counts are known; jobs of one
 * model with equal keys (same gradient setting, same token count per row, so no row is padded) are offered to the
 * worker together. The executor still checks and groups them itself: the key only decides what is worth offering.
 */
import type { Tokenizer } from "tsight";
import type { DecodedJob } from "tsight/protocol";
import { batchable } from "../sandbox/batchable.js";

/** The job's batch key, or undefined when it runs alone (not a plain trace, or its length is unknown). */
export function batchKey(job: DecodedJob, tokenizer: Tokenizer | undefined): string | undefined {
  if (!batchable(job)) return undefined;
  const counts = tokenCounts(job.input, tokenizer);
  return counts === undefined ? undefined : `${job.grad ? "grad" : "nograd"}|${counts}`;
}

/**
 * Characters of text counted into tokens here, on the server's main thread, over all of a job's rows: longer text
 * runs alone, tokenized by its worker (where a job's bounds apply), since tokenizing long runs of one character is
 * slow and would hold up every request meanwhile (200 rows of 4096 spaces took 4.6 s).
 */
const MAX_KEYED_CHARS = 4096;

/** The number of tokens of each row of an input, e.g. "5" or "5,5"; undefined when it cannot be told. */
function tokenCounts(input: unknown, tokenizer: Tokenizer | undefined): string | undefined {
  const texts = typeof input === "string" ? [input] : Array.isArray(input) && input.length > 0 && input.every((x) => typeof x === "string") ? (input as string[]) : undefined;
  if (texts) {
    if (!tokenizer || texts.reduce((n, t) => n + t.length, 0) > MAX_KEYED_CHARS) return undefined;
    return texts.map((t) => tokenizer.encode(t).length).join(",");
  }
  if (Array.isArray(input) && input.length > 0) {
    if (input.every((x) => typeof x === "number")) return String(input.length);
    if (input.every((x) => Array.isArray(x))) return input.map((r: unknown[]) => r.length).join(",");
    return undefined;
  }
  const shape = (input as { shape?: unknown })?.shape ?? (input as { input_ids?: { shape?: unknown } })?.input_ids?.shape;
  if (Array.isArray(shape) && shape.every((n) => Number.isInteger(n))) return shape.length === 1 ? String(shape[0]) : `${shape.join("x")}`;
  return undefined;
}

/** The log line of a job that shares its forward pass with others. */
export const batchNote = (jobs: number): string => `[tsight] batched: this job runs in one forward pass with ${jobs - 1} other job${jobs === 2 ? "" : "s"}`;

/** Mean jobs per pass, from counts (null before the first pass). */
export const perPass = (p: { passes: number; jobs: number } | undefined): number | null => (p && p.passes > 0 ? Math.round((p.jobs / p.passes) * 100) / 100 : null);
