/** tsight's public API. */
export * from "./tensor/index.js";
export { Module, ModuleList, type ModuleHooks } from "./nn/index.js";
export { buildModel, supportedModelTypes, ConfigError, WeightsError, type CausalLM, type ModelConfig, type GenerateOptions } from "./models/index.js";
export { Tokenizer, loadPretrained, embeddedModelNames, type LoadOptions } from "./hub/index.js";
export * from "./intervention/index.js";
