import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, test } from "vitest";
import { Tensor, tensor } from "../tensor/index.js";
import { decodeEnvelope, encodeValue, packBase64, packValue, unpackBase64, unpackValue } from "../protocol/codec.js";
import { RemoteError } from "../protocol/errors.js";
import { ConnectionError, HttpBackend, LostEventsError } from "./http.js";
import { RemoteJob } from "./job.js";
import { ENVELOPE_TYPE, type ErrorBody, type JobEvent, type JobRequest, type SequencedEvent } from "../protocol/wire.js";

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: Buffer;
}

type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer, seen: Seen[]) => void;

const servers: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

/** A real HTTP server on 127.0.0.1 (random port) answering with `handler`; it records every request. */
async function serve(handler: Handler): Promise<{ url: string; seen: Seen[]; close(): Promise<void> }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      handler(req, res, body, seen);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const handle = {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  servers.push(handle);
  return handle;
}

const json = (res: ServerResponse, status: number, value: unknown) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value));
};

const backendFor = (url: string, extra: Partial<ConstructorParameters<typeof HttpBackend>[0]> = {}) =>
  new HttpBackend({ url, apiKey: "test-key", retry: { attempts: 3, baseDelayMs: 5, maxDelayMs: 20 }, ...extra });

const frame = (seq: number, event: JobEvent) => `id: ${seq}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`;

/** The events a job sends, numbered 1..8. */
const script: JobEvent[] = [
  { type: "status", status: "QUEUED", position: 1 },
  { type: "status", status: "RUNNING" },
  { type: "log", text: "layer 0" },
  { type: "log", text: "a log line\nwith two lines" },
  { type: "stream", step: 0, tokens: [11, 12] },
  { type: "stream", step: 1, tokens: [13, 14] },
  { type: "status", status: "COMPLETED" },
  { type: "done", status: "COMPLETED" },
];
const numbered = script.map((event, i) => ({ seq: i + 1, event }));

