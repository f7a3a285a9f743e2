/** `tsight serve` and `tsight keys`, in process. */
import fsp from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sink } from "../../../../test/streams.js";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { clearPrefix, TEST_REDIS, testRedis, uniquePrefix } from "../../../../test/server/redis.js";
import { main } from "../../../tsight/src/cli/main.js";
import { parseDuration, runKeys, runServe, SERVE_ENV } from "./serve.js";
import { fixture, fixtureDir, maxAbsDiff, ref } from "../../../../test/fixtures.js";
import { HttpBackend, LanguageModel } from "../../../tsight/src/client/index.js";
import type { Tensor } from "../../../tsight/src/tensor/index.js";


let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});
afterAll(() => fsp.rm(dir, { recursive: true, force: true }));

describe("tsight keys", () => {
  it("creates a key it prints once, lists keys without them, and revokes", async () => {
    const out = sink();
    expect(await runKeys(["create", "--name", "ci", "--data-dir", dir], out)).toBe(0);
    const key = /^TSIGHT_API_KEY=(tsk_\S+)$/m.exec(out.text)![1]!;
    const list = sink();
    expect(await runKeys(["list", "--data-dir", dir], list)).toBe(0);
    expect(list.text).toMatch(/^[0-9a-f]{16} {2}ci {2}created /m);
    expect(list.text).not.toContain(key.slice(-43));
    expect(await runKeys(["revoke", "ci", "--data-dir", dir], sink())).toBe(0);
    await expect(runKeys(["revoke", "ci", "--data-dir", dir], sink())).rejects.toThrow(/no active key/);
    const errors: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((s: string) => (errors.push(String(s)), true)) as typeof process.stderr.write;
    try {
      expect(await main(["keys", "frobnicate", "--data-dir", dir])).toBe(2);
      expect(await main(["serve", "--timeout", "soon"])).toBe(2);
    } finally {
      process.stderr.write = write;
    }
    expect(errors.join("")).toMatch(/unknown action "frobnicate"[\s\S]*--timeout must be a duration/);
  });

  it("reads durations", () => {
    expect(parseDuration("t", "90")).toBe(90_000);
    expect(parseDuration("t", "1.5m")).toBe(90_000);
    expect(parseDuration("t", "1h")).toBe(3_600_000);
    expect(parseDuration("t", "250ms")).toBe(250);
    expect(() => parseDuration("t", "0s")).toThrow(/more than zero/);
  });
});

