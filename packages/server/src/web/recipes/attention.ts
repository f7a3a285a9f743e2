/**
 * Attention patterns: the attention probabilities of every head of one layer, [heads, query position, key position].
 *
 * The pattern is read as the attention module's second output (each architecture's attention returns [out,
 * probabilities]), the same values as its operation point `source.pattern`, which needs no architecture's tuple.
 */
import type { Tensor } from "tsight/client";
import type { ModelPaths } from "./architecture.js";
import type { TraceRecipe } from "./recipe.js";

const attentionIntervention = async (m: any, tr: any) => {
  const { layers, layer, attention: attn } = tr.vars;
  const [, pattern] = await m[layers][layer][attn].output;
  return pattern.index(0);
};

export function attentionRecipe(prompt: string, paths: ModelPaths, layer: number, head = 0): TraceRecipe {
  return {
    name: "pattern",
    call: "trace",
    input: prompt,
    fn: attentionIntervention,
    vars: { layers: paths.layers, attention: paths.attention, layer },
    after: `
// pattern is [heads, query position, key position]: how much each position reads from each earlier one.
const [heads, positions] = pattern.shape;
console.log(\`layer ${layer}: \${heads} heads over \${positions} positions\`);
console.log(pattern.index(${head}).tolist()); // head ${head}`,
  };
}

/**
 * The pattern as rows[head][query][key]: views of its values, not copies (as numbers, the copy of a 512-token pattern
 * held the page for 70 ms).
 */
export function patternRows(pattern: Tensor): Float32Array[][] {
  const [heads, queries, keys] = pattern.shape as [number, number, number];
  const flat = pattern.dtype === "float32" ? (pattern.data as Float32Array) : Float32Array.from(pattern.toArray());
  return Array.from({ length: heads }, (_, h) => Array.from({ length: queries }, (_, q) => flat.subarray((h * queries + q) * keys, (h * queries + q + 1) * keys)));
}
