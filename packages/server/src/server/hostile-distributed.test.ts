/**
 * The hostile suite (hostile.case.ts) against a distributed deployment: an API process and a worker process on the
 * machine's Redis. The worker runs the jobs; both processes are watched.
 */
import http from "node:http";
import type { Redis } from "ioredis";
import { startApiProcess, startWorkerProcess, type ServeProcess } from "../../../../test/server/processes.js";
import { clearPrefix, TEST_REDIS, testRedis, uniquePrefix } from "../../../../test/server/redis.js";
import { sink } from "../../../../test/streams.js";
import { runKeys } from "../cli/serve.js";
import { hostileSuite, limitFlags, loopbackReceiver, type Target } from "./hostile.case.js";

const prefix = uniquePrefix("hostile");
const processes: ServeProcess[] = [];
let redis: Redis;
let receiver: http.Server;

async function newKey(name: string): Promise<string> {
  const out = sink();
  await runKeys(["create", "--name", name, "--redis", TEST_REDIS, "--prefix", prefix], out);
  return /TSIGHT_API_KEY=(\S+)/.exec(out.text)![1]!;
}

hostileSuite(
  "hostile jobs against API and worker processes on Redis",
  async (): Promise<Target> => {
    redis = await testRedis();
    const hook = await loopbackReceiver();
    receiver = hook.server;
    const common = ["--redis", TEST_REDIS, "--prefix", prefix, ...limitFlags()];
    const [{ proc: api, url }, { proc: worker }] = await Promise.all([startApiProcess(common, processes), startWorkerProcess(common, processes)]);
    const hostile = /TSIGHT_API_KEY=(\S+)/.exec(api.out)?.[1] ?? (await newKey("hostile"));
    const alive = (p: ServeProcess) => p.child.exitCode === null && p.child.signalCode === null;
    return {
      url,
      keys: { hostile, victim: await newKey("victim"), blocker: await newKey("blocker") },
      processes: () => [api, worker].filter(alive).map((p) => p.child.pid!),
      gone: () =>
        [api, worker]
          .filter((p) => !alive(p))
          .map((p) => `pid ${p.child.pid} ended (code ${p.child.exitCode}, signal ${p.child.signalCode}); it printed last:\n${p.out.slice(-4000)}`)
          .join("\n"),
      receiver: { url: hook.url, hits: hook.hits },
    };
  },
  async () => {
    await Promise.all(processes.map((p) => p.stop()));
    await new Promise<void>((resolve) => receiver?.close(() => resolve()));
    await clearPrefix(redis, prefix);
    redis.disconnect();
  },
);
