/**
 * Activation patching: a clean and a corrupted prompt of the same length, the clean answer and the corrupted one;
 * for every layer and position, the corrupted run's logit difference with that one activation taken from the
 * clean run. One remote session does it all; cells fill as the session logs them.
 */
import type { LanguageModel } from "tsight/client";
import { layerCount, modelPaths } from "../recipes/architecture.js";
import { baselines, patchedCell, patchingRecipe, type PatchingValue } from "../recipes/patching.js";
import { submit } from "../recipes/recipe.js";
import { diverging, signed } from "../ui/colors.js";
import { fill, field, h, showToken } from "../ui/dom.js";
import { Heatmap, legend } from "../ui/heatmap.js";
import { JobView, tokenLabels, type View, type ViewContext } from "./view.js";

/**
 * How the grid is split into jobs: each patches at most this many tokens' worth of runs (cells × prompt tokens),
 * and at least MIN_CELLS_PER_JOB cells (each job runs the clean and corrupted prompts once more).
 */
const TOKENS_PER_JOB = 16_384;
const MIN_CELLS_PER_JOB = 16;

/** The one token `text` is, or an error that says what it is instead. */
function singleToken(lm: LanguageModel, text: string, what: string): number {
  const ids = lm.tokenizer.encode(text, { addSpecialTokens: false });
  if (ids.length !== 1) throw new Error(`the ${what} must be one token; ${JSON.stringify(text)} is ${ids.length} (${ids.map((id) => JSON.stringify(lm.tokenizer.decode([id]))).join(" ") || "none"})`);
  return ids[0]!;
}

