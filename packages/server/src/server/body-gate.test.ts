/**
 * Request bodies on a real socket: so many at once per key (429, another key still gets in), so many bytes in all
 * (503), both before any of the body is read; a stalled upload cut off (408) and let go; JSON text bounded apart
 * from the body. Uploads that stall are written by hand over a raw socket: fetch cannot stop halfway.
 */
import fsp from "node:fs/promises";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { encodeEnvelope } from "../../../tsight/src/protocol/codec.js";
import { ENVELOPE_TYPE, type ErrorBody } from "../../../tsight/src/protocol/wire.js";
import { startServer, type RunningServer, type ServerOptions } from "./server.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** A server with small body limits, and two keys. */
async function open(options: ServerOptions) {
  const server = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], workers: false, maxBodyBytes: MiB, maxJsonBytes: 64 * KiB, maxBodiesPerKey: 2, maxBodyBytesInFlight: 2.5 * MiB, ...options });
  return { server, a: server.keys.create("a").key, b: server.keys.create("b").key };
}

const close = async (server: RunningServer) => {
  await server.close();
  await fsp.rm(server.config.dataDir, { recursive: true, force: true });
};

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: ErrorBody;
}

/**
 * A POST whose headers declare `declared` bytes (or chunked, with none), of which it sends `send` and then waits:
 * `answer` is the server's response, whenever it comes; `closed` when the server (or `end`) closes the socket.
 */
function upload(server: RunningServer, key: string, type: string, declared: number | "chunked", send = 0) {
  const socket = net.connect(server.port, "127.0.0.1");
  socket.on("error", () => undefined);
  let text = "";
  let got: (a: Answer) => void;
  const answer = new Promise<Answer>((resolve) => (got = resolve));
  socket.setEncoding("latin1");
  socket.on("data", (d: string) => {
    text += d;
    const end = text.indexOf("\r\n\r\n");
    if (end < 0) return;
    const [status, ...lines] = text.slice(0, end).split("\r\n");
    const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
    const body = text.slice(end + 4);
    if (body.length >= Number(headers["content-length"])) got({ status: Number(status!.split(" ")[1]), headers, body: JSON.parse(body) as ErrorBody });
  });
  const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
  const length = declared === "chunked" ? "transfer-encoding: chunked" : `content-length: ${declared}`;
  socket.write(`POST /v1/jobs HTTP/1.1\r\nhost: test\r\ntsight-protocol: 1\r\nauthorization: Bearer ${key}\r\ncontent-type: ${type}\r\n${length}\r\n\r\n`);
  if (send) socket.write(declared === "chunked" ? `${send.toString(16)}\r\n${" ".repeat(send)}\r\n` : " ".repeat(send));
  return { answer, closed, end: () => socket.destroy() };
}

/** A small job, sent whole with fetch. */
const submit = (server: RunningServer, key: string) =>
  fetch(`${server.url}/v1/jobs`, { method: "POST", headers: { "tsight-protocol": "1", authorization: `Bearer ${key}`, "content-type": "application/json" }, body: JSON.stringify({ model: GPT2, kind: "trace", form: "tracer", source: "async (tr) => 1" }) });

