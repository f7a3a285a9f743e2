/**
 * How far each packed weight dtype moves a model's next-token predictions from float32: per position, whether the
 * argmax agrees, KL(p_float32 || p_dtype), and the largest logit difference.
 *
 *   npx tsx bench/quant-errors.ts [model ...]     (default: stdlib-gpt2 stdlib-llama, and llama-1b when present)
 *
 * The embedded models read a fixed Python snippet (their training domain; at most 200 tokens of it); the
 * Llama-1B-shaped random model (bench/python/make_llama1b.py) reads 128 seeded pseudo-random token ids. Every
 * (model, dtype) loads in a child process of its own and hands its logits back through a temporary file, so one
 * model is in memory at a time and a 1B float32 model's memory goes back to the system before the next loads.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { LanguageModel } from "../packages/tsight/dist/intervention/index.js";
import { Generator, Tensor } from "../packages/tsight/dist/tensor/index.js";
import { answer, llama1bFolder, loadOptions, runNodeChild, weightsDType } from "./llama1b.js";

const thisFile = fileURLToPath(import.meta.url);
const dtypes = ["bfloat16", "int8", "int4"];
const MAX_TEXT_TOKENS = 200;
const RANDOM_TOKENS = 128;
const RANDOM_SEED = 1234;

/** Python source like the stdlib models' training text (written for this bench, not taken from that text). */
const snippet = `import os
from collections import defaultdict


class Cache:
    """A least-recently-used cache of files read from disk."""

    def __init__(self, root, capacity=128):
        self.root = os.path.abspath(root)
        self.capacity = capacity
        self.entries = {}
        self.hits = defaultdict(int)

    def read(self, name):
        path = os.path.join(self.root, name)
        if path in self.entries:
            self.hits[path] += 1
            return self.entries[path]
        with open(path, "rb") as f:
            data = f.read()
        if len(self.entries) >= self.capacity:
            oldest = min(self.entries, key=lambda p: self.hits[p])
            del self.entries[oldest]
        self.entries[path] = data
        return data
`;

/** A model to measure: its name for LanguageModel.load, and how its input ids are made. */
interface Subject {
  label: string;
  source: string;
  ids: (lm: LanguageModel) => number[];
}

const subjects: Record<string, Subject> = {
  "stdlib-gpt2": { label: "stdlib-gpt2", source: "stdlib-gpt2", ids: (lm) => lm.tokenizer.encode(snippet).slice(0, MAX_TEXT_TOKENS) },
  "stdlib-llama": { label: "stdlib-llama", source: "stdlib-llama", ids: (lm) => lm.tokenizer.encode(snippet).slice(0, MAX_TEXT_TOKENS) },
  "llama-1b": {
    label: "llama-1b-shaped",
    source: llama1bFolder,
    ids: (lm) => {
      const rng = new Generator(RANDOM_SEED);
      const vocab = Number(lm.config.vocab_size);
      return Array.from({ length: RANDOM_TOKENS }, () => rng.nextUint32() % vocab);
    },
  },
};

interface LogitsAnswer {
  positions: number;
  vocab: number;
  /** The dtype the weights ended up in (`lm.dtype`). */
  dtype: string;
}

/** The child: loads one model in one dtype, writes its logits over the input ([positions, vocab] float32) to `out`. */
async function writeLogits(name: string, dtype: string, out: string): Promise<LogitsAnswer> {
  const subject = subjects[name]!;
  const lm = await LanguageModel.load(subject.source, loadOptions(dtype));
  const ids = subject.ids(lm);
  const input = new Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
  const logits: Tensor = await lm.trace(input, async (m: any) => await m.lm_head.output);
  const [, positions, vocab] = logits.shape as [number, number, number];
  const data = logits.data as Float32Array;
  fs.writeFileSync(out, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return { positions, vocab, dtype: weightsDType(lm) };
}

export interface Agreement {
  /** Positions whose argmax is float32's, as a fraction. */
  top1: number;
  /** Mean over positions of KL(p_ref || p_got), in nats. */
  meanKl: number;
  maxLogitDiff: number;
}

/** Compares two [positions, vocab] logit arrays position by position, in float64. */
export function compareLogits(ref: Float32Array, got: Float32Array, positions: number, vocab: number): Agreement {
  let agree = 0;
  let kl = 0;
  let maxDiff = 0;
  for (let p = 0; p < positions; p++) {
    const a = ref.subarray(p * vocab, (p + 1) * vocab);
    const b = got.subarray(p * vocab, (p + 1) * vocab);
    if (argmax(a) === argmax(b)) agree++;
    const lseA = logSumExp(a);
    const lseB = logSumExp(b);
    for (let i = 0; i < vocab; i++) {
      const la = a[i]! - lseA;
      kl += Math.exp(la) * (la - (b[i]! - lseB));
      maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
    }
  }
  return { top1: agree / positions, meanKl: kl / positions, maxLogitDiff: maxDiff };
}

function argmax(xs: Float32Array): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
}

