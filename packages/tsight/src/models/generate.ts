/**
 * Autoregressive generation with a KV cache: one prefill over the prompt, then one single-token step per new
 * token. Finished rows (end-of-sequence reached) continue with the pad token, as Hugging Face's generate does.
 */
import { KVCache } from "../nn/index.js";
import { Generator, Tensor } from "../tensor/index.js";
import type { CausalLM } from "./causal-lm.js";
import { argmaxRow, isSampling, sampleRow, validateSampling, type SamplingOptions } from "./sampling.js";
import { MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS } from "./generate-bounds.js";

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  /** Stop a row at these tokens; defaults to the model config's eos_token_id. null: never stop early. */
  eosTokenId?: number | number[] | null;
  /** Token appended to finished rows; defaults to the config's pad, else the first eos, else 0. */
  padTokenId?: number;
  /** Seed of the sampling generator (ignored for greedy). */
  seed?: number;
  /**
   * Hugging Face's repetition_penalty: every token already in a row (its prompt, left padding included, and what it
   * generated) has its logit divided by this where positive and multiplied where negative, greedy or sampling.
   */
  repetitionPenalty?: number;
  /** Hugging Face's min_new_tokens: the eos tokens are ruled out (logit -Infinity) until this many tokens came. */
  minNewTokens?: number;
  /**
   * Hugging Face's stop_strings: a row ends (then gets the pad token, as at eos) once a token completes one of
   * these strings, its text in the row (the prompt's tokens included) ending within that token. Needs `decode`.
   */
  stopStrings?: string | readonly string[];
  /** Token ids to text, for `stopStrings` (a LanguageModel gives its tokenizer's). */
  decode?: (ids: number[]) => string;
  /** Called after each step with the token chosen for every row (pad for finished rows). */
  onStep?: (tokens: number[], step: number) => void | Promise<void>;
  /** Called before each step's forward pass (step 0 is the prompt). */
  beforeStep?: (step: number) => void | Promise<void>;
  /**
   * Whether an error thrown by a step (from beforeStep or the forward pass) ends the generation there, with the
   * tokens of the steps before it (none, at the prompt's step), instead of failing it (an intervention's tr.stop()).
   */
  endsEarly?: (error: unknown) => boolean;
}

export interface GenerateResult {
  /** Prompt plus generated tokens, [batch, promptLength + steps]. */
  sequences: Tensor;
  /** Only the generated tokens, [batch, steps]. */
  generated: Tensor;
  /** The attention mask over `sequences`. */
  attentionMask: Tensor;
}

