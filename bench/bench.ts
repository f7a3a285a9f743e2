/**
 * `npm run bench`: tsight's speed as ratios against references measured in the same run (these machines are
 * noisy; absolute times mean little). tsight is measured as users run it, the built package (packages/tsight/dist,
 * which the script builds first) in plain Node: its rows run in child processes (bench/tsight-rows.ts), not under
 * the tsx this script runs in, whose loader made the GPT-2-small-sized prefill ~10% slower here.
 *
 *   - What researchers run instead: Hugging Face transformers on PyTorch 2 (CPU), set up by bench/python/setup.sh
 *     into the ignored .venv-bench from the machine's local package index (TSIGHT_BENCH_HF=0 skips it): the
 *     GPT-2-small-sized forward at 128 tokens, greedy decode (after an 8-token and a 512-token prompt), the
 *     gradients of every block's output at 128 tokens (attribution patching's backward), stdlib-gpt2 at 5 tokens,
 *     a forward hook's read against tsight's module read, as one table of speed ratios (tsight and Hugging Face
 *     measured twice, alternating, each side's best times kept; differences of times, the costs of
 *     reads and traces, averaged); the same model as one ONNX Runtime graph (bench/python/ort_gpt2.py: what one
 *     graph reaches on this CPU); and each engine's matrix products at the model's shapes (bench/gemm.ts).
 *   - GPT-2-small-sized model (12 layers, d=768, vocab 50257, random weights): prefill of 128 tokens and decode
 *     tokens/s, against PyTorch on the same machine when `python3 -c "import torch"` works (Debian's 1.13, a
 *     second reference).
 *   - Remote round trip, and load (jobs/s, p50/p99 latency) from 1, 8 and 32 clients with cross-user batching off
 *     and on (bench/load.ts; the distributed rows need Redis).
 *   - The largest difference from the Hugging Face fixtures per architecture (correctness, for the record).
 *   - Opt-in, since it takes minutes and ~7 GiB (TSIGHT_BENCH_LLAMA1B=1): the Llama-3.2-1B-shaped model in each
 *     weight dtype against Hugging Face float32/bfloat16 (bench/llama1b.ts), and what bfloat16/int8/int4 weights
 *     change in the predictions against float32 (bench/quant-errors.ts).
 */
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { threadCount } from "../packages/tsight/dist/tensor/index.js";
import { lastJsonLine } from "./child-output.js";
import { fixtureErrors } from "./fixture-errors.js";
import { gemmTable } from "./gemm.js";
import { median } from "./stats.js";
import type { Overhead } from "./overhead.js";
import { formatRow, loadTable, tableHeader, type LoadRow } from "./load.js";
import { llama1bTable } from "./llama1b.js";
import { quantErrorTable } from "./quant-errors.js";
import { remoteOverhead } from "./remote.js";
import { DECODE, inPlainNode, LONG_PROMPT, PREFILL, type Gpt2Row } from "./tsight-rows.js";

const here = path.dirname(fileURLToPath(import.meta.url));
function torchGpt2(threads: number): { torch: string; prefill_ms: number; decode_tok_s: number } | null {
  for (const python of ["python3", "/usr/bin/python3"]) {
    try {
      execFileSync(python, ["-c", "import torch"], { stdio: "ignore" });
    } catch {
      continue;
    }
    const out = execFileSync(python, [path.join(here, "torch_gpt2.py"), String(threads)], { encoding: "utf8", env: { ...process.env, PREFILL_TOKENS: String(PREFILL), DECODE_TOKENS: String(DECODE) } });
    return lastJsonLine(out);
  }
  return null;
}

const fmt = (x: number, digits = 1) => x.toFixed(digits);

interface HfReference {
  torch: string;
  transformers: string;
  prefill_ms: number;
  decode_tok_s: number;
  decode_long_tok_s: number;
  small5_ms: number;
  hook_read_us: number;
  grad_ms: number;
}

