/**
 * Load: jobs per second and latency (submit to result, p50 and p99) of small remote traces from 1, 8 and 32
 * concurrent clients, with cross-user batching off (`--batch 1`, one job per forward pass, as NDIF runs them) and on
 * (`--batch 8`). Two setups: a distributed deployment (1 API + 1 worker process, `tsight serve --redis`, on the
 * machine's Redis under a prefix of its own, deleted afterwards) and the embedded server (one process). Loopback
 * only, bounded: each level runs `jobs` jobs per client or `levelSeconds`, whichever ends first. Every client has an
 * API key of its own: clients are users.
 *
 *   npx tsx bench/load.ts            (TSIGHT_TEST_REDIS=redis://... for another Redis)
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { LanguageModel } from "../packages/tsight/dist/client/index.js";
import { startServer } from "../packages/server/src/server/index.js";
import { RedisLayout } from "../packages/server/src/server/redis/connection.js";
import { RedisKeyStore } from "../packages/server/src/server/redis/key-store.js";
import { startApiProcess, startWorkerProcess, type ServeProcess } from "../test/server/processes.js";
import { clearPrefix, TEST_REDIS, testRedis, uniquePrefix } from "../test/server/redis.js";

export interface LoadRow {
  setup: "distributed" | "embedded";
  batching: boolean;
  clients: number;
  jobs: number;
  jobsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  /** Mean jobs per forward pass, from /v1/status. */
  jobsPerPass: number | null;
}

export interface LoadOptions {
  clientCounts?: number[];
  /** Jobs each client runs per level (at most). */
  jobsPerClient?: (clients: number) => number;
  levelSeconds?: number;
  setups?: ("distributed" | "embedded")[];
  log?: (line: string) => void;
}

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
};

/** The job of every client: the next token's id after five tokens (a different prompt per client, equal lengths). */
const fn = async (m: any) => (await m.lm_head.output).index(0, -1).argmax();
const prompt = (client: number, j: number): number[] => Array.from({ length: 5 }, (_, i) => ((client * 131 + j * 17 + i * 7919) % 4000) + 10);

/**
 * Runs one level: `clients` loops, each submitting a job and waiting for its result, `perClient` times or until the
 * time is up. Each client is a user with an API key of its own (the server batches at most one job per key into a pass).
 */
async function level(url: string, apiKeys: string[], clients: number, perClient: number, seconds: number): Promise<{ latencies: number[]; wallSeconds: number }> {
  const lm = (await LanguageModel.fromServer("stdlib-gpt2", { backend: url, apiKey: apiKeys[0]! })) as LanguageModel;
  const latencies: number[] = [];
  const until = performance.now() + seconds * 1000;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      const remote = { backend: url, apiKey: apiKeys[c]!, print: null, logs: null };
      for (let j = 0; j < perClient && performance.now() < until; j++) {
        const t = performance.now();
        await lm.trace(prompt(c, j), fn, remote);
        latencies.push(performance.now() - t);
      }
    }),
  );
  return { latencies, wallSeconds: (performance.now() - start) / 1000 };
}

/** Runs every level against one server (warmed up first); the jobs-per-pass figure is the level's own. */
async function levels(setup: LoadRow["setup"], batching: boolean, url: string, apiKeys: string[], o: Required<LoadOptions>, passesOf: () => Promise<{ passes: number; jobs: number }>): Promise<LoadRow[]> {
  await level(url, apiKeys, 4, 3, 30); // warm-up: isolates, JIT, connections
  const rows: LoadRow[] = [];
  for (const clients of o.clientCounts) {
    const before = await passesOf();
    const { latencies, wallSeconds } = await level(url, apiKeys, clients, o.jobsPerClient(clients), o.levelSeconds);
    const after = await passesOf();
    const passes = after.passes - before.passes;
    const row: LoadRow = {
      setup,
      batching,
      clients,
      jobs: latencies.length,
      jobsPerSecond: latencies.length / wallSeconds,
      p50Ms: quantile(latencies, 0.5),
      p99Ms: quantile(latencies, 0.99),
      jobsPerPass: passes > 0 ? (after.jobs - before.jobs) / passes : null,
    };
    o.log(formatRow(row));
    rows.push(row);
  }
  return rows;
}

