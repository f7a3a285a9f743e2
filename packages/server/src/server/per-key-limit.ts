/**
 * How many responses of one kind a key may have open at once (event streams, result downloads). Each holds what it
 * sends in memory until its reader takes it or goes away, so without a bound one key that opens many and reads
 * none could make the server hold any amount (40 idle streams of a 16 MiB event log held 640 MB).
 */
import { ApiError } from "./api-error.js";

export class PerKeyLimit {
  private readonly open = new Map<string, number>();

  constructor(
    /** What is limited, for the 429's message ("event streams"). */
    private readonly what: string,
    readonly max: number,
  ) {}

  /** The response's body, counted against `key` until it is read to its end or cancelled; a 429 past the limit. */
  count(key: string, response: Response): Response {
    const n = this.open.get(key) ?? 0;
    if (n >= this.max) {
      void response.body?.cancel();
      throw new ApiError(429, "NOT_ALLOWED", `this key has ${n} ${this.what} open, the most it may; read or close one first`, { retryable: true, headers: { "retry-after": "1" } });
    }
    if (!response.body) return response;
    this.open.set(key, n + 1);
    let counted = true;
    const release = () => {
      if (!counted) return;
      counted = false;
      const left = (this.open.get(key) ?? 1) - 1;
      if (left > 0) this.open.set(key, left);
      else this.open.delete(key);
    };
    const reader = response.body.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const { done, value } = await reader.read();
          if (done) {
            release();
            controller.close();
          } else controller.enqueue(value);
        } catch (e) {
          release();
          controller.error(e);
        }
      },
      cancel(reason) {
        release();
        return reader.cancel(reason);
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  }
}
