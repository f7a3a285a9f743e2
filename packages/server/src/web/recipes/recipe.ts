/**
 * Recipe: one remote computation of the workbench as data (which call, its input, its intervention function, its
 * vars), so the same object is both submitted through the browser client (`submit`) and printed as the tsight
 * program that does the same from Node (`programOf`, code.ts). The functions are the page's own compiled
 * functions: the code a reader copies is their source as it is sent, never a second copy kept by hand.
 */
import type { LanguageModel, RemoteJob, RemoteOptions, Tensor } from "tsight/client";

export type Vars = Record<string, unknown>;

/** What a remote generation gives (the client's GenerateOutput). */
export interface Generation {
  generated: Tensor;
  text: string[];
}

/** Generation settings as the page collects them (a subset of GenerateCall that travels as a GenerateSpec). */
export interface GenerateSettings {
  maxNewTokens: number;
  temperature?: number;
  topP?: number;
  seed?: number;
}

interface RecipeBase {
  /** The variable the printed program assigns the result to (`lens`, `patching`). */
  name: string;
  vars: Vars;
  /**
   * Vars whose printed value is an expression (a variable an earlier step made, such as a tensor) rather than a
   * literal of the value.
   */
  varCode?: Record<string, string>;
  /** Statements the printed program runs after the call, e.g. printing the result as the page shows it. */
  after?: string;
}

/** A trace: `(m, tr) => ...` on `input`, or `(tr) => ...` with invokes of its own when there is no input. */
export interface TraceRecipe extends RecipeBase {
  call: "trace";
  input?: string;
  fn: Function;
}

/** A session: several traces as one job, `(s) => ...`, reading `s.vars`. */
export interface SessionRecipe extends RecipeBase {
  call: "session";
  fn: Function;
}

/** A generation, with an intervention across its steps or none. */
export interface GenerateRecipe extends RecipeBase {
  call: "generate";
  input: string;
  settings: GenerateSettings;
  fn?: Function;
}

export type Recipe = TraceRecipe | SessionRecipe | GenerateRecipe;

/** What the generation options of a recipe are as GenerateCall: greedy unless a temperature is set. */
export function generateCall(settings: GenerateSettings): GenerateSettings {
  const { maxNewTokens, temperature, topP, seed } = settings;
  if (temperature === undefined) return { maxNewTokens };
  return { maxNewTokens, temperature, ...(topP === undefined ? {} : { topP }), ...(seed === undefined ? {} : { seed }) };
}

/** Submits the recipe as a non-blocking remote job of `lm`, on `options.backend`. */
export function submit<R>(lm: LanguageModel, recipe: Recipe, options: RemoteOptions): Promise<RemoteJob<R>> {
  return call(lm, recipe, { ...options, blocking: false }) as Promise<RemoteJob<R>>;
}

/** Makes the recipe's call on `lm`: what it gives is the value, or a job when `options.blocking` is false. */
export function call(lm: LanguageModel, recipe: Recipe, options: RemoteOptions): Promise<unknown> {
  const o = { print: null, ...options, vars: recipe.vars };
  const fn = recipe.fn as never;
  switch (recipe.call) {
    case "trace":
      return recipe.input === undefined ? lm.trace(fn, o) : lm.trace(recipe.input, fn, o);
    case "session":
      return lm.session(fn, o);
    case "generate": {
      const settings = generateCall(recipe.settings);
      return recipe.fn ? lm.generate(recipe.input, settings, fn, o) : lm.generate(recipe.input, settings, o);
    }
  }
}
