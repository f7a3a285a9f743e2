/**
 * Tokenizer: a model's `tokenizer.json` through `@huggingface/tokenizers` (pure JS, the same ids as the Rust
 * library), plus what generation needs around it: special token ids, left-padded batches as int64 Tensors, and an
 * incremental decoder that streams text token by token without splitting a multi-byte character.
 */
import { Tokenizer as HFTokenizer } from "@huggingface/tokenizers";
import { lazyNode } from "../tensor/index.js";

const fsp = lazyNode<typeof import("node:fs/promises")>("node:fs/promises");
const path = lazyNode<typeof import("node:path")>("node:path");
import { Tensor } from "../tensor/index.js";
import { TokenizerError } from "./errors.js";
import { readJsonObject, type JsonObject } from "./source.js";

export interface EncodeOptions {
  /** Add the special tokens the tokenizer's post-processor adds (e.g. a BOS); default true, as in transformers. */
  addSpecialTokens?: boolean;
}

export interface BatchOptions extends EncodeOptions {
  /** Which side padding goes on; default "left", as decoder-only generation wants. */
  paddingSide?: "left" | "right";
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

/** A padded batch: `input_ids` and `attention_mask` are int64 [batch, maxLen]; mask 0 marks padding. */
export interface EncodedBatch {
  input_ids: Tensor;
  attention_mask: Tensor;
  /** Each text's ids, unpadded. */
  ids: number[][];
}

export type TokenIds = readonly number[] | readonly bigint[] | Tensor;

/** What an ids-only tokenizer knows (from the model's config.json), and why it has no vocabulary. */
export interface IdsOnly {
  vocabSize: number;
  eosTokenId?: number | null;
  bosTokenId?: number | null;
  padTokenId?: number | null;
  /** Why there is no text, with the fix: said by every method that needs text. */
  why: string;
}

export class Tokenizer {
  /** tokenizer_config.json, as given. */
  readonly config: JsonObject;
  readonly eosTokenId: number | null;
  readonly bosTokenId: number | null;
  /** The config's pad token, else the EOS token, else 0. */
  readonly padTokenId: number;
  /** Vocabulary size including added tokens (Python's `len(tokenizer)`). */
  readonly vocabSize: number;
  /** False for a model without tokenizer.json: it takes token ids only (see Tokenizer.idsOnly). */
  readonly hasText: boolean;
  private readonly inner: HFTokenizer | null;
  private readonly cleanUpSpaces: boolean;
  private readonly noText: string;

  /** From tokenizer.json's content (and tokenizer_config.json's); see also fromFolder and idsOnly. */
  constructor(tokenizerJson: object, tokenizerConfig: object = {}, idsOnly?: IdsOnly) {
    this.config = { ...(tokenizerConfig as JsonObject) };
    this.cleanUpSpaces = this.config.clean_up_tokenization_spaces === true;
    this.noText = idsOnly?.why ?? "";
    if (idsOnly) {
      this.inner = null;
      this.hasText = false;
      this.eosTokenId = idsOnly.eosTokenId ?? null;
      this.bosTokenId = idsOnly.bosTokenId ?? null;
      this.vocabSize = idsOnly.vocabSize;
      this.padTokenId = idsOnly.padTokenId ?? this.fallbackPad();
      return;
    }
    try {
      this.inner = new HFTokenizer(tokenizerJson, this.config);
    } catch (e) {
      throw new TokenizerError(`tokenizer.json could not be built: ${(e as Error).message}`, { cause: e });
    }
    this.hasText = true;
    this.eosTokenId = this.specialId("eos_token");
    this.bosTokenId = this.specialId("bos_token");
    this.vocabSize = this.inner.get_vocab(true).size;
    this.padTokenId = this.specialId("pad_token") ?? this.fallbackPad();
  }

  /**
   * The id batches are padded with when none is named: the end-of-text id, as Hugging Face's generation does, or 0
   * where that is missing or outside the vocabulary (a config's eos id of a model whose vocabulary was cut down);
   * padded positions are masked, so any id in the vocabulary serves.
   */
  private fallbackPad(): number {
    const eos = this.eosTokenId;
    return eos !== null && (this.vocabSize <= 0 || eos < this.vocabSize) ? eos : 0;
  }

  /**
   * A stand-in for a model that has no tokenizer.json: token ids work as input (and generation gives ids), while
   * anything that needs text (a string input, decode) is a TokenizerError saying `why` and how to fix it.
   */
  static idsOnly(ids: IdsOnly): Tokenizer {
    return new Tokenizer({}, {}, ids);
  }

  /** An ids-only tokenizer with the vocabulary size and special ids of a model's config.json; `why` says where it came from. */
  static idsOnlyFor(config: Record<string, unknown>, why: string): Tokenizer {
    const id = (key: string) => (typeof config[key] === "number" ? (config[key] as number) : Array.isArray(config[key]) && typeof (config[key] as unknown[])[0] === "number" ? ((config[key] as number[])[0] as number) : null);
    return Tokenizer.idsOnly({ vocabSize: typeof config.vocab_size === "number" ? config.vocab_size : 0, eosTokenId: id("eos_token_id"), bosTokenId: id("bos_token_id"), padTokenId: id("pad_token_id"), why });
  }

