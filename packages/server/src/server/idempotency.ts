/**
 * Idempotency-Key on POST /v1/jobs (draft-ietf-httpapi-idempotency-key-header): a submission names itself with a
 * key, and the key's first job is kept with a SHA-256 digest of the body. The same key with the same body gives
 * that job again (a retry); with another body it is refused, 422 as the draft says, since the client reused a key
 * it meant for another request.
 *
 * The digest is of the bytes as received, with their content type: a retry must send the same bytes, which the
 * tsight client does (it encodes a request once, as an envelope when it has tensors, else as JSON, and sends those
 * bytes on every try). The same request encoded another way (the other content type, other spacing or key order)
 * counts as a different one: making the two encodings agree would mean decoding every keyed envelope a second time,
 * for the sake of clients that change how they encode a request between tries.
 */
import { createHash } from "node:crypto";
import { ApiError } from "./api-error.js";
import type { ParsedBody } from "./body.js";

export interface Idempotency {
  key: string;
  /** SHA-256 (hex) of the body's content type and bytes. */
  digest: string;
}

/** The Idempotency-Key header's key (checked before the body is read); undefined without one. */
export function idempotencyKey(header: string | undefined): string | undefined {
  if (header !== undefined && !/^[\x21-\x7e]{1,200}$/.test(header)) throw new ApiError(400, "VALIDATION", "an Idempotency-Key header is 1 to 200 visible ASCII characters");
  return header;
}

/** The digest a keyed submission is kept with: SHA-256 (hex) of the body's content type and bytes. */
export function bodyDigest(body: ParsedBody): string {
  return createHash("sha256").update(body.kind).update("\0").update(body.bytes).digest("hex");
}

/**
 * Checks a repeated key against the job it named: returns when the bodies agree, else throws the 422. A job stored
 * before digests were kept (`requestDigest` null) is taken as the same request, as it was then.
 */
export function checkRepeat(earlier: { id: string; requestDigest: string | null }, idempotency: Idempotency): void {
  if (earlier.requestDigest === null || earlier.requestDigest === idempotency.digest) return;
  throw new ApiError(
    422,
    "NOT_ALLOWED",
    `Idempotency-Key "${idempotency.key}" was used by this API key for a different request (job ${earlier.id}); send a new key with a new request (the same body again gives that job)`,
  );
}
