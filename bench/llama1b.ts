/**
 * The Llama-3.2-1B-shaped model (random bfloat16 weights, written by bench/python/make_llama1b.py) in each of
 * tsight's weight dtypes, against Hugging Face transformers in float32 and bfloat16: load time, resident memory,
 * the weights' bytes, prefill of 128 tokens and greedy decode speed.
 *
 *   npx tsx bench/llama1b.ts [dtype ...]      dtypes: float32 bfloat16 float16 int8 int4 (default: all but float16)
 *
 * Every row runs in a child process of its own, since memory is part of what is measured (a second model in the
 * same heap would count the first one's leftovers). Workloads match bench/python/hf_llama1b.py: prefill is the
 * median of PREFILL_RUNS forwards of ids (i * 7919) % vocab after one warmup; decode is 16 greedy steps after an
 * 8-token prompt (the prompt's own forward untimed), the median of DECODE_RUNS after a short warmup.
 *
 * Environment: PREFILL_RUNS (default 2), DECODE_RUNS (default 2), both passed to the Hugging Face script too;
 * TSIGHT_BENCH_HF=0 skips the Hugging Face rows (they also need .venv-bench, from bench/python/setup.sh);
 * TSIGHT_LLAMA1B the model folder (default <repo>/.bench-models/llama-1b); TSIGHT_BENCH_CHILD_TIMEOUT_S the limit
 * per row (default 1200); TSIGHT_THREADS the kernel threads (the Hugging Face rows get as many).
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { LanguageModel, type ModelLoadOptions } from "../packages/tsight/dist/intervention/index.js";
import { generate } from "../packages/tsight/dist/models/index.js";
import type { Module } from "../packages/tsight/dist/nn/index.js";
import { Tensor, threadCount } from "../packages/tsight/dist/tensor/index.js";
import { plainNodeBundle } from "./plain-node.js";

const thisFile = fileURLToPath(import.meta.url);
export const repoRoot = path.resolve(path.dirname(thisFile), "..");
export const llama1bFolder = process.env.TSIGHT_LLAMA1B ?? path.join(repoRoot, ".bench-models", "llama-1b");
const hfPython = path.join(repoRoot, ".venv-bench", "bin", "python");

const PREFILL = 128;
const PROMPT = 8;
const DECODE = 16;
const defaultDTypes = ["float32", "bfloat16", "int8", "int4"];

const MiB = 2 ** 20;

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function envCount(name: string, fallback: number): number {
  const n = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${name} must be a positive integer, got ${process.env[name]}`);
  return n;
}

/**
 * Load options for `dtype`. float32 is the default and goes without the option, so the float32 row also runs on an
 * engine that has no `dtype` option yet (where the other dtypes fail at load, as a row saying so).
 */
export function loadOptions(dtype: string): ModelLoadOptions {
  return (dtype === "float32" ? {} : { dtype }) as ModelLoadOptions;
}

/** The dtype a loaded model reports for its weights (`lm.dtype`), float32 where the engine has no such property. */
export function weightsDType(lm: LanguageModel): string {
  return String((lm as unknown as { dtype?: unknown }).dtype ?? "float32");
}

const elementBytes: Record<string, number> = { float32: 4, int32: 4, int64: 8, bool: 1 };

/**
 * Bytes of a model's parameters in the precision they are kept in: a packed parameter (`tensor.packed`, a
 * PackedWeight) counts its packed storage, any other its elements. A tensor or packing shared by two parameters
 * (tied embeddings) counts once.
 */
export function weightBytes(model: Module): number {
  const seen = new Set<object>();
  let bytes = 0;
  for (const t of model.parameters().values()) {
    const packed = (t as unknown as { packed?: object | null }).packed ?? null;
    const key = packed ?? t;
    if (seen.has(key)) continue;
    seen.add(key);
    bytes += packed ? packedBytes(packed) : t.numel() * (elementBytes[t.dtype] ?? 4);
  }
  return bytes;
}

/** A PackedWeight's `byteLength`; for a bare packing (its arrays: bits, or q/scales/zeros), their bytes. */
function packedBytes(packed: object): number {
  const own = (packed as { byteLength?: unknown }).byteLength;
  if (typeof own === "number") return own;
  return Object.values(packed).reduce<number>((sum, v) => sum + (ArrayBuffer.isView(v) ? v.byteLength : 0), 0);
}