  /** Reads tokenizer.json (required) and tokenizer_config.json (optional) from a model folder. */
  static async fromFolder(folder: string): Promise<Tokenizer> {
    const file = path.join(folder, "tokenizer.json");
    let json: unknown;
    try {
      json = JSON.parse(await fsp.readFile(file, "utf8"));
    } catch (e) {
      const missing = (e as NodeJS.ErrnoException).code === "ENOENT";
      throw new TokenizerError(`${file}: ${missing ? "missing (tsight needs a tokenizer.json; slow tokenizers such as tokenizer.model alone are not supported)" : `cannot be read (${(e as Error).message})`}`, { cause: e });
    }
    if (typeof json !== "object" || json === null) throw new TokenizerError(`${file}: is not a JSON object`);
    const config = (await readJsonObject(path.join(folder, "tokenizer_config.json"), false)) ?? {};
    return new Tokenizer(json, config);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return this.vocabulary("encode text").encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
  }

  /** Encodes texts and pads them to the longest, on the left by default, with `padTokenId`. */
  encodeBatch(texts: readonly string[], options: BatchOptions = {}): EncodedBatch {
    const ids = texts.map((t) => this.encode(t, options));
    const width = Math.max(0, ...ids.map((r) => r.length));
    const input = new BigInt64Array(ids.length * width).fill(BigInt(this.padTokenId));
    const mask = new BigInt64Array(ids.length * width);
    ids.forEach((row, b) => {
      const start = b * width + (options.paddingSide === "right" ? 0 : width - row.length);
      row.forEach((id, i) => {
        input[start + i] = BigInt(id);
        mask[start + i] = 1n;
      });
    });
    return { input_ids: new Tensor("int64", input, [ids.length, width]), attention_mask: new Tensor("int64", mask, [ids.length, width]), ids };
  }

  decode(ids: TokenIds, options: DecodeOptions = {}): string {
    const list = toNumbers(ids);
    if (list.length === 0) return "";
    return this.vocabulary("decode token ids").decode(list, { skip_special_tokens: options.skipSpecialTokens ?? false, clean_up_tokenization_spaces: this.cleanUpSpaces });
  }

  /** The token string of an id (e.g. "Ġself"), or undefined. */
  idToToken(id: number): string | undefined {
    return this.vocabulary("name a token").id_to_token(id);
  }
  tokenToId(token: string): number | undefined {
    return this.vocabulary("look up a token").token_to_id(token);
  }

  /** The vocabulary, or the TokenizerError of an ids-only tokenizer. */
  private vocabulary(what: string): HFTokenizer {
    if (!this.inner) throw new TokenizerError(`cannot ${what}: ${this.noText}`);
    return this.inner;
  }

  /** A decoder for streaming generated tokens as text; see `IncrementalDecoder`. */
  decodeStream(options: DecodeOptions = {}): IncrementalDecoder {
    return new IncrementalDecoder(this, options);
  }

  /** The id of a special token named in tokenizer_config.json (a string, or an object with `content`). */
  private specialId(key: string): number | null {
    const v = this.config[key];
    const content = typeof v === "string" ? v : typeof v === "object" && v !== null && typeof (v as { content?: unknown }).content === "string" ? (v as { content: string }).content : null;
    if (content === null) return null;
    return this.vocabulary("read special tokens").token_to_id(content) ?? null;
  }
}

/**
 * Turns generated token ids into text as they come. `push(id)` returns the text that is now complete: a token that
 * ends inside a multi-byte character returns "" until the tokens that finish it arrive. Text is decoded with the
 * previous emitted token as context, so decoders that treat a sequence's first token specially (a leading space)
 * give the same text as decoding everything at once. `flush()` returns whatever is left, incomplete or not.
 */
export class IncrementalDecoder {
  private readonly ids: number[] = [];
  /** ids[contextStart..emittedEnd] is context already emitted; ids[emittedEnd..] is pending. */
  private contextStart = 0;
  private emittedEnd = 0;

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly options: DecodeOptions = {},
  ) {}

  push(id: number | bigint): string {
    this.ids.push(Number(id));
    const context = this.tokenizer.decode(this.ids.slice(this.contextStart, this.emittedEnd), this.options);
    const text = this.tokenizer.decode(this.ids.slice(this.contextStart), this.options);
    if (text.length <= context.length || text.endsWith("\uFFFD")) return "";
    this.contextStart = this.emittedEnd;
    this.emittedEnd = this.ids.length;
    return text.startsWith(context) ? text.slice(context.length) : text.slice(commonPrefix(text, context));
  }

  /** The text of tokens still pending (with U+FFFD for an incomplete character), and resets nothing else. */
  flush(): string {
    if (this.emittedEnd === this.ids.length) return "";
    const context = this.tokenizer.decode(this.ids.slice(this.contextStart, this.emittedEnd), this.options);
    const text = this.tokenizer.decode(this.ids.slice(this.contextStart), this.options);
    this.contextStart = this.emittedEnd;
    this.emittedEnd = this.ids.length;
    return text.slice(commonPrefix(text, context));
  }

  /** Every id pushed so far. */
  get tokens(): readonly number[] {
    return this.ids;
  }
}

function commonPrefix(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

function toNumbers(ids: TokenIds): number[] {
  if (ids instanceof Tensor) {
    if (ids.dtype !== "int64" && ids.dtype !== "int32") throw new TokenizerError(`decode: token ids must be an int64 or int32 tensor, got ${ids.dtype}`);
    if (ids.shape.length > 1 && ids.shape.slice(0, -1).some((d) => d !== 1)) throw new TokenizerError(`decode: expected one sequence of ids, got a tensor of shape [${ids.shape.join(", ")}]; decode each row`);
    return ids.toArray();
  }
  return Array.from(ids as ArrayLike<number | bigint>, Number);
}