/** The server's count of bodies in flight and their bytes, from /metrics. */
async function inFlight(server: RunningServer, key: string): Promise<{ bodies: number; bytes: number }> {
  const text = await (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${key}` } })).text();
  const value = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)![1]);
  return { bodies: value("tsight_request_bodies_in_flight"), bytes: value("tsight_request_body_bytes_in_flight") };
}

/** Waits until the server counts `bytes` bytes of bodies in flight, and returns the count. */
async function untilBytes(server: RunningServer, key: string, bytes: number) {
  let now = await inFlight(server, key);
  for (let i = 0; i < 300 && now.bytes !== bytes; i++) {
    await new Promise((r) => setTimeout(r, 10));
    now = await inFlight(server, key);
  }
  return now;
}

/** Waits until the server counts `bodies` bodies in flight, and returns the count. */
async function untilInFlight(server: RunningServer, key: string, bodies: number) {
  for (let i = 0; i < 200; i++) {
    const now = await inFlight(server, key);
    if (now.bodies === bodies) return now;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`the server never had ${bodies} bodies in flight`);
}

describe("request bodies in flight", () => {
  let s: Awaited<ReturnType<typeof open>>;
  beforeAll(async () => {
    s = await open({ bodyTimeoutMs: 60_000 });
  });
  afterAll(() => close(s.server));

  it("lets a key send so many bodies of 64 KiB or more at once: one more is refused unread (429), a small one and another key's get in", async () => {
    const { server, a, b } = s;
    const stalled = [upload(server, a, ENVELOPE_TYPE, 100 * KiB, 10), upload(server, a, ENVELOPE_TYPE, 100 * KiB, 10)];
    await untilInFlight(server, a, 2);
    // Its headers alone: answered at once, with none of its body sent, and its connection closed.
    const refused = upload(server, a, ENVELOPE_TYPE, 100 * KiB);
    const third = await refused.answer;
    await refused.closed;
    expect(third.status).toBe(429);
    expect(third.headers["retry-after"]).toBe("1");
    expect(third.body.error).toMatchObject({ code: "NOT_ALLOWED", retryable: true, message: expect.stringMatching(/this key is sending 2 request bodies already/) });
    // A small body (a plain job's JSON, under 64 KiB) is not counted against its key: one key's jobs sent at once go in.
    expect((await submit(server, a)).status).toBe(202);
    expect((await submit(server, b)).status).toBe(202);
    // A client that goes away gives its place back.
    stalled[0]!.end();
    await untilInFlight(server, a, 1);
    expect((await submit(server, a)).status).toBe(202);
    stalled[1]!.end();
    expect(await untilInFlight(server, a, 0)).toEqual({ bodies: 0, bytes: 0 });
  });

  it("bounds the bytes of all keys' bodies as they come in: each counts what came and a headroom, at most its length; slow uploads hold little; 503 past the bound, unread when not even the headroom fits", async () => {
    const { server, a, b } = s;
    const [c, d] = [server.keys.create("c").key, server.keys.create("d").key];
    const headroom = Math.floor((2.5 * MiB) / 16);
    // Two bodies of 1 MiB trickling in (40 KiB came): each counts those and the headroom, not its length (counted
    // by their lengths, two keys' trickles could fill the bound and keep every other key out).
    const slow = [upload(server, a, ENVELOPE_TYPE, MiB, 40 * KiB), upload(server, b, ENVELOPE_TYPE, MiB, 40 * KiB)];
    expect(await untilBytes(server, a, 2 * (40 * KiB + headroom))).toEqual({ bodies: 2, bytes: 2 * (40 * KiB + headroom) });
    expect((await submit(server, c)).status).toBe(202);
    // Bodies that come in count what came and the headroom, up to their length: two of 1 MiB with 800 KiB sent.
    const sent = [upload(server, c, ENVELOPE_TYPE, MiB, 800 * KiB), upload(server, d, ENVELOPE_TYPE, MiB, 800 * KiB)];
    const filled = 2 * (40 * KiB + headroom) + 2 * (800 * KiB + headroom);
    expect(await untilBytes(server, a, filled)).toEqual({ bodies: 4, bytes: filled });
    // What is left to large bodies (under a headroom, the small bodies' reserve of a sixteenth aside) takes no body of
    // 64 KiB or more: refused before it sends a byte.
    const refused = await upload(server, a, ENVELOPE_TYPE, MiB).answer;
    expect(refused.status).toBe(503);
    expect(refused.headers["retry-after"]).toBe("1");
    expect(refused.body.error).toMatchObject({ code: "UNAVAILABLE", retryable: true, message: expect.stringMatching(/as many bytes of request bodies as it holds at once \(2621440\)/) });
    // A small body still fits.
    expect((await submit(server, b)).status).toBe(202);
    for (const u of [...slow, ...sent]) u.end();
    expect(await untilInFlight(server, a, 0)).toEqual({ bodies: 0, bytes: 0 });
    // A body let in that outgrows the room left while it comes in is refused then.
    const big = [upload(server, a, ENVELOPE_TYPE, MiB, MiB - 10), upload(server, b, ENVELOPE_TYPE, MiB, MiB - 10)];
    await untilBytes(server, a, 2 * MiB);
    const late = upload(server, c, ENVELOPE_TYPE, MiB, 400 * KiB);
    expect((await late.answer).status).toBe(503);
    // A chunked JSON body says no length: it counts at most the JSON limit (64 KiB).
    const chunked = upload(server, d, "application/json", "chunked", 10);
    expect(await untilInFlight(server, a, 3)).toEqual({ bodies: 3, bytes: 2 * MiB + 64 * KiB });
    for (const u of [...big, late, chunked]) u.end();
    expect(await untilInFlight(server, a, 0)).toEqual({ bodies: 0, bytes: 0 });
  });

  it("keeps a sixteenth of the bound for small bodies: large ones held all but their last byte cannot keep a plain job out (the one that would fill it is refused, 503)", async () => {
    const { server, a, b } = s;
    const c = server.keys.create("c2").key;
    // 1 MiB + 1 MiB + 512 KiB is the whole bound: held one byte short, they kept every key's submissions out.
    const held = [upload(server, a, ENVELOPE_TYPE, MiB, MiB - 1), upload(server, b, ENVELOPE_TYPE, MiB, MiB - 1)];
    await untilBytes(server, a, 2 * MiB);
    const third = upload(server, c, ENVELOPE_TYPE, 512 * KiB, 512 * KiB - 1);
    const refused = await third.answer;
    expect(refused.status).toBe(503);
    expect(refused.body.error.message).toMatch(/as many bytes of request bodies as it holds at once/);
    // A plain job's JSON gets in, from any key.
    for (const key of [a, b, c]) expect((await submit(server, key)).status).toBe(202);
    for (const u of [...held, third]) u.end();
    expect(await untilInFlight(server, a, 0)).toEqual({ bodies: 0, bytes: 0 });
  });

  it("lets a key send 32 bodies of any size at once: trickling small ones cannot hold the bound for others (429 for the 33rd; another key gets in)", async () => {
    const { server, a, b } = s;
    const small = Array.from({ length: 32 }, () => upload(server, a, "application/json", 60 * KiB, 1));
    expect((await untilInFlight(server, a, 32)).bodies).toBe(32);
    const refused = await upload(server, a, "application/json", 60 * KiB, 1).answer;
    expect(refused.status).toBe(429);
    expect(refused.body.error.message).toMatch(/this key is sending 32 request bodies already/);
    expect((await submit(server, b)).status).toBe(202);
    for (const u of small) u.end();
    expect(await untilInFlight(server, a, 0)).toEqual({ bodies: 0, bytes: 0 });
  });

  it("bounds JSON apart from the body: a JSON body or an envelope's header over maxJsonBytes is refused (413)", async () => {
    const { server, a } = s;
    // Refused from its Content-Length, before any of it is read.
    const json = await upload(server, a, "application/json", 100 * KiB).answer;
    expect(json.status).toBe(413);
    expect(json.body.error.message).toMatch(/a JSON request body is larger than this server's limit of 65536 bytes for JSON; send large data as tensors/);
    const request = { model: GPT2, kind: "trace", form: "tracer", source: "async (tr) => 1" };
    const post = (body: Uint8Array) => fetch(`${server.url}/v1/jobs`, { method: "POST", headers: { "tsight-protocol": "1", authorization: `Bearer ${a}`, "content-type": ENVELOPE_TYPE }, body });
    const wordy = await post(encodeEnvelope({ ...request, vars: { note: "x".repeat(100 * KiB) } }, new Map()));
    expect(wordy.status).toBe(413);
    expect(((await wordy.json()) as ErrorBody).error.message).toMatch(/the envelope's header \(its JSON\) is \d+ bytes, more than this server's limit of 65536 bytes for JSON/);
    expect((await post(encodeEnvelope(request, new Map()))).status).toBe(202);
  });
});

describe("a slow upload", () => {
  let s: Awaited<ReturnType<typeof open>>;
  beforeAll(async () => {
    s = await open({ bodyTimeoutMs: 500 });
  });
  afterAll(() => close(s.server));

  it("is cut off when its body has not all come in time (408), and its bytes are let go", async () => {
    const { server, a } = s;
    const started = Date.now();
    const stalled = upload(server, a, ENVELOPE_TYPE, MiB, 600 * KiB);
    // What came and a headroom of a sixteenth of 2.5 MiB.
    expect(await untilBytes(server, a, 600 * KiB + Math.floor((2.5 * MiB) / 16))).toEqual({ bodies: 1, bytes: 600 * KiB + Math.floor((2.5 * MiB) / 16) });
    const answer = await stalled.answer;
    const waited = Date.now() - started;
    expect(answer.status).toBe(408);
    expect(answer.body.error).toMatchObject({ code: "TIMEOUT", retryable: true, message: expect.stringMatching(/did not come in within 0.5 s \(614400 of 1048576 bytes came\)/) });
    expect(waited).toBeGreaterThanOrEqual(450);
    expect(waited).toBeLessThan(5_000);
    expect(await inFlight(server, a)).toEqual({ bodies: 0, bytes: 0 });
    // The server closes the connection (it does not wait on the rest of the body).
    await stalled.closed;
    // A body that comes in time is taken as before.
    expect((await submit(server, a)).status).toBe(202);
  });
});
