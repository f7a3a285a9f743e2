/**
 * Attention patterns of one layer: one head large, with the prompt's tokens on both axes (rows attend to columns),
 * or every head as small multiples. One job per prompt and layer; choosing another head redraws what came back.
 * One head is a grid of cells (values written in, tooltips, keyboard) up to CELLS_UP_TO tokens, and a canvas with a
 * readout past that.
 */
import type { LanguageModel, Tensor } from "tsight/client";
import { headCount, layerCount, modelPaths } from "../recipes/architecture.js";
import { attentionRecipe, patternRows } from "../recipes/attention.js";
import { submit } from "../recipes/recipe.js";
import { sequential } from "../ui/colors.js";
import { fill, field, h, showToken } from "../ui/dom.js";
import { CanvasHeatmap, matrixPicture, rgbOf } from "../ui/canvas-heatmap.js";
import { Heatmap, legend } from "../ui/heatmap.js";
import { JobView, tokenLabels, type View, type ViewContext } from "./view.js";

const ALL = "all";
/** Past this many tokens one head is a canvas: an element per pair of tokens (n²) lays out too slowly. */
const CELLS_UP_TO = 40;
/** The scale at 256 levels, for the canvases: a colour computed per cell made four 512-token heads take 150 ms to paint. */
const SHADES = Array.from({ length: 256 }, (_, i) => sequential.rgb(i / 255));

interface Shown {
  layer: number;
  heads: number;
  tokens: string[];
  /** rows[head][query][key]; undefined while the job runs (the maps are drawn empty, at their final size). */
  rows?: Float32Array[][];
}

export function attentionView(ctx: ViewContext): View {
  const prompt = h("textarea", { name: "prompt", rows: 2, spellcheck: false }, "    for i in range(len(x)):");
  // Another layer chosen: the pattern shown is no longer the one chosen.
  const layer = h("select", { name: "layer", onchange: () => ((shown = undefined), view.reset()) });
  // Another head: drawn from what came back, and the code shown is that head's.
  const head = h("select", { name: "head", onchange: () => (draw(), codeFor && head.value !== ALL && view.showCode([codeFor(Number(head.value))])) });
  let shown: Shown | undefined;
  /** The recipe of the run shown, for a head (its code names the head it prints). */
  let codeFor: ((head: number) => ReturnType<typeof attentionRecipe>) | undefined;
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
    const { tokens, rows } = shown;
    const labels = tokens.map(showToken);
    const masked = rgbOf(getComputedStyle(document.documentElement).getPropertyValue("--masked").trim() || "#d9d9d9");
    const shade = (p: number) => SHADES[Math.round(Math.min(1, Math.max(0, p)) * 255)]!;
    const pair = (i: number, q: number, k: number) => `head ${i}, query ${q} (${JSON.stringify(tokens[q])}) to key ${k} (${JSON.stringify(tokens[k])})`;
    const one = (i: number) => {
      const label = `layer ${shown!.layer} head ${i}: attention from each position (rows) to each earlier one (columns)`;
      if (labels.length > CELLS_UP_TO) {
        return new CanvasHeatmap({
          rows: labels,
          columns: labels,
          rowName: "query",
          columnName: "key",
          label,
          color: (q, k) => {
            const p = rows?.[i]?.[q]?.[k];
            return p === undefined ? undefined : k > q ? masked : shade(p);
          },
          describe: (q, k) => {
            const p = rows?.[i]?.[q]?.[k];
            return `${pair(i, q, k)}: ${p === undefined ? "not computed yet" : k > q ? "not visible (a later position)" : p.toFixed(3)}`;
          },
        });
      }
      const map = new Heatmap({ rows: labels, columns: labels, rowName: "query", columnName: "key", label });
      rows?.[i]!.forEach((row, q) =>
        row.forEach((p, k) => {
          const future = k > q;
          map.set(q, k, {
            background: future ? "var(--masked)" : sequential.color(p),
            ink: sequential.ink(p),
            text: future ? "" : p.toFixed(2),
            label: `${pair(i, q, k)}: ${future ? "not visible (a later position)" : p.toFixed(3)}`,
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
    const multiples = Array.from({ length: shown.heads }, (_, i) =>
      h(
        "button",
        // A change event, as if chosen in the select: it draws, and the choice is kept.
        // The button goes with the pictures: focus moves to the head drawn large, not to the page's start.
        { type: "button", class: "multiple", "aria-label": `head ${i}: show it large`, onclick: () => ((head.value = String(i)), head.dispatchEvent(new Event("change", { bubbles: true })), view.result.querySelector<HTMLElement>("[tabindex]")?.focus()) },
        h("span", { class: "multiple-title" }, `head ${i}`),
        matrixPicture(labels.length, (q, k) => {
          const p = rows?.[i]?.[q]?.[k];
          return p === undefined ? undefined : k > q ? masked : shade(p);
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
      shown = undefined;
      const ids = lm.tokenizer.encode(prompt.value);
      if (!view.fits(lm, "attention", ids.length)) return;
      const at = Number(layer.value || 0);
      const tokens = tokenLabels(lm, ids);
      shown = { layer: at, heads: headCount(lm), tokens };
      draw();
      const text = prompt.value;
      codeFor = (h) => attentionRecipe(text, modelPaths(lm), at, h);
      const recipe = codeFor(head.value === ALL ? 0 : Number(head.value));
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
