/**
 * What one more output of an ONNX Runtime graph costs through onnxruntime-node: the floor under a module read
 * that a fused graph gives (every value a trace reads there is one more output). A chain of 40 Adds, run on one
 * thread with 1, 5 and 20 outputs, at the sizes of stdlib-gpt2's values (5 tokens x 256) and GPT-2-small's (5 x 2304).
 * `bench/python/graph_outputs.py` runs the same graphs in Python's onnxruntime for comparison.
 *
 *   npx tsx bench/graph-outputs.ts
 */
import { Kernel } from "../packages/tsight/dist/tensor/engine.js";
import { GraphBuilder } from "../packages/tsight/dist/tensor/onnx.js";
import { median } from "./stats.js";

function chain(outputs: number): Kernel {
  const g = new GraphBuilder();
  let x = g.input("float32");
  const extra: string[] = [];
  for (let i = 0; i < 40; i++) {
    x = g.op("Add", [x, x]);
    if (i % 2 === 0 && extra.length < outputs - 1) extra.push(x);
  }
  for (const o of extra) g.output(o, "float32");
  g.output(x, "float32");
  return new Kernel(`outputs${outputs}`, g.build(), { threads: 1 });
}

for (const size of [5 * 256, 5 * 2304]) {
  const input = [{ dtype: "float32" as const, shape: [size], data: new Float32Array(size) }];
  const kernels = [1, 5, 20].map(chain);
  for (const k of kernels) for (let i = 0; i < 300; i++) k.run(input);
  // Rounds alternate the three graphs, so the machine's drift hits each alike.
  const times = kernels.map(() => [] as number[]);
  for (let round = 0; round < 40; round++) {
    kernels.forEach((k, i) => {
      const t = performance.now();
      for (let n = 0; n < 100; n++) k.run(input);
      times[i]!.push(((performance.now() - t) / 100) * 1000);
    });
  }
  const [one, five, twenty] = times.map(median) as [number, number, number];
  console.log(`${((size * 4) / 1024).toFixed(0).padStart(3)} KB values: 1 output ${one.toFixed(1)} µs, 5 outputs ${five.toFixed(1)} µs, 20 outputs ${twenty.toFixed(1)} µs: ${((twenty - one) / 19).toFixed(1)} µs an output`);
}