describe("tsight serve", () => {
  it("serves, prints a first key for clients, and stops on a signal", async () => {
    const serveDir = await tempDir();
    const out = sink();
    const stop = new AbortController();
    const done = runServe(["--port", "0", "--data-dir", serveDir, "--model", "stdlib-gpt2", "--timeout", "30s", "--retention", "10m"], out, sink(), stop.signal);
    const [, url] = await out.waitFor(/tsight server on (http:\S+),/);
    const key = /^TSIGHT_API_KEY=(\S+)$/m.exec(out.text)![1]!;
    expect(out.text).toContain(`TSIGHT_HOST=${url}`);
    const res = await fetch(`${url}/v1/models`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${key}` } });
    expect(((await res.json()) as { models: { key: string }[] }).models.map((m) => m.key)).toEqual([GPT2]);
    stop.abort();
    expect(await done).toBe(0);
    // Keys are kept: a second start makes none.
    const again = sink();
    const stop2 = new AbortController();
    const done2 = runServe(["--port", "0", "--data-dir", serveDir, "--model", "stdlib-gpt2"], again, sink(), stop2.signal);
    await again.waitFor(/tsight server on/);
    stop2.abort();
    expect(await done2).toBe(0);
    expect(again.text).not.toContain("TSIGHT_API_KEY");
    await fsp.rm(serveDir, { recursive: true, force: true });
  });
});

describe("tsight serve from its bin script", () => {
  it("the server it starts again (with its allocator settings) stops when it is killed outright, not only on a signal passed on", async () => {
    if (process.platform !== "linux") return;
    const { spawn, execFileSync } = await import("node:child_process");
    const path = await import("node:path");
    const serveDir = await tempDir();
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const k of Object.keys(SERVE_ENV)) delete env[k];
    const bin = path.resolve(import.meta.dirname, "../../../tsight/bin/tsight.js");
    const parent = spawn(process.execPath, [bin, "serve", "--port", "0", "--data-dir", serveDir, "--model", "stdlib-gpt2"], { env, stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    parent.stdout.on("data", (d: Buffer) => void (text += d.toString()));
    for (let i = 0; i < 300 && !/tsight server on (http:\S+),/.test(text); i++) await new Promise((r) => setTimeout(r, 100));
    const url = /tsight server on (http:\S+),/.exec(text)![1]!;
    const child = Number(execFileSync("ps", ["-o", "pid=", "--ppid", String(parent.pid)], { encoding: "utf8" }).trim());
    expect(child).toBeGreaterThan(0);
    parent.kill("SIGKILL");
    const alive = () => {
      try {
        process.kill(child, 0);
        return true;
      } catch {
        return false;
      }
    };
    try {
      for (let i = 0; i < 200 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
      expect(alive()).toBe(false);
      await expect(fetch(`${url}/healthz`)).rejects.toThrow();
    } finally {
      if (alive()) process.kill(child, "SIGKILL");
      await fsp.rm(serveDir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("tsight serve --model NAME=FOLDER", () => {
  it("serves a folder under a name clients ask for (not a path on the server), with its dtype and SAE said at start", async () => {
    const serveDir = await tempDir();
    const out = sink();
    const stop = new AbortController();
    const folder = fixtureDir("llama3");
    const done = runServe(["--port", "0", "--data-dir", serveDir, "--model", `llama3=${folder}`, "--model", "stdlib-gpt2", "--dtype", "llama3=int8", "--sae", "stdlib-gpt2=stdlib-gpt2-res2-topk"], out, sink(), stop.signal);
    try {
      const [, url] = await out.waitFor(/tsight server on (http:\S+),/);
      expect(out.text).toContain(`serving llama3 (from ${folder}, int8), stdlib-gpt2 (SAE at transformer.h.2)`);
      const apiKey = /^TSIGHT_API_KEY=(\S+)$/m.exec(out.text)![1]!;
      const backend = new HttpBackend({ url, apiKey });
      const remote = await LanguageModel.fromServer("llama3", { backend });
      const f = await fixture("llama3");
      const ids = ref(f, "input_ids");
      const read = async (m: any) => (await m.model.layers[1].output) as Tensor;
      const local = await (await LanguageModel.load(folder, { dtype: "int8" })).trace(ids, read);
      expect(maxAbsDiff((await remote.trace(ids, read, { backend })) as Tensor, local)).toBe(0);
      // A model asked for by its folder is not served: the error names the served names only.
      const res = await fetch(`${url}/v1/models`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${apiKey}` } });
      expect(JSON.stringify(await res.json())).not.toContain(folder);
    } finally {
      stop.abort();
      expect(await done).toBe(0);
      await fsp.rm(serveDir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe("tsight serve and keys on Redis", () => {
  it("refuses roles without Redis, and Redis without a role", async () => {
    await expect(runServe(["--role", "worker"], sink(), sink())).rejects.toThrow(/--role worker needs --redis URL/);
    await expect(runServe(["--redis", TEST_REDIS], sink(), sink())).rejects.toThrow(/--redis needs --role api or --role worker/);
    await expect(runServe(["--role", "boss", "--redis", TEST_REDIS], sink(), sink())).rejects.toThrow(/--role must be api, worker or all/);
    await expect(runServe(["--batch", "0"], sink(), sink())).rejects.toThrow(/--batch must be 1 or more/);
  });

  it("makes, lists and revokes a deployment's keys in Redis; its API process makes none when one exists", async () => {
    const redis = await testRedis();
    const prefix = uniquePrefix("cli");
    try {
      const out = sink();
      expect(await runKeys(["create", "--name", "ops", "--redis", TEST_REDIS, "--prefix", prefix], out)).toBe(0);
      const key = /^TSIGHT_API_KEY=(tsk_\S+)$/m.exec(out.text)![1]!;
      const list = sink();
      expect(await runKeys(["list", "--redis", TEST_REDIS, "--prefix", prefix], list)).toBe(0);
      expect(list.text).toMatch(/^[0-9a-f]{16} {2}ops {2}created /m);
      const api = sink();
      const stop = new AbortController();
      const done = runServe(["--role", "api", "--redis", TEST_REDIS, "--prefix", prefix, "--port", "0", "--model", "stdlib-gpt2"], api, sink(), stop.signal);
      const [, url] = await api.waitFor(/tsight api on (http:\S+),/);
      expect(api.text).not.toContain("TSIGHT_API_KEY");
      const status = await fetch(`${url}/v1/status`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${key}` } });
      expect(((await status.json()) as { mode: string; workers: unknown[] })).toMatchObject({ mode: "distributed", workers: [] });
      expect(await runKeys(["revoke", "ops", "--redis", TEST_REDIS, "--prefix", prefix], sink())).toBe(0);
      expect((await fetch(`${url}/v1/status`, { headers: { "tsight-protocol": "1", authorization: `Bearer ${key}` } })).status).toBe(401);
      stop.abort();
      expect(await done).toBe(0);
    } finally {
      await clearPrefix(redis, prefix);
      await redis.quit();
    }
  });
});
