/** ApiError: a refusal with its HTTP status and the ErrorInfo the client gets (as an ErrorBody). */
import { RETRYABLE, type ErrorBody, type ErrorCode, type ErrorInfo } from "tsight/protocol";

export interface ApiErrorOptions {
  /** Overrides the code's usual retryable flag (e.g. a 429 is worth retrying). */
  retryable?: boolean;
  headers?: Record<string, string>;
  /** More fields of the body (`supported` for 426). */
  extra?: Partial<ErrorBody>;
}

export class ApiError extends Error {
  override readonly name = "ApiError";
  readonly info: ErrorInfo;
  readonly headers: Record<string, string>;
  private readonly extra: Partial<ErrorBody>;

  constructor(
    readonly status: number,
    code: ErrorCode,
    message: string,
    options: ApiErrorOptions = {},
  ) {
    super(message);
    this.info = { code, type: "ApiError", message, retryable: options.retryable ?? RETRYABLE[code] };
    this.headers = options.headers ?? {};
    this.extra = options.extra ?? {};
  }

  body(): ErrorBody {
    return { ...this.extra, error: this.info };
  }
}

/** A job id that is unknown, or that another key submitted: the same answer for both. */
export const jobNotFound = (id: string): ApiError => new ApiError(404, "VALIDATION", `there is no job ${id} for this API key`);

/**
 * Refuses a key's next job when what the server keeps for it (`stored`: results, and event logs and errors) and its
 * `active` unfinished jobs, each counted at the largest result and event log (it may still keep them), leave no room
 * for one more such job under its limit: until some are deleted or expire (results are kept for the retention whether
 * or not they were downloaded: one key filled disk at 170 GB an hour; event logs, a day longer: two keys wrote 2 GB
 * in 43 s). Its message tells results and logs apart: a key whose jobs failed keeps logs only, and was told to delete
 * results, which changed nothing.
 */
export function checkRoomToStore(stored: StoredBytes, active: number, limits: { maxStoredResultBytesPerKey: number; maxResultBytes: number; maxEventBytesPerJob: number }): void {
  const perJob = limits.maxResultBytes + limits.maxEventBytesPerJob;
  const bytes = stored.results + stored.logs;
  if (bytes + (active + 1) * perJob <= limits.maxStoredResultBytesPerKey) return;
  // What would make room, as it is: deleting results helps only if it keeps some (a key whose jobs failed keeps logs).
  const ways = [...(stored.results > 0 ? ["delete results it has downloaded (DELETE /v1/jobs/ID/result)"] : []), ...(stored.logs > 0 ? [`wait for the logs of ended jobs to expire (kept ${Math.round(stored.logsKeptMs / 3_600_000)} h after their job)`] : []), ...(stored.results > 0 ? ["wait for results to expire"] : []), ...(active > 0 ? ["wait for its jobs to end"] : [])];
  throw new ApiError(
    429,
    "NOT_ALLOWED",
    `this API key keeps ${stored.results} bytes of results and ${stored.logs} bytes of event logs and errors on the server and has ${active} unfinished jobs, each of which may keep up to ${perJob} more (a result and its events); with one more that could pass the ${limits.maxStoredResultBytesPerKey} it may have: ${ways.join(", or ")}`,
    { retryable: true, headers: { "retry-after": "60" } },
  );
}

/** What a key keeps on the server (see checkRoomToStore), and how long an ended job's log is kept. */
export interface StoredBytes {
  /** Its results not expired nor deleted. */
  results: number;
  /** Its jobs' events and their errors' record copies. */
  logs: number;
  logsKeptMs: number;
}
