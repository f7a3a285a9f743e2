/**
 * Errors that come out of job code. Their message and stack are the user's; their code is one a user may give:
 * an error thrown by job code never says the server failed (PREEMPTED, INTERNAL, CANCELLED...), so it cannot
 * make its job look retryable or cancelled. Stacks keep only frames of the job's own code.
 */
import { RETRYABLE, type ErrorCode } from "tsight/protocol";

/** Codes an error from job code may carry (the host's refusals it did not catch keep theirs). */
const USER_CODES: ReadonlySet<string> = new Set<ErrorCode>(["USER_CODE", "VALIDATION", "NOT_ALLOWED", "MEMORY", "TIMEOUT"]);
/** Longest message and stack kept from job code. */
export const MAX_MESSAGE_CHARS = 8 * 1024;
export const MAX_STACK_CHARS = 16 * 1024;

/** Frames of the job's own code: the intervention source and its edits, as the sandbox names them. */
const USER_FRAME = /\b(?:intervention|edit\d+|vars\.[\w.$-]+)\.js:\d+:\d+/;

/** Only the lines of a stack that point into the job's code (and its first line, the error itself). */
export function userStack(stack: string): string {
  const lines = stack.split("\n");
  return [lines[0] ?? "", ...lines.slice(1).filter((l) => USER_FRAME.test(l))].join("\n").slice(0, MAX_STACK_CHARS);
}

/** A host Error from an isolate error descriptor: its class name, capped message, user stack and a user's code. */
export function userError(info: unknown): Error {
  const i = (info ?? {}) as { type?: unknown; message?: unknown; stack?: unknown; code?: unknown };
  const e = new Error(capped(String(i.message ?? "error"), MAX_MESSAGE_CHARS));
  e.name = String(i.type ?? "Error").slice(0, 100);
  e.stack = typeof i.stack === "string" ? userStack(i.stack) : `${e.name}: ${e.message}`;
  const code = typeof i.code === "string" && USER_CODES.has(i.code) ? (i.code as ErrorCode) : "USER_CODE";
  Object.assign(e, { code, retryable: RETRYABLE[code] });
  return e;
}

export function capped(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}… [cut at ${max} characters]`;
}
