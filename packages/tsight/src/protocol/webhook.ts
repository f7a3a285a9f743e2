/**
 * Webhook signatures. When a job submitted with `webhook` ends, the server POSTs a WebhookPayload (JSON) there with
 *
 *   tsight-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(webhookSecret, "<t>.<body>")>
 *
 * (only `t=...` when the job gave no secret). A receiver checks the raw body, before parsing it:
 *
 *   const payload = await verifyWebhook(rawBody, req.headers["tsight-signature"], secret);   // or throws
 *
 * The timestamp is signed with the body, so an old delivery replayed later is refused as stale. Web Crypto only:
 * runs in Node, browsers and edge runtimes alike.
 */
import type { WebhookPayload } from "./wire.js";

export type WebhookProblem = "malformed" | "unsigned" | "mismatch" | "stale";

/** A webhook delivery that does not check out; `reason` says which check failed. */
export class WebhookVerificationError extends Error {
  override readonly name = "WebhookVerificationError";
  constructor(
    readonly reason: WebhookProblem,
    message: string,
  ) {
    super(message);
  }
}

export interface VerifyWebhookOptions {
  /** How far the signed time may be from now, either way (default 300 s). */
  toleranceSeconds?: number;
  /** The time to check against, in ms since the epoch (default Date.now()). */
  now?: number;
}

/** The `tsight-signature` header for `body` sent at `t` (unix seconds); without a secret only the time. */
export async function webhookSignature(body: string, secret: string | undefined, t: number): Promise<string> {
  if (secret === undefined) return `t=${t}`;
  return `t=${t},v1=${toHex(await hmacSha256(secret, `${t}.${body}`))}`;
}

/**
 * Checks a webhook delivery: `body` exactly as received, the `tsight-signature` header and the job's secret.
 * Resolves with the parsed payload; rejects with a WebhookVerificationError when the header is missing or
 * malformed, the signature does not match (compared in constant time), or the signed time is more than
 * `toleranceSeconds` from now.
 */
export async function verifyWebhook(body: string, header: string | null | undefined, secret: string, options: VerifyWebhookOptions = {}): Promise<WebhookPayload> {
  const { toleranceSeconds = 300, now = Date.now() } = options;
  const parsed = parseSignature(header);
  if (!parsed) throw new WebhookVerificationError("malformed", `the tsight-signature header must read "t=<unix seconds>,v1=<hex>", got ${JSON.stringify(header ?? null)}`);
  if (parsed.v1.length === 0) throw new WebhookVerificationError("unsigned", "the delivery is not signed (no v1 part): the job was submitted without a webhookSecret");
  const expected = await hmacSha256(secret, `${parsed.t}.${body}`);
  // Every candidate is compared in full, so the time taken says nothing about where a guess went wrong.
  let match = false;
  for (const candidate of parsed.v1) match = equalBytes(expected, candidate) || match;
  if (!match) throw new WebhookVerificationError("mismatch", "the signature does not match the body and secret: the body was changed, or the secret is not this job's");
  const age = now / 1000 - parsed.t;
  if (Math.abs(age) > toleranceSeconds) {
    throw new WebhookVerificationError("stale", `the delivery was signed ${Math.round(Math.abs(age))} s ${age > 0 ? "ago" : "in the future"}, more than the ${toleranceSeconds} s allowed`);
  }
  try {
    return JSON.parse(body) as WebhookPayload;
  } catch (e) {
    throw new WebhookVerificationError("malformed", `the signed body is not JSON: ${(e as Error).message}`);
  }
}

/** `t` and the v1 signatures (as bytes) of a header, or undefined when it has no valid time. */
function parseSignature(header: string | null | undefined): { t: number; v1: Uint8Array[] } | undefined {
  if (typeof header !== "string") return undefined;
  let t: number | undefined;
  const v1: Uint8Array[] = [];
  for (const part of header.split(",")) {
    const [name, value = ""] = part.trim().split("=", 2) as [string, string?];
    if (name === "t" && /^\d{1,12}$/.test(value)) t = Number(value);
    else if (name === "v1" && /^[0-9a-fA-F]{64}$/.test(value)) v1.push(fromHex(value));
    else if (name === "t" || name === "v1") return undefined;
  }
  return t === undefined ? undefined : { t, v1 };
}

async function hmacSha256(secret: string, text: string): Promise<Uint8Array> {
  const encoder = new TextEncoder();
  const key = await crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(text)));
}

/** Compares without stopping at the first difference. */
function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

const toHex = (bytes: Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

function fromHex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}