function asList(v: number | number[] | null | undefined): number[] {
  return v === null || v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/**
 * Checks generation settings as generate does before it runs (one out of its range is a RangeError; a LanguageModel
 * checks them at the call, as an OptionsError at the caller's line), and gives the stop strings as a list.
 */
export function checkGenerateOptions(options: Pick<GenerateOptions, "maxNewTokens" | "repetitionPenalty" | "minNewTokens" | "stopStrings"> & SamplingOptions): string[] {
  if (!Number.isInteger(options.maxNewTokens) || options.maxNewTokens < 0) throw new RangeError(`maxNewTokens must be a non-negative integer, got ${String(options.maxNewTokens).slice(0, 40)}`);
  validateSampling(options);
  const { repetitionPenalty, minNewTokens = 0 } = options;
  if (repetitionPenalty !== undefined && !(typeof repetitionPenalty === "number" && repetitionPenalty > 0 && Number.isFinite(repetitionPenalty))) throw new RangeError(`repetitionPenalty must be a number > 0, got ${String(repetitionPenalty).slice(0, 40)}`);
  if (!Number.isInteger(minNewTokens) || minNewTokens < 0) throw new RangeError(`minNewTokens must be a non-negative integer, got ${String(minNewTokens).slice(0, 40)}`);
  return checkStopStrings(options.stopStrings);
}

export async function generate(model: CausalLM, inputIds: Tensor, attentionMask: Tensor | undefined, options: GenerateOptions): Promise<GenerateResult> {
  const stops = checkGenerateOptions(options);
  const { repetitionPenalty, minNewTokens = 0 } = options;
  if (stops.length && !options.decode) throw new TypeError("stopStrings needs the tokenizer's text of the tokens: generate through a LanguageModel with a tokenizer");
  const [B, T] = inputIds.shape as [number, number];
  const eos = asList(options.eosTokenId === undefined ? model.config.eosTokenId : options.eosTokenId);
  const pad = options.padTokenId ?? model.config.padTokenId ?? eos[0] ?? 0;
  const sampling = isSampling(options);
  const rng = new Generator(options.seed ?? 0);
  const cache = new KVCache();
  let mask = attentionMask ?? Tensor.full([B, T], 1, "int64");
  const rows: number[][] = Array.from({ length: B }, () => []);
  const finished = new Array<boolean>(B).fill(false);
  let next = inputIds;
  const stopped = stops.length ? stopStringMatcher(stops, options.decode!, inputIds, attentionMask) : null;
  // Per row, the tokens it holds so far (for the repetition penalty): the prompt's, then each one chosen.
  const seen = repetitionPenalty === undefined || repetitionPenalty === 1 ? null : Array.from({ length: B }, (_, b) => new Set(Array.from(inputIds.index(b).toArray() as ArrayLike<number | bigint>, Number)));
  for (let step = 0; step < options.maxNewTokens; step++) {
    let logits: Tensor;
    try {
      await options.beforeStep?.(step);
      ({ logits } = await model.call(next, { attentionMask: mask, cache, logitsToKeep: 1 }));
    } catch (e) {
      if (options.endsEarly?.(e)) break;
      throw e;
    }
    const V = logits.shape[2]!;
    const data = logits.data as Float32Array;
    const chosen = rows.map((row, b) => {
      if (finished[b]) return (row.push(pad), pad);
      let values = data.subarray(b * V, (b + 1) * V);
      if (seen || step < minNewTokens) {
        // A copy: the logits are the model's output, which an intervention may hold.
        values = values.slice();
        if (seen) penalize(values, seen[b]!, repetitionPenalty!);
        if (step < minNewTokens) for (const id of eos) if (id >= 0 && id < V) values[id] = -Infinity;
      }
      const token = sampling ? sampleRow(values, options, rng) : argmaxRow(values);
      seen?.[b]!.add(token);
      if (eos.includes(token) || stopped?.(b, token)) finished[b] = true;
      row.push(token);
      return token;
    });
    await options.onStep?.(chosen, step);
    next = new Tensor("int64", BigInt64Array.from(chosen, BigInt), [B, 1]);
    mask = Tensor.cat([mask, Tensor.full([B, 1], 1, "int64")], 1);
    if (finished.every(Boolean)) break;
  }
  const steps = rows[0]!.length;
  const generated = new Tensor("int64", BigInt64Array.from(rows.flat(), BigInt), [B, steps]);
  return { sequences: Tensor.cat([inputIds.long(), generated], 1), generated, attentionMask: mask };
}

/** `stopStrings` as a list, checked: non-empty strings within the bounds above. */
function checkStopStrings(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === "string" ? [v] : v;
  const ok = Array.isArray(list) && list.length <= MAX_STOP_STRINGS && list.every((s) => typeof s === "string" && s.length > 0 && s.length <= MAX_STOP_STRING_CHARS);
  if (!ok) throw new RangeError(`stopStrings must be a string or a list of at most ${MAX_STOP_STRINGS}, each of 1 to ${MAX_STOP_STRING_CHARS} characters, got ${JSON.stringify(v)?.slice(0, 80)}`);
  return list as string[];
}

/**
 * Per row, whether the token just chosen ends it on a stop string, as Hugging Face's StopStringCriteria does: one
 * of `stops` occurs in the row's text (its prompt's real tokens, then what it generated) ending within that token's
 * text. Only the last tokens are decoded: each gives at least one character (an incomplete UTF-8 one U+FFFD), so
 * the longest stop string's length in tokens before the new one reach back far enough, and one more keeps its
 * start clear of a decoder's first-token rules (a leading space dropped). HF matches token bytes; this matches
 * decoded text, the same but where a stop string ends inside a character that spans tokens.
 */
function stopStringMatcher(stops: readonly string[], decode: (ids: number[]) => string, inputIds: Tensor, mask: Tensor | undefined): (row: number, token: number) => boolean {
  const [B, T] = inputIds.shape as [number, number];
  const longest = Math.max(...stops.map((s) => s.length));
  const keep = longest + 2;
  const ids = Array.from(inputIds.long().data as BigInt64Array, Number);
  const real = mask ? Array.from(mask.long().data as BigInt64Array, (m) => m !== 0n) : null;
  const tails = Array.from({ length: B }, (_, b) => ids.slice(b * T, (b + 1) * T).filter((_, i) => real?.[b * T + i] ?? true).slice(-keep));
  return (row, token) => {
    const tail = tails[row]!;
    tail.push(token);
    if (tail.length > keep) tail.shift();
    const before = decode(tail.slice(0, -1));
    const after = decode(tail);
    let start = 0;
    while (start < before.length && before[start] === after[start]) start++;
    return stops.some((s) => after.indexOf(s, Math.max(0, start - s.length + 1)) >= 0);
  };
}

/** Hugging Face's RepetitionPenaltyLogitsProcessor on one row: seen tokens' logits divided by `penalty` where positive, multiplied where not. */
function penalize(values: Float32Array, seen: Set<number>, penalty: number): void {
  for (const id of seen) {
    if (id < 0 || id >= values.length) continue;
    const v = values[id]!;
    values[id] = v < 0 ? v * penalty : v / penalty;
  }
}
