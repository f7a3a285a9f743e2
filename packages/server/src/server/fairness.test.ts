/**
 * Fair share between API keys, over real sockets, in both deployments: one key keeps eight slow jobs (its most) (300 ms of
 * spinning each) waiting, and another key's jobs, submitted one at a time behind them, must not wait for that queue:
 * each starts after at most the one heavy job that was running (or starting) when it came. Measured by order, from the
 * start times the jobs report themselves (the server's clock), never by wall-clock limits.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import { startApiProcess, startServe, startWorkerProcess, type ServeProcess } from "../../../../test/server/processes.js";
import { clearPrefix, testRedis, uniquePrefix, TEST_REDIS } from "../../../../test/server/redis.js";
import { sink } from "../../../../test/streams.js";
import { runKeys } from "../cli/serve.js";
import { finished, result, submit, type Target } from "./hostile.case.js";
import { RedisLayout } from "./redis/connection.js";
import { RedisKeyStore } from "./redis/key-store.js";

/** A job that reports when it started, then keeps its slot for `ms`. */
const spin = (ms: number) => `async (m) => { const t0 = Date.now(); while (Date.now() - t0 < ${ms}) {} return t0; }`;
const HEAVY_JOBS = 8; // the most one key may have unfinished
const LIGHT_JOBS = 3;
const SAME_PASS_MS = 50;

/** Runs the pattern and returns, for each light job, how many heavy jobs started between its submission and its start. */
async function overtaken(t: Target): Promise<number[]> {
  const heavy = await Promise.all(Array.from({ length: HEAVY_JOBS }, () => submit(t, { source: spin(300) }, t.keys.hostile)));
  const light: { submitted: number; started: number }[] = [];
  for (let i = 0; i < LIGHT_JOBS; i++) {
    const submitted = Date.now();
    const id = await submit(t, { source: spin(10) }, t.keys.victim);
    expect((await finished(t, id, t.keys.victim, 60_000)).status).toBe("COMPLETED");
    light.push({ submitted, started: (await result(t, id, t.keys.victim)) as number });
  }
  const starts: number[] = [];
  for (const id of heavy) {
    expect((await finished(t, id, t.keys.hostile, 60_000)).status).toBe("COMPLETED");
    starts.push((await result(t, id, t.keys.hostile)) as number);
  }
  if (process.env.FAIR_DEBUG) console.log(JSON.stringify({ light: light.map((l) => [l.submitted - starts[0]!, l.started - starts[0]!]), heavy: starts.map((s) => s - starts[0]!) }));
  // The heavy queue was still long when the last light job came: otherwise the test would show nothing.
  expect(starts.filter((s) => s > light.at(-1)!.started).length).toBeGreaterThanOrEqual(HEAVY_JOBS - LIGHT_JOBS - 2);
  // A heavy job that starts with the light one shares its pass (started within a few ms): it did not go first.
  return light.map((l) => starts.filter((s) => s > l.submitted && s < l.started - SAME_PASS_MS).length);
}

describe("fair share between keys", () => {
  it("embedded server: a light key's job waits for at most one job of a key that fills the queue", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-fair-"));
    const server = startServe(["--port", "0", "--data-dir", dataDir]);
    try {
      const url = (await server.waitFor(/tsight server on (http:\S+),/, 90_000))[1]!;
      const out = sink();
      await runKeys(["create", "--name", "light", "--data-dir", dataDir], out);
      const heavy = /TSIGHT_API_KEY=(\S+)/.exec(server.out)![1]!;
      const light = /TSIGHT_API_KEY=(\S+)/.exec(out.text)![1]!;
      const counts = await overtaken({ url, keys: { hostile: heavy, victim: light, blocker: light }, processes: () => [], receiver: { url: "", hits: () => 0 } });
      expect(Math.max(...counts), JSON.stringify(counts)).toBeLessThanOrEqual(1);
    } finally {
      await server.stop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  }, 150_000);

  describe("API and worker processes on Redis", () => {
    const prefix = uniquePrefix("fair");
    const procs: ServeProcess[] = [];
    let redis: Redis;

    afterAll(async () => {
      await Promise.all(procs.map((p) => p.stop()));
      if (redis) {
        await clearPrefix(redis, prefix);
        await redis.quit();
      }
    }, 30_000);

    it("a light key's job waits for at most one job of a key that fills the queue", async () => {
      redis = await testRedis();
      const keys = new RedisKeyStore(redis, new RedisLayout(prefix));
      const [heavy, light] = [(await keys.create("heavy")).key, (await keys.create("light")).key];
      const common = ["--redis", TEST_REDIS, "--prefix", prefix, "-m", "stdlib-gpt2"];
      const [api] = await Promise.all([startApiProcess(common, procs), startWorkerProcess(common, procs)]);
      const counts = await overtaken({ url: api.url, keys: { hostile: heavy, victim: light, blocker: light }, processes: () => [], receiver: { url: "", hits: () => 0 } });
      expect(Math.max(...counts), JSON.stringify(counts)).toBeLessThanOrEqual(1);
    }, 150_000);
  });
});
