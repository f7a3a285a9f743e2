/**
 * Which request bodies the server takes in at once. Each is held in memory while it comes in and is parsed, so with
 * no bound one key that sent many large bodies at once made the server hold any amount (32 bodies of 66 MB took it
 * to 2.6 GB) and kept its main thread parsing them for a minute. A key may be sending `perKey` bodies of 64 KiB or more at once
 * (one more: 429), 32 bodies of any size, and all keys together `bytesInFlight` bytes of bodies (past that: 503). A
 * body counts the bytes that came in so far and a headroom (a sixteenth of `bytesInFlight`, at most 1 MiB) for those on their way, at most its Content-Length (or
 * its limit, chunked), until it is parsed: a body with no room for its headroom is refused before any of it is read, one
 * that outgrows the room left while it comes in is refused then. Counted by its declared length alone, two keys'
 * bodies trickling in a byte at a time kept every other key's jobs out (503) until they timed out. Bodies of 64 KiB
 * or more leave a reserve (a sixteenth of `bytesInFlight`, at most 16 MiB) to the small ones, a plain job's JSON:
 * without it, two keys sending large bodies all but their last byte and holding them filled the bound, and every
 * key's submissions were refused (503) until the bodies timed out.
 */
import { ApiError } from "./api-error.js";
import { parseBody, type Admitted, type BodyLimits, type ParsedBody } from "./body.js";
import { PerKeyLimit } from "./per-key-limit.js";

export interface BodyGateLimits extends BodyLimits {
  /** Bodies one API key may be sending at once. */
  perKey: number;
  /** Bytes of bodies all keys together may be sending at once (at least `maxBytes`). */
  bytesInFlight: number;
}

/** Bodies of fewer bytes (by their Content-Length) do not count against their key's large bodies in flight. */
const SMALL_BODY_BYTES = 64 * 1024;
/**
 * Bodies of any size one key may be sending at once: a client submitting its jobs at once gets in, and a key cannot
 * hold thousands of trickling small bodies (4,096 of 64 KiB declared filled the bytes in flight for every other key).
 */
const BODIES_PER_KEY = 32;
/** The most a body counts beyond the bytes that came (see the header). */
const MAX_HEADROOM = 1024 * 1024;
/** The most bytes kept for small bodies alone (see the header). */
const MAX_SMALL_RESERVE = 16 * 1024 * 1024;

export class BodyGate {
  /** Bodies of SMALL_BODY_BYTES or more being read, by API key id. */
  private readonly perKey: PerKeyLimit;
  private bodies = 0;
  private bytes = 0;

  /** Bodies of any size being read, by API key id. */
  private readonly allPerKey: PerKeyLimit;

  constructor(private readonly limits: BodyGateLimits) {
    const busy = (n: number) => `this key is sending ${n} request bodies already, the most it may at once; send this one after one of them is answered`;
    this.perKey = new PerKeyLimit("request bodies", limits.perKey, "read", busy);
    this.allPerKey = new PerKeyLimit("request bodies", BODIES_PER_KEY, "read", busy);
  }

  /** The bodies being read and parsed now, and the bytes they count. */
  get inFlight(): { bodies: number; bytes: number } {
    return { bodies: this.bodies, bytes: this.bytes };
  }

  /** The request's body, read and parsed (see parseBody) if `key` and the server may take it in now. */
  parse(req: Request, key: string): Promise<ParsedBody> {
    return parseBody(req, this.limits, (bytes) => this.admit(key, bytes));
  }

  /** Bytes a body counts beyond those that came (see the header). */
  private get headroom(): number {
    return Math.min(MAX_HEADROOM, Math.floor(this.limits.bytesInFlight / 16));
  }

  /** Bytes bodies of SMALL_BODY_BYTES or more leave to smaller ones (see the header); a body of the largest size still fits. */
  private get smallReserve(): number {
    const { bytesInFlight, maxBytes } = this.limits;
    return Math.max(0, Math.min(MAX_SMALL_RESERVE, Math.floor(bytesInFlight / 16), bytesInFlight - maxBytes));
  }

  /** Says nothing of what other keys send: only that the server is full. */
  private full(): ApiError {
    return new ApiError(503, "UNAVAILABLE", `the server is taking in as many bytes of request bodies as it holds at once (${this.limits.bytesInFlight}); send this one again shortly`, { retryable: true, headers: { "retry-after": "1" } });
  }

  /** Counts a body of at most `bytes` against `key` and the server, as it comes in (see the header). */
  private admit(key: string, bytes: number): Admitted {
    // A small body (a plain job's JSON) counts only among the key's bodies of any size: a client submitting its jobs
    // at once (one key, several in flight) must not be refused at the few large bodies a key may send. The key's
    // counts are checked first: a key at its limit is told so, whatever the server's bytes.
    const any = this.allPerKey.take(key);
    let large: () => void;
    try {
      large = bytes < SMALL_BODY_BYTES ? () => undefined : this.perKey.take(key);
    } catch (e) {
      any();
      throw e;
    }
    const release = () => {
      large();
      any();
    };
    const charge = (received: number) => Math.min(bytes, received + this.headroom);
    const room = bytes < SMALL_BODY_BYTES ? this.limits.bytesInFlight : this.limits.bytesInFlight - this.smallReserve;
    let held = charge(0);
    if (this.bytes + held > room) {
      release();
      throw this.full();
    }
    this.bodies++;
    this.bytes += held;
    let counted = true;
    return {
      received: (n) => {
        const more = charge(n) - held;
        if (more <= 0) return;
        if (this.bytes + more > room) throw this.full();
        this.bytes += more;
        held += more;
      },
      release: () => {
        if (!counted) return;
        counted = false;
        this.bodies--;
        this.bytes -= held;
        release();
      },
    };
  }
}
