/**
 * Request bodies: read with a size limit (413 as soon as it is passed, from Content-Length or while streaming) and
 * parsed by content type: JSON, or the binary envelope.
 */
import { checkJsonText, ENVELOPE_TYPE } from "tsight/protocol";
import { ApiError } from "./api-error.js";

/** The body as parsed, with the bytes it came in (an Idempotency-Key is checked against them). */
export type ParsedBody = { kind: "json"; value: unknown; bytes: Uint8Array } | { kind: "envelope"; bytes: Uint8Array };

const tooLarge = (limit: number) => new ApiError(413, "VALIDATION", `the request body is larger than this server's limit of ${limit} bytes`);

export async function readBody(req: Request, limit: number): Promise<Uint8Array> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > limit) throw tooLarge(limit);
  if (!req.body) return new Uint8Array(0);
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge(limit);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  return bytes;
}

/** Reads and parses a body that is JSON (`application/json`) or an envelope (`ENVELOPE_TYPE`). */
export async function parseBody(req: Request, limit: number): Promise<ParsedBody> {
  const type = (req.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/json" && type !== ENVELOPE_TYPE) {
    throw new ApiError(415, "VALIDATION", `send the body as application/json or ${ENVELOPE_TYPE}${type ? `, not ${type}` : " (the Content-Type header is missing)"}`);
  }
  const bytes = await readBody(req, limit);
  if (type === ENVELOPE_TYPE) return { kind: "envelope", bytes };
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
    return { kind: "json", value: JSON.parse(text), bytes };
  } catch (e) {
    throw new ApiError(400, "VALIDATION", `the request body is not valid JSON: ${(e as Error).message}`);
  }
}
