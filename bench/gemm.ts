/**
 * Matrix-product speed of each engine at the GPT-2-small shapes (`npm run bench`'s GEMM rows): whether the gap to
 * PyTorch is in the kernels or around them. tsight's side is its own engine (onnxruntime-node) running one Gemm
 * with the weight held and repacked, as its block and output-layer graphs hold theirs; the references are
 * PyTorch and onnxruntime's Python package (the same MLAS kernels), from bench/python/gemm.py.
 */
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { dropKernel, kernel, threadCount } from "../packages/tsight/dist/tensor/engine.js";
import { median } from "./stats.js";

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

/** GFLOP/s of tsight's engine at m x k x n: the best of `rounds` medians of runs of ~50 ms each. */
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

/** Both sides twice, alternating (Python, tsight, Python, tsight), each figure the best; why not, when Python fails. */
export function gemmTable(python: string): GemmRow[] | string {
  const ours = new Map<string, number>();
  const theirs = new Map<string, PythonRow>();
  try {
    for (let round = 0; round < 2; round++) {
      const out = execFileSync(python, [path.join(here, "python", "gemm.py"), String(threadCount())], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
      const rows = (JSON.parse(out.trim().split("\n").at(-1)!) as { shapes: PythonRow[] }).shapes;
      for (const row of rows) {
        const key = `${row.m}x${row.k}x${row.n}`;
        ours.set(key, Math.max(ours.get(key) ?? 0, tsightGflops(row.m, row.k, row.n, 3)));
        const seen = theirs.get(key);
        theirs.set(key, seen ? { ...row, torch_gflops: Math.max(seen.torch_gflops, row.torch_gflops), ort_gflops: Math.max(seen.ort_gflops, row.ort_gflops) } : row);
      }
    }
  } catch (e) {
    return `not available (${(e as Error).message.split("\n")[0]})`;
  }
  return [...theirs].map(([key, r]) => ({ m: r.m, k: r.k, n: r.n, tsight: ours.get(key)!, ort: r.ort_gflops, torch: r.torch_gflops }));
}
