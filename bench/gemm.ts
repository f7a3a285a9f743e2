/**
 * Matrix-product speed of each engine at the GPT-2-small shapes (`npm run bench`'s GEMM rows): whether the gap to
 * PyTorch is in the kernels or around them. tsight's side is its own engine (onnxruntime-node) running one Gemm
 * with the weight held and repacked, as its block and output-layer graphs hold theirs (tsight-rows.ts, in plain
 * Node); the references are PyTorch and onnxruntime's Python package (the same MLAS kernels), from
 * bench/python/gemm.py.
 */
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { threadCount } from "../packages/tsight/dist/tensor/engine.js";
import { lastJsonLine } from "./child-output.js";
import { inPlainNode } from "./tsight-rows.js";

const here = path.dirname(fileURLToPath(import.meta.url));

export interface GemmRow {
  m: number;
  k: number;
  n: number;
  tsight: number;
  ort: number;
  torch: number;
}

interface PythonRow {
  m: number;
  k: number;
  n: number;
  torch_gflops: number;
  ort_gflops: number;
}

/** Both sides twice, alternating (Python, tsight, Python, tsight), each figure the best; why not, when Python fails. */
export function gemmTable(python: string): GemmRow[] | string {
  const ours = new Map<string, number>();
  const theirs = new Map<string, PythonRow>();
  try {
    for (let round = 0; round < 2; round++) {
      const out = execFileSync(python, [path.join(here, "python", "gemm.py"), String(threadCount())], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
      const rows = lastJsonLine<{ shapes: PythonRow[] }>(out).shapes;
      const gflops = inPlainNode("gemm", rows.map((r): [number, number, number] => [r.m, r.k, r.n]));
      for (const [i, row] of rows.entries()) {
        const key = `${row.m}x${row.k}x${row.n}`;
        ours.set(key, Math.max(ours.get(key) ?? 0, gflops[i]!));
        const seen = theirs.get(key);
        theirs.set(key, seen ? { ...row, torch_gflops: Math.max(seen.torch_gflops, row.torch_gflops), ort_gflops: Math.max(seen.ort_gflops, row.ort_gflops) } : row);
      }
    }
  } catch (e) {
    return `not available (${(e as Error).message.split("\n")[0]})`;
  }
  return [...theirs].map(([key, r]) => ({ m: r.m, k: r.k, n: r.n, tsight: ours.get(key)!, ort: r.ort_gflops, torch: r.torch_gflops }));
}
