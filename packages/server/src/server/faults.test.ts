/**
 * Faults a server meets in production, caused for real against `tsight serve` processes over real sockets: the
 * embedded server SIGKILLed mid-job and started again on its data; a result damaged on disk; a results disk that
 * fills up; in distributed mode the only worker SIGKILLed mid-job, and the Redis behind everything stopped and
 * started again (a Redis of the test's own, with an append-only file, so it comes back with its data).
 *
 * The full disk is a 1 MiB tmpfs mounted over the data directory's `results/` folder; mounting needs root (CI and
 * these machines run as root), and a machine where it is refused fails the test with a message saying so.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { JobRequest, JobState } from "tsight/protocol";
import { Tensor } from "tsight";
import { startApiProcess, startServe, startWorkerProcess, type ServeProcess } from "../../../../test/server/processes.js";
import { sink } from "../../../../test/streams.js";
import { runKeys } from "../cli/serve.js";
import { FIVE, finished, GPT2, headers, result, submit, type Target } from "./hostile.case.js";
import { connectRedis, RedisLayout } from "./redis/connection.js";
import { RedisKeyStore } from "./redis/key-store.js";

/**
 * A generation that runs for a while: the model's whole context (5 prompt tokens and 507 new ones, 512 positions),
 * reading a value at every step. (It asked for 2000 tokens, which the server refuses at once as longer than the
 * context: the job then ended before a test could see it running, or kill the server while it ran.)
 */
const GENERATE: Partial<JobRequest> = { kind: "generate", source: "async (m, tr) => { for await (const _ of tr.all()) await m.transformer.h[0].output; }", generate: { maxNewTokens: 507, eosTokenId: null } };
const LOGITS = "async (m) => await m.lm_head.output";

/** A target for the shared helpers: one key, no receiver. */
const target = (url: string, key: string): Target => ({ url, keys: { hostile: key, victim: key, blocker: key }, processes: () => [], receiver: { url: "", hits: () => 0 } });

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000, probeErrorsEnd = false): Promise<T> {
  for (const until = Date.now() + timeoutMs; ; ) {
    const got = await probe().catch((e: unknown) => {
      if (probeErrorsEnd && !(e instanceof TypeError)) throw e; // a TypeError is fetch's: the server not answering yet
      return undefined;
    });
    if (got !== undefined) return got;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function jobState(t: Target, id: string): Promise<JobState> {
  return (await (await fetch(`${t.url}/v1/jobs/${id}`, { headers: headers(t.keys.victim) })).json()) as JobState;
}

/** Waits for the job to be RUNNING; one that ended first fails at once, naming how (waiting on could not help). */
async function running(t: Target, id: string): Promise<void> {
  let last = "nothing (no answer)";
  const probe = async () => {
    const state = await jobState(t, id);
    last = state.status;
    if (state.status === "COMPLETED" || state.status === "ERROR" || state.status === "CANCELLED") throw new Error(`job ${id} ended ${JSON.stringify(state)} before it was seen running`);
    return state.status === "RUNNING" ? true : undefined;
  };
  await waitFor(`job ${id} to run`, probe, 60_000, true).catch((e: Error) => {
    throw e.message.startsWith("timed out") ? new Error(`${e.message}; its last status was ${last}`) : e;
  });
}

/** The logits of the five tokens, as a solo run on a healthy server gives them (the reference for every later run). */
async function logits(t: Target): Promise<unknown> {
  const id = await submit(t, { source: LOGITS }, t.keys.victim);
  expect((await finished(t, id, t.keys.victim)).status).toBe("COMPLETED");
  return values(t, id);
}

async function values(t: Target, id: string): Promise<unknown> {
  return ((await result(t, id, t.keys.victim)) as Tensor).toArray();
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
    s.once("error", reject);
  });
}

