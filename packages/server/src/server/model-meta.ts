/**
 * What a client needs to build a meta model (no weights) of a served model: config.json, generation_config.json,
 * tokenizer.json and tokenizer_config.json, read from the model's folder.
 */
import path from "node:path";
import { readJsonObject, readModelConfigs } from "tsight";
import type { ModelMeta } from "tsight/protocol";

export async function readModelMeta(key: string, folder: string): Promise<ModelMeta> {
  const { config, generationConfig } = await readModelConfigs(folder);
  // A model without tokenizer.json is served for token ids only (tokenizer: null).
  const tokenizer = await readJsonObject(path.join(folder, "tokenizer.json"), false);
  const tokenizerConfig = await readJsonObject(path.join(folder, "tokenizer_config.json"), false);
  return { key, config, generationConfig, tokenizer: tokenizer ?? null, tokenizerConfig: tokenizerConfig ?? {} };
}
