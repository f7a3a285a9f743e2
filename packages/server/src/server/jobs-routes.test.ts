/** GET /v1/jobs: a key's jobs, newest first, filtered and paged, through HttpBackend.list on a real socket. */
import fsp from "node:fs/promises";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import type { ErrorBody, JobRequest, JobState } from "../../../tsight/src/protocol/wire.js";
import { startServer, type RunningServer } from "./server.js";

let server: RunningServer;
let backend: HttpBackend;
let ids: string[];
beforeAll(async () => {
  // No workers: jobs wait in the queue until cancelled.
  server = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], workers: false, maxActiveJobsPerKey: 10 });
  backend = new HttpBackend({ url: server.url, apiKey: server.keys.create("lister").key });
  const request: JobRequest = { model: GPT2, kind: "trace", form: "tracer", source: "async (tr) => 1" };
  ids = [];
  for (let i = 0; i < 5; i++) ids.push((await backend.submit({ ...request, kind: i === 4 ? "session" : "trace" })).id);
  await backend.cancel(ids[1]!);
  await backend.cancel(ids[3]!);
});
afterAll(async () => {
  await server.close();
  await fsp.rm(server.config.dataDir, { recursive: true, force: true });
});

const newestFirst = () => [...ids].reverse();

/** A submitted job's state once it has ended. */
async function ended(job: { status(): Promise<JobState> }): Promise<JobState> {
  let state = await job.status();
  for (; !["COMPLETED", "ERROR", "CANCELLED"].includes(state.status); state = await job.status()) await new Promise((r) => setTimeout(r, 50));
  return state;
}

