/**
 * Which request bodies the server takes in at once. Each is held in memory while it comes in and is parsed, so with
 * no bound one key that sent many large bodies at once made the server hold any amount (32 bodies of 66 MB took it
 * to 2.6 GB) and kept its main thread parsing them for a minute. A key may be sending `perKey` bodies of 64 KiB or more at once
 * (one more: 429), and all keys together `bytesInFlight` bytes of bodies (past that: 503); both are refused before any of
 * the body is read. A body counts its Content-Length, or its limit when it has none (chunked), until it is parsed.
 */
import { ApiError } from "./api-error.js";
import { parseBody, type BodyLimits, type ParsedBody } from "./body.js";
import { PerKeyLimit } from "./per-key-limit.js";

export interface BodyGateLimits extends BodyLimits {
  /** Bodies one API key may be sending at once. */
  perKey: number;
  /** Bytes of bodies all keys together may be sending at once (at least `maxBytes`). */
  bytesInFlight: number;
}

/** Bodies of fewer bytes (by their Content-Length) do not count against their key's bodies in flight. */
const SMALL_BODY_BYTES = 64 * 1024;

export class BodyGate {
  /** Bodies of SMALL_BODY_BYTES or more being read, by API key id. */
  private readonly perKey: PerKeyLimit;
  private bodies = 0;
  private bytes = 0;

  constructor(private readonly limits: BodyGateLimits) {
    this.perKey = new PerKeyLimit("request bodies", limits.perKey, "read", (n) => `this key is sending ${n} request bodies already, the most it may at once; send this one after one of them is answered`);
  }

  /** The bodies being read and parsed now, and the bytes they count. */
  get inFlight(): { bodies: number; bytes: number } {
    return { bodies: this.bodies, bytes: this.bytes };
  }

  /** The request's body, read and parsed (see parseBody) if `key` and the server may take it in now. */
  parse(req: Request, key: string): Promise<ParsedBody> {
    return parseBody(req, this.limits, (bytes) => this.admit(key, bytes));
  }

  /** Counts a body of `bytes` against `key` and the server; what it returns takes it off again. */
  private admit(key: string, bytes: number): () => void {
    // Says nothing of what other keys send: only that the server is full.
    const full = () => new ApiError(503, "UNAVAILABLE", `the server is taking in as many bytes of request bodies as it holds at once (${this.limits.bytesInFlight}); send this one again shortly`, { retryable: true, headers: { "retry-after": "1" } });
    // A small body (a plain job's JSON) is read with its headers: many at once cost little, and a client submitting
    // its jobs at once (one key, several in flight) must not be refused; the bound on all bytes still holds them.
    // The key's count is checked first: a key at its limit is told so, whatever the server's bytes.
    if (bytes < SMALL_BODY_BYTES) {
      if (this.bytes + bytes > this.limits.bytesInFlight) throw full();
      return this.hold(bytes, () => undefined);
    }
    const release = this.perKey.take(key);
    if (this.bytes + bytes > this.limits.bytesInFlight) {
      release();
      throw full();
    }
    return this.hold(bytes, release);
  }

  /** Counts `bytes` against the server; what it returns takes them off again (and calls `also`), once. */
  private hold(bytes: number, also: () => void): () => void {
    this.bodies++;
    this.bytes += bytes;
    let counted = true;
    return () => {
      if (!counted) return;
      counted = false;
      this.bodies--;
      this.bytes -= bytes;
      also();
    };
  }
}
