/** The logit lens: layers × positions, each cell the top next-token guess at that layer, coloured by its probability. */
import { layerCount, modelPaths } from "../recipes/architecture.js";
import { lensCells, lensRecipe, type LensValue } from "../recipes/lens.js";
import { submit } from "../recipes/recipe.js";
import { sequential } from "../ui/colors.js";
import { fill, field, h, showToken } from "../ui/dom.js";
import { Heatmap, legend } from "../ui/heatmap.js";
import { JobView, tokenLabels, type View, type ViewContext } from "./view.js";

export function lensView(ctx: ViewContext): View {
  const prompt = h("textarea", { name: "prompt", rows: 2, spellcheck: false }, "    for i in range(");
  const view: JobView = new JobView(ctx, {
    id: "lens",
    title: "Logit lens",
    intro: "Each layer's residual stream read through the final norm and the output head: what the model would predict at every position if it stopped at that layer. Colour is the top token's probability; hover or focus a cell for the top 5.",
    fields: [field("Prompt", prompt)],
    runLabel: "Run the lens",
    code: "logit lens",
    run: async () => {
      const lm = await view.model();
      const ids = lm.tokenizer.encode(prompt.value);
      if (!view.fits(lm, "logit lens", ids.length)) return;
      const tokens = tokenLabels(lm, ids);
      const layers = layerCount(lm);
      const map = new Heatmap({ rows: Array.from({ length: layers }, (_, l) => String(l)), columns: tokens.map(showToken), rowName: "layer", columnName: "position", label: "logit lens: top token per layer and position" });
      fill(view.result, map.element, legend(sequential.gradient(), ["0", "0.5", "1"], "probability of the top token"));
      const recipe = lensRecipe(prompt.value, modelPaths(lm));
      view.showCode([recipe]);
      const value = await view.status.run("logit lens", () => submit<LensValue>(lm, recipe, ctx.connection.remote()));
      // The grid was laid out for this value: without it, an empty frame would stand under the error as a result.
      if (!value) return view.result.replaceChildren();
      lensCells(value).forEach((row, layer) =>
        row.forEach((cell, position) => {
          const top = cell.ids.map((id, i) => ({ token: tokenLabels(lm, [id])[0]!, p: cell.probs[i]! }));
          const best = top[0]!;
          map.set(layer, position, {
            background: sequential.color(best.p),
            ink: sequential.ink(best.p),
            text: showToken(best.token),
            label: `layer ${layer}, position ${position} (${JSON.stringify(tokens[position])}): ${JSON.stringify(best.token)} ${best.p.toFixed(3)}`,
            detail: [`layer ${layer}, after ${JSON.stringify(tokens[position])}`, ...top.map((t, i) => `${i + 1}. ${JSON.stringify(t.token)} ${t.p.toFixed(3)}`)],
          });
        }),
      );
    },
  });
  return { id: "lens", title: "Logit lens", element: view.element, reset: () => view.reset() };
}
