/**
 * tsight's side of `npm run bench`, each row in a plain Node process of its own (see plain-node.ts for why not under
 * tsx); `inPlainNode` runs one of its rows and gives its result.
 */
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Model } from "../packages/tsight/dist/intervention/index.js";
import { generate } from "../packages/tsight/dist/models/index.js";
import { dropKernel, engineStats, kernel, threadCount } from "../packages/tsight/dist/tensor/engine.js";
import { setPrepack, Tensor } from "../packages/tsight/dist/tensor/index.js";
import { randomGpt2Small, randomGpt2SmallLm } from "./gpt2-small.js";
import { generationOverhead, interventionOverhead } from "./overhead.js";
import { lastJsonLine } from "./child-output.js";
import { plainNodeBundle } from "./plain-node.js";
import { median } from "./stats.js";

export const PREFILL = 128;
export const DECODE = 32;
/** The prompt of the long decode: what the KV cache costs per step shows. */
export const LONG_PROMPT = 512;

export interface Gpt2Row {
  prefillMs: number;
  unpackedMs: number;
  decodeTokS: number;
  decodeLongTokS: number;
  kernelsPerToken: number;
  readMidMs: number;
  /** The read's trace over the bare forward: the median of round-by-round ratios. */
  readMidRatio: number;
}

/** The rows, by name; each runs in a process of its own. */
const rows = {
  gpt2: (): Promise<Gpt2Row> => tsightGpt2(),
  overhead: () => interventionOverhead(),
  /** Decode with a steering edit on every step: stdlib-gpt2. */
  steerSmall: () => generationOverhead(),
  /** Decode reading transformer.h[2].mlp's output at every step: stdlib-gpt2. */
  readSmall: () => generationOverhead({ read: true }),
  /** The same on the GPT-2-small-sized model of the decode row, steering transformer.h[6]. */
  steerGpt2: () => {
    const prompt = new Tensor("int64", BigInt64Array.from({ length: 8 }, (_, i) => BigInt((i * 7919) % 50257)), [1, 8]);
    return generationOverhead({ lm: randomGpt2SmallLm(), layer: 6, prompt, rounds: 5, tokens: DECODE + 1 });
  },
  /** The same, knocking out head 0 of transformer.h[6]'s attention pattern (an edit inside a block) instead. */
  ablateGpt2: () => {
    const prompt = new Tensor("int64", BigInt64Array.from({ length: 8 }, (_, i) => BigInt((i * 7919) % 50257)), [1, 8]);
    return generationOverhead({ lm: randomGpt2SmallLm(), layer: 6, prompt, rounds: 5, tokens: DECODE + 1, ablate: true });
  },
  /** Attribution patching's backward on the GPT-2-small-sized model at PREFILL tokens (see hf_gpt2.py's grad_ms). */
  grad: () => tsightGrad(),
  /** GFLOP/s of tsight's engine at each [m, k, n]. */
  gemm: async (shapes: [number, number, number][]) => shapes.map(([m, k, n]) => tsightGflops(m, k, n, 3)),
};

type Rows = typeof rows;

/** Runs row `name` (with `args`, as JSON) in a plain Node process, and gives its result. */
export function inPlainNode<K extends keyof Rows>(name: K, ...args: Parameters<Rows[K]>): Awaited<ReturnType<Rows[K]>> {
  // A row takes seconds to a few minutes; one that hangs ends the bench with an error, not never.
  const out = execFileSync(process.execPath, [plainNodeBundle(import.meta.url), name, JSON.stringify(args)], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], timeout: 20 * 60_000 });
  return lastJsonLine(out);
}