describe("the embedded server under faults", () => {
  let dataDir: string;
  let server: ServeProcess;
  let t: Target;
  let reference: unknown;
  let mounted = false;

  const start = async () => {
    server = startServe(["--port", "0", "--data-dir", dataDir, "--timeout", "60s"]);
    const url = (await server.waitFor(/tsight server on (http:\S+),/, 90_000))[1]!;
    return url;
  };

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-faults-"));
    const url = await start();
    const out = sink();
    await runKeys(["create", "--name", "faults", "--data-dir", dataDir], out);
    t = target(url, /TSIGHT_API_KEY=(\S+)/.exec(out.text)![1]!);
    reference = await logits(t);
  }, 120_000);

  afterAll(async () => {
    await server?.stop();
    if (mounted) execFileSync("umount", ["-l", path.join(dataDir, "results")]);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }, 30_000);

  it("ends a job PREEMPTED (retryable) when the server is SIGKILLed while it runs, and keeps finished jobs", async () => {
    const done = await submit(t, { source: LOGITS }, t.keys.victim);
    await finished(t, done, t.keys.victim);
    const id = await submit(t, GENERATE, t.keys.victim);
    await running(t, id);
    await server.stop("SIGKILL");
    t.url = await start();
    const after = await jobState(t, id);
    expect(after).toMatchObject({ status: "ERROR", error: { code: "PREEMPTED", retryable: true } });
    expect(await values(t, done)).toEqual(reference);
    // And it goes on serving, with the same numbers.
    expect(await logits(t)).toEqual(reference);
  }, 150_000);

  it("answers 500 INTERNAL for a result damaged on disk, never the damaged bytes, and serves the others", async () => {
    const [hurt, whole] = [await submit(t, { source: LOGITS }, t.keys.victim), await submit(t, { source: LOGITS }, t.keys.victim)];
    await finished(t, hurt, t.keys.victim);
    await finished(t, whole, t.keys.victim);
    const file = path.join(dataDir, "results", `${hurt}.safetensors`);
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 100] ^= 0x40; // one bit, inside the tensor data
    fs.writeFileSync(file, bytes);
    const res = await fetch(`${t.url}/v1/jobs/${hurt}/result`, { headers: headers(t.keys.victim) });
    expect(res.status).toBe(500);
    expect(((await res.json()) as { error: unknown }).error).toMatchObject({ code: "INTERNAL", retryable: true, message: expect.stringMatching(/is damaged \(its checksum does not match\)/) });
    expect(await values(t, whole)).toEqual(reference);
  }, 60_000);

  it("ends a job ERROR INTERNAL (retryable) when its result does not fit on the disk, leaves nothing behind, and recovers when space is freed", async () => {
    await server.stop();
    const results = path.join(dataDir, "results");
    try {
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tsight-faults", results], { stdio: "pipe" });
      mounted = true;
    } catch (e) {
      throw new Error(`this test mounts a 1 MiB tmpfs over ${results} to fill a disk for real, which needs root: ${(e as Error).message}`);
    }
    t.url = await start();
    const filler = path.join(results, "filler");
    fs.writeFileSync(filler, Buffer.alloc(1024 * 1024 - 96 * 1024)); // 96 KiB left
    const big = { source: "async () => ones([256, 256])" }; // 256 KiB of float32
    const id = await submit(t, big, t.keys.victim);
    const end = await finished(t, id, t.keys.victim);
    expect(end).toMatchObject({ status: "ERROR", error: { code: "INTERNAL", retryable: true, message: expect.stringMatching(/could not be stored \(the server's disk is full\)/) } });
    expect(end.error!.message).not.toContain(dataDir); // no server paths in what users see
    expect(fs.readdirSync(results).sort()).toEqual(["filler"]); // no half-written file
    expect(server.out).toMatch(/ENOSPC/); // the operator sees why
    // Small results still fit, and the server is the same process.
    expect(await logits(t)).toEqual(reference);
    fs.rmSync(filler);
    const again = await submit(t, big, t.keys.victim);
    expect((await finished(t, again, t.keys.victim)).status).toBe("COMPLETED");
    const value = (await result(t, again, t.keys.victim)) as Tensor;
    expect(value.shape).toEqual([256, 256]);
    expect((value.toArray() as unknown as number[][]).flat().every((x) => x === 1)).toBe(true);
  }, 150_000);
});

describe("a distributed deployment under faults (its own Redis)", () => {
  let dir: string;
  let redisProc: ChildProcess;
  let redisUrl: string;
  let port: number;
  const procs: ServeProcess[] = [];
  let api: { proc: ServeProcess; url: string };
  let t: Target;
  let reference: unknown;
  let common: string[];

  const startRedis = async () => {
    redisProc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes", "--appendfsync", "always", "--save", ""], { stdio: "ignore" });
    const probe = await waitFor("Redis to answer", async () => connectRedis(redisUrl, 500), 15_000);
    await probe.quit();
  };
  /** Kills Redis (SIGKILL: no goodbye to its clients; the append-only file, synced on every write, keeps the data). */
  const stopRedis = async () => {
    const gone = new Promise((r) => redisProc.once("exit", r));
    redisProc.kill("SIGKILL");
    await gone;
  };

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-faults-redis-"));
    port = await freePort();
    redisUrl = `redis://127.0.0.1:${port}`;
    await startRedis();
    common = ["--redis", redisUrl, "-m", "stdlib-gpt2", "--lock", "2s", "--retries", "2", "--queue-wait", "60s", "--heartbeat", "500ms"];
    const redis = await connectRedis(redisUrl);
    const key = (await new RedisKeyStore(redis, new RedisLayout()).create("faults")).key;
    await redis.quit();
    api = await startApiProcess(common, procs);
    await startWorkerProcess(common, procs);
    t = target(api.url, key);
    reference = await logits(t);
  }, 120_000);

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()));
    if (redisProc && redisProc.exitCode === null && redisProc.signalCode === null) await stopRedis();
    fs.rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it("keeps a job whose only worker is SIGKILLed mid-job: the model shows unserved, the job waits, a new worker runs it", async () => {
    const id = await submit(t, { ...GENERATE, generate: { maxNewTokens: 300, eosTokenId: null } }, t.keys.victim);
    await running(t, id);
    const worker = procs.at(-1)!;
    await worker.stop("SIGKILL");
    const models = async () => (await (await fetch(`${t.url}/v1/models`, { headers: headers(t.keys.victim) })).json()) as { models: { state: string }[] };
    await waitFor("the model to show unserved", async () => ((await models()).models[0]!.state === "unserved" ? true : undefined), 15_000);
    expect(["QUEUED", "RUNNING"]).toContain((await jobState(t, id)).status);
    await startWorkerProcess(common, procs);
    const end = await finished(t, id, t.keys.victim, 120_000);
    expect(end.status, JSON.stringify(end.error)).toBe("COMPLETED");
    const generated = ((await result(t, id, t.keys.victim)) as { generated: Tensor }).generated;
    expect(generated.shape).toEqual([1, 300]);
    // The same tokens as a run nobody interrupted.
    const solo = await submit(t, { ...GENERATE, generate: { maxNewTokens: 300, eosTokenId: null } }, t.keys.victim);
    expect((await finished(t, solo, t.keys.victim, 120_000)).status).toBe("COMPLETED");
    expect(generated.toArray()).toEqual(((await result(t, solo, t.keys.victim)) as { generated: Tensor }).generated.toArray());
    expect((await models()).models[0]!.state).toBe("loaded");
  }, 180_000);

  it("answers 503 UNAVAILABLE at once while Redis is down, and serves again, with its data, when Redis is back", async () => {
    const before = await submit(t, { source: LOGITS }, t.keys.victim);
    await finished(t, before, t.keys.victim);
    await stopRedis();
    // From the first request on (before the connections have noticed, too): every answer a typed 503, none a hang.
    for (let i = 0; i < 5; i++) {
      const started = Date.now();
      const res = await fetch(`${t.url}/v1/jobs`, { method: "POST", headers: headers(t.keys.victim), body: JSON.stringify({ model: GPT2, kind: "trace", form: "invoke", input: FIVE, source: LOGITS }) });
      expect(res.status, `request ${i}`).toBe(503);
      expect(((await res.json()) as { error: unknown }).error).toMatchObject({ code: "UNAVAILABLE", retryable: true });
      expect(Date.now() - started).toBeLessThan(5000);
      const state = await fetch(`${t.url}/v1/jobs/${before}`, { headers: headers(t.keys.victim) });
      expect(state.status, `request ${i}`).toBe(503);
    }
    expect((await fetch(`${t.url}/readyz`)).status).toBe(503);
    expect(api.proc.child.exitCode).toBeNull(); // the API process lives on

    await startRedis();
    await waitFor("the API to be ready again", async () => ((await fetch(`${t.url}/readyz`)).status === 200 ? true : undefined), 30_000);
    expect(await values(t, before)).toEqual(reference);
    // The worker reconnected too: a new job runs, with the same numbers.
    const after = await waitFor("a job to be accepted", async () => submit(t, { source: LOGITS }, t.keys.victim), 30_000);
    expect((await finished(t, after, t.keys.victim, 60_000)).status).toBe("COMPLETED");
    expect(await values(t, after)).toEqual(reference);
  }, 180_000);
});