export function patchingView(ctx: ViewContext): View {
  const clean = h("textarea", { name: "clean", rows: 2, spellcheck: false }, "    for i in range(");
  const corrupted = h("textarea", { name: "corrupted", rows: 2, spellcheck: false }, "    for i in zip(");
  const answer = h("input", { name: "answer", value: "len", spellcheck: false, size: 8 });
  const distractor = h("input", { name: "distractor", value: "zip", spellcheck: false, size: 8 });

  const view: JobView = new JobView(ctx, {
    id: "patching",
    title: "Activation patching",
    intro: "Where does the model keep what tells the two prompts apart? Each cell is the corrupted prompt's logit difference (answer − distractor) after copying the clean prompt's residual stream in at one layer and position, coloured by its change from the unpatched corrupted run: orange, towards the clean answer; blue, away from it; light grey, no change. A long prompt's grid is asked for in parts, one job each.",
    fields: [
      h("div", { class: "field-row" }, field("Clean prompt", clean), field("Corrupted prompt", corrupted)),
      h("div", { class: "field-row" }, field("Answer (clean)", answer, "one token"), field("Distractor (corrupted)", distractor, "one token")),
    ],
    runLabel: "Patch every layer and position",
    code: "activation patching, one remote session",
    run: async () => {
      const lm = await view.model();
      const [a, b] = [lm.tokenizer.encode(clean.value), lm.tokenizer.encode(corrupted.value)];
      if (!view.fits(lm, "patching", Math.max(a.length, b.length))) return;
      if (a.length !== b.length) throw new Error(`the prompts must have the same number of tokens, to patch position by position: the clean one has ${a.length}, the corrupted one ${b.length}`);
      const input = { clean: clean.value, corrupted: corrupted.value, answer: singleToken(lm, answer.value, "answer"), distractor: singleToken(lm, distractor.value, "distractor") };
      const [cleanTokens, corruptedTokens] = [tokenLabels(lm, a), tokenLabels(lm, b)];
      const columns = cleanTokens.map((t, i) => (t === corruptedTokens[i] ? showToken(t) : `${showToken(t)}→${showToken(corruptedTokens[i]!)}`));
      const layers = layerCount(lm);
      const map = new Heatmap({ rows: Array.from({ length: layers }, (_, l) => String(l)), columns, rowName: "layer", columnName: "position", label: "activation patching: logit difference per patched layer and position" });
      const summary = h("p", { class: "summary" }, "Unpatched: …");
      const scaleLabels = h("div");
      fill(view.result, summary, map.element, scaleLabels);

      const values: number[][] = Array.from({ length: layers }, () => []);
      // Coloured by the change from the corrupted run (orange: towards the clean answer, blue: away, white: none),
      // once its logit difference is known: the first thing each session logs.
      let base: { clean: number; corrupted: number } | undefined;
      let limit = 0;
      let done = 0;
      const paint = (layer: number, position: number, diff: number) => {
        const change = base ? diff - base.corrupted : 0;
        const t = signed(change, limit);
        const restored = base && base.clean !== base.corrupted ? ` · ${((change / (base.clean - base.corrupted)) * 100).toFixed(0)}% of the way from corrupted to clean` : "";
        map.set(layer, position, {
          background: diverging.color(t),
          ink: diverging.ink(t),
          text: diff.toFixed(2),
          label: `layer ${layer}, position ${position} (${JSON.stringify(columns[position])}): ${diff.toFixed(3)}`,
          detail: [`patch layer ${layer} at position ${position}, ${JSON.stringify(columns[position])}`, `logit difference ${diff.toFixed(3)}${base ? `, ${change >= 0 ? "+" : "−"}${Math.abs(change).toFixed(3)} from the corrupted run` : ""}${restored}`],
        });
      };
      const repaintAll = () => {
        const middle = base ? `${base.corrupted.toFixed(2)} (corrupted)` : "0";
        const side = (sign: number) => (base ? (base.corrupted + sign * limit).toFixed(2) : `${sign < 0 ? "−" : "+"}${limit.toFixed(2)}`);
        fill(scaleLabels, legend(diverging.gradient(), [side(-1), middle, side(1)], "logit difference, answer − distractor; the colour is its change from the corrupted run"));
        values.forEach((row, l) => row.forEach((d, p) => d !== undefined && paint(l, p, d)));
      };
      const noteBaselines = (b: { clean: number; corrupted: number }) => {
        if (base) return;
        base = b;
        limit = Math.max(limit, Math.abs(b.clean - b.corrupted));
        summary.textContent = `Unpatched: clean ${b.clean.toFixed(2)}, corrupted ${b.corrupted.toFixed(2)}.`;
        repaintAll();
      };
      const noteCell = (layer: number, position: number, diff: number) => {
        if (values[layer]![position] === undefined) view.status.progress(++done, total);
        values[layer]![position] = diff;
        const change = Math.abs(diff - (base?.corrupted ?? 0));
        if (change > limit) {
          limit = change;
          repaintAll();
        } else paint(layer, position, diff);
      };

      repaintAll();
      // The code is the whole grid as one session (run from Node, no job time limit); the page asks for it in parts,
      // each one job: a 208-token prompt's 832 patched runs as one job ran past the server's 60 s limit.
      view.showCode([patchingRecipe(input, modelPaths(lm))]);
      const total = layers * a.length;
      const perJob = Math.max(MIN_CELLS_PER_JOB, Math.floor(TOKENS_PER_JOB / a.length));
      view.status.progress(0, total);
      for (let from = 0; from < total; from += perJob) {
        const to = Math.min(total, from + perJob);
        const value = await view.status.run(
          "patching",
          () => submit<PatchingValue>(lm, patchingRecipe(input, modelPaths(lm), total > perJob ? { from, to } : undefined), ctx.connection.remote()),
          (event) => {
            if (event.type !== "log") return;
            const b = baselines(event.text);
            if (b) return noteBaselines(b);
            const cell = patchedCell(event.text);
            if (cell) noteCell(cell.layer, cell.position, cell.diff);
          },
        );
        // Cells that came before a failure or a cancel are kept, with the baselines; a grid with none would read as
        // a result.
        if (!value) {
          if (done === 0 && !base) view.result.replaceChildren();
          return;
        }
        // The session's value is the authority: it holds every cell of its part, even ones whose log line was dropped.
        noteBaselines(value);
        value.grid.forEach((row, l) => row.forEach((d, p) => d !== null && noteCell(l, p, d)));
      }
      view.status.progress(total, total);
    },
  });
  return { id: "patching", title: "Patching", element: view.element, reset: () => view.reset() };
}
