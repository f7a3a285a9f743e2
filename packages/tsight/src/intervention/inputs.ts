/**
 * What users may pass as model input, turned into ids and an attention mask: a string, a list of strings,
 * token ids (a list, or a list of lists), or int tensors (ids, or { input_ids, attention_mask }).
 */
import type { Tokenizer } from "../hub/index.js";
import { Tensor } from "../tensor/index.js";
import { named, pointAtUserLine } from "./errors.js";

/** Token ids, or an attention mask, as a tokenizer gives them: an int tensor, a list, or a list of lists. */
export type IdsLike = Tensor | readonly number[] | readonly (readonly number[])[];

export type ModelInput = string | readonly string[] | readonly number[] | readonly (readonly number[])[] | Tensor | { input_ids: IdsLike; attention_mask?: IdsLike };

export interface Batch {
  ids: Tensor;
  mask: Tensor;
  /** Which of the two may be the caller's tensor or share its values (a run that keeps one copies it); else both are new. */
  given?: { ids: boolean; mask: boolean };
}

/**
 * Model input that cannot be run: malformed, or too long for the model. Found before any compute, in the caller's
 * call (its stack, and `userLine`, point at the caller's line, as InterventionError's do).
 */
export class InputError extends TypeError {
  override readonly name = "InputError";
  readonly code = "VALIDATION";
  readonly retryable = false;
  /** "file:line:column" of the user's code that gave the input, when it could be found. */
  userLine?: string;
  constructor(message: string) {
    // Frames enough to reach the caller's line below the checks (made only when an input is refused).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = Math.max(limit, 32);
    super(message);
    Error.stackTraceLimit = limit;
    pointAtUserLine(this, message);
  }
}
named(InputError, "InputError");

/** What a model can take: its context length and vocabulary. */
export interface InputLimits {
  /** Positions the model has (null: unbounded). */
  maxPositions: number | null;
  vocabSize: number;
}

/**
 * Checks a batch against the model before anything runs: every row fits the context (with `extraTokens` more to
 * generate) and every id is in the vocabulary.
 */
export function checkInput(ids: Tensor, limits: InputLimits, extraTokens = 0, maxTokens = Infinity): void {
  const [rows, tokens] = ids.shape as [number, number];
  if (rows * (tokens + extraTokens) > maxTokens) throw new InputError(`the input is ${rows} row${rows === 1 ? "" : "s"} of ${tokens + extraTokens} tokens, more than the ${maxTokens} tokens a job may have here; send fewer or shorter rows`);
  const { maxPositions, vocabSize } = limits;
  if (maxPositions !== null && tokens + extraTokens > maxPositions) {
    const what = extraTokens ? `${tokens} prompt tokens plus ${extraTokens} to generate` : `${tokens} tokens`;
    throw new InputError(`the input is ${what}, longer than the model's context of ${maxPositions} positions; shorten the prompt${extraTokens ? " or generate fewer tokens" : ""}`);
  }
  const data = ids.data as BigInt64Array;
  const vocab = BigInt(vocabSize);
  for (let i = 0; i < data.length; i++) {
    const id = data[i]!;
    if (id < 0n || id >= vocab) throw new InputError(`token id ${id} (row ${Math.floor(i / tokens)} of ${rows}, position ${i % tokens}) is outside the model's vocabulary of ${vocabSize} ids`);
  }
}

/**
 * The most characters of text a job may send per token it may have. A token of any tokenizer tsight runs spans far
 * fewer; the bound is checked before tokenizing, which is slow for long runs of one character (it grows faster
 * than the text: 1 MB of spaces took GPT-2's tokenizer 9 s).
 */
export const MAX_CHARS_PER_TOKEN = 16;

/** Refuses text inputs longer than `maxTokens` tokens could take (see MAX_CHARS_PER_TOKEN), before tokenizing them. */
export function checkTextLength(input: unknown, maxTokens: number): void {
  if (maxTokens === Infinity) return;
  const texts = typeof input === "string" ? [input] : Array.isArray(input) && input.every((x) => typeof x === "string") ? (input as string[]) : [];
  const chars = texts.reduce((n, t) => n + t.length, 0);
  if (chars > maxTokens * MAX_CHARS_PER_TOKEN) {
    throw new InputError(`the input is ${chars} characters of text, more than the ${maxTokens} tokens a job may have here could take (${MAX_CHARS_PER_TOKEN} characters a token); send shorter text`);
  }
}