async function all(it: AsyncIterable<SequencedEvent>): Promise<SequencedEvent[]> {
  const out: SequencedEvent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

describe("requests", () => {
  test("every request carries the protocol version and the API key", async () => {
    const server = await serve((req, res) => {
      if (req.url === "/v1/models") return json(res, 200, { models: [{ key: "k", name: "stdlib-gpt2", modelType: "gpt2", state: "loaded", queued: 0 }] });
      if (req.url === "/v1/status") return json(res, 200, { workers: 1 });
      if (req.url?.startsWith("/v1/models/")) return json(res, 200, { key: decodeURIComponent(req.url.split("/")[3]!), config: {} });
      if (req.url === "/v1/jobs/j1") return json(res, 200, { id: "j1", status: "RUNNING" });
      res.writeHead(204).end();
    });
    const backend = backendFor(server.url + "/");
    expect((await backend.models()).map((m) => m.name)).toEqual(["stdlib-gpt2"]);
    expect(await backend.status()).toEqual({ workers: 1 });
    const key = 'LanguageModel:{"repo_id":"stdlib-gpt2","revision":null}';
    expect((await backend.meta(key)).key).toBe(key);
    expect((await backend.job("j1")).status).toBe("RUNNING");
    await backend.cancel("j1");
    expect(server.seen.map((s) => `${s.method} ${s.url}`)).toEqual([
      "GET /v1/models",
      "GET /v1/status",
      `GET /v1/models/${encodeURIComponent(key)}/meta`,
      "GET /v1/jobs/j1",
      "DELETE /v1/jobs/j1",
    ]);
    for (const s of server.seen) {
      expect(s.headers["tsight-protocol"]).toBe("1");
      expect(s.headers.authorization).toBe("Bearer test-key");
    }
  });

  test("a bare list of models is accepted too", async () => {
    const server = await serve((_req, res) => json(res, 200, [{ key: "a" }]));
    expect(await backendFor(server.url).models()).toEqual([{ key: "a" }]);
  });

  test("submit sends JSON without tensors and an envelope with them", async () => {
    const server = await serve((_req, res, _body, seen) => json(res, 202, { id: `job-${seen.length}`, status: "RECEIVED" }));
    const backend = backendFor(server.url);
    const base: JobRequest = { model: 'LanguageModel:{"repo_id":"stdlib-gpt2","revision":null}', kind: "trace", form: "invoke", source: "(m) => m", input: "hi" };

    const plain = await backend.submit({ ...base, vars: { k: 2 } }, new Map());
    expect(plain).toBeInstanceOf(RemoteJob);
    expect(plain.id).toBe("job-1");
    expect(server.seen[0]!.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(server.seen[0]!.body.toString())).toEqual({ ...base, vars: { k: 2 } });

    const tensors = new Map<string, Tensor>();
    const vars = encodeValue({ steer: tensor([1, 2, 3]) }, tensors);
    const job = await backend.submit({ ...base, vars }, tensors);
    expect(job.id).toBe("job-2");
    expect(server.seen[1]!.headers["content-type"]).toBe(ENVELOPE_TYPE);
    const { payload, tensors: got } = decodeEnvelope(new Uint8Array(server.seen[1]!.body));
    expect(payload).toEqual({ ...base, vars: { steer: { $t: "t0" } } });
    expect(got.get("t0")!.toArray()).toEqual([1, 2, 3]);
  });

  test("result decodes the envelope (tensors restored), or JSON", async () => {
    const server = await serve((req, res) => {
      if (req.url === "/v1/jobs/a/result") {
        res.writeHead(200, { "content-type": ENVELOPE_TYPE });
        return res.end(packValue({ h: tensor([[1, 2]]), n: 3, nan: NaN }));
      }
      json(res, 200, { value: { n: 4, missing: { $undef: 1 } } });
    });
    const backend = backendFor(server.url);
    const value = (await backend.result("a")) as { h: Tensor; n: number; nan: number };
    expect(value.h).toBeInstanceOf(Tensor);
    expect(value.h.shape).toEqual([1, 2]);
    expect(value.h.toArray()).toEqual([1, 2]);
    expect(value.n).toBe(3);
    expect(value.nan).toBeNaN();
    expect(await backend.result("b")).toEqual({ n: 4, missing: undefined });
  });

  test("answerLocal posts an envelope holding {value}, or {error} as JSON for an Error", async () => {
    const server = await serve((_req, res) => res.writeHead(204).end());
    const backend = backendFor(server.url);
    await backend.answerLocal("j/1", "c1", { ids: tensor([5]), ok: true });
    await backend.answerLocal("j/1", "c2", new RangeError("no"));
    expect(server.seen.map((s) => `${s.method} ${s.url}`)).toEqual(["POST /v1/jobs/j%2F1/local/c1", "POST /v1/jobs/j%2F1/local/c2"]);
    expect(server.seen[0]!.headers["content-type"]).toBe(ENVELOPE_TYPE);
    const first = unpackValue(new Uint8Array(server.seen[0]!.body)) as { ids: Tensor; ok: boolean };
    expect(first.ids.toArray()).toEqual([5]);
    expect(first.ok).toBe(true);
    expect(server.seen[1]!.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(server.seen[1]!.body.toString())).toMatchObject({ error: { code: "USER_CODE", type: "RangeError", message: "no", retryable: false } });
  });

  test("a custom fetch is used", async () => {
    const calls: string[] = [];
    const backend = new HttpBackend({
      url: "http://nowhere.invalid",
      fetch: async (input) => {
        calls.push(String(input));
        return new Response(JSON.stringify({ id: "x", status: "RUNNING" }), { status: 200 });
      },
    });
    expect((await backend.job("x")).id).toBe("x");
    expect(calls).toEqual(["http://nowhere.invalid/v1/jobs/x"]);
  });
});

describe("error responses", () => {
  const body = (code: string, message: string, extra: object = {}): ErrorBody => ({ error: { code: code as never, type: "HttpError", message, retryable: false }, ...extra });

  async function failure(status: number, answer: unknown, call: (b: HttpBackend) => Promise<unknown> = (b) => b.job("j")): Promise<RemoteError> {
    const server = await serve((_req, res) => (typeof answer === "string" ? res.writeHead(status).end(answer) : json(res, status, answer)));
    const e = await call(backendFor(server.url)).then(
      () => null,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(RemoteError);
    return e as RemoteError;
  }

  test("426 lists the versions the server speaks", async () => {
    const e = await failure(426, body("PROTOCOL", "protocol version 1 is not served", { supported: [2, 3] }));
    expect(e.code).toBe("PROTOCOL");
    expect(e.status).toBe(426);
    expect(e.retryable).toBe(false);
    expect(e.message).toContain("protocol version 1 is not served");
    expect(e.message).toContain("the server speaks protocol 2, 3");
    expect(e.message).toContain("update tsight");
  });

  test("401 is an AUTH error with the server's message", async () => {
    const e = await failure(401, body("AUTH", "unknown API key"));
    expect([e.code, e.status, e.message, e.retryable]).toEqual(["AUTH", 401, "unknown API key", false]);
  });

  test("404 with an ErrorBody keeps its code and message", async () => {
    const e = await failure(404, body("VALIDATION", "no job j"), (b) => b.result("j"));
    expect([e.code, e.status, e.message]).toEqual(["VALIDATION", 404, "no job j"]);
  });

  test("a body that is not an ErrorBody: the status decides the code", async () => {
    const e = await failure(500, "<html>oops</html>");
    expect(e.code).toBe("INTERNAL");
    expect(e.message).toMatch(/GET \/v1\/jobs\/j: HTTP 500 Internal Server Error: <html>oops<\/html>/);
    expect((await failure(403, { nope: 1 })).code).toBe("AUTH");
  });

  test("a USER_CODE error of a known class comes back as that class", async () => {
    const server = await serve((_req, res) => json(res, 400, { error: { code: "USER_CODE", type: "RangeError", message: "bad index", retryable: false } }));
    const e = await backendFor(server.url).job("j").catch((err: unknown) => err);
    expect(e).toBeInstanceOf(RangeError);
    expect((e as { code: string }).code).toBe("USER_CODE");
  });

  test("426 from a server that speaks our version: the header was lost on the way", async () => {
    const e = await failure(426, body("PROTOCOL", "missing tsight-protocol header", { supported: [1] }));
    expect(e.message).toMatch(/tsight-protocol header did not reach it/);
  });

  test("idempotent requests try again after 503, submits too, with the same idempotency key", async () => {
    let n = 0;
    const server = await serve((req, res) => {
      if (req.method === "GET" && n++ < 2) return json(res, 503, body("INTERNAL", "busy"));
      if (req.method === "POST") return json(res, 503, body("INTERNAL", "busy"));
      json(res, 200, { id: "j", status: "QUEUED" });
    });
    const backend = backendFor(server.url);
    expect((await backend.job("j")).status).toBe("QUEUED");
    expect(server.seen.length).toBe(3);
    await expect(backend.submit({} as JobRequest, new Map())).rejects.toMatchObject({ code: "INTERNAL", status: 503 });
    const posts = server.seen.filter((r) => r.method === "POST");
    expect(posts.length).toBe(4); // the first try and 3 retries
    expect(new Set(posts.map((r) => r.headers["idempotency-key"])).size).toBe(1);
    expect(String(posts[0]!.headers["idempotency-key"])).toMatch(/^tsk-submit-[0-9a-f]{32}$/);
  });

  test("a submission whose connection breaks is sent again with the same key; each submission has its own", async () => {
    let posts = 0;
    const server = await serve((req, res) => {
      // The first try of each submission loses its connection before an answer (a socket the server closed while
      // the client was busy): the client cannot know whether a job was made, so it asks again under the same key.
      if (posts++ % 2 === 0) return req.socket.destroy();
      json(res, 202, { id: `job-${posts}`, status: "QUEUED" });
    });
    const backend = backendFor(server.url);
    const first = await backend.submit({} as JobRequest, new Map());
    const second = await backend.submit({} as JobRequest, new Map(), { idempotencyKey: "my-own-key" });
    expect([first.id, second.id]).toEqual(["job-2", "job-4"]);
    const keys = server.seen.map((r) => r.headers["idempotency-key"]);
    expect(keys[0]).toBe(keys[1]);
    expect(keys[2]).toBe("my-own-key");
    expect(keys[3]).toBe("my-own-key");
    expect(keys[0]).not.toBe(keys[2]);
    await expect(backend.submit({} as JobRequest, new Map(), { idempotencyKey: "has space" })).rejects.toThrow(/idempotencyKey must be/);
    await expect(backend.submit({} as JobRequest, new Map(), { idempotencyKey: "k".repeat(201) })).rejects.toThrow(/idempotencyKey must be 1 to 200/);
  });

  test("a server that cannot be reached is a ConnectionError", async () => {
    const server = await serve(() => undefined);
    await server.close();
    const e = await backendFor(server.url, { retry: { attempts: 1, baseDelayMs: 1 } })
      .job("j")
      .catch((err: unknown) => err);
    expect(e).toBeInstanceOf(ConnectionError);
    expect((e as ConnectionError).retryable).toBe(true);
    expect((e as Error).message).toMatch(/GET http:\/\/127\.0\.0\.1:\d+\/v1\/jobs\/j failed/);
  });
});

describe("events", () => {
  test("follows a job to done over one connection", async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(": hello\n\n");
      for (const { seq, event } of numbered) res.write(frame(seq, event));
      res.end();
    });
    expect(await all(backendFor(server.url).events("j"))).toEqual(numbered);
    expect(server.seen[0]!.headers.accept).toBe("text/event-stream");
    expect(server.seen[0]!.headers["last-event-id"]).toBeUndefined();
  });

  test("reconnects with Last-Event-ID after drops, with no duplicates or gaps", async () => {
    const server = await serve((req, res, _body, seen) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      const connection = seen.length;
      if (connection === 1) {
        // Events 1-3, then half of event 4, then the connection dies.
        for (const { seq, event } of numbered.slice(0, 3)) res.write(frame(seq, event));
        res.write(frame(4, numbered[3]!.event).slice(0, 20));
        setTimeout(() => res.socket?.destroy(), 10);
      } else if (connection === 2) {
        // Resumes after 3 as asked, then ends cleanly before done.
        for (const { seq, event } of numbered.filter((e) => e.seq > Number(req.headers["last-event-id"])).slice(0, 3)) res.write(frame(seq, event));
        res.end();
      } else {
        // A sloppy server that resends from 5: the client must skip what it has.
        for (const { seq, event } of numbered.slice(4)) res.write(frame(seq, event));
        res.end();
      }
    });
    const got = await all(backendFor(server.url).events("j"));
    expect(got).toEqual(numbered);
    expect(server.seen.map((s) => s.headers["last-event-id"])).toEqual([undefined, "3", "6"]);
    for (const s of server.seen) expect(s.headers.authorization).toBe("Bearer test-key");
  });

  test("starts after lastEventId when given", async () => {
    const server = await serve((req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const { seq, event } of numbered.filter((e) => e.seq > Number(req.headers["last-event-id"] ?? 0))) res.write(frame(seq, event));
      res.end();
    });
    const got = await all(backendFor(server.url).events("j", { lastEventId: 5 }));
    expect(got.map((e) => e.seq)).toEqual([6, 7, 8]);
    expect(server.seen[0]!.headers["last-event-id"]).toBe("5");
  });

  test("progress resets the retry budget: many drops, each after some events, still finish", async () => {
    const server = await serve((req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      const next = numbered.find((e) => e.seq > Number(req.headers["last-event-id"] ?? 0))!;
      res.write(frame(next.seq, next.event));
      setTimeout(() => res.socket?.destroy(), 5);
    });
    const got = await all(backendFor(server.url, { retry: { attempts: 1, baseDelayMs: 1 } }).events("j"));
    expect(got).toEqual(numbered);
    expect(server.seen.length).toBe(8);
  });

  test("gives up with a ConnectionError after the retries, saying how to resume", async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(frame(1, script[0]!));
    });
    const seen: number[] = [];
    const error = await (async () => {
      for await (const e of backendFor(server.url, { retry: { attempts: 2, baseDelayMs: 1 } }).events("j")) seen.push(e.seq);
    })().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LostEventsError);
    expect(error).toBeInstanceOf(ConnectionError);
    expect(error).toMatchObject({ name: "ConnectionError", jobId: "j", lastEventId: 1, reason: expect.stringMatching(/could not reconnect \(2 tries, after event 1\): the stream ended before the job's done event$/) });
    expect((error as Error).message).toMatch(/lost the events of job j .*could not reconnect \(2 tries, after event 1\).*RemoteJob\.attach/);
    expect(seen).toEqual([1]);
    // The first connection, then 2 retries that brought nothing new.
    expect(server.seen.length).toBe(3);
  });

  test("a 503 while reconnecting is retried; a 404 is not", async () => {
    const server = await serve((_req, res, _body, seen) => {
      if (seen.length === 1) return json(res, 503, { error: { code: "INTERNAL", type: "Error", message: "restarting", retryable: true } });
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const { seq, event } of numbered) res.write(frame(seq, event));
      res.end();
    });
    expect((await all(backendFor(server.url).events("j"))).length).toBe(8);

    const missing = await serve((_req, res) => json(res, 404, { error: { code: "VALIDATION", type: "Error", message: "no job j", retryable: false } }));
    await expect(all(backendFor(missing.url).events("j"))).rejects.toMatchObject({ code: "VALIDATION", status: 404, message: "no job j" });
    expect(missing.seen.length).toBe(1);
  });

  test("a 429 while opening waits its Retry-After; a server gone is given up after the retries, not retries of retries", async () => {
    const opened: number[] = [];
    const server = await serve((_req, res, _body, seen) => {
      opened.push(Date.now());
      if (seen.length <= 2) {
        res.writeHead(429, { "content-type": "application/json", "retry-after": "1" });
        return res.end(JSON.stringify({ error: { code: "NOT_ALLOWED", type: "ApiError", message: "sent event streams too fast", retryable: true } }));
      }
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const { seq, event } of numbered) res.write(frame(seq, event));
      res.end();
    });
    // Two refusals, each waited out for its second (the backoff alone would have been 1 and 2 ms).
    expect((await all(backendFor(server.url, { retry: { attempts: 3, baseDelayMs: 1 } }).events("j"))).length).toBe(8);
    expect(opened.length).toBe(3);
    expect(opened[2]! - opened[0]!).toBeGreaterThanOrEqual(1900);

    // Refused every time: attempts + 1 requests in all (not retries of retries), each after the wait asked.
    const refusing = await serve((_req, res) => {
      res.writeHead(429, { "content-type": "application/json", "retry-after": "1" });
      res.end(JSON.stringify({ error: { code: "NOT_ALLOWED", type: "ApiError", message: "too fast", retryable: true } }));
    });
    const t0 = Date.now();
    expect(await all(backendFor(refusing.url, { retry: { attempts: 2, baseDelayMs: 1 } }).events("j")).catch((e: unknown) => e)).toBeInstanceOf(LostEventsError);
    expect(refusing.seen.length).toBe(3);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1900);

    // Nothing listens: attempts + 1 connections in all, then a LostEventsError.
    const gone = await serve(() => undefined);
    await gone.close();
    let tries = 0;
    const counting = ((input: string | URL | Request, init?: RequestInit) => (tries++, fetch(input, init))) as typeof fetch;
    const error = await all(backendFor(gone.url, { retry: { attempts: 3, baseDelayMs: 1 }, fetch: counting }).events("j")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LostEventsError);
    expect(tries).toBe(4);
  });

  test("an event that is not JSON is a PROTOCOL error", async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end("id: 1\ndata: {nope\n\n");
    });
    await expect(all(backendFor(server.url).events("j"))).rejects.toMatchObject({ code: "PROTOCOL" });
  });

  test("an abort signal ends the iteration quietly", async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(frame(1, script[0]!));
    });
    const controller = new AbortController();
    const got: number[] = [];
    for await (const e of backendFor(server.url).events("j", { signal: controller.signal })) {
      got.push(e.seq);
      controller.abort();
    }
    expect(got).toEqual([1]);
  });
});

