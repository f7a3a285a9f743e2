/**
 * What a client is told about a job's error: its code, class and message, and a stack with only the job's own
 * code in it (never the server's files), each of bounded size so that an error cannot fill the job store.
 */
import { RETRYABLE, type ErrorInfo } from "tsight/protocol";
import { capped, MAX_MESSAGE_CHARS, userStack } from "../sandbox/user-errors.js";

export function publicError(info: ErrorInfo): ErrorInfo {
  const out: ErrorInfo = {
    code: info.code in RETRYABLE ? info.code : "INTERNAL",
    type: String(info.type).slice(0, 100),
    message: capped(String(info.message), MAX_MESSAGE_CHARS),
    retryable: RETRYABLE[info.code] ?? true,
  };
  const stack = typeof info.stack === "string" ? userStack(info.stack) : "";
  if (stack.includes("\n")) out.stack = stack;
  if (info.line !== undefined) out.line = info.line;
  if (info.column !== undefined) out.column = info.column;
  return out;
}