describe("GET /v1/jobs", () => {
  it("lists the key's jobs newest first, with their states", async () => {
    const jobs = await backend.list();
    expect(jobs.map((j) => j.id)).toEqual(newestFirst());
    expect(jobs.map((j) => j.status)).toEqual(["QUEUED", "CANCELLED", "QUEUED", "CANCELLED", "QUEUED"]);
    expect(jobs[0]).toMatchObject({ model: GPT2, kind: "session", result: "none", position: 2 });
    expect(jobs.at(-1)).toMatchObject({ kind: "trace", position: 0 });
  });

  it("filters by status and pages with limit and before", async () => {
    expect((await backend.list({ status: "CANCELLED" })).map((j) => j.id)).toEqual([ids[3], ids[1]]);
    expect(await backend.list({ status: "COMPLETED" })).toEqual([]);
    const pages: string[][] = [];
    let before: string | undefined;
    for (;;) {
      const page = await backend.list({ limit: 2, before });
      if (page.length === 0) break;
      pages.push(page.map((j) => j.id));
      before = page.at(-1)!.id;
    }
    expect(pages).toEqual([newestFirst().slice(0, 2), newestFirst().slice(2, 4), newestFirst().slice(4)]);
    expect((await backend.list({ status: "QUEUED", before: ids[4] })).map((j) => j.id)).toEqual([ids[2], ids[0]]);
  });

  it("shows nothing of another key's jobs", async () => {
    const other = new HttpBackend({ url: server.url, apiKey: server.keys.create("other").key });
    expect(await other.list()).toEqual([]);
    await expect(other.list({ before: ids[2] })).rejects.toMatchObject({ status: 400, code: "VALIDATION", message: expect.stringMatching(/"before" must be the id of one of this API key's jobs/) });
  });

  it("refuses a bad status, limit or cursor with 400", async () => {
    const get = async (query: string) => {
      const res = await fetch(`${server.url}/v1/jobs?${query}`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${server.keys.create().key}` } });
      return { status: res.status, error: ((await res.json()) as ErrorBody).error };
    };
    expect(await get("status=DONE")).toMatchObject({ status: 400, error: { code: "VALIDATION", message: expect.stringMatching(/"status" must be one of RECEIVED, .*CANCELLED/) } });
    for (const limit of ["0", "101", "ten", "1.5"]) expect(await get(`limit=${limit}`)).toMatchObject({ status: 400, error: { message: expect.stringMatching(/"limit" must be a whole number from 1 to 100/) } });
    expect(await get("before=nosuchjob")).toMatchObject({ status: 400 });
    expect((await fetch(`${server.url}/v1/jobs`, { headers: { "tsight-protocol": "1" } })).status).toBe(401);
  });
});

describe("POST /v1/jobs/:id/local/:call", () => {
  it("refuses an answer nested deeper than a remote value may (400, before the step counts as answered)", async () => {
    const key = server.keys.create("answerer").key;
    const own = new HttpBackend({ url: server.url, apiKey: key });
    const { id } = await own.submit({ model: GPT2, kind: "trace", form: "tracer", source: "async (tr) => 1" });
    const answer = (depth: number) =>
      fetch(`${server.url}/v1/jobs/${id}/local/c1`, {
        method: "POST",
        headers: { "tsight-protocol": "1", authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: `{"value":${"[".repeat(depth)}${"]".repeat(depth)}}`,
      });
    // Far too deep: refused as it is read, before it is parsed; a little too deep: as the answer is checked.
    for (const [depth, limit] of [[100_000, 528], [260, 256]] as const) {
      const res = await answer(depth);
      expect(res.status).toBe(400);
      expect(((await res.json()) as ErrorBody).error).toMatchObject({ code: "VALIDATION", message: expect.stringContaining(`nests arrays or objects more than ${limit} deep`) });
    }
  });
});

describe("open responses per key", () => {
  it("an event stream past 16 open at once for one key is a 429 (retryable); closing one makes room", async () => {
    const key = server.keys.create("streamer").key;
    const own = new HttpBackend({ url: server.url, apiKey: key });
    const { id } = await own.submit({ model: GPT2, kind: "trace", form: "tracer", source: "async (tr) => 1" });
    const open = (signal?: AbortSignal) => fetch(`${server.url}/v1/jobs/${id}/events`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${key}` }, signal });
    const controllers = Array.from({ length: 16 }, () => new AbortController());
    const streams = await Promise.all(controllers.map((c) => open(c.signal)));
    expect(streams.map((r) => r.status)).toEqual(Array(16).fill(200));
    const refused = await open();
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(((await refused.json()) as ErrorBody).error).toMatchObject({ retryable: true, message: expect.stringMatching(/this key has 16 event streams open, the most it may/) });
    // Another key is not held up by this one's streams.
    const other = server.keys.create("other").key;
    const theirs = await fetch(`${server.url}/v1/jobs/${(await new HttpBackend({ url: server.url, apiKey: other }).submit({ model: GPT2, kind: "trace", form: "tracer", source: "async (tr) => 1" })).id}/events?follow=0`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${other}` } });
    expect(theirs.status).toBe(200);
    await theirs.text();
    controllers[0]!.abort();
    await streams[0]!.body?.cancel().catch(() => undefined);
    let again: Response | undefined;
    for (let i = 0; i < 50 && again?.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 20));
      again = await open((controllers[0] = new AbortController()).signal);
    }
    expect(again?.status).toBe(200);
    controllers.forEach((c) => c.abort());
  });

  it("a key reading a long log again and again is refused new streams until its bytes a second are back under its rate; others are not", async () => {
    // maxEventBytesPerJob 1 MiB: a key may be sent 4 MiB at once, then 1 MiB a second.
    const running = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], maxEventBytesPerJob: 1024 * 1024, log: () => undefined });
    try {
      const key = running.keys.create("rereader").key;
      const own = new HttpBackend({ url: running.url, apiKey: key });
      const job = await own.submit({ model: GPT2, kind: "trace", form: "invoke", input: [1, 2, 3], source: "async (m) => { for (let i = 0; i < 110; i++) console.log('x'.repeat(8000)); return 1; }" });
      expect((await ended(job)).status).toBe("COMPLETED");
      const read = (k: string, id: string) => fetch(`${running.url}/v1/jobs/${id}/events?follow=0`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${k}` } });
      let reads = 0;
      let refused: Response | undefined;
      for (; reads < 12; reads++) {
        const res = await read(key, job.id);
        if (res.status !== 200) {
          refused = res;
          break;
        }
        expect((await res.text()).length).toBeGreaterThan(880_000);
      }
      // 880 KB a read: the fifth or sixth passes 4 MiB (plus what came back meanwhile).
      expect(reads).toBeGreaterThanOrEqual(5);
      expect(reads).toBeLessThanOrEqual(7);
      expect(refused?.status).toBe(429);
      const wait = Number(refused!.headers.get("retry-after"));
      expect(wait).toBeGreaterThanOrEqual(1);
      expect(((await refused!.json()) as ErrorBody).error).toMatchObject({ retryable: true, message: expect.stringContaining("faster than the 1048576 bytes a second") });
      // Another key reads its own job's log meanwhile.
      const other = running.keys.create("other").key;
      const theirs = await new HttpBackend({ url: running.url, apiKey: other }).submit({ model: GPT2, kind: "trace", form: "invoke", input: [1, 2, 3], source: "async (m) => 1" });
      await new Promise((r) => setTimeout(r, 300));
      const got = await read(other, theirs.id);
      expect(got.status).toBe(200);
      await got.text();
      // The client waits as the 429 says and reads the whole log (it still counts: the key is in debt after).
      const events: string[] = [];
      for await (const { event } of own.events(job.id, { follow: false })) events.push(event.type);
      expect(events.filter((t) => t === "log")).toHaveLength(110);
      expect((await read(key, job.id)).status).toBe(429);
    } finally {
      await running.close();
    }
  });

  /**
   * GETs `path` of `url` on a raw socket that reads no more than the response's first chunk (its status line: the
   * server has answered, and counted it); resolves with the socket and that status.
   */
  const unread = (url: string, path: string, key: string) =>
    new Promise<{ socket: net.Socket; status: string }>((resolve, reject) => {
      const { hostname, port } = new URL(url);
      const socket = net.connect(Number(port), hostname, () => {
        socket.write(`GET ${path} HTTP/1.1\r\nhost: ${hostname}\r\ntsight-protocol: 1\r\nauthorization: Bearer ${key}\r\n\r\n`);
      });
      socket.once("data", (chunk: Buffer) => {
        socket.pause();
        resolve({ socket, status: chunk.toString("latin1").split("\r\n")[0]! });
      });
      socket.once("error", reject);
    });

  it("downloads and event streams nobody reads stay counted until their connection goes (the server holds their bytes)", async () => {
    // Logs of up to 64 MiB a job: a key may be sent 256 MiB of streams at once (see byte-budget.ts), more than the
    // sixteen 12 MB streams here, whose count alone is what this tests.
    const running = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], maxEventBytesPerJob: 64 * 1024 * 1024, log: () => undefined });
    try {
      const key = running.keys.create("hoarder").key;
      const own = new HttpBackend({ url: running.url, apiKey: key });
      const headers = { "tsight-protocol": "1", authorization: `Bearer ${key}` };
      // A 32 MiB result, and a job whose event log is 12 MB: more than a socket's buffers take.
      const big = await own.submit({ model: GPT2, kind: "trace", form: "invoke", input: [1, 2, 3], source: "async (m) => ones([8388608])" });
      const logs = await own.submit({ model: GPT2, kind: "trace", form: "invoke", input: [1, 2, 3], source: "async (m) => { for (let i = 0; i < 1500; i++) console.log('x'.repeat(8000)); return 1; }" });
      for (const job of [big, logs]) {
        const state = await ended(job);
        expect(state.error?.message, state.status).toBeUndefined();
      }
      for (const [path, n, what] of [[`/v1/jobs/${big.id}/result`, 4, "result downloads"], [`/v1/jobs/${logs.id}/events?follow=0`, 16, "event streams"]] as const) {
        const opened = await Promise.all(Array.from({ length: n }, () => unread(running.url, path, key)));
        expect(opened.map((o) => o.status)).toEqual(Array(n).fill("HTTP/1.1 200 OK"));
        const sockets = opened.map((o) => o.socket);
        // Before, each was let go once the HTTP server had taken its body into its buffers, which no one read.
        const refused = await fetch(`${running.url}${path}`, { headers });
        expect(refused.status, what).toBe(429);
        expect(((await refused.json()) as ErrorBody).error.message).toContain(`this key has ${n} ${what} open`);
        for (const s of sockets) s.destroy();
        let again: Response | undefined;
        for (let i = 0; i < 50 && again?.status !== 200; i++) {
          await new Promise((r) => setTimeout(r, 20));
          again = await fetch(`${running.url}${path}`, { headers });
          if (again.status !== 200) await again.body?.cancel();
        }
        expect(again?.status, what).toBe(200);
        await again!.arrayBuffer();
      }
      // Requests pipelined on one connection, which goes before the queued ones are answered: every one counted is
      // let go with it (a queued response never closes itself, and its count stayed taken for good).
      const path = `/v1/jobs/${big.id}/result`;
      const { hostname, port } = new URL(running.url);
      const pipelined = net.connect(Number(port), hostname);
      await new Promise<void>((resolve) => pipelined.once("connect", resolve));
      const get = `GET ${path} HTTP/1.1\r\nhost: ${hostname}\r\ntsight-protocol: 1\r\nauthorization: Bearer ${key}\r\n\r\n`;
      pipelined.write(get.repeat(3));
      await new Promise((resolve) => pipelined.once("data", resolve));
      pipelined.pause();
      await new Promise((r) => setTimeout(r, 300));
      pipelined.destroy();
      await new Promise((r) => setTimeout(r, 300));
      const four = await Promise.all(Array.from({ length: 4 }, () => unread(running.url, path, key)));
      expect(four.map((o) => o.status)).toEqual(Array(4).fill("HTTP/1.1 200 OK"));
      for (const o of four) o.socket.destroy();
    } finally {
      await running.close();
    }
  });

  it("a download its reader stops reading is cut off after downloadStallMs: the server closes it and gives its place back; one read on goes to its end", async () => {
    const running = await startServer({ port: 0, dataDir: await tempDir(), models: ["stdlib-gpt2"], downloadStallMs: 400, log: () => undefined });
    try {
      const key = running.keys.create("staller").key;
      const own = new HttpBackend({ url: running.url, apiKey: key });
      // A 32 MiB result: more than a socket's buffers take.
      const big = await own.submit({ model: GPT2, kind: "trace", form: "invoke", input: [1, 2, 3], source: "async (m) => ones([8388608])" });
      expect((await ended(big)).status).toBe("COMPLETED");
      const path = `/v1/jobs/${big.id}/result`;
      const headers = { "tsight-protocol": "1", authorization: `Bearer ${key}` };
      const opened = await Promise.all(Array.from({ length: 4 }, () => unread(running.url, path, key)));
      const started = Date.now();
      const fifth = await fetch(`${running.url}${path}`, { headers });
      expect(fifth.status).toBe(429);
      await fifth.body?.cancel();
      // Once nothing moved for 0.4 s the server closes them and gives their places back (these sockets never end).
      let again: Response | undefined;
      for (let i = 0; i < 200 && again?.status !== 200; i++) {
        await new Promise((r) => setTimeout(r, 50));
        again = await fetch(`${running.url}${path}`, { headers });
        if (again.status !== 200) await again.body?.cancel();
      }
      expect(again?.status).toBe(200);
      expect(Date.now() - started).toBeGreaterThanOrEqual(350);
      await again!.arrayBuffer();
      // Read on, each stalled download ends short of the result: it was cut off.
      const got = await Promise.all(
        opened.map(
          (o) =>
            new Promise<number>((resolve) => {
              let bytes = 0;
              o.socket.on("data", (d: Buffer) => void (bytes += d.byteLength));
              o.socket.once("close", () => resolve(bytes));
              o.socket.on("error", () => undefined);
              o.socket.resume();
            }),
        ),
      );
      for (const bytes of got) expect(bytes).toBeLessThan(32 * 1024 * 1024);
      // Four more downloads, read to the end (slowly: the timeout would have fired many times over).
      const whole = await Promise.all(
        Array.from({ length: 4 }, async () => {
          const res = await fetch(`${running.url}${path}`, { headers });
          const reader = res.body!.getReader();
          let bytes = 0;
          for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
            bytes += chunk.value.byteLength;
            await new Promise((r) => setTimeout(r, 1));
          }
          return [res.status, bytes];
        }),
      );
      for (const [status, bytes] of whole) expect([status, bytes]).toEqual([200, expect.any(Number)]);
      expect(whole.every(([, bytes]) => bytes! > 32 * 1024 * 1024)).toBe(true);
      // Pipelined behind a small download read whole, the big one left unread is cut off all the same; and a
      // connection whose downloads were read and then idles is closed at Node's keep-alive timeout (5 s), as any.
      const small = await own.submit({ model: GPT2, kind: "trace", form: "invoke", input: [1, 2, 3], source: "async (m) => 1" });
      expect((await ended(small)).status).toBe("COMPLETED");
      const { hostname, port } = new URL(running.url);
      const ask = (p: string) => `GET ${p} HTTP/1.1\r\nhost: ${hostname}\r\ntsight-protocol: 1\r\nauthorization: Bearer ${key}\r\n\r\n`;
      const connect = async (requests: string) => {
        const socket = net.connect(Number(port), hostname);
        await new Promise<void>((resolve) => socket.once("connect", resolve));
        let bytes = 0;
        const closed = new Promise<number>((resolve) => socket.once("close", () => resolve(Date.now())));
        socket.on("data", (d: Buffer) => void (bytes += d.byteLength));
        socket.on("error", () => undefined);
        socket.write(requests);
        return { socket, closed, bytes: () => bytes };
      };
      const piped = await connect(ask(`/v1/jobs/${small.id}/result`) + ask(path));
      while (piped.bytes() < 1024 * 1024) await new Promise((r) => setTimeout(r, 5));
      piped.socket.pause();
      await new Promise((r) => setTimeout(r, 1500));
      piped.socket.resume();
      await piped.closed;
      expect(piped.bytes()).toBeLessThan(32 * 1024 * 1024);
      const idle = await connect(ask(`/v1/jobs/${small.id}/result`));
      while (idle.bytes() === 0) await new Promise((r) => setTimeout(r, 5));
      const answered = Date.now();
      const idleFor = (await idle.closed) - answered;
      expect(idleFor).toBeGreaterThan(3_000);
      expect(idleFor).toBeLessThan(8_000);
    } finally {
      await running.close();
    }
  });
});