async function distributed(batching: boolean, o: Required<LoadOptions>): Promise<LoadRow[]> {
  const redis = await testRedis();
  const prefix = uniquePrefix("load");
  const procs: ServeProcess[] = [];
  try {
    const store = new RedisKeyStore(redis, new RedisLayout(prefix));
    const apiKeys: string[] = [];
    for (let c = 0; c < Math.max(4, ...o.clientCounts); c++) apiKeys.push((await store.create(`load-${c}`)).key);
    const common = ["--redis", TEST_REDIS, "--prefix", prefix, "-m", "stdlib-gpt2", "--batch", batching ? "8" : "1"];
    const [api] = await Promise.all([startApiProcess([...common, "--max-jobs", "64"], procs), startWorkerProcess(common, procs)]);
    const model = new RedisLayout(prefix).model(JSON.parse(JSON.stringify(`LanguageModel:{"repo_id":"stdlib-gpt2","revision":null}`)));
    const passesOf = async () => {
      const [passes, jobs] = await redis.hmget(model, "passes", "jobs");
      return { passes: Number(passes ?? 0), jobs: Number(jobs ?? 0) };
    };
    return await levels("distributed", batching, api.url, apiKeys, o, passesOf);
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await clearPrefix(redis, prefix);
    await redis.quit();
  }
}

async function embedded(batching: boolean, o: Required<LoadOptions>): Promise<LoadRow[]> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-load-"));
  const server = await startServer({ port: 0, dataDir, models: ["stdlib-gpt2"], maxBatch: batching ? 8 : 1, maxActiveJobsPerKey: 64, log: () => undefined });
  try {
    const apiKeys = Array.from({ length: Math.max(4, ...o.clientCounts) }, (_, c) => server.keys.create(`load-${c}`).key);
    const passesOf = async () => {
      const text = server.metrics.render();
      const count = Number(/tsight_batch_jobs_count\{model="stdlib-gpt2"\} (\d+)/.exec(text)?.[1] ?? 0);
      const sum = Number(/tsight_batch_jobs_sum\{model="stdlib-gpt2"\} (\d+)/.exec(text)?.[1] ?? 0);
      return { passes: count, jobs: sum };
    };
    return await levels("embedded", batching, server.url, apiKeys, o, passesOf);
  } finally {
    await server.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

export async function loadTable(options: LoadOptions = {}): Promise<LoadRow[]> {
  const o: Required<LoadOptions> = {
    clientCounts: [1, 8, 32],
    jobsPerClient: (clients) => Math.max(4, Math.ceil(160 / clients)),
    levelSeconds: 12,
    setups: ["distributed", "embedded"],
    log: () => undefined,
    ...options,
  };
  const rows: LoadRow[] = [];
  for (const setup of o.setups) {
    for (const batching of [false, true]) rows.push(...(setup === "distributed" ? await distributed(batching, o) : await embedded(batching, o)));
  }
  return rows;
}

export const tableHeader = "setup        batching  clients   jobs   jobs/s   p50 ms   p99 ms   jobs/pass";

export function formatRow(r: LoadRow): string {
  return `${r.setup.padEnd(12)} ${(r.batching ? "on (8)" : "off").padEnd(9)} ${String(r.clients).padStart(7)} ${String(r.jobs).padStart(6)} ${r.jobsPerSecond.toFixed(1).padStart(8)} ${r.p50Ms.toFixed(1).padStart(8)} ${r.p99Ms.toFixed(1).padStart(8)} ${(r.jobsPerPass === null ? "-" : r.jobsPerPass.toFixed(2)).padStart(11)}`;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  console.log(`tsight load — small remote traces (5 tokens, stdlib-gpt2), loopback, ${os.cpus().length} cores, Node ${process.version}, Redis ${TEST_REDIS}\n`);
  console.log(tableHeader);
  const started = performance.now();
  await loadTable({ log: (line) => console.log(line) });
  console.log(`\n(${((performance.now() - started) / 1000).toFixed(0)} s; latency: submit to result through the client, events followed over SSE)`);
}
