/**
 * LanguageModel: what users hold. A causal LM with its tokenizer and configs, loaded by name, folder or Hugging
 * Face repo id, with or without weights.
 */
import { loadPretrained, type LoadedModel, type LoadOptions, type Tokenizer } from "../hub/index.js";
import { generate, type CausalLM, type GenerateOptions, type RawConfig } from "../models/index.js";
import type { Tensor } from "../tensor/index.js";
import { toBatch, type ModelInput } from "./inputs.js";

export interface GenerateCall extends Omit<GenerateOptions, "onStep"> {
  /** Called with each step's new tokens and their decoded text per row (streaming). */
  onToken?: (step: { tokens: number[]; text: string[]; step: number }) => void | Promise<void>;
}

export interface GenerateOutput {
  /** Prompt plus continuation ids, [batch, tokens]. */
  sequences: Tensor;
  /** Only the new tokens. */
  generated: Tensor;
  /** The continuation of each prompt, decoded. */
  text: string[];
}

export class LanguageModel {
  /** The name or path it was loaded from. */
  readonly name: string;
  readonly model: CausalLM;
  readonly tokenizer: Tokenizer;
  readonly config: RawConfig;
  readonly generationConfig: RawConfig | null;
  /** False for a meta model (shapes, no weights). */
  readonly dispatched: boolean;

  constructor(name: string, loaded: LoadedModel) {
    this.name = name;
    this.model = loaded.model;
    this.tokenizer = loaded.tokenizer;
    this.config = loaded.config;
    this.generationConfig = loaded.generationConfig;
    this.dispatched = loaded.dispatched;
  }

  /** Loads `stdlib-gpt2`, `stdlib-llama`, a model folder, or a Hugging Face repo id. */
  static async load(nameOrPath: string, options: LoadOptions = {}): Promise<LanguageModel> {
    return new LanguageModel(nameOrPath, await loadPretrained(nameOrPath, options));
  }

  /** Greedy or sampled continuation of each prompt (no interventions). */
  async generate(input: ModelInput, options: GenerateCall): Promise<GenerateOutput> {
    const { ids, mask } = toBatch(input, this.tokenizer);
    const decoders = Array.from({ length: ids.shape[0]! }, () => this.tokenizer.decodeStream());
    const eos = options.eosTokenId === undefined ? (this.generationConfig?.eos_token_id as number | number[] | undefined) : options.eosTokenId;
    const result = await generate(this.model, ids, mask, {
      ...options,
      eosTokenId: eos,
      padTokenId: options.padTokenId ?? this.tokenizer.padTokenId,
      onStep: options.onToken && ((tokens, step) => options.onToken!({ tokens, step, text: tokens.map((t, b) => decoders[b]!.push(t)) })),
    });
    const text = Array.from({ length: ids.shape[0]! }, (_, b) => this.tokenizer.decode(result.generated.index(b).toArray(), { skipSpecialTokens: true }));
    return { sequences: result.sequences, generated: result.generated, text };
  }
}