describe("a job end to end", () => {
  test("submit, follow with printed progress, answer a hybrid step, get the result", async () => {
    let answer: unknown;
    const server = await serve((req, res, body) => {
      if (req.method === "POST" && req.url === "/v1/jobs") return json(res, 202, { id: "e2e", status: "RECEIVED" });
      if (req.url === "/v1/jobs/e2e/events") {
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write(frame(1, { type: "status", status: "RUNNING" }));
        res.write(frame(2, { type: "local", call: "c0", step: 0, vals: packBase64({ x: 21 }) }));
        const wait = setInterval(() => {
          if (answer === undefined) return;
          clearInterval(wait);
          res.write(frame(3, { type: "log", text: `client said ${JSON.stringify(answer)}` }));
          res.end(frame(4, { type: "done", status: "COMPLETED" }));
        }, 5);
        return;
      }
      if (req.url === "/v1/jobs/e2e/local/c0") {
        answer = unpackValue(new Uint8Array(body));
        return res.writeHead(204).end();
      }
      if (req.url === "/v1/jobs/e2e/result") {
        res.writeHead(200, { "content-type": ENVELOPE_TYPE });
        return res.end(packValue({ logits: tensor([0.5, 1.5]) }));
      }
      json(res, 404, { error: { code: "VALIDATION", type: "Error", message: `no ${req.url}`, retryable: false } });
    });
    const job = await backendFor(server.url).submit({ model: "m", kind: "trace", form: "invoke", source: "(m) => m", input: "x" }, new Map());
    const lines: string[] = [];
    const value = (await job.wait({
      print: { write: (s) => lines.push(s) },
      onLocal: (event) => (unpackBase64(event.vals) as { x: number }).x * 2,
    })) as { logits: Tensor };
    expect(answer).toBe(42);
    expect(value.logits.toArray()).toEqual([0.5, 1.5]);
    expect(lines.join("")).toMatch(/job e2e: running\n.*job e2e: log: client said 42\njob e2e: completed in \d+\.\ds\n/s);
  });
});
