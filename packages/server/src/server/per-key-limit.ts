/**
 * How many responses of one kind a key may have open at once (event streams, result downloads). Each holds what it
 * sends in memory until its reader takes it or goes away, so without a bound one key that opens many and reads
 * none could make the server hold any amount (40 idle streams of a 16 MiB event log held 640 MB). A response is
 * counted from before what it sends is read (a result from its file or Redis) until its last byte has left the
 * process: counted only until the HTTP server had taken its body, 45 downloads of a 100 MiB result that nobody read
 * were all let through, and held 4.8 GB.
 */
import { ApiError } from "./api-error.js";

/**
 * What says a response is over: Node's response to the request (its ServerResponse), whose "close" comes once its
 * last byte was handed to the operating system or its connection went away, and the request's socket, whose
 * "close" comes when the connection goes. A pipelined response still queued behind another when its connection
 * died never closes itself: held by it alone, its count stayed taken for good (a key lost slots until a restart).
 */
export interface ResponseEnd {
  once(event: "close", listener: () => void): unknown;
  off(event: "close", listener: () => void): unknown;
}

/** The ends of the response to a request served over HTTP (Node's bindings; none in process): see ResponseEnd. */
export function responseEnds(env: { outgoing?: ResponseEnd; incoming?: { socket?: ResponseEnd | null } } | undefined): ResponseEnd[] | undefined {
  const ends = [env?.outgoing, env?.incoming?.socket ?? undefined].filter((e): e is ResponseEnd => e !== undefined);
  return ends.length ? ends : undefined;
}

export class PerKeyLimit {
  private readonly open = new Map<string, number>();

  constructor(
    /** What is limited, for the 429's message ("event streams"). */
    what: string,
    readonly max: number,
    /**
     * "read": counted until the reader has taken the whole body (a download, whose bytes are all there at once);
     * "open": until the body itself ends, passed on as it comes (an event stream: its last events reach the
     * socket before a closing server ends it).
     */
    private readonly until: "read" | "open",
    /** The 429's message when the key has `n` open already. */
    private readonly refusal: (n: number) => string = (n) => `this key has ${n} ${what} open, the most it may; read or close one first`,
  ) {}

  /** Counts one more for `key` (a 429 past the limit); what it returns takes it off again, once. */
  take(key: string): () => void {
    const n = this.open.get(key) ?? 0;
    if (n >= this.max) throw new ApiError(429, "NOT_ALLOWED", this.refusal(n), { retryable: true, headers: { "retry-after": "1" } });
    this.open.set(key, n + 1);
    let counted = true;
    return () => {
      if (!counted) return;
      counted = false;
      const left = (this.open.get(key) ?? 1) - 1;
      if (left > 0) this.open.set(key, left);
      else this.open.delete(key);
    };
  }

  /** `response`, counted against `key` (a 429 past the limit) until it is read to its end or cancelled (see hold). */
  count(key: string, response: Response): Response {
    let release: () => void;
    try {
      release = this.take(key);
    } catch (e) {
      void response.body?.cancel();
      throw e;
    }
    return this.hold(release, response);
  }

  /**
   * The response `make` makes, counted against `key` from before it is made until it is over (see hold); a 429 past
   * the limit, before anything is read. `ends`: what says the response is over, when served over HTTP (responseEnds).
   */
  async counted(key: string, ends: readonly ResponseEnd[] | undefined, make: () => Promise<Response> | Response): Promise<Response> {
    const release = this.take(key);
    let response: Response;
    try {
      response = await make();
    } catch (e) {
      release();
      throw e;
    }
    return this.hold(release, response, ends);
  }

  /**
   * The response, counted (by `release`, from `take`: taken before what it sends was read or made) until it is
   * over. With `ends` (see ResponseEnd), that is when every byte has been handed to the operating system or the
   * connection is gone: a reader that reads nothing keeps it counted, as the server holds its bytes.
   * Without (a request made in process), until the body is read to its end or cancelled.
   */
  hold(release: () => void, response: Response, ends?: readonly ResponseEnd[]): Response {
    if (ends?.length) {
      // The first to close lets it go, and the listeners on the others go with it: a keep-alive connection's socket
      // outlives its responses, and gathered one per response it served (Node warned past 10).
      const over = () => {
        for (const end of ends) end.off("close", over);
        release();
      };
      for (const end of ends) end.once("close", over);
      return response;
    }
    if (!response.body) {
      release();
      return response;
    }
    const reader = response.body.getReader();
    const body = new ReadableStream<Uint8Array>({
      ...(this.until === "read" ? pulled(reader, release) : pushed(reader, release)),
      cancel(reason) {
        release();
        return reader.cancel(reason);
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  }
}

/** How a counted body gets its chunks from the original one. */
interface Source {
  start?(controller: ReadableStreamDefaultController<Uint8Array>): void;
  pull?(controller: ReadableStreamDefaultController<Uint8Array>): Promise<void>;
}

/** Each chunk handed on when the reader asks for it; the count ends with the last one. */
function pulled(reader: ReadableStreamDefaultReader<Uint8Array>, release: () => void): Source {
  return {
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
  };
}

/** Each chunk handed on as it comes, as the body itself would be; the count ends with the body. */
function pushed(reader: ReadableStreamDefaultReader<Uint8Array>, release: () => void): Source {
  return {
    start(controller) {
      void (async () => {
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            controller.enqueue(value);
          }
          release();
          controller.close();
        } catch (e) {
          release();
          try {
            controller.error(e);
          } catch {
            // cancelled meanwhile
          }
        }
      })();
    },
  };
}
