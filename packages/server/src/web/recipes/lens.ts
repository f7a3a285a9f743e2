/**
 * The logit lens: every layer's residual stream read through the final norm and the head, as probabilities over
 * the vocabulary at every position; the top k tokens of each come back.
 */
import type { Tensor } from "tsight/client";
import type { ModelPaths } from "./architecture.js";
import type { TraceRecipe } from "./recipe.js";

/** Per layer: the top-k token ids and their probabilities at each position, both [positions, k]. */
export type LensValue = { ids: Tensor; probs: Tensor }[];

/** One cell of the lens: the top tokens at a layer and position, most likely first. */
export interface LensCell {
  ids: number[];
  probs: number[];
}

// Runs on the server: it may use only its parameters and tr.vars (the sandbox refuses anything else).
const lensIntervention = async (m: any, tr: any) => {
  const { layers, norm, head, k } = tr.vars;
  const top = [];
  for (const layer of m[layers]) {
    const hidden = await layer.output;
    const logits = await m[head].call(await m[norm].call(hidden));
    const best = logits.index(0).softmax(-1).topk(k);
    top.push({ ids: best.indices, probs: best.values });
  }
  return top;
};

export function lensRecipe(prompt: string, paths: ModelPaths, k = 5): TraceRecipe {
  return {
    name: "lens",
    call: "trace",
    input: prompt,
    fn: lensIntervention,
    vars: { layers: paths.layers, norm: paths.norm, head: paths.head, k },
    after: `
// Each layer's most likely next token and its probability, per position (the page's heatmap).
lens.forEach(({ ids, probs }, layer) => {
  const k = ids.shape[1]!, id = ids.toArray(), p = probs.toArray();
  const cells = Array.from({ length: ids.shape[0]! }, (_, pos) => \`\${JSON.stringify(lm.tokenizer.decode([id[pos * k]!]))} \${p[pos * k]!.toFixed(3)}\`);
  console.log(\`layer \${layer}: \${cells.join("  ")}\`);
});`,
  };
}

/** The lens as cells[layer][position]. */
export function lensCells(value: LensValue): LensCell[][] {
  return value.map(({ ids, probs }) => {
    const [positions, k] = ids.shape as [number, number];
    const id = ids.toArray();
    const p = probs.toArray();
    return Array.from({ length: positions }, (_, pos) => ({ ids: id.slice(pos * k, pos * k + k), probs: p.slice(pos * k, pos * k + k) }));
  });
}
