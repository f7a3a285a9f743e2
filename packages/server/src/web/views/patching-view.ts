/**
 * Activation patching: a clean and a corrupted prompt of the same length, the clean answer and the corrupted one;
 * for every layer and position, the corrupted run's logit difference with that one activation taken from the
 * clean run. One remote session does it all; cells fill as the session logs them.
 */
import type { LanguageModel } from "tsight/client";
import { layerCount, modelPaths } from "../recipes/architecture.js";
import { patchedCell, patchingRecipe, type PatchingValue } from "../recipes/patching.js";
import { submit } from "../recipes/recipe.js";
import { diverging, signed } from "../ui/colors.js";
import { fill, field, h, showToken } from "../ui/dom.js";
import { Heatmap, legend } from "../ui/heatmap.js";
import { JobView, tokenLabels, type View, type ViewContext } from "./view.js";

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
    intro: "Where does the model keep what tells the two prompts apart? Each cell is the corrupted prompt's logit difference (answer − distractor) after copying the clean prompt's residual stream in at one layer and position. Orange: towards the clean answer; blue: away from it.",
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
      let limit = 0;
      let done = 0;
      const paint = (layer: number, position: number, diff: number, value?: PatchingValue) => {
        const t = signed(diff, limit);
        const restored = value ? ` · ${(((diff - value.corrupted) / (value.clean - value.corrupted)) * 100).toFixed(0)}% of the way from corrupted to clean` : "";
        map.set(layer, position, {
          background: diverging.color(t),
          ink: diverging.ink(t),
          text: diff.toFixed(2),
          label: `layer ${layer}, position ${position} (${JSON.stringify(columns[position])}): ${diff.toFixed(3)}`,
          detail: [`patch layer ${layer} at position ${position}, ${JSON.stringify(columns[position])}`, `logit difference ${diff.toFixed(3)}${restored}`],
        });
      };
      const repaintAll = (value?: PatchingValue) => {
        fill(scaleLabels, legend(diverging.gradient(), [`−${limit.toFixed(2)}`, "0", `+${limit.toFixed(2)}`], "logit difference, answer − distractor"));
        values.forEach((row, l) => row.forEach((d, p) => d !== undefined && paint(l, p, d, value)));
      };

      repaintAll();
      const recipe = patchingRecipe(input, modelPaths(lm));
      view.showCode([recipe]);
      const total = layers * a.length;
      view.status.progress(0, total);
      const value = await view.status.run(
        "patching",
        () => submit<PatchingValue>(lm, recipe, ctx.connection.remote()),
        (event) => {
          const cell = event.type === "log" ? patchedCell(event.text) : undefined;
          if (!cell) return;
          values[cell.layer]![cell.position] = cell.diff;
          view.status.progress(++done, total);
          if (Math.abs(cell.diff) > limit) {
            limit = Math.abs(cell.diff);
            repaintAll();
          } else paint(cell.layer, cell.position, cell.diff);
        },
      );
      // Cells that came before a failure or a cancel are kept; a grid with none would read as a result.
      if (!value) {
        if (done === 0) view.result.replaceChildren();
        return;
      }
      // The session's value is the authority: it holds every cell, even ones whose log line was dropped.
      value.grid.forEach((row, l) => row.forEach((d, p) => (values[l]![p] = d)));
      limit = Math.max(Math.abs(value.clean), Math.abs(value.corrupted), ...value.grid.flat().map(Math.abs));
      view.status.progress(total, total);
      summary.textContent = `Unpatched: clean ${value.clean.toFixed(2)}, corrupted ${value.corrupted.toFixed(2)}.`;
      repaintAll(value);
    },
  });
  return { id: "patching", title: "Patching", element: view.element, reset: () => view.reset() };
}
