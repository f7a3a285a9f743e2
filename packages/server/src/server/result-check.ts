/**
 * Stored results carry a sha-256 of their bytes, checked whenever they are read, so a result damaged on disk or in
 * Redis is refused (INTERNAL), never served. A stored result is the 32-byte digest followed by the envelope.
 */
import { createHash } from "node:crypto";

const DIGEST_BYTES = 32;

/** A stored result whose bytes no longer match their checksum. */
export class DamagedResultError extends Error {
  override readonly name = "DamagedResultError";
}

/** The bytes to store for a result: its digest, then the result. */
export function sealResult(bytes: Uint8Array): Buffer {
  return Buffer.concat([createHash("sha256").update(bytes).digest(), bytes]);
}

/** The result in `stored` after checking its digest; a DamagedResultError if it does not match. */
export function openResult(id: string, stored: Uint8Array): Uint8Array {
  if (stored.byteLength < DIGEST_BYTES) throw new DamagedResultError(`the stored result of job ${id} is damaged (${stored.byteLength} bytes, shorter than its checksum); it cannot be served`);
  const digest = stored.subarray(0, DIGEST_BYTES);
  const bytes = stored.subarray(DIGEST_BYTES);
  if (!createHash("sha256").update(bytes).digest().equals(digest)) throw new DamagedResultError(`the stored result of job ${id} is damaged (its checksum does not match); it cannot be served`);
  return bytes;
}
