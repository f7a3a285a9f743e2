/**
 * Activation patching as one remote session: the clean prompt's residual stream at one layer and position is
 * copied into the corrupted run, for every layer and position, and the logit difference between the two answers
 * is measured. Values stay on the server between the traces; each result is logged as it is made (the page
 * fills its heatmap from those events), and the whole grid is the session's value.
 */
import type { ModelPaths } from "./architecture.js";
import type { SessionRecipe } from "./recipe.js";

export interface PatchingValue {
  /** Logit difference (answer - distractor) of the clean and the corrupted prompt, unpatched. */
  clean: number;
  corrupted: number;
  /** grid[layer][position]: the corrupted run's logit difference with that one activation patched in. */
  grid: number[][];
}

/** What the session logs for each patched cell, after this word. */
export const PATCHED_LOG = "patched";

const patchingSession = async (s: any) => {
  const { clean, corrupted, answer, distractor, layers, head } = s.vars;
  const diff = (logits: any) => logits.index(0, -1, answer).item() - logits.index(0, -1, distractor).item();
  // Each trace gives back its logit difference, a number: the [1, tokens, vocab] logits stay in it.
  const source = await s.trace(clean, async (m: any) => {
    const acts = [];
    for (const layer of m[layers]) acts.push(await layer.output);
    return { acts, diff: diff(await m[head].output) };
  });
  const baseline = await s.trace(corrupted, async (m: any) => diff(await m[head].output));
  const grid = [];
  for (let layer = 0; layer < source.acts.length; layer++) {
    const row = [];
    for (let position = 0; position < source.acts[layer].shape[1]; position++) {
      row.push(
        await s.trace(corrupted, async (m: any) => {
          const hidden = await m[layers][layer].output;
          m[layers][layer].output = hidden.put([null, position], source.acts[layer].index(null, position));
          return diff(await m[head].output);
        }),
      );
      console.log("patched", { layer, position, diff: row[position] });
    }
    grid.push(row);
  }
  return { clean: source.diff, corrupted: baseline, grid };
};

export interface PatchingInput {
  clean: string;
  corrupted: string;
  /** Token ids of the clean answer and of the corrupted one. */
  answer: number;
  distractor: number;
}

export function patchingRecipe(input: PatchingInput, paths: ModelPaths): SessionRecipe {
  return {
    name: "patching",
    call: "session",
    fn: patchingSession,
    vars: { ...input, layers: paths.layers, head: paths.head },
    after: `
console.log(\`clean \${patching.clean.toFixed(2)}, corrupted \${patching.corrupted.toFixed(2)}\`);
patching.grid.forEach((row, layer) => console.log(\`layer \${layer}: \${row.map((d) => d.toFixed(2)).join("  ")}\`));`,
  };
}

/** A cell from a log line of the session, or undefined for other lines. */
export function patchedCell(text: string): { layer: number; position: number; diff: number } | undefined {
  if (!text.startsWith(`${PATCHED_LOG} `)) return undefined;
  try {
    const cell = JSON.parse(text.slice(PATCHED_LOG.length + 1));
    return typeof cell.layer === "number" && typeof cell.position === "number" && typeof cell.diff === "number" ? cell : undefined;
  } catch {
    return undefined;
  }
}
