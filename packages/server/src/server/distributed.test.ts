/**
 * Distributed mode for real: two API processes and two worker processes (`tsight serve --redis ... --role api|worker`,
 * run from source), on loopback, against the machine's Redis under a prefix of this run's own. Jobs go through the
 * real client. Covered: batched jobs give the numbers of solo runs; a job's events resume on the other API process;
 * hybrid steps and cancels cross processes; a job survives the SIGKILL of its worker; queued jobs survive the
 * restart of an API process. Every process is
 * ended and every key deleted afterwards, also when a test fails.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startApiProcess, startWorkerProcess, type ServeProcess } from "../../../../test/server/processes.js";
import { clearPrefix, testRedis, uniquePrefix, TEST_REDIS } from "../../../../test/server/redis.js";
import { LanguageModel } from "../../../tsight/src/intervention/index.js";
import { HttpBackend } from "../../../tsight/src/client/http.js";
import { LanguageModel as RemoteLanguageModel } from "../../../tsight/src/client/language-model.js";
import { RemoteJob } from "../../../tsight/src/client/job.js";
import type { JobRequest, SequencedEvent } from "../../../tsight/src/protocol/wire.js";
import { Tensor } from "../../../tsight/src/tensor/index.js";
import { RedisLayout } from "./redis/connection.js";
import { RedisKeyStore } from "./redis/key-store.js";

const prefix = uniquePrefix("dist");
const common = ["--redis", TEST_REDIS, "--prefix", prefix, "-m", "stdlib-gpt2", "--lock", "2s", "--retries", "1", "--queue-wait", "30s", "--heartbeat", "500ms"];

const procs: ServeProcess[] = [];

// Webhooks to a receiver on this machine (the cancel test's).
const startApi = () => startApiProcess([...common, "--webhook-allow", "private"], procs);
const startWorker = () => startWorkerProcess(["--batch", "8", ...common], procs);

let redis: Redis;
let apiKey: string;
let api1: { proc: ServeProcess; url: string };
let api2: { proc: ServeProcess; url: string };
let workers: { proc: ServeProcess; pid: number }[];
let local: LanguageModel;

beforeAll(async () => {
  redis = await testRedis();
  apiKey = (await new RedisKeyStore(redis, new RedisLayout(prefix)).create("test")).key;
  [api1, api2, ...workers] = await Promise.all([startApi(), startApi(), startWorker(), startWorker()] as const);
  local = await LanguageModel.load("stdlib-gpt2");
}, 60_000);

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  if (redis) {
    await clearPrefix(redis, prefix);
    await redis.quit();
  }
}, 30_000);

const backend = (url: string, key = apiKey) => new HttpBackend({ url, apiKey: key, retry: { attempts: 3, baseDelayMs: 100, maxDelayMs: 500 } });
const remote = (url: string) => ({ backend: url, apiKey, print: null });
const GEN = { maxNewTokens: 400, eosTokenId: null };

async function status(url: string): Promise<{ workers: { id: string; pid: number; running: number }[]; models: { queued: number; workers: number; estimatedWaitSeconds: number | null }[]; mode: string }> {
  return (await backend(url).status()) as never;
}

async function events(url: string, id: string, options: { lastEventId?: number; until?: (e: SequencedEvent) => boolean; apiKey?: string } = {}): Promise<SequencedEvent[]> {
  const out: SequencedEvent[] = [];
  const controller = new AbortController();
  try {
    for await (const e of backend(url, options.apiKey).events(id, { lastEventId: options.lastEventId, signal: controller.signal })) {
      out.push(e);
      if (options.until?.(e)) break;
    }
  } finally {
    controller.abort();
  }
  return out;
}

const logs = (es: SequencedEvent[]) => es.flatMap((e) => (e.event.type === "log" ? [e.event.text] : []));

describe("a distributed deployment (2 API + 2 worker processes on Redis)", () => {
  it("batches waiting traces of equal length into one pass, with the numbers of solo runs", async () => {
    const lm = (await RemoteLanguageModel.fromServer("stdlib-gpt2", { backend: backend(api1.url) })) as RemoteLanguageModel;
    // Keep both workers busy, so the traces wait together.
    const blockers = await Promise.all([api1, api2].map((a) => lm.generate("def f(", GEN, async () => undefined, { ...remote(a.url), blocking: false })));
    await Promise.all(blockers.map((b) => events(api1.url, b.id, { until: (e) => e.event.type === "stream" })));
    const prompts = [
      [324, 615, 638, 636, 284],
      [531, 221, 324, 615, 638],
      [791, 1077, 199, 791, 1396],
      [387, 345, 309, 14, 8],
      [259, 360, 276, 294, 1270],
      [12, 883, 26, 579, 11],
    ];
    const fn = async (m: any, tr: any) => {
      m.transformer.h[1].output = (h: any) => h.mul(tr.vars.k);
      return await m.lm_head.output;
    };
    // Six users (a pass takes at most one job of each key).
    const keys = await Promise.all(prompts.map(async (_, i) => (await new RedisKeyStore(redis, new RedisLayout(prefix)).create(`user${i}`)).key));
    const jobs = await Promise.all(prompts.map((p, i) => lm.trace(p, fn, { backend: i % 2 ? api2.url : api1.url, apiKey: keys[i], print: null, vars: { k: 0.5 }, blocking: false })));
    const results = (await Promise.all(jobs.map((j) => j.result()))) as Tensor[];
    await Promise.all(blockers.map((b) => b.result()));
    const notes = await Promise.all(jobs.map(async (j, i) => logs(await events(api2.url, j.id, { apiKey: keys[i] })).filter((t) => t.includes("batched"))));
    expect(notes.filter((n) => n.length === 1).length, `batch notes: ${JSON.stringify(notes)}`).toBeGreaterThanOrEqual(4);
    for (let i = 0; i < prompts.length; i++) {
      const alone = (await local.trace(prompts[i]!, async (m: any) => {
        m.transformer.h[1].output = (h: any) => h.mul(0.5);
        return await m.lm_head.output;
      })) as Tensor;
      expect(results[i]!.shape).toEqual([1, 5, 4096]);
      expect(Array.from(results[i]!.toArray().flat(2) as number[]), `job ${i}`).toEqual(Array.from(alone.toArray().flat(2) as number[]));
    }
  });

  it("resumes a job's events on the other API process, with no gap and no repeat", async () => {
    const lm = (await RemoteLanguageModel.fromServer("stdlib-gpt2", { backend: backend(api1.url) })) as RemoteLanguageModel;
    const job = await lm.generate("class ", { maxNewTokens: 60, eosTokenId: null }, async () => undefined, { ...remote(api1.url), blocking: false });
    let streams = 0;
    const first = await events(api1.url, job.id, { until: (e) => e.event.type === "stream" && ++streams === 5 });
    const rest = await events(api2.url, job.id, { lastEventId: first.at(-1)!.seq });
    const all = [...first, ...rest];
    expect(all.map((e) => e.seq)).toEqual(all.map((_, i) => i + 1));
    expect(all.flatMap((e) => (e.event.type === "stream" ? [e.event.step] : []))).toEqual(Array.from({ length: 60 }, (_, i) => i));
    expect(all.at(-1)!.event).toEqual({ type: "done", status: "COMPLETED" });
    const s = await status(api2.url);
    expect(s.mode).toBe("distributed");
    expect(s.workers.map((w) => w.pid).sort()).toEqual(workers.map((w) => w.pid).sort());
    expect(s.models[0]).toMatchObject({ workers: 2 });
    expect(s.models[0]!.estimatedWaitSeconds).not.toBeNull();
  });

  it("passes hybrid-step answers and cancels through any API process", async () => {
    const lm = (await RemoteLanguageModel.fromServer("stdlib-gpt2", { backend: backend(api2.url) })) as RemoteLanguageModel;
    const out = await lm.trace(
      "def __init__(self",
      async (m, tr) => {
        const logits = await m.lm_head.output;
        const doubled = await tr.local(async (v: { n: number }) => v.n * 2, { n: 21 });
        return { shape: logits.shape, doubled };
      },
      remote(api2.url),
    );
    expect(out).toEqual({ shape: [1, 5, 4096], doubled: 42 });
    const job = await lm.generate("def f(", GEN, async () => undefined, { ...remote(api1.url), blocking: false });
    await events(api2.url, job.id, { until: (e) => e.event.type === "stream" });
    await backend(api2.url).cancel(job.id);
    await expect(job.result()).rejects.toMatchObject({ code: "CANCELLED" });
  });

  it("runs a job again on the other worker when its worker is SIGKILLed mid-job, with the right result", async () => {
    const lm = (await RemoteLanguageModel.fromServer("stdlib-gpt2", { backend: backend(api1.url) })) as RemoteLanguageModel;
    const job = await lm.generate("def __init__(self", GEN, async () => undefined, { ...remote(api1.url), blocking: false });
    await events(api1.url, job.id, { until: (e) => e.event.type === "stream" });
    const running = (await status(api2.url)).workers.find((w) => w.running > 0);
    expect(running, "a worker runs the job").toBeDefined();
    const victim = workers.find((w) => w.pid === running!.pid)!;
    victim.proc.child.kill("SIGKILL");
    await victim.proc.exited;
    const out = (await job.result()) as { generated: Tensor };
    const expected = await local.generate("def __init__(self", GEN as never);
    expect(out.generated.toArray()).toEqual(expected.generated.toArray());
    const text = logs(await events(api2.url, job.id));
    // Another worker took it up (the stalled-job check may or may not have noted the loss first).
    expect(text.filter((t) => /runs again on worker .* \(attempt 2\), after its worker was lost/.test(t)), JSON.stringify(text)).toHaveLength(1);
    workers = workers.filter((w) => w !== victim);
  });

  it("keeps queued jobs while no worker runs and an API process restarts; they run when a worker comes", async () => {
    await workers[0]!.proc.stop();
    const b = backend(api1.url);
    const lm = (await RemoteLanguageModel.fromServer("stdlib-gpt2", { backend: b })) as RemoteLanguageModel;
    const fn = async (m: any) => (await m.lm_head.output).index(0, -1).argmax();
    const jobs = await Promise.all([[1, 2, 3], [4, 5, 6], [7, 8]].map((p) => lm.trace(p, fn, { ...remote(api1.url), blocking: false })));
    expect((await status(api1.url)).models[0]!.queued).toBe(3);
    await api1.proc.stop("SIGKILL");
    api1 = await startApi();
    expect((await b.job(jobs[0]!.id).catch((e: Error) => e)) instanceof Error).toBe(true); // the old address is gone
    const fresh = backend(api1.url);
    for (const j of jobs) expect((await fresh.job(j.id)).status).toBe("QUEUED");
    workers.push(await startWorker());
    for (const [i, p] of [[1, 2, 3], [4, 5, 6], [7, 8]].entries()) {
      const value = (await RemoteJob.attach(jobs[i]!.id, fresh).result()) as Tensor;
      expect(value.toArray()).toEqual(((await local.trace(p, fn as never)) as Tensor).toArray());
    }
  });

  it("sends the webhook of a job cancelled while queued, and ends at once a job cancelled while its worker is lost", async () => {
    const bodies: string[] = [];
    const receiver = http.createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => (bodies.push(body), res.writeHead(204).end()));
    });
    await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
    try {
      for (const w of workers) await w.proc.stop();
      workers = [];
      const b = backend(api1.url);
      const hook = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/done`;
      const queued = await b.submit({ model: 'LanguageModel:{"repo_id":"stdlib-gpt2","revision":null}', kind: "trace", form: "invoke", source: "async (m) => 1", input: [1, 2, 3], webhook: hook } as JobRequest);
      await b.cancel(queued.id);
      expect((await b.job(queued.id)).status).toBe("CANCELLED");
      // The API process that cancelled it sends it (it stayed pending: only a worker's end sent one).
      await expect.poll(() => bodies.length, { timeout: 10_000 }).toBe(1);
      expect(JSON.parse(bodies[0]!)).toMatchObject({ id: queued.id, status: "CANCELLED" });

      // A worker lost mid-job, none left: the job waits in its queue; a cancel ends it now, not when a worker comes.
      workers.push(await startWorker());
      const lm = (await RemoteLanguageModel.fromServer("stdlib-gpt2", { backend: b })) as RemoteLanguageModel;
      const job = await lm.generate("def __init__(self", GEN, async () => undefined, { ...remote(api1.url), blocking: false });
      await events(api1.url, job.id, { until: (e) => e.event.type === "stream" });
      const victim = workers.pop()!;
      victim.proc.child.kill("SIGKILL");
      await victim.proc.exited;
      await events(api1.url, job.id, { until: (e) => e.event.type === "log" && /the worker running this job was lost/.test(e.event.text) });
      await b.cancel(job.id);
      expect((await b.job(job.id)).status).toBe("CANCELLED");
      await expect(job.result()).rejects.toMatchObject({ code: "CANCELLED" });
    } finally {
      await new Promise<void>((resolve) => receiver.close(() => resolve()));
    }
  }, 60_000);
});