async function tsightGpt2(): Promise<Gpt2Row> {
  const model = randomGpt2Small();
  const traced = new Model(model);
  const long = new Tensor("int64", BigInt64Array.from({ length: LONG_PROMPT }, (_, i) => BigInt((i * 7919) % 50257)), [1, LONG_PROMPT]);
  const ids = long.narrow(1, 0, PREFILL);
  const readMid = () => traced.trace([ids], async (m: any) => m.transformer.h[6].output);
  // Each timed in runs of three in a row, after one untimed (a loop over prompts does that): the first run of a
  // graph after another's is slower (see overhead.ts), which alternating one by one would put on every run. The
  // read's cost is the median of each round's ratio (its runs' median over the forward's, back to back): a ratio of
  // two medians taken over the whole row moved by 10% between runs of this row (x1.02 and x1.11), the drift of the
  // machine between them.
  const times: number[] = [];
  const reads: number[] = [];
  const readRatios: number[] = [];
  for (let round = 0; round < 4; round++) {
    const medians: number[] = [];
    for (const [run, into] of [[() => model.call(ids), times], [readMid, reads]] as const) {
      await run();
      const block: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t = performance.now();
        await run();
        block.push(performance.now() - t);
      }
      into.push(...block);
      medians.push(median(block));
    }
    readRatios.push(medians[1]! / medians[0]!);
  }
  // Decode: time the steps after the first (the first includes the prompt's pass); the median of three runs.
  let kernelsPerToken = 0;
  const decodeRate = async (prompt: Tensor): Promise<number> => {
    let firstAt = 0;
    let runsAtFirst = 0;
    await generate(model, prompt, undefined, {
      maxNewTokens: DECODE + 1,
      eosTokenId: null,
      onStep: (_t, step) => {
        if (step === 0) {
          firstAt = performance.now();
          runsAtFirst = engineStats().runs;
        }
      },
    });
    kernelsPerToken = (engineStats().runs - runsAtFirst) / DECODE;
    return DECODE / ((performance.now() - firstAt) / 1000);
  };
  const longRates: number[] = [];
  for (let i = 0; i < 3; i++) longRates.push(await decodeRate(long));
  const rates: number[] = [];
  for (let i = 0; i < 3; i++) rates.push(await decodeRate(ids.narrow(1, 0, 8)));
  // The same prefill with the weights not repacked for ONNX Runtime's matrix kernels (TSIGHT_PREPACK=0), on a model of
  // its own (a weight keeps the mode it was first used in).
  setPrepack(false);
  let unpackedMs: number;
  try {
    const unpacked = randomGpt2Small();
    for (let i = 0; i < 2; i++) await unpacked.call(ids);
    const ptimes: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      await unpacked.call(ids);
      ptimes.push(performance.now() - t);
    }
    unpackedMs = median(ptimes);
  } finally {
    setPrepack(null);
  }
  return { prefillMs: median(times), unpackedMs, decodeTokS: median(rates), decodeLongTokS: median(longRates), kernelsPerToken, readMidMs: median(reads), readMidRatio: median(readRatios) };
}

/**
 * A trace recording gradients that reads every block's output, then the gradient of a logit difference at the last
 * position with respect to each: the median ms of five, after one.
 */
async function tsightGrad(): Promise<{ gradMs: number }> {
  const lm = randomGpt2SmallLm();
  const ids = new Tensor("int64", BigInt64Array.from({ length: PREFILL }, (_, i) => BigInt((i * 7919) % 50257)), [1, PREFILL]);
  const run = () =>
    lm.trace(ids, async (m, tr) => {
      const acts: Tensor[] = [];
      for (const block of m.transformer.h) acts.push(await block.output);
      const logits = await m.lm_head.output;
      const grads: Tensor[] = [];
      await tr.backward(logits.index(0, -1, 5).sub(logits.index(0, -1, 7)), async (g) => {
        for (const a of [...acts].reverse()) grads.unshift(await g.grad(a));
      });
      if (grads.length !== acts.length) throw new Error("a gradient is missing");
    }, { grad: true });
  await run();
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    await run();
    times.push(performance.now() - t);
  }
  return { gradMs: median(times) };
}

/**
 * GFLOP/s of tsight's engine at m x k x n (one Gemm with the weight held and repacked, as its block and output-layer
 * graphs hold theirs): the best of `rounds` medians of runs of ~50 ms each.
 */
function tsightGflops(m: number, k: number, n: number, rounds: number): number {
  // The output layer is the tied embedding [n, k], used transposed, as GPT-2's lm_head is.
  const outLayer = n === 50257;
  const weight = new Float32Array(k * n);
  for (let i = 0; i < weight.length; i++) weight[i] = Math.sin(i) * 0.02;
  const bias = new Float32Array(n);
  const key = `bench:gemm:${m}x${k}x${n}`;
  const gemm = kernel(
    key,
    (g) => {
      const w = g.constant("float32", outLayer ? [n, k] : [k, n], weight);
      g.output(g.op("Gemm", [g.input("float32"), w, g.constant("float32", [n], bias)], { transB: outLayer ? 1 : 0 }), "float32");
    },
    { threads: threadCount(), holds: weight.byteLength + bias.byteLength },
  );
  const x = { dtype: "float32" as const, shape: [m, k], data: Float32Array.from({ length: m * k }, (_, i) => Math.cos(i)) };
  const flops = 2 * m * k * n;
  const reps = Math.max(5, Math.min(200, Math.floor(2.5e9 / flops)));
  gemm.run([x]);
  gemm.run([x]);
  let best = 0;
  for (let r = 0; r < rounds; r++) {
    const times: number[] = [];
    for (let i = 0; i < reps; i++) {
      const t = performance.now();
      gemm.run([x]);
      times.push(performance.now() - t);
    }
    best = Math.max(best, flops / (median(times) / 1000) / 1e9);
  }
  dropKernel(key);
  return best;
}

// The child: `node .bench-js/tsight-rows.mjs NAME ARGS_JSON` prints the row's result as its last line.
if (path.resolve(process.argv[1] ?? "") === fileURLToPath(import.meta.url)) {
  const [name, args] = process.argv.slice(2) as [keyof Rows, string];
  const run = rows[name] as (...a: unknown[]) => Promise<unknown>;
  console.log(JSON.stringify(await run(...(JSON.parse(args) as unknown[]))));
}
