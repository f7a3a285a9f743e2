/**
 * Generation, optionally steered: a direction added to one layer's output at every step. Where the direction
 * comes from is a SteeringSource: a recipe whose value is a [hidden] tensor. Today that is the difference of two
 * prompts' activations; an SAE feature's decoder row is the next source, once tsight loads SAEs (a recipe that
 * returns `W_dec[feature]`), and the generation side does not change.
 */
import type { Tensor } from "tsight/client";
import type { ModelPaths } from "./architecture.js";
import type { GenerateRecipe, GenerateSettings, TraceRecipe } from "./recipe.js";

/** Where a steering direction comes from: a recipe whose value is one [hidden] tensor. */
export interface SteeringSource {
  /** Says what the direction is, for the page. */
  describe(): string;
  recipe(paths: ModelPaths): TraceRecipe;
}

const promptDifferenceIntervention = async (tr: any) => {
  const { layers, layer, toward, away } = tr.vars;
  const read = async (m: any) => (await m[layers][layer].output).index(0, -1);
  const a = tr.invoke(toward, read);
  const b = tr.invoke(away, read);
  return (await a).sub(await b);
};

/** The layer's output at the last token of `toward`, minus the same for `away`. */
export function promptDifference(toward: string, away: string, layer: number): SteeringSource {
  return {
    describe: () => `layer ${layer}: ${JSON.stringify(toward)} − ${JSON.stringify(away)}`,
    recipe: (paths) => ({ name: "direction", call: "trace", fn: promptDifferenceIntervention, vars: { layers: paths.layers, layer, toward, away } }),
  };
}

const steeringIntervention = async (m: any, tr: any) => {
  const { layers, layer, direction, scale } = tr.vars;
  for await (const _ of tr.all()) m[layers][layer].output = (hidden: any) => hidden.add(direction.mul(scale));
};

export interface Steering {
  /** The direction (what the source's recipe returned). */
  direction: Tensor;
  layer: number;
  scale: number;
}

/** A generation; with `steering`, the direction times scale is added to the layer's output at every step. */
export function generateRecipe(prompt: string, settings: GenerateSettings, paths: ModelPaths, steering?: Steering): GenerateRecipe {
  const after = `console.log(JSON.stringify(generation.text[0]));`;
  if (!steering) return { name: "generation", call: "generate", input: prompt, settings, vars: {}, after };
  return {
    name: "generation",
    call: "generate",
    input: prompt,
    settings,
    fn: steeringIntervention,
    vars: { layers: paths.layers, layer: steering.layer, direction: steering.direction, scale: steering.scale },
    varCode: { direction: "direction" },
    after,
  };
}