/** Parameters stored in a folder's safetensors files (tied weights are stored once), from their headers alone. */
export function storedParameters(folder: string): number {
  let count = 0;
  for (const file of fs.readdirSync(folder).filter((f) => f.endsWith(".safetensors"))) {
    const fd = fs.openSync(path.join(folder, file), "r");
    try {
      const size = Buffer.alloc(8);
      fs.readSync(fd, size, 0, 8, 0);
      const header = Buffer.alloc(Number(size.readBigUInt64LE(0)));
      fs.readSync(fd, header, 0, header.length, 8);
      for (const [name, entry] of Object.entries(JSON.parse(header.toString("utf8")) as Record<string, { shape?: number[] }>)) {
        if (name !== "__metadata__") count += (entry.shape ?? []).reduce((a, b) => a * b, 1);
      }
    } finally {
      fs.closeSync(fd);
    }
  }
  return count;
}

// #region child processes

/** What a child prints as its last stdout line: its result, or why it could not produce one. */
export type ChildResult<T> = { ok: T } | { error: string };

/**
 * Runs a command whose last stdout line is JSON, within `TSIGHT_BENCH_CHILD_TIMEOUT_S`. Its stderr is replayed
 * once it ends, and its last line kept for the error when the child dies without an answer.
 */
export function runJsonChild<T>(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): ChildResult<T> {
  const timeoutS = envCount("TSIGHT_BENCH_CHILD_TIMEOUT_S", 1200);
  const r = spawnSync(command, args, { cwd: repoRoot, env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: timeoutS * 1000, maxBuffer: 64 * MiB });
  if (r.stderr) process.stderr.write(r.stderr);
  const last = (s: string | null) => (s ?? "").trim().split("\n").filter(Boolean).at(-1) ?? "";
  if (r.status === 0) {
    try {
      return { ok: JSON.parse(last(r.stdout)) as T };
    } catch {
      return { error: `no JSON answer (stdout ended: ${last(r.stdout).slice(0, 200) || "nothing"})` };
    }
  }
  const why = r.error ? r.error.message : r.signal ? `killed by ${r.signal}${r.signal === "SIGKILL" ? " (out of memory?)" : ""}` : `exit ${r.status}`;
  return { error: `${why}${last(r.stderr) ? `: ${last(r.stderr).slice(0, 300)}` : ""}` };
}

/** Runs this file's `--child <args>` entry (or another bench file's) in plain Node (see plain-node.ts), gc exposed. */
export function runNodeChild<T>(file: string, args: string[]): ChildResult<T> {
  const r = runJsonChild<ChildResult<T>>(process.execPath, ["--expose-gc", plainNodeBundle(file), ...args]);
  return "ok" in r ? r.ok : r;
}

/** Prints a child's answer as the one line its parent reads; an error becomes `{ error }`, not a crash. */
export async function answer<T>(work: () => Promise<T>): Promise<void> {
  let out: ChildResult<T>;
  try {
    out = { ok: await work() };
  } catch (e) {
    out = { error: (e instanceof Error ? `${e.name}: ${e.message}` : String(e)).split("\n")[0]!.slice(0, 400) };
  }
  process.stdout.write(`\n${JSON.stringify(out)}\n`);
}

// #endregion

/** One row of the table, in the units the Hugging Face script prints (MiB, ms, tokens/s). */
export interface SpeedRow {
  /** The dtype the weights ended up in (tsight: `lm.dtype`). */
  dtype: string;
  loadS: number;
  rssBaseMb: number;
  rssLoadMb: number;
  rssEndMb: number;
  peakRssMb: number;
  weightsBytes: number;
  firstForwardS: number | null;
  prefillMs: number;
  decodeTokS: number;
  loadavg: number;
}

