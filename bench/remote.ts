/**
 * Remote execution costs: the round trip of a small remote trace over the same trace in process (loopback,
 * medians of interleaved rounds), and jobs per second with several clients submitting at once.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { LanguageModel } from "../packages/tsight/dist/client/index.js";
import { startServer } from "../packages/server/src/server/index.js";
import type { GPT2LMHeadModel } from "../packages/tsight/dist/models/index.js";
import { Tensor } from "../packages/tsight/dist/tensor/index.js";
import { median } from "./stats.js";

export async function remoteOverhead(rounds = 40, clients = 8, jobsPerClient = 10): Promise<{ localMs: number; remoteMs: number; jobsPerSecond: number; clients: number }> {
  const server = await startServer({ port: 0, dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "tsight-bench-")), models: ["stdlib-gpt2"], log: () => undefined });
  try {
    const apiKey = server.keys.create("bench").key;
    const lm = (await LanguageModel.load("stdlib-gpt2")) as LanguageModel<GPT2LMHeadModel>;
    const ids = new Tensor("int64", BigInt64Array.of(324n, 615n, 638n, 636n, 284n), [1, 5]);
    const fn = async (m: any) => (await m.lm_head.output).index(0, -1).argmax();
    const remote = { backend: server.url, apiKey, print: null };
    const local: number[] = [],
      far: number[] = [];
    for (let i = 0; i < 5; i++) await lm.trace(ids, fn, remote);
    for (let i = 0; i < rounds; i++) {
      let t = performance.now();
      await lm.trace(ids, fn);
      local.push(performance.now() - t);
      t = performance.now();
      await lm.trace(ids, fn, remote);
      far.push(performance.now() - t);
    }
    const start = performance.now();
    await Promise.all(
      Array.from({ length: clients }, async () => {
        for (let j = 0; j < jobsPerClient; j++) await lm.trace(ids, fn, remote);
      }),
    );
    const seconds = (performance.now() - start) / 1000;
    return { localMs: median(local), remoteMs: median(far), jobsPerSecond: (clients * jobsPerClient) / seconds, clients };
  } finally {
    await server.close();
  }
}
