/**
 * How many bytes of event streams one key may be sent, on average over time: a token bucket per key that a
 * stream's bytes are taken from as they are sent, and may go below empty. A stream is never cut for its bytes
 * (a job's live events are bounded by maxEventBytesPerJob already); a key in debt may open no new stream until
 * the bucket has refilled past empty. Without it a key reopening streams of a long log without pause (each
 * replaying it all, read from the store and encoded again) took CPU from every other key: 16 such loops on a
 * 15 MB log raised another key's job latency (p50) from 247 to 1,616 ms.
 */
import { ApiError } from "./api-error.js";

/** Keys whose buckets are full are forgotten once this many are held (a full bucket is the default). */
const SWEEP_PAST = 1024;

export class ByteBudget {
  private readonly buckets = new Map<string, { bytes: number; at: number }>();

  constructor(
    /** What is sent, for the 429's message ("event stream bytes"). */
    private readonly what: string,
    /** Bytes a second the bucket refills with. */
    readonly perSecond: number,
    /** Bytes a full bucket holds (what a key may be sent at once after a pause). */
    readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The key's bytes now (refilled for the time since it was last touched), at most the burst; may be below 0. */
  balance(key: string): number {
    const b = this.buckets.get(key);
    if (!b) return this.burst;
    const now = this.now();
    b.bytes = Math.min(this.burst, b.bytes + ((now - b.at) / 1000) * this.perSecond);
    b.at = now;
    return b.bytes;
  }

  /** Throws a 429, retryable after the seconds until the key is out of debt, when it has nothing left. */
  admit(key: string): void {
    const left = this.balance(key);
    if (left > 0) return;
    const seconds = Math.max(1, Math.ceil((1 - left) / this.perSecond));
    throw new ApiError(
      429,
      "NOT_ALLOWED",
      `this key was sent ${this.what} faster than the ${this.perSecond} bytes a second it may be on average (after ${this.burst} at once): it may open another in ${seconds} s; resume a stream after the last event it got (Last-Event-ID) instead of reading it all again`,
      { retryable: true, headers: { "retry-after": String(seconds) } },
    );
  }

  /** Takes `bytes` sent to the key from its bucket. */
  spend(key: string, bytes: number): void {
    const left = this.balance(key) - bytes;
    if (!this.buckets.has(key) && this.buckets.size >= SWEEP_PAST) this.sweep();
    this.buckets.set(key, { bytes: left, at: this.now() });
  }

  /** Forgets the keys whose buckets have refilled (the memory held is that of keys sent bytes lately). */
  private sweep(): void {
    for (const key of [...this.buckets.keys()]) if (this.balance(key) >= this.burst) this.buckets.delete(key);
  }
}