/** The child's measurement of one dtype, in this process (which should hold nothing else). */
async function measureTsight(dtype: string): Promise<SpeedRow> {
  const gc = (globalThis as { gc?: () => void }).gc;
  const rssMb = () => {
    gc?.(); // without --expose-gc: resident memory as is, garbage included
    return process.memoryUsage().rss / MiB;
  };
  const peakMb = () => process.resourceUsage().maxRSS / 1024; // KiB on Linux
  const prefillRuns = envCount("PREFILL_RUNS", 2);
  const decodeRuns = envCount("DECODE_RUNS", 2);
  const loadavg = os.loadavg()[0]!;

  const rssBaseMb = rssMb();
  let t = performance.now();
  const lm = await LanguageModel.load(llama1bFolder, loadOptions(dtype));
  const loadS = (performance.now() - t) / 1000;
  const rssLoadMb = rssMb();
  const weightsBytes = weightBytes(lm.model);
  const model = lm.model;

  const vocab = Number(lm.config.vocab_size);
  const ids = new Tensor("int64", BigInt64Array.from({ length: PREFILL }, (_, i) => BigInt((i * 7919) % vocab)), [1, PREFILL]);
  t = performance.now();
  await model.call(ids); // warmup: fused graphs and packed kernels are built here
  const firstForwardS = (performance.now() - t) / 1000;
  const times: number[] = [];
  for (let i = 0; i < prefillRuns; i++) {
    t = performance.now();
    await model.call(ids);
    times.push(performance.now() - t);
  }

  // Decode: the time from the prompt's token (step 0) to the last of DECODE more.
  const decodeRate = async (steps: number): Promise<number> => {
    let firstAt = 0;
    const onStep = (_tokens: number[], step: number) => {
      if (step === 0) firstAt = performance.now();
    };
    await generate(model, ids.narrow(1, 0, PROMPT), undefined, { maxNewTokens: steps + 1, eosTokenId: null, onStep });
    return steps / ((performance.now() - firstAt) / 1000);
  };
  await decodeRate(2);
  const rates: number[] = [];
  for (let i = 0; i < decodeRuns; i++) rates.push(await decodeRate(DECODE));

  return { dtype: weightsDType(lm), loadS, rssBaseMb, rssLoadMb, rssEndMb: rssMb(), peakRssMb: peakMb(), weightsBytes, firstForwardS, prefillMs: median(times), decodeTokS: median(rates), loadavg };
}

interface HfAnswer {
  dtype: string;
  load_s: number;
  rss_base_mb: number;
  rss_load_mb: number;
  rss_end_mb: number;
  peak_rss_mb: number;
  prefill_ms: number;
  decode_tok_s: number;
  loadavg_1m: number;
}

/** bench/python/hf_llama1b.py in its own process; a string says why there is no row. */
function measureHf(dtype: "float32" | "bfloat16"): SpeedRow | string {
  if (process.env.TSIGHT_BENCH_HF === "0") return "skipped (TSIGHT_BENCH_HF=0)";
  if (!fs.existsSync(hfPython)) return "not available: no .venv-bench (bash bench/python/setup.sh makes it)";
  process.stderr.write(`llama1b: Hugging Face ${dtype}...\n`);
  const env = { ...process.env, PREFILL_RUNS: String(envCount("PREFILL_RUNS", 2)), DECODE_RUNS: String(envCount("DECODE_RUNS", 2)) };
  const r = runJsonChild<HfAnswer>(hfPython, [path.join(repoRoot, "bench", "python", "hf_llama1b.py"), dtype, String(threadCount()), llama1bFolder], env);
  if ("error" in r) return `not available: ${r.error}`;
  const h = r.ok;
  const weightsBytes = storedParameters(llama1bFolder) * (dtype === "float32" ? 4 : 2);
  return { dtype: h.dtype, loadS: h.load_s, rssBaseMb: h.rss_base_mb, rssLoadMb: h.rss_load_mb, rssEndMb: h.rss_end_mb, peakRssMb: h.peak_rss_mb, weightsBytes, firstForwardS: null, prefillMs: h.prefill_ms, decodeTokS: h.decode_tok_s, loadavg: h.loadavg_1m };
}

/**
 * The CPU and the vector extensions that decide who wins: bfloat16 and int8 matmuls are fast only with AVX-512
 * BF16/VNNI or AMX (on plain AVX2, PyTorch's bfloat16 is several times slower than its float32).
 */
export function cpuDescription(): string {
  const model = os.cpus()[0]?.model.trim() || "unknown CPU";
  let flags: string[] = [];
  try {
    const line = fs.readFileSync("/proc/cpuinfo", "utf8").split("\n").find((l) => l.startsWith("flags")) ?? "";
    const have = new Set(line.split(":")[1]?.trim().split(/\s+/) ?? []);
    flags = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8"].filter((f) => have.has(f));
  } catch {
    // not Linux: the model name alone
  }
  return `${model}, ${os.cpus().length} CPUs${flags.length ? ` (${flags.join(" ")})` : ""}`;
}

