/** `tsight generate`: continue a prompt with a model, streaming tokens as they come. */
import { parseArgs } from "node:util";
import { checkWeightDType } from "../hub/index.js";
import { LanguageModel } from "../intervention/index.js";
import { nearest } from "../intervention/options.js";
import { validateSampling } from "../models/sampling.js";
import type { WeightDType } from "../tensor/index.js";
import { LoadBar } from "./progress.js";

export const generateHelp = `usage: tsight generate [prompt] [options]

Continues the prompt, printing tokens as they are generated.

  --model, -m NAME        stdlib-gpt2 (default), stdlib-llama, a model folder, or a Hugging Face repo id
  --dtype D               what the weights are kept as: float32 (default), bfloat16, float16, int8 or int4
  --max-new-tokens, -n N  tokens to generate (default 32)
  --temperature T         sample with this temperature (default: greedy)
  --top-k K               sample from the K most likely tokens
  --top-p P               sample from the smallest set with probability mass P
  --seed S                seed for sampling (default 0)
  --stats                 print tokens/s at the end (to stderr)`;

const generateOptions = {
  model: { type: "string", short: "m", default: "stdlib-gpt2" },
  dtype: { type: "string", multiple: true },
  "max-new-tokens": { type: "string", short: "n", default: "32" },
  temperature: { type: "string" },
  "top-k": { type: "string" },
  "top-p": { type: "string" },
  seed: { type: "string", default: "0" },
  stats: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

/** The arguments, or a UsageError naming an unknown flag and the one meant. */
function parseGenerateArgs(argv: string[]) {
  try {
    return parseArgs({ args: argv, allowPositionals: true, options: generateOptions });
  } catch (e) {
    const unknown = /Unknown option '(--?[\w-]+)'/.exec((e as Error).message)?.[1];
    if (!unknown) throw e;
    const near = nearest(unknown.replace(/^-+/, ""), Object.keys(generateOptions));
    throw new UsageError(`unknown option ${unknown}${near ? ` (did you mean --${near}?)` : ""}`);
  }
}

export async function runGenerate(argv: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  const { values, positionals } = parseGenerateArgs(argv);
  if (values.help) {
    out.write(generateHelp + "\n");
    return 0;
  }
  const num = (name: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${v}"`);
    return n;
  };
  const prompt = positionals.join(" ") || "def __init__(self";
  const settings = {
    maxNewTokens: num("max-new-tokens", values["max-new-tokens"])!,
    temperature: num("temperature", values.temperature),
    topK: num("top-k", values["top-k"]),
    topP: num("top-p", values["top-p"]),
    seed: num("seed", values.seed),
  };
  checkSettings(settings);
  const dtype = oneDType(values.dtype ?? []);
  const model = values.model!;
  // The bar is cleared before the first token: stdout and stderr usually share the terminal.
  const bar = new LoadBar(err, dtype === undefined ? model : `${model} (${dtype})`);
  let lm: LanguageModel;
  try {
    lm = await LanguageModel.load(model, { dtype, onLoadProgress: bar.listener(model) });
  } finally {
    bar.finish();
  }
  out.write(prompt);
  const start = performance.now();
  let firstTokenAt = 0;
  const result = await lm.generate(prompt, {
    ...settings,
    onToken: ({ text, step }) => {
      if (step === 0) firstTokenAt = performance.now();
      out.write(text[0]!);
    },
  });
  out.write("\n");
  if (values.stats) {
    const n = result.generated.shape[1]!;
    const decodeSeconds = (performance.now() - firstTokenAt) / 1000;
    err.write(`${n} tokens; first after ${(firstTokenAt - start).toFixed(0)} ms; then ${n > 1 ? ((n - 1) / decodeSeconds).toFixed(1) : "-"} tokens/s\n`);
  }
  return 0;
}

export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** `generate`'s one `--dtype` (it loads one model; `serve`'s MODEL=D form names one of several). */
function oneDType(given: readonly string[]): WeightDType | undefined {
  if (given.length > 1) throw new UsageError(`--dtype is given ${given.length} times (${given.join(", ")}); give it once`);
  const text = given[0];
  if (text?.includes("=")) throw new UsageError(`--dtype ${text}: MODEL=D is for tsight serve, which serves several models; here the model is --model's, so give the dtype alone (--dtype ${text.slice(text.indexOf("=") + 1)})`);
  return usageDType(text);
}

/** A `--dtype` value, or a UsageError naming the choices (the command's usage follows it). */
export function usageDType(text: string | undefined, option = "--dtype"): WeightDType | undefined {
  if (text === undefined) return undefined;
  try {
    return checkWeightDType(text, option);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** The settings' flags checked before the model loads or the prompt is printed, in the flags' names. */
function checkSettings(s: { maxNewTokens: number; temperature?: number; topK?: number; topP?: number; seed?: number }): void {
  if (!(Number.isSafeInteger(s.maxNewTokens) && s.maxNewTokens > 0)) throw new UsageError(`--max-new-tokens must be a positive whole number, got ${s.maxNewTokens}`);
  if (s.seed !== undefined && !Number.isSafeInteger(s.seed)) throw new UsageError(`--seed must be a whole number, got ${s.seed}`);
  try {
    validateSampling(s);
  } catch (e) {
    const flags: Record<string, string> = { temperature: "--temperature", topK: "--top-k", topP: "--top-p" };
    throw new UsageError((e as Error).message.replace(/^(temperature|topK|topP)/, (name) => flags[name]!));
  }
}