/** The Python of the references (.venv-bench, set up by bench/python/setup.sh), or why there is none. */
let python: string | undefined;
function benchPython(): string {
  if (process.env.TSIGHT_BENCH_HF === "0") throw new Error("skipped (TSIGHT_BENCH_HF=0)");
  python ??= execFileSync("bash", [path.join(here, "python", "setup.sh")], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim().split("\n").at(-1)!;
  return python;
}

/** The last JSON line a reference script prints, or why it gave none. */
function pythonReference<T>(script: string, threads: number): T | string {
  try {
    const out = execFileSync(benchPython(), [path.join(here, "python", script), String(threads)], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    return lastJsonLine<T>(out);
  } catch (e) {
    const message = (e as Error).message.split("\n")[0]!;
    return message.startsWith("skipped") ? message : `not available (${message})`;
  }
}

/** Hugging Face transformers on PyTorch 2 (bench/python/hf_gpt2.py in .venv-bench), or why not. */
const hfReference = (threads: number) => pythonReference<HfReference>("hf_gpt2.py", threads);

/** The same model exported as one graph and run by onnxruntime's Python package (bench/python/ort_gpt2.py). */
const ortOneGraph = (threads: number) => pythonReference<{ prefill_ms: number; onnxruntime: string }>("ort_gpt2.py", threads);

type Ours = Gpt2Row;

function bestOurs(runs: Ours[]): Ours {
  const min = (f: (r: Ours) => number) => Math.min(...runs.map(f));
  return { prefillMs: min((r) => r.prefillMs), unpackedMs: min((r) => r.unpackedMs), decodeTokS: Math.max(...runs.map((r) => r.decodeTokS)), decodeLongTokS: Math.max(...runs.map((r) => r.decodeLongTokS)), kernelsPerToken: runs[0]!.kernelsPerToken, readMidMs: min((r) => r.readMidMs), readMidRatio: median(runs.map((r) => r.readMidRatio)) };
}

/**
 * The fastest forward of the runs; the overheads (medians of differences within rounds) averaged over them, since the
 * smallest of several differences favours whichever run drifted the right way.
 */
function bestOverhead(runs: Overhead[]): Overhead {
  const best = <T extends object>(of: T[]): T => {
    const keys = Object.keys(of[0]!) as (keyof T)[];
    const mean = (k: keyof T) => of.reduce((n, r) => n + (r[k] as number), 0) / of.length;
    return Object.fromEntries(keys.map((k) => [k, k === "forwardUs" ? Math.min(...of.map((r) => r[k] as number)) : mean(k)])) as T;
  };
  return { ...best(runs.map(({ js: _, ...rest }) => rest)), js: best(runs.map((r) => r.js)) };
}

function bestHf(runs: (HfReference | string)[]): HfReference | string {
  const ok = runs.filter((r): r is HfReference => typeof r !== "string");
  if (ok.length === 0) return runs[0]!;
  const min = (f: (r: HfReference) => number) => Math.min(...ok.map(f));
  // hook_read_us is a difference of two medians: averaged (see bestOverhead).
  const hookRead = ok.reduce((n, r) => n + r.hook_read_us, 0) / ok.length;
  return { ...ok[0]!, grad_ms: min((r) => r.grad_ms), prefill_ms: min((r) => r.prefill_ms), decode_tok_s: Math.max(...ok.map((r) => r.decode_tok_s)), decode_long_tok_s: Math.max(...ok.map((r) => r.decode_long_tok_s)), small5_ms: min((r) => r.small5_ms), hook_read_us: hookRead };
}

async function main(): Promise<void> {
  console.log(`tsight bench — ${threadCount()} kernel threads (TSIGHT_THREADS), Node ${process.version}\n`);
  // tsight and Hugging Face alternate, twice each, and each side keeps its best figures: drift of the machine's
  // speed during the run then favours neither.
  const ourRuns: Ours[] = [];
  const gradRuns: number[] = [];
  const overheads: Overhead[] = [];
  const hfRuns: (HfReference | string)[] = [];
  const ortRuns: ReturnType<typeof ortOneGraph>[] = [];
  for (let round = 0; round < 2; round++) {
    ourRuns.push(inPlainNode("gpt2"));
    overheads.push(inPlainNode("overhead"));
    gradRuns.push(inPlainNode("grad").gradMs);
    hfRuns.push(hfReference(threadCount()));
    ortRuns.push(ortOneGraph(threadCount()));
  }
  const ortPrefill = Math.min(...ortRuns.map((r) => (typeof r === "string" ? Infinity : r.prefill_ms)));
  const ours = bestOurs(ourRuns);
  const o = bestOverhead(overheads);
  const hf = bestHf(hfRuns);
  const torchRuns = [1, 2].map(torchGpt2).filter((r): r is NonNullable<typeof r> => r !== null);
  console.log("GPT-2-small (12 x d768, vocab 50257, random weights), float32");
  console.log(`  tsight      prefill ${PREFILL} tokens ${fmt(ours.prefillMs)} ms   decode ${fmt(ours.decodeTokS)} tokens/s   (${fmt(ours.kernelsPerToken, 0)} kernel calls/token)`);
  if (torchRuns.length === 0) {
    console.log('  PyTorch     not available (python3 -c "import torch" failed; Debian: apt-get install python3-torch libopenblas0-pthread)');
  } else {
    torchRuns.forEach((r, i) => console.log(`  PyTorch ${r.torch} (${i + 1} thread${i ? "s" : ""})  prefill ${fmt(r.prefill_ms)} ms   decode ${fmt(r.decode_tok_s)} tokens/s`));
    const bestPrefill = Math.min(...torchRuns.map((r) => r.prefill_ms));
    const bestDecode = Math.max(...torchRuns.map((r) => r.decode_tok_s));
    console.log(`  ratio vs PyTorch's best: prefill speed x${fmt(bestPrefill / ours.prefillMs, 2)}   decode speed x${fmt(ours.decodeTokS / bestDecode, 2)}   (>1: tsight faster)`);
  }
  console.log("\nAgainst Hugging Face transformers on PyTorch 2 (what researchers run), one run (each side's best of two, alternating), speed ratios (>1: tsight faster)");
  if (typeof hf === "string") console.log(`  Hugging Face reference ${hf}`);
  else {
    console.log(`  torch ${hf.torch}, transformers ${hf.transformers}, ${threadCount()} threads`);
    const row = (what: string, ours: string, theirs: string, ratio: number) => console.log(`  ${what.padEnd(44)} ${ours.padStart(12)} ${theirs.padStart(12)}   x${fmt(ratio, 2)}`);
    console.log(`  ${"workload".padEnd(44)} ${"tsight".padStart(12)} ${"HF/PyTorch".padStart(12)}   ratio`);
    row(`GPT-2-small-sized forward, ${PREFILL} tokens`, `${fmt(ours.prefillMs)} ms`, `${fmt(hf.prefill_ms)} ms`, hf.prefill_ms / ours.prefillMs);
    row(`  the same, TSIGHT_PREPACK=0 (not repacked)`, `${fmt(ours.unpackedMs)} ms`, `${fmt(hf.prefill_ms)} ms`, hf.prefill_ms / ours.unpackedMs);
    if (Number.isFinite(ortPrefill)) row(`  ONNX Runtime (Python), the model as one graph`, `${fmt(ortPrefill)} ms`, `${fmt(hf.prefill_ms)} ms`, hf.prefill_ms / ortPrefill);
    row("greedy decode, GPT-2-small-sized", `${fmt(ours.decodeTokS)} tok/s`, `${fmt(hf.decode_tok_s)} tok/s`, ours.decodeTokS / hf.decode_tok_s);
    row(`  the same after a ${LONG_PROMPT}-token prompt`, `${fmt(ours.decodeLongTokS)} tok/s`, `${fmt(hf.decode_long_tok_s)} tok/s`, ours.decodeLongTokS / hf.decode_long_tok_s);
    row("stdlib-gpt2 forward, 5 tokens", `${fmt(o.forwardUs / 1000, 2)} ms`, `${fmt(hf.small5_ms, 2)} ms`, hf.small5_ms / (o.forwardUs / 1000));
    row("one module value read (HF: a forward hook)", `${fmt(o.oneReadUs)} µs`, `${fmt(hf.hook_read_us)} µs`, hf.hook_read_us / o.oneReadUs);
    row("  each further read in the trace", `${fmt(o.perReadUs)} µs`, `${fmt(hf.hook_read_us)} µs`, hf.hook_read_us / o.perReadUs);
    const gradMs = Math.min(...gradRuns);
    row(`gradients of every block's output, ${PREFILL} tokens`, `${fmt(gradMs)} ms`, `${fmt(hf.grad_ms)} ms`, hf.grad_ms / gradMs);
    console.log(`  a trace reading transformer.h[6]'s output at ${PREFILL} tokens: ${fmt(ours.readMidMs)} ms, x${fmt(ours.readMidRatio, 2)} the bare forward (median of round-by-round ratios)`);
    console.log(`  ${"an empty trace".padEnd(44)} ${`${fmt(o.emptyTraceUs, 0)} µs`.padStart(12)} ${"(nnsight ~245 µs)".padStart(12)}`);
  }
  const gemm = typeof hf === "string" ? hf : gemmTable(benchPython());
  console.log(`\nMatrix products at the GPT-2-small shapes, GFLOP/s (float32, ${threadCount()} threads; bench/gemm.ts, each side's best of two rounds, alternating)`);
  if (typeof gemm === "string") console.log(`  ${gemm}`);
  else {
    console.log(`  ${"M x K x N".padEnd(18)} ${"tsight".padStart(8)} ${"ORT (Python)".padStart(13)} ${"PyTorch".padStart(8)}   tsight/PyTorch`);
    for (const r of gemm) console.log(`  ${`${r.m} x ${r.k} x ${r.n}`.padEnd(18)} ${fmt(r.tsight).padStart(8)} ${fmt(r.ort).padStart(13)} ${fmt(r.torch).padStart(8)}   x${fmt(r.tsight / r.torch, 2)}`);
    console.log("  (1-row products time whole calls: ONNX Runtime's Python threads spin between calls, its default; tsight's stop at each run's end)");
  }
  console.log("\nIntervention overhead (stdlib-gpt2, 5 tokens; medians of interleaved rounds)");
  console.log(`  bare forward ${fmt(o.forwardUs, 0)} µs; an empty trace adds ${fmt(o.emptyTraceUs, 0)} µs (x${fmt((o.forwardUs + o.emptyTraceUs) / o.forwardUs, 2)} the forward)`);
  console.log(`  a trace reading one module value adds ${fmt(o.oneReadUs)} µs (its graph gives the value, handed out in order); each further read ${fmt(o.perReadUs)} µs, each replacement ${fmt(o.perReplaceUs)} µs more   (nnsight: ~300 µs empty trace, 30-80 µs per access)`);
  console.log(`  JavaScript alone (each run less ONNX Runtime's time in it): bare forward ${fmt(o.js.forwardUs, 0)} µs; an empty trace adds ${fmt(o.js.emptyTraceUs, 0)} µs, one read ${fmt(o.js.oneReadUs)}, each further read ${fmt(o.js.perReadUs)}`);
  console.log(`  one layer's attention pattern read as attn.output[1] adds ${fmt(o.weightsReadUs)} µs; as attn.source.pattern ${fmt(o.patternReadUs)} µs (both the fused kernel's weights)`);
  const g = inPlainNode("steerSmall");
  console.log(`  decode: ${fmt(g.plainTokS)} tokens/s plain, ${fmt(g.steeredTokS)} with a steering edit on every step (x${fmt(g.ratio, 2)}, median of round-by-round ratios)`);
  const reads = inPlainNode("readSmall");
  console.log(`  decode reading transformer.h[2].mlp's output at every step: ${fmt(reads.steeredTokS)} tokens/s (x${fmt(reads.ratio, 2)} of plain, median of round-by-round ratios)`);
  const big = inPlainNode("steerGpt2");
  console.log(`  GPT-2-small-sized decode (the decode row's model): ${fmt(big.plainTokS)} tokens/s plain, ${fmt(big.steeredTokS)} with a steering edit on transformer.h[6] every step (x${fmt(big.ratio, 2)}, median of round-by-round ratios)`);
  const ablated = inPlainNode("ablateGpt2");
  console.log(`  the same with head 0 of transformer.h[6]'s attention pattern knocked out every step: ${fmt(ablated.steeredTokS)} tokens/s (x${fmt(ablated.ratio, 2)} of plain)`);
  const r = await remoteOverhead();
  console.log(`\nRemote (server on loopback, stdlib-gpt2, 5 tokens; medians of interleaved rounds)`);
  console.log(`  trace in process ${fmt(r.localMs, 2)} ms; the same trace remote ${fmt(r.remoteMs, 2)} ms (+${fmt(r.remoteMs - r.localMs, 2)} ms round trip)`);
  console.log(`  ${r.clients} clients at once: ${fmt(r.jobsPerSecond)} jobs/s`);
  console.log("\nLoad with and without cross-user batching (bench/load.ts: 1 API + 1 worker process on Redis, and the embedded server)");
  let rows: LoadRow[];
  try {
    rows = await loadTable();
  } catch (e) {
    console.log(`  distributed rows skipped: ${(e as Error).message}`);
    rows = await loadTable({ setups: ["embedded"] });
  }
  console.log(`  ${tableHeader}`);
  for (const row of rows) console.log(`  ${formatRow(row)}`);
  const at = (setup: string, batching: boolean) => rows.find((x) => x.setup === setup && x.batching === batching && x.clients === 32)?.jobsPerSecond ?? NaN;
  console.log(`  batching at 32 clients: jobs/s x${fmt(at("distributed", true) / at("distributed", false), 2)} distributed, x${fmt(at("embedded", true) / at("embedded", false), 2)} embedded`);
  console.log("\nLargest difference from Hugging Face per fixture (all recorded module inputs/outputs and logits)");
  for (const [name, e] of await fixtureErrors()) console.log(`  ${name.padEnd(14)} ${e.worst.toExponential(2)}  at ${e.where}`);
  if (process.env.TSIGHT_BENCH_LLAMA1B === "1") {
    // Each row runs in a child process of its own, so this process's heap does not count in their memory.
    console.log("\nLlama-3.2-1B-shaped model per weight dtype, against Hugging Face (bench/llama1b.ts)");
    console.log(await llama1bTable());
    console.log("\nPacked weights against float32: next-token agreement and divergence (bench/quant-errors.ts)");
    console.log(await quantErrorTable());
  } else console.log("\n(TSIGHT_BENCH_LLAMA1B=1 adds the Llama-1B-shaped model per weight dtype and the packed weights' errors: minutes)");
}

await main();