// #region table

const fmt = (x: number, digits = 1) => x.toFixed(digits);

function formatTable(rows: { label: string; row: SpeedRow | string }[]): string {
  const ref = rows.find((r) => r.label === "HF bfloat16")?.row;
  const hfBf16 = typeof ref === "object" ? ref : null;
  const head = ["run", "load s", "RSS before → after load MiB", "RSS end MiB", "peak RSS MiB", "weights MiB", "RSS after load / weights", "first forward s", `prefill ${PREFILL} ms`, "decode tok/s", "prefill speed vs HF bf16", "decode speed vs HF bf16"];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map((_, i) => (i ? "---:" : "---")).join("|")}|`];
  for (const { label, row } of rows) {
    if (typeof row === "string") {
      lines.push(`| ${label} | ${row.replace(/\|/g, "\\|")} |${" |".repeat(head.length - 2)}`);
      continue;
    }
    const weightsMb = row.weightsBytes / MiB;
    lines.push(
      `| ${[
        label + (label.endsWith(row.dtype) ? "" : ` (weights ${row.dtype})`),
        fmt(row.loadS, 2),
        `${fmt(row.rssBaseMb, 0)} → ${fmt(row.rssLoadMb, 0)}`,
        fmt(row.rssEndMb, 0),
        fmt(row.peakRssMb, 0),
        fmt(weightsMb, 0),
        fmt(row.rssLoadMb / weightsMb, 2),
        row.firstForwardS === null ? "—" : fmt(row.firstForwardS, 1),
        fmt(row.prefillMs, 0),
        fmt(row.decodeTokS, 2),
        hfBf16 ? `x${fmt(hfBf16.prefillMs / row.prefillMs, 2)}` : "—",
        hfBf16 ? `x${fmt(row.decodeTokS / hfBf16.decodeTokS, 2)}` : "—",
      ].join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

// #endregion

/**
 * Measures each tsight dtype and Hugging Face float32 and bfloat16, one child process each, one after another,
 * and returns the markdown table with a line saying how it was measured.
 */
export async function llama1bTable(dtypes: readonly string[] = defaultDTypes): Promise<string> {
  if (!fs.existsSync(path.join(llama1bFolder, "config.json"))) {
    return `Llama-1B-shaped model not found in ${llama1bFolder}: run .venv-bench/bin/python bench/python/make_llama1b.py`;
  }
  const rows: { label: string; row: SpeedRow | string }[] = [];
  for (const dtype of dtypes) {
    process.stderr.write(`llama1b: tsight ${dtype}...\n`);
    const r = runNodeChild<SpeedRow>(thisFile, ["--child", dtype]);
    rows.push({ label: `tsight ${dtype}`, row: "ok" in r ? r.ok : `not available: ${r.error}` });
  }
  for (const dtype of ["float32", "bfloat16"] as const) {
    rows.push({ label: `HF ${dtype}`, row: measureHf(dtype) });
  }
  const loads = rows.flatMap(({ row }) => (typeof row === "object" ? [fmt(row.loadavg, 1)] : []));
  const about =
    `Llama-3.2-1B-shaped model (16 x d2048, vocab 128256, random bfloat16 weights) on ${cpuDescription()}, ${threadCount()} threads, Node ${process.version}; ` +
    `prefill median of ${envCount("PREFILL_RUNS", 2)}, decode ${DECODE} steps after ${PROMPT} tokens, median of ${envCount("DECODE_RUNS", 2)}; ` +
    `1-minute load average at each row's start: ${loads.join(", ") || "—"}. ` +
    "Speed ratios >1: faster than HF bfloat16. HF bfloat16 keeps its weights memory-mapped until a forward reads them, so its RSS after load is small; compare RSS end.";
  return `${about}\n\n${formatTable(rows)}`;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args[0] === "--child") return answer(() => measureTsight(args[1] ?? "float32"));
  console.log(await llama1bTable(args.length ? args : defaultDTypes));
}

if (path.resolve(process.argv[1] ?? "") === thisFile) await main();