function logSumExp(xs: Float32Array): number {
  let max = -Infinity;
  for (const x of xs) max = Math.max(max, x);
  let sum = 0;
  for (const x of xs) sum += Math.exp(x - max);
  return max + Math.log(sum);
}

/** One (model, dtype)'s logits from a child process, or why there are none. */
function childLogits(name: string, dtype: string, dir: string): { logits: Float32Array; answer: LogitsAnswer } | string {
  const out = path.join(dir, `${name}-${dtype}.f32`);
  const r = runNodeChild<LogitsAnswer>(thisFile, ["--child", name, dtype, out]);
  if ("error" in r) return r.error;
  const bytes = fs.readFileSync(out);
  fs.rmSync(out);
  // A copy: a Buffer may start at an offset a Float32Array cannot view.
  return { logits: new Float32Array(new Uint8Array(bytes).buffer), answer: r.ok };
}

/** The markdown table for `models` (names of `subjects`), one model in memory at a time. */
export async function quantErrorTable(models?: readonly string[]): Promise<string> {
  const names = models ?? ["stdlib-gpt2", "stdlib-llama", ...(fs.existsSync(path.join(llama1bFolder, "config.json")) ? ["llama-1b"] : [])];
  for (const name of names) if (!subjects[name]) throw new Error(`unknown model "${name}"; choose from ${Object.keys(subjects).join(", ")}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-quant-errors-"));
  const lines = ["| model | dtype | top-1 agreement | mean KL (nats) | max \\|logit diff\\| |", "|---|---|---:|---:|---:|"];
  try {
    for (const name of names) {
      const label = subjects[name]!.label;
      process.stderr.write(`quant-errors: ${label} float32...\n`);
      const ref = childLogits(name, "float32", dir);
      if (typeof ref === "string") {
        lines.push(`| ${label} | float32 | not available: ${ref.replace(/\|/g, "\\|")} | | |`);
        continue;
      }
      for (const dtype of dtypes) {
        process.stderr.write(`quant-errors: ${label} ${dtype}...\n`);
        const got = childLogits(name, dtype, dir);
        if (typeof got === "string") {
          lines.push(`| ${label} | ${dtype} | not available: ${got.replace(/\|/g, "\\|")} | | |`);
          continue;
        }
        const { positions, vocab } = ref.answer;
        if (got.answer.positions !== positions || got.answer.vocab !== vocab) throw new Error(`${label} ${dtype}: logits [${got.answer.positions}, ${got.answer.vocab}], float32's [${positions}, ${vocab}]`);
        const e = compareLogits(ref.logits, got.logits, positions, vocab);
        const shown = got.answer.dtype === dtype ? dtype : `${dtype} (weights ${got.answer.dtype})`;
        lines.push(`| ${label} | ${shown} | ${(e.top1 * 100).toFixed(1)}% of ${positions} | ${e.meanKl.toExponential(2)} | ${e.maxLogitDiff.toExponential(2)} |`);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return lines.join("\n");
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args[0] === "--child") return answer(() => writeLogits(args[1]!, args[2]!, args[3]!));
  console.log(await quantErrorTable(args.length ? args : undefined));
}

if (path.resolve(process.argv[1] ?? "") === thisFile) await main();
