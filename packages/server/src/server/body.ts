/**
 * Request bodies: read within limits (size: 413 as soon as it is passed, from Content-Length or while streaming;
 * time: 408 when the body has not all come in time) and parsed by content type: JSON, or the binary envelope. JSON is
 * parsed on the main thread, so its text (a JSON body, or an envelope's header) has a limit of its own, far below the
 * body's: parsing 64 MiB of it held the thread for most of a second, and every other request with it.
 */
import { checkJsonText, ENVELOPE_TYPE } from "tsight/protocol";
import { ApiError } from "./api-error.js";

/** The body as parsed, with the bytes it came in (an Idempotency-Key is checked against them). */
export type ParsedBody = { kind: "json"; value: unknown; bytes: Uint8Array } | { kind: "envelope"; bytes: Uint8Array };

export interface BodyLimits {
  /** Largest body. */
  maxBytes: number;
  /** Largest JSON text: a JSON body, or an envelope's safetensors header (which holds the envelope's JSON). */
  maxJsonBytes: number;
  /** How long the whole body may take to come in, from when its reading starts. */
  timeoutMs: number;
}

/** A body let in: `received` told the bytes come in so far as they come (it may refuse by throwing), `release` at the end. */
export interface Admitted {
  received(bytes: number): void;
  release(): void;
}

/**
 * Told the bytes a body may take (its Content-Length, or its limit when it has none) before any of it is read; it
 * refuses by throwing, or returns how to follow the body in.
 */
export type Admit = (bytes: number) => Admitted;

const NOTHING_TO_FOLLOW: Admitted = { received: () => undefined, release: () => undefined };

const tooLarge = (limit: number) => new ApiError(413, "VALIDATION", `the request body is larger than this server's limit of ${limit} bytes`);

/** Reads and parses a body that is JSON (`application/json`) or an envelope (`ENVELOPE_TYPE`). */
export async function parseBody(req: Request, limits: BodyLimits, admit: Admit = () => NOTHING_TO_FOLLOW): Promise<ParsedBody> {
  const type = (req.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/json" && type !== ENVELOPE_TYPE) {
    throw new ApiError(415, "VALIDATION", `send the body as application/json or ${ENVELOPE_TYPE}${type ? `, not ${type}` : " (the Content-Type header is missing)"}`);
  }
  const json = type === "application/json";
  const limit = json ? Math.min(limits.maxJsonBytes, limits.maxBytes) : limits.maxBytes;
  // A JSON body past the JSON limit is told so: it could come as an envelope.
  const over = json && limit < limits.maxBytes ? () => jsonTooLarge(limit) : () => tooLarge(limit);
  const declared = declaredLength(req);
  if (declared !== undefined && declared > limit) throw over();
  const admitted = admit(declared ?? limit);
  try {
    const bytes = await readBody(req, limit, limits.timeoutMs, declared, over, (n) => admitted.received(n));
    return json ? { kind: "json", value: parseJson(bytes), bytes } : { kind: "envelope", bytes: checkEnvelopeHeader(bytes, limits.maxJsonBytes) };
  } finally {
    admitted.release();
  }
}

/** The Content-Length, if the request has one. */
function declaredLength(req: Request): number | undefined {
  const header = req.headers.get("content-length");
  return header !== null && /^\d+$/.test(header.trim()) ? Number(header) : undefined;
}

/**
 * The body's bytes, at most `limit` of them, all in within `timeoutMs` (then 408, and what came is let go). With a
 * Content-Length the bytes go straight into one buffer of that size (untouched pages of it take no memory), not into
 * chunks copied at the end, which held each body twice.
 */
export async function readBody(req: Request, limit: number, timeoutMs: number, declared?: number, over = () => tooLarge(limit), received: (bytes: number) => void = () => undefined): Promise<Uint8Array> {
  if (!req.body) return new Uint8Array(0);
  const reader = req.body.getReader();
  let into = declared !== undefined && declared <= limit ? new Uint8Array(declared) : undefined;
  const chunks: Uint8Array[] = [];
  let total = 0;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ApiError(408, "TIMEOUT", `the request body did not come in within ${timeoutMs / 1000} s (${total} of ${declared ?? "?"} bytes came); send it again over a faster connection`, { retryable: true })), timeoutMs);
  });
  try {
    for (;;) {
      const { done, value } = await Promise.race([reader.read(), late]);
      if (done) break;
      if (total + value.byteLength > limit) throw over();
      received(total + value.byteLength);
      if (into && total + value.byteLength > into.byteLength) {
        // More than it declared (only a Request made in process can do that): kept as chunks from here.
        chunks.push(into.subarray(0, total));
        into = undefined;
      }
      if (into) into.set(value, total);
      else chunks.push(value);
      total += value.byteLength;
    }
  } catch (e) {
    await reader.cancel().catch(() => undefined);
    // Else the body's stream broke: its client went away, which is no failure of the server's to log.
    if (e instanceof ApiError) throw e;
    throw new ApiError(400, "VALIDATION", `the request body broke off after ${total} bytes: ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
  if (into) return total === into.byteLength ? into : into.subarray(0, total);
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  return bytes;
}

const jsonTooLarge = (limit: number) => new ApiError(413, "VALIDATION", `a JSON request body is larger than this server's limit of ${limit} bytes for JSON; send large data as tensors, which go in an envelope`);

function parseJson(bytes: Uint8Array): unknown {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (e) {
    throw new ApiError(400, "VALIDATION", `the request body is not valid UTF-8: ${(e as Error).message}`);
  }
  // Its depth and count of values, before JSON.parse makes them (see checkJsonText).
  try {
    checkJsonText(text, "the request body");
  } catch (e) {
    throw new ApiError(400, "VALIDATION", (e as Error).message);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ApiError(400, "VALIDATION", `the request body is not valid JSON: ${(e as Error).message}`);
  }
}

/**
 * An envelope whose JSON (its safetensors header, with the request inside) is within `maxJsonBytes`: that text is
 * parsed on the main thread as the job is taken, so it is refused here, from the header's length, before anything
 * parses it. A body too short to have a header is left for the envelope's decoder to name.
 */
function checkEnvelopeHeader(bytes: Uint8Array, maxJsonBytes: number): Uint8Array {
  if (bytes.byteLength < 8) return bytes;
  const header = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (header > BigInt(maxJsonBytes)) throw new ApiError(413, "VALIDATION", `the envelope's header (its JSON) is ${header} bytes, more than this server's limit of ${maxJsonBytes} bytes for JSON; send large data as tensors`);
  return bytes;
}
