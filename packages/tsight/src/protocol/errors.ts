/**
 * Errors across the wire: an ErrorInfo is plain data; on the client it becomes an error of the class the job
 * raised when that class is one tsight knows (its own and JavaScript's), or a RemoteError otherwise. Classes are
 * found in a fixed table, never constructed from a name in a response.
 */
import { DTypeError, GradError, MetaTensorError, ShapeError } from "../tensor/index.js";
import { ModuleCallError } from "../nn/index.js";
import { OptimizerError } from "../optim/index.js";
import { InputError, MissedProviderError, OptionsError, OutOfOrderError, SwapError, TraceError } from "../intervention/index.js";
import { RETRYABLE, type ErrorCode, type ErrorInfo } from "./wire.js";

/** An error a remote job or server reported. */
export class RemoteError extends Error {
  override readonly name: string = "RemoteError";
  readonly code: ErrorCode;
  readonly retryable: boolean;
  /** The class the job raised. */
  readonly type: string;
  /** HTTP status of the response that carried it, when there was one. */
  readonly status?: number;
  constructor(info: ErrorInfo, status?: number) {
    super(info.message);
    this.code = info.code;
    this.retryable = info.retryable;
    this.type = info.type;
    this.status = status;
    if (info.stack) this.stack = info.stack;
  }
}

/** A client-side mistake caught before anything was sent (free variables, values that cannot be sent). */
export class ClientError extends Error {
  override readonly name: string = "ClientError";
  readonly code: ErrorCode = "VALIDATION";
  readonly retryable = false;
}

type ErrorClass = new (message: string) => Error;
const known: Record<string, ErrorClass> = {
  Error,
  TypeError,
  RangeError,
  SyntaxError,
  ReferenceError,
  EvalError,
  URIError,
  ShapeError,
  DTypeError,
  MetaTensorError,
  GradError,
  OptimizerError,
  ModuleCallError,
  OutOfOrderError,
  MissedProviderError,
  SwapError,
  TraceError,
  OptionsError,
  InputError,
};

/** Adds a class of this package's own to the table (one defined where this module cannot import it). */
export function knownErrorClass(name: string, cls: ErrorClass): void {
  known[name] = cls;
}

/** An Error (of a known class, with code and retryable) from its description. */
export function errorFromInfo(info: ErrorInfo, status?: number): Error {
  // Own keys only: a type of "__proto__" or "constructor" is no class of ours.
  const cls = Object.hasOwn(known, info.type) ? known[info.type] : undefined;
  if (!cls) return new RemoteError(info, status);
  const e = new cls(info.message);
  // A class of its own code (InputError: VALIDATION), or any code the job's code may raise as USER_CODE; a server's
  // own codes (TIMEOUT, MEMORY, ...) stay RemoteErrors.
  if (info.code !== "USER_CODE" && (e as { code?: unknown }).code !== info.code) return new RemoteError(info, status);
  // The message and stack are the job's, not where this copy was made.
  e.message = info.message;
  e.stack = info.stack ?? `${info.type}: ${info.message}`;
  Object.assign(e, { code: info.code, retryable: info.retryable });
  // Its line is the job's (in its stack), not where this copy was made (an InputError finds one too).
  if ("userLine" in e) (e as { userLine?: string }).userLine = undefined;
  return e;
}

/** An Error as data; errors raised by user code are USER_CODE unless they say otherwise. */
export function infoFromError(e: unknown, fallback: ErrorCode = "USER_CODE"): ErrorInfo {
  if (e instanceof RemoteError) return { code: e.code, type: e.type, message: e.message, retryable: e.retryable, stack: e.stack };
  const err = e instanceof Error ? e : new Error(String(e));
  const own = (err as { code?: unknown }).code;
  const code = typeof own === "string" && Object.hasOwn(RETRYABLE, own) ? (own as ErrorCode) : fallback;
  return { code, type: err.name || "Error", message: err.message, retryable: RETRYABLE[code], stack: err.stack };
}
