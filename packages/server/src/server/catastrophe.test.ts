/**
 * A job whose code makes V8 lose control of its sandbox's heap (a Map or an array grown without end fails where
 * isolated-vm's memory limit cannot catch it) must not take the server down: isolated-vm then keeps the job's thread
 * where it failed rather than abort the process, the job ends MEMORY at once, a fresh thread serves the model, and
 * the other models never notice. A model that loses more threads than MAX_LOST (each keeps its memory until the
 * process ends) is failed instead of losing more. Against `tsight serve` as a process of its own, over a socket.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startApiProcess, startServe, startWorkerProcess, type ServeProcess } from "../../../../test/server/processes.js";
import { clearPrefix, TEST_REDIS, testRedis, uniquePrefix } from "../../../../test/server/redis.js";
import { sink } from "../../../../test/streams.js";
import { runKeys, SERVE_ENV } from "../cli/serve.js";
import { finished, GPT2, headers, result, submit, type Target } from "./hostile.case.js";
import { toModelKey } from "tsight/protocol";

const LLAMA = toModelKey("LanguageModel", "stdlib-llama", null);
const GROW_MAP = "async () => { const m = new Map(); for (let i = 0; ; i++) m.set(i, i); }";
const LOGITS = "async (m) => (await m.lm_head.output).shape";

describe("a job that breaks its sandbox beyond recovery", () => {
  let server: ServeProcess;
  let dataDir: string;
  let t: Target;
  const hostile: string[] = [];

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-catastrophe-"));
    server = startServe(["--port", "0", "--data-dir", dataDir, "--timeout", "60s"]);
    const url = (await server.waitFor(/tsight server on (http:\S+),/, 90_000))[1]!;
    const newKey = async (name: string) => {
      const out = sink();
      await runKeys(["create", "--name", name, "--data-dir", dataDir], out);
      return /TSIGHT_API_KEY=(\S+)/.exec(out.text)![1]!;
    };
    const victim = await newKey("victim");
    // A key whose job broke a thread may not submit for a while: each lost thread is another key's.
    for (let i = 0; i < 10; i++) hostile.push(await newKey(`hostile-${i}`));
    t = { url, keys: { hostile: hostile[0]!, victim, blocker: victim }, processes: () => [], receiver: { url: "", hits: () => 0 } };
  }, 120_000);

  afterAll(async () => {
    await server?.stop("SIGKILL");
    fs.rmSync(dataDir, { recursive: true, force: true });
  }, 30_000);

  it("ends MEMORY at once, and its key may not submit for a while; the server and its other models go on, and the model is served by a fresh thread until it has lost too many", async () => {
    const pid = server.child.pid;
    let lost = 0;
    for (let attempt = 1; lost < 3; attempt++) {
      // Which way V8 fails is a race between its heap growth and isolated-vm's check after each collection: on a
      // loaded machine the check now and then wins, and the job ends MEMORY the ordinary way with its thread kept.
      expect(attempt, "attempts before 3 threads were lost").toBeLessThanOrEqual(10);
      const key = hostile[attempt - 1]!;
      const started = Date.now();
      const broken = await finished(t, await submit(t, { source: GROW_MAP }, key), key);
      expect(broken).toMatchObject({ status: "ERROR", error: { code: "MEMORY" } });
      // At once, not at the job's 60 s deadline.
      expect(Date.now() - started).toBeLessThan(30_000);
      const message = (broken.error as { message: string }).message;
      if (!/out of memory in a way it could not recover from/.test(message)) {
        expect(message).toBe("the job's code used more memory than its sandbox allows");
        continue;
      }
      lost++;
      // Its key may not submit for a while (the next such job would cost another thread), whatever the model.
      const again = await fetch(`${t.url}/v1/jobs`, { method: "POST", headers: headers(key), body: JSON.stringify({ model: LLAMA, kind: "trace", form: "invoke", input: [1, 2, 3], source: LOGITS }) });
      expect(again.status).toBe(429);
      expect(((await again.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: "NOT_ALLOWED", message: expect.stringMatching(/broke a worker thread of stdlib-gpt2 .* this key may submit jobs again in \d+ s/) });
      const other = await finished(t, await submit(t, { model: LLAMA, source: LOGITS }, t.keys.victim), t.keys.victim);
      expect(other.status).toBe("COMPLETED");
      if (lost <= 2) {
        const same = await finished(t, await submit(t, { source: LOGITS }, t.keys.victim), t.keys.victim, 60_000);
        expect(same.status).toBe("COMPLETED");
        expect(await result(t, same.id, t.keys.victim)).toEqual([1, 5, 4096]);
      } else {
        // Past MAX_LOST (2) lost threads the model is failed, saying why, and refuses jobs at once.
        const res = await fetch(`${t.url}/v1/jobs`, { method: "POST", headers: headers(t.keys.victim), body: JSON.stringify({ model: GPT2, kind: "trace", form: "invoke", input: [1, 2, 3, 4, 5], source: LOGITS }) });
        expect(res.status).toBe(503);
        // Not worth retrying (only a restart helps), and /v1/models says so.
        expect(((await res.json()) as { error: { message: string; retryable: boolean } }).error).toMatchObject({ retryable: false, message: expect.stringMatching(/stdlib-gpt2 cannot run jobs on this server until it restarts: 3 jobs broke their worker threads beyond recovery; restart the server to serve stdlib-gpt2 again/) });
        const listed = (await (await fetch(`${t.url}/v1/models`, { headers: headers(t.keys.victim) })).json()) as { models: { name: string; state: string }[] };
        expect(listed.models.find((m) => m.name === "stdlib-gpt2")?.state).toBe("failed");
      }
    }
    expect(server.child.pid).toBe(pid);
    expect(server.child.exitCode).toBeNull();
    expect(server.out).toContain("the thread is lost (3 so far); the model is failed until the server restarts");
  }, 240_000);

  it("in a forward pass shared with another key's job, ends that job PREEMPTED (it may run again), not MEMORY: the job that broke the thread is known", async () => {
    const victimSource = "async (m) => (await m.lm_head.output).shape";
    let shared = false;
    for (let attempt = 9; attempt >= 6 && !shared; attempt--) {
      const key = hostile[attempt]!;
      // Keeps llama's worker busy (three tokens: not batched with the others) while the two jobs queue up.
      const blocker = await submit(t, { model: LLAMA, input: [1, 2, 3], source: "async () => { const t = Date.now(); while (Date.now() - t < 600) {} return 1; }" }, t.keys.victim);
      await new Promise((r) => setTimeout(r, 150));
      const [bad, good] = await Promise.all([submit(t, { model: LLAMA, source: GROW_MAP }, key), submit(t, { model: LLAMA, source: victimSource }, t.keys.victim)]);
      const [badEnd, goodEnd] = await Promise.all([finished(t, bad, key, 60_000), finished(t, good, t.keys.victim, 60_000)]);
      await finished(t, blocker, t.keys.victim);
      expect(badEnd).toMatchObject({ status: "ERROR", error: { code: "MEMORY" } });
      if (goodEnd.status === "COMPLETED") continue; // the other job was not in the pass when the thread broke
      shared = true;
      expect(goodEnd.error).toMatchObject({ code: "PREEMPTED", retryable: true, message: expect.stringMatching(/another job sharing this job's forward pass broke its worker thread/) });
      expect((badEnd.error as { message: string }).message).toMatch(/could not recover from/);
    }
    expect(shared, "a thread broken in a shared pass within 4 attempts").toBe(true);
  }, 240_000);
});

describe("a job that breaks its sandbox beyond recovery, in a distributed deployment", () => {
  const prefix = uniquePrefix("catastrophe");
  const processes: ServeProcess[] = [];
  let t: Target;
  const hostile: string[] = [];

  beforeAll(async () => {
    const common = ["--redis", TEST_REDIS, "--prefix", prefix, "--timeout", "60s"];
    // Two API processes: a bar set by the worker holds in both.
    const [{ url }, { url: other }] = await Promise.all([startApiProcess(common, processes), startApiProcess(common, processes), startWorkerProcess(common, processes)]);
    const newKey = async (name: string) => {
      const out = sink();
      await runKeys(["create", "--name", name, "--redis", TEST_REDIS, "--prefix", prefix], out);
      return /TSIGHT_API_KEY=(\S+)/.exec(out.text)![1]!;
    };
    for (let i = 0; i < 4; i++) hostile.push(await newKey(`hostile-${i}`));
    t = { url, keys: { hostile: hostile[0]!, victim: await newKey("victim"), blocker: other }, processes: () => [], receiver: { url: "", hits: () => 0 } };
  }, 120_000);

  afterAll(async () => {
    await Promise.all(processes.map((p) => p.stop("SIGKILL")));
    const redis = await testRedis();
    await clearPrefix(redis, prefix);
    redis.disconnect();
  }, 30_000);

  it("bars its API key in every API process (the worker process that lost the thread keeps the bar in Redis); other keys go on", async () => {
    const otherApi = t.keys.blocker;
    let barred = false;
    for (let attempt = 0; attempt < hostile.length && !barred; attempt++) {
      const key = hostile[attempt]!;
      const broken = await finished(t, await submit(t, { source: GROW_MAP }, key), key);
      expect(broken).toMatchObject({ status: "ERROR", error: { code: "MEMORY" } });
      // The race V8 and isolated-vm run (see above): the job may end MEMORY the ordinary way, its thread kept.
      if (!/out of memory in a way it could not recover from/.test((broken.error as { message: string }).message)) continue;
      barred = true;
      for (const url of [t.url, otherApi]) {
        const again = await fetch(`${url}/v1/jobs`, { method: "POST", headers: headers(key), body: JSON.stringify({ model: GPT2, kind: "trace", form: "invoke", input: [1, 2, 3], source: LOGITS }) });
        expect(again.status, url).toBe(429);
        expect(Number(again.headers.get("retry-after"))).toBeGreaterThan(800);
        expect(((await again.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: "NOT_ALLOWED", message: expect.stringMatching(/broke a worker thread of stdlib-gpt2 .* this key may submit jobs again in \d+ s/) });
      }
      const other = await finished(t, await submit(t, { source: LOGITS }, t.keys.victim), t.keys.victim, 60_000);
      expect(other.status).toBe("COMPLETED");
    }
    expect(barred, `a thread lost within ${hostile.length} attempts`).toBe(true);
  }, 240_000);
});

describe("a model failed by broken threads, under `tsight serve` started from its bin script", () => {
  it("has the server start again (it asks its parent process), after which the model serves jobs again", async () => {
    if (process.platform !== "linux") return;
    const { spawn } = await import("node:child_process");
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-restart-"));
    const newKey = async (name: string) => {
      const out = sink();
      await runKeys(["create", "--name", name, "--data-dir", dataDir], out);
      return /TSIGHT_API_KEY=(\S+)/.exec(out.text)![1]!;
    };
    const keys = [await newKey("one"), await newKey("two"), await newKey("three"), await newKey("victim")];
    // Without the allocator settings the bin script starts the server again as its child, over an IPC channel.
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const k of Object.keys(SERVE_ENV)) delete env[k];
    const bin = path.resolve(import.meta.dirname, "../../../tsight/bin/tsight.js");
    const parent = spawn(process.execPath, [bin, "serve", "--port", "0", "--data-dir", dataDir, "--model", "stdlib-gpt2"], { env, stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    for (const stream of [parent.stdout, parent.stderr]) stream.on("data", (d: Buffer) => void (text += d.toString()));
    const urls = async (n: number) => {
      for (let i = 0; i < 600 && [...text.matchAll(/tsight server on (http:\S+),/g)].length < n; i++) await new Promise((r) => setTimeout(r, 100));
      return [...text.matchAll(/tsight server on (http:\S+),/g)].map((m) => m[1]!);
    };
    try {
      const t: Target = { url: (await urls(1))[0]!, keys: { hostile: keys[0]!, victim: keys[3]!, blocker: keys[3]! }, processes: () => [], receiver: { url: "", hits: () => 0 } };
      // One allocation far past the sandbox's heap: V8 cannot fail it gracefully, and the thread is lost. The third
      // fails the model, and the server restarts (its answers may stop midway).
      const broke = "async () => new Array(2 ** 31 - 1).fill(1.5).length";
      const jobs: string[] = [];
      for (const key of keys.slice(0, 2)) {
        jobs.push(await submit(t, { source: broke }, key));
        expect(await finished(t, jobs.at(-1)!, key, 60_000)).toMatchObject({ status: "ERROR", error: { code: "MEMORY" } });
      }
      jobs.push(await submit(t, { source: broke }, keys[2]!));
      const again = (await urls(2))[1];
      expect(text).toMatch(/tsight serve: stdlib-gpt2 is failed \(3 jobs broke their worker threads beyond recovery; .*\); the server restarts to serve it again/);
      expect(text).toContain("tsight serve: starting the server again");
      expect(again, text).toBeDefined();
      // The same data: the keys work, the third job ended as the others, and the model runs jobs.
      const served = { ...t, url: again! };
      expect(await finished(served, jobs[2]!, keys[2]!)).toMatchObject({ status: "ERROR", error: { code: "MEMORY" } });
      const job = await finished(served, await submit(served, { source: LOGITS }, keys[3]!), keys[3]!, 60_000);
      expect(job.status).toBe("COMPLETED");
      expect(await result(served, job.id, keys[3]!)).toEqual([1, 5, 4096]);
    } finally {
      parent.kill("SIGTERM");
      await new Promise((resolve) => (parent.exitCode !== null ? resolve(undefined) : parent.once("exit", resolve)));
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  }, 240_000);
});
