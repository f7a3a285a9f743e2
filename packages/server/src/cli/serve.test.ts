/** `tsight serve` and `tsight keys`, in process. */
import fsp from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sink } from "../../../../test/streams.js";
import { GPT2, tempDir } from "../../../../test/server/harness.js";
import { clearPrefix, TEST_REDIS, testRedis, uniquePrefix } from "../../../../test/server/redis.js";
import { main } from "../../../tsight/src/cli/main.js";
import { parseDuration, runKeys, runServe } from "./serve.js";


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