export function toBatch(input: ModelInput, tokenizer: Tokenizer): Batch {
  if (typeof input === "string") return fromRows([tokenizer.encode(input)], tokenizer.padTokenId);
  if (input instanceof Tensor) return fromTensor(input, undefined);
  if (Array.isArray(input)) {
    if (input.length === 0) throw new InputError("model input is an empty list");
    if (input.every((x) => typeof x === "string")) return fromRows((input as string[]).map((t) => tokenizer.encode(t)), tokenizer.padTokenId);
    if (input.every((x) => typeof x === "number")) return fromRows([input as number[]], tokenizer.padTokenId);
    if (input.every((x) => Array.isArray(x) && x.every((v: unknown) => typeof v === "number"))) return fromRows(input as number[][], tokenizer.padTokenId);
    throw new InputError("model input must be a string, a list of strings, token ids, a list of token-id lists, or a tensor");
  }
  if (typeof input === "object" && input && "input_ids" in input) {
    const mask = input.attention_mask === undefined ? undefined : idsTensor(input.attention_mask, "attention_mask");
    return fromTensor(idsTensor(input.input_ids, "input_ids"), mask);
  }
  throw new InputError(`model input of type ${typeof input} is not supported`);
}

/** Left-pads rows of ids to one length (decoder-only models generate from the right edge). */
export function fromRows(rows: readonly (readonly number[])[], pad: number): Batch {
  if (rows.some((r) => r.length === 0)) throw new InputError("model input has an empty sequence (no tokens)");
  const T = Math.max(...rows.map((r) => r.length));
  const ids = new BigInt64Array(rows.length * T).fill(BigInt(pad));
  const mask = new BigInt64Array(rows.length * T);
  rows.forEach((r, b) => {
    const off = b * T + T - r.length;
    r.forEach((id, i) => {
      // Safe integers only: a larger number (1e300) would wrap to some id in the vocabulary as it became an int64.
      if (!Number.isSafeInteger(id) || id < 0) throw new InputError(`token id ${id} is not a non-negative integer`);
      ids[off + i] = BigInt(id);
      mask[off + i] = 1n;
    });
  });
  return { ids: new Tensor("int64", ids, [rows.length, T]), mask: new Tensor("int64", mask, [rows.length, T]) };
}

/**
 * `v` as an int64 tensor: a tensor as it is (fromTensor checks it), a list of whole numbers as one row, a list of
 * equally long lists as rows (what a tokenizer's `input_ids` and `attention_mask` are in Python).
 */
function idsTensor(v: unknown, what: string): Tensor {
  if (v instanceof Tensor) return v;
  const rows = Array.isArray(v) && v.every((x) => typeof x === "number") ? [v as number[]] : Array.isArray(v) && v.length > 0 && v.every((r) => Array.isArray(r) && r.every((x) => typeof x === "number")) ? (v as number[][]) : null;
  if (!rows) throw new InputError(`${what} must be an int tensor, a list of token ids or a list of such lists, got ${describeInput(v)}`);
  const T = rows[0]!.length;
  if (T === 0) throw new InputError(`${what} has an empty row (no tokens)`);
  const bad = rows.findIndex((r) => r.length !== T);
  if (bad >= 0) throw new InputError(`${what}'s rows must be equally long (padded), but row ${bad} has ${rows[bad]!.length} values and row 0 ${T}`);
  const data = new BigInt64Array(rows.length * T);
  rows.forEach((r, b) =>
    r.forEach((x, i) => {
      // Safe integers only: a larger number (1e300) would wrap to some id in the vocabulary as it became an int64.
      if (!Number.isSafeInteger(x) || x < 0) throw new InputError(`${what}[${b}][${i}] is ${x}, not a non-negative integer`);
      data[b * T + i] = BigInt(x);
    }),
  );
  return new Tensor("int64", data, [rows.length, T]);
}

/** What a value is, for an error about it: its type, a list's length, an object's class. */
function describeInput(v: unknown): string {
  if (Array.isArray(v)) return `a list of ${v.length} (${v.length ? `the first is ${describeInput(v[0])}` : "empty"})`;
  if (v === null || typeof v !== "object") return v === undefined ? "undefined" : `${typeof v} ${String(v).slice(0, 20)}`;
  return `an object (${Object.getPrototypeOf(v)?.constructor?.name ?? "no prototype"})`;
}

function fromTensor(ids: Tensor, mask: Tensor | undefined): Batch {
  if (ids.dtype !== "int64" && ids.dtype !== "int32") throw new InputError(`input ids must be an integer tensor, got ${ids.dtype}`);
  const batched = ids.ndim === 1 ? ids.unsqueeze(0) : ids;
  if (batched.ndim !== 2) throw new InputError(`input ids must have shape [batch, tokens], got [${ids.shape}]`);
  const [B, T] = batched.shape as [number, number];
  const m = mask ? (mask.ndim === 1 ? mask.unsqueeze(0) : mask).long() : new Tensor("int64", new BigInt64Array(B * T).fill(1n), [B, T]);
  if (m.shape[0] !== B || m.shape[1] !== T) throw new InputError(`attention mask [${m.shape}] does not match ids [${batched.shape}]`);
  return { ids: batched.long(), mask: m, given: { ids: true, mask: mask !== undefined } };
}
