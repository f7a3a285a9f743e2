/**
 * Activation patching as remote sessions: the clean prompt's residual stream at one layer and position is copied
 * into the corrupted run, for every layer and position, and the logit difference between the two answers is
 * measured. Values stay on the server between the traces; the unpatched runs' differences and each cell are logged
 * as they are made (the page fills its heatmap from those events), and the cells are the session's value. A long
 * prompt's grid is several sessions, each a part of it.
 */
import type { ModelPaths } from "./architecture.js";
import type { SessionRecipe } from "./recipe.js";

export interface PatchingValue {
  /** Logit difference (answer - distractor) of the clean and the corrupted prompt, unpatched. */
  clean: number;
  corrupted: number;
  /** grid[layer][position]: the corrupted run's logit difference with that one activation patched in (null: a cell not asked for). */
  grid: (number | null)[][];
}

/** What the session logs for each patched cell, after this word. */
export const PATCHED_LOG = "patched";
/** What the session logs for the two unpatched runs, first, after this word. */
export const BASELINE_LOG = "baseline";

const patchingSession = async (s: any) => {
  const { clean, corrupted, answer, distractor, layers, head, from, to } = s.vars;
  const diff = (logits: any) => logits.index(0, -1, answer).item() - logits.index(0, -1, distractor).item();
  // Each trace gives back its logit difference, a number: the [1, tokens, vocab] logits stay in it.
  const source = await s.trace(clean, async (m: any) => {
    const acts = [];
    for (const layer of m[layers]) acts.push(await layer.output);
    return { acts, diff: diff(await m[head].output) };
  });
  const baseline = await s.trace(corrupted, async (m: any) => diff(await m[head].output));
  console.log("baseline", { clean: source.diff, corrupted: baseline });
  // The cells from `from` to `to` (layer by layer, position by position), all of them when not given.
  const width = source.acts[0].shape[1];
  const last = Math.min(to ?? Infinity, source.acts.length * width);
  const grid = source.acts.map(() => new Array(width).fill(null));
  for (let cell = from ?? 0; cell < last; cell++) {
    const [layer, position] = [Math.floor(cell / width), cell % width];
    const patched = await s.trace(corrupted, async (m: any) => {
      const hidden = await m[layers][layer].output;
      m[layers][layer].output = hidden.put([null, position], source.acts[layer].index(null, position));
      return diff(await m[head].output);
    });
    grid[layer][position] = patched;
    console.log("patched", { layer, position, diff: patched });
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

/**
 * The session, for the cells from `from` to `to` (counted layer by layer, position by position; all when not
 * given): a long prompt's grid is asked for in parts, each one job within the server's time limit.
 */
export function patchingRecipe(input: PatchingInput, paths: ModelPaths, cells?: { from: number; to: number }): SessionRecipe {
  return {
    name: "patching",
    call: "session",
    fn: patchingSession,
    vars: { ...input, layers: paths.layers, head: paths.head, ...cells },
    after: `
console.log(\`clean \${patching.clean.toFixed(2)}, corrupted \${patching.corrupted.toFixed(2)}\`);
patching.grid.forEach((row, layer) => console.log(\`layer \${layer}: \${row.map((d) => d.toFixed(2)).join("  ")}\`));`,
  };
}

/** The unpatched runs' logit differences from a log line of the session, or undefined for other lines. */
export function baselines(text: string): { clean: number; corrupted: number } | undefined {
  if (!text.startsWith(`${BASELINE_LOG} `)) return undefined;
  try {
    const b = JSON.parse(text.slice(BASELINE_LOG.length + 1));
    return typeof b.clean === "number" && typeof b.corrupted === "number" ? b : undefined;
  } catch {
    return undefined;
  }
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
