/**
 * Attention patterns of one layer: one head large, with the prompt's tokens on both axes (rows attend to columns),
 * or every head as small multiples. One job per prompt and layer; choosing another head redraws what came back.
 */
import type { LanguageModel, Tensor } from "tsight/client";
import { headCount, layerCount, modelPaths } from "../recipes/architecture.js";
import { attentionRecipe, patternRows } from "../recipes/attention.js";
import { submit } from "../recipes/recipe.js";
import { sequential } from "../ui/colors.js";
import { fill, field, h, showToken } from "../ui/dom.js";
import { Heatmap, legend, matrixPicture } from "../ui/heatmap.js";
import { JobView, tokenLabels, type View, type ViewContext } from "./view.js";

const ALL = "all";

interface Shown {
  layer: number;
  heads: number;
  tokens: string[];
  /** rows[head][query][key]; undefined while the job runs (the maps are drawn empty, at their final size). */
  rows?: number[][][];
}

export function attentionView(ctx: ViewContext): View {
  const prompt = h("textarea", { name: "prompt", rows: 2, spellcheck: false }, "    for i in range(len(x)):");
  // Another layer chosen: the pattern shown is no longer the one chosen.
  const layer = h("select", { name: "layer", onchange: () => ((shown = undefined), view.reset()) });
  const head = h("select", { name: "head", onchange: () => draw() });
  let shown: Shown | undefined;
  let options: string | undefined;

  /** Fills the layer and head choices for the model (once per model). */
  const choices = (lm: LanguageModel) => {
    if (options === lm.name) return;
    options = lm.name;
    fill(layer, ...Array.from({ length: layerCount(lm) }, (_, l) => h("option", { value: String(l) }, `layer ${l}`)));
    fill(head, h("option", { value: ALL }, "all heads"), ...Array.from({ length: headCount(lm) }, (_, i) => h("option", { value: String(i) }, `head ${i}`)));
    view.restore(layer);
    view.restore(head);
  };

  const draw = () => {
    if (!shown) return;
    const labels = shown.tokens.map(showToken);
    const one = (i: number) => {
      const map = new Heatmap({ rows: labels, columns: labels, rowName: "query", columnName: "key", label: `layer ${shown!.layer} head ${i}: attention from each position (rows) to each earlier one (columns)` });
      shown!.rows?.[i]!.forEach((row, q) =>
        row.forEach((p, k) => {
          const future = k > q;
          map.set(q, k, {
            background: future ? "var(--masked)" : sequential.color(p),
            ink: sequential.ink(p),
            text: future ? "" : p.toFixed(2),
            label: `head ${i}, query ${q} (${JSON.stringify(shown!.tokens[q])}) to key ${k} (${JSON.stringify(shown!.tokens[k])}): ${p.toFixed(3)}`,
          });
        }),
      );
      return map;
    };
    const scale = legend(sequential.gradient(), ["0", "0.5", "1"], "attention probability (grey: a later position, which a query cannot see)");
    if (head.value !== ALL) {
      fill(view.result, h("h3", {}, `Layer ${shown.layer}, head ${head.value}`), one(Number(head.value)).element, scale);
      return;
    }
    const masked = getComputedStyle(document.documentElement).getPropertyValue("--masked").trim() || "#d9d9d9";
    const multiples = Array.from({ length: shown.heads }, (_, i) =>
      h(
        "button",
        // A change event, as if chosen in the select: it draws, and the choice is kept.
        { type: "button", class: "multiple", "aria-label": `head ${i}: show it large`, onclick: () => ((head.value = String(i)), head.dispatchEvent(new Event("change", { bubbles: true }))) },
        h("span", { class: "multiple-title" }, `head ${i}`),
        matrixPicture(labels.length, (q, k) => {
          const p = shown!.rows?.[i]?.[q]?.[k];
          return p === undefined ? undefined : k > q ? masked : sequential.color(p);
        }),
      ),
    );
    fill(view.result, h("h3", {}, `Layer ${shown.layer}, all ${shown.heads} heads (choose one to see it large)`), h("div", { class: "multiples" }, ...multiples), scale);
  };

  const view: JobView = new JobView(ctx, {
    id: "attention",
    title: "Attention",
    intro: "How much each position (row) reads from each earlier position (column), per head: the attention probabilities of one layer.",
    fields: [field("Prompt", prompt), h("div", { class: "field-row" }, field("Layer", layer), field("Head", head))],
    runLabel: "Show attention",
    code: "attention pattern",
    run: async () => {
      const lm = await view.model();
      choices(lm);
      const at = Number(layer.value || 0);
      const tokens = tokenLabels(lm, lm.tokenizer.encode(prompt.value));
      shown = { layer: at, heads: headCount(lm), tokens };
      draw();
      const recipe = attentionRecipe(prompt.value, modelPaths(lm), at, head.value === ALL ? 0 : Number(head.value));
      view.showCode([recipe]);
      const pattern = await view.status.run("attention", () => submit<Tensor>(lm, recipe, ctx.connection.remote()));
      if (!pattern) {
        // Empty maps laid out for a pattern that will not come: none is shown, nor redrawn on a head chosen after.
        shown = undefined;
        return view.result.replaceChildren();
      }
      shown.rows = patternRows(pattern);
      draw();
    },
  });
  return {
    id: "attention",
    title: "Attention",
    element: view.element,
    shown: () => void view.model().then(choices, () => undefined),
    reset: () => {
      shown = undefined;
      view.reset();
    },
  };
}
