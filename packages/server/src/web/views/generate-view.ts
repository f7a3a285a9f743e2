/**
 * Generation: a prompt, settings, the tokens as they stream in; optionally steered by a direction added to one
 * layer's output at every step. The direction comes from a SteeringSource (today: the difference of two prompts'
 * activations); the generation job gets it as a tensor in its vars.
 */
import type { LanguageModel, Tensor } from "tsight/client";
import { layerCount, modelPaths } from "../recipes/architecture.js";
import { submit, type GenerateSettings, type Generation, type Recipe } from "../recipes/recipe.js";
import { generateRecipe, promptDifference, type Steering } from "../recipes/steering.js";
import { fill, field, h } from "../ui/dom.js";
import { JobView, type View, type ViewContext } from "./view.js";

/** A number from an input, or undefined when it is empty. */
function optionalNumber(input: HTMLInputElement, what: string): number | undefined {
  if (input.value.trim() === "") return undefined;
  const n = Number(input.value);
  if (!Number.isFinite(n)) throw new Error(`${what} must be a number, not ${JSON.stringify(input.value)}`);
  return n;
}

export function generateView(ctx: ViewContext): View {
  const prompt = h("textarea", { name: "prompt", rows: 2, spellcheck: false }, "    for i in range(");
  const maxNewTokens = h("input", { name: "max-new-tokens", type: "number", min: 1, max: 4096, value: "10" });
  const temperature = h("input", { name: "temperature", type: "number", min: 0, step: 0.1, placeholder: "greedy" });
  const topP = h("input", { name: "top-p", type: "number", min: 0, max: 1, step: 0.05, placeholder: "1" });
  const seed = h("input", { name: "seed", type: "number", step: 1, placeholder: "none" });
  const steer = h("input", { name: "steer", type: "checkbox" });
  const layer = h("select", { name: "steer-layer" });
  const toward = h("input", { name: "toward", value: "    for x in zip(", spellcheck: false });
  const away = h("input", { name: "away", value: "    for x in range(", spellcheck: false });
  const scale = h("input", { name: "scale", type: "number", step: 0.5, value: "2" });
  let layersFor: string | undefined;

  const choices = (lm: LanguageModel) => {
    if (layersFor === lm.name) return;
    layersFor = lm.name;
    fill(layer, ...Array.from({ length: layerCount(lm) }, (_, l) => h("option", { value: String(l) }, `layer ${l}`)));
    layer.value = String(Math.min(2, layerCount(lm) - 1));
    view.restore(layer);
  };

  const steering = h(
    "fieldset",
    { class: "steering" },
    h("legend", {}, h("label", { class: "inline" }, steer, " Steer with a direction")),
    h("p", { class: "field-hint" }, "The direction is the layer's output at the last token of the first prompt minus the same for the second; scale times it is added at every step. (An SAE feature will be another source of directions.)"),
    h("div", { class: "field-row" }, field("Layer", layer), field("Scale", scale)),
    h("div", { class: "field-row" }, field("Toward", toward), field("Away from", away)),
  );

  const output = h("pre", { class: "generation", "aria-label": "generated text" });
  /** Whether the box shows the end of the text as it grows: until the reader scrolls up from the end. */
  let following = true;
  /** Makes `change` to the text, then shows its end if the box was showing the end before. */
  const follow = (change: () => void) => {
    // Measured only while on screen: in a hidden tab the box measures 0.
    if (output.clientHeight > 0) following = output.scrollHeight - output.scrollTop - output.clientHeight < 4;
    change();
    if (following) output.scrollTop = output.scrollHeight;
  };
  const view: JobView = new JobView(ctx, {
    id: "generate",
    title: "Generate",
    intro: "Continue a prompt on the server; tokens appear as they are made.",
    fields: [field("Prompt", prompt), h("div", { class: "field-row" }, field("New tokens", maxNewTokens), field("Temperature", temperature, "empty: greedy"), field("Top-p", topP, "with a temperature"), field("Seed", seed, "with a temperature")), steering],
    runLabel: "Generate",
    code: "generation",
    run: async () => {
      const lm = await view.model();
      choices(lm);
      const paths = modelPaths(lm);
      const t = optionalNumber(temperature, "temperature");
      const settings: GenerateSettings = { maxNewTokens: optionalNumber(maxNewTokens, "new tokens") ?? 10, ...(t ? { temperature: t, topP: optionalNumber(topP, "top-p"), seed: optionalNumber(seed, "seed") } : {}) };
      if (!view.fits(lm, "generation", lm.tokenizer.encode(prompt.value).length, settings.maxNewTokens)) return;
      fill(view.result, output);
      fill(output, h("span", { class: "prompt-text" }, prompt.value));
      following = true;

      let steered: Steering | undefined;
      const steps: Recipe[] = [];
      if (steer.checked) {
        const source = promptDifference(toward.value, away.value, Number(layer.value));
        const vector = source.recipe(paths);
        steps.push(vector);
        view.showCode(steps);
        const direction = await view.status.run("steering direction", () => submit<Tensor>(lm, vector, ctx.connection.remote()));
        if (!direction) return view.result.replaceChildren();
        steered = { direction, layer: Number(layer.value), scale: optionalNumber(scale, "scale") ?? 1 };
      }
      const recipe = generateRecipe(prompt.value, settings, paths, steered);
      steps.push(recipe);
      view.showCode(steps);
      const ids: number[] = [];
      const continuation = h("span", { class: "continuation" });
      output.append(continuation);
      const result = await view.status.run(
        steered ? "steered generation" : "generation",
        () => submit<Generation>(lm, recipe, ctx.connection.remote()),
        (event) => {
          if (event.type !== "stream") return;
          ids.push(...event.tokens);
          follow(() => (continuation.textContent = lm.tokenizer.decode(ids)));
        },
      );
      if (result) follow(() => (continuation.textContent = result.text[0] ?? ""));
      // Text that came before a failure stays; the prompt alone would read as a result.
      else if (ids.length === 0) view.result.replaceChildren();
    },
  });
  // Greedy decoding (no temperature) samples nothing: top-p and the seed are then off, not silently ignored.
  const samplingFields = () => {
    const greedy = !(Number(temperature.value) > 0);
    for (const input of [topP, seed]) input.disabled = greedy;
  };
  temperature.addEventListener("input", samplingFields);
  samplingFields();
  const shown = () => {
    // Text that came while another tab was shown.
    if (following) output.scrollTop = output.scrollHeight;
    void view.model().then(choices, () => undefined);
  };
  return { id: "generate", title: "Generate", element: view.element, shown, reset: () => view.reset() };
}
