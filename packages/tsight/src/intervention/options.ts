/**
 * The options of trace, scan, generate and session, checked by name before anything runs. A misplaced or
 * misspelt option would otherwise be ignored in silence (`lm.generate(p, { maxNewTokens, remote: true })` ran
 * locally), so each mistake is an OptionsError that says where the option belongs.
 */
import { named, TraceError } from "./errors.js";

export class OptionsError extends TraceError {
  override readonly name = "OptionsError";
}
named(OptionsError, "OptionsError");

/** Options of a run (trace, scan, generate's third or fourth argument, session) in process. */
export const RUN_OPTIONS: readonly string[] = ["vars", "grad", "checkpoint", "isolateInvokes", "stallTimeoutMs", "maxInputTokens", "onWarning"];
/** Options of a generation (generate's second argument). */
export const GENERATION_OPTIONS: readonly string[] = ["maxNewTokens", "doSample", "temperature", "topK", "topP", "seed", "repetitionPenalty", "minNewTokens", "stopStrings", "numReturnSequences", "eosTokenId", "padTokenId", "beforeStep", "onToken"];

/** Which call the options were given to, for messages. */
export type OptionsPlace = "trace" | "scan" | "session" | "generation" | "generate-run";

/**
 * Throws an OptionsError unless `given` is an options object whose names are all in `known`. `runNames` are the
 * run options this model takes (the client adds remote ones), for telling a run option given to a generation.
 */
export function checkOptions(given: unknown, place: OptionsPlace, runNames: readonly string[]): void {
  if (given === undefined || given === null) return;
  const call = place === "generation" || place === "generate-run" ? "generate" : place;
  if (typeof given === "function") throw new OptionsError(`${call}: a function was given where the options belong; ${usage(place)}`);
  if (typeof given !== "object" || Array.isArray(given)) throw new OptionsError(`${call}: the options must be an object, got ${describeValue(given)}; ${usage(place)}`);
  const known = place === "generation" ? GENERATION_OPTIONS : runNames;
  for (const name of Object.keys(given)) {
    if (known.includes(name)) continue;
    if (place === "generation" && runNames.includes(name)) {
      throw new OptionsError(`generate: "${name}" is an option of the run, not of the generation: pass it after them, lm.generate(input, { maxNewTokens: 8 }, { ${name}: ... }) (or after the intervention function: lm.generate(input, { maxNewTokens: 8 }, fn, { ${name}: ... }))`);
    }
    if (place !== "generation" && GENERATION_OPTIONS.includes(name)) {
      throw new OptionsError(
        place === "generate-run"
          ? `generate: "${name}" is a generation option: put it in the second argument, lm.generate(input, { ${name}: ... }, fn, options)`
          : `${call}: "${name}" is a generation option; ${call} runs one forward pass. To generate: lm.generate(input, { ${name}: ... }, fn)`,
      );
    }
    const near = nearest(name, [...known, ...(place === "generation" ? runNames : GENERATION_OPTIONS)]);
    throw new OptionsError(`${call}: unknown option "${name}"${near ? ` (did you mean "${near}"?)` : ""}; the options ${place === "generation" ? "of a generation" : `of ${call}`} are: ${known.join(", ")}`);
  }
}

/** Options of LanguageModel.load (its own, the loader's and the Hugging Face hub's). */
export const LOAD_OPTIONS: readonly string[] = ["dispatch", "tokenizer", "rename", "architecture", "revision", "cacheDir", "endpoint", "token", "offline", "refresh", "weights", "onProgress", "signal", "fetch", "dtype", "onLoadProgress"];

/** Throws an OptionsError unless `given` is undefined or an object whose names are all in `known`; `call` names the call. */
export function checkOptionNames(given: unknown, call: string, known: readonly string[]): void {
  if (given === undefined) return;
  if (typeof given !== "object" || given === null || Array.isArray(given)) throw new OptionsError(`${call}: the options must be an object, got ${given === null ? "null" : describeValue(given)}`);
  for (const name of Object.keys(given)) {
    if (known.includes(name)) continue;
    const near = nearest(name, known);
    throw new OptionsError(`${call}: unknown option "${name}"${near ? ` (did you mean "${near}"?)` : ""}; its options are: ${known.join(", ")}`);
  }
}

function usage(place: OptionsPlace): string {
  switch (place) {
    case "trace":
    case "scan":
      return `call ${place}(input, async (m, tr) => ..., options) or ${place}(async (tr) => ..., options)`;
    case "session":
      return "call session(async (s) => ..., options)";
    case "generation":
      return "call generate(input, { maxNewTokens: 8 }, fn?, options?)";
    case "generate-run":
      return "call generate(input, { maxNewTokens: 8 }, async (m, tr) => ..., options) or generate(input, { maxNewTokens: 8 }, options)";
  }
}

function describeValue(v: unknown): string {
  return typeof v === "string" ? `the string ${JSON.stringify(v.slice(0, 40))}` : Array.isArray(v) ? "an array" : typeof v;
}

/** The known name closest to `name` (snake_case habits, small typos), if any is close. */
export function nearest(name: string, known: readonly string[]): string | undefined {
  const camel = name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
  const exact = known.find((k) => k.toLowerCase() === camel.toLowerCase());
  if (exact) return exact;
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(name.length / 4)) + 1;
  for (const k of known) {
    const d = distance(camel.toLowerCase(), k.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return best;
}

/** Levenshtein distance. */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length]!;
}
