/** tsight's public API. */
export * from "./tensor/index.js";
export { Module, ModuleList, type ModuleHooks } from "./nn/index.js";
export { buildModel, supportedModelTypes, ConfigError, WeightsError, type CausalLM, type ModelConfig, type GenerateOptions } from "./models/index.js";
export { Tokenizer, loadPretrained, embeddedModelNames, locateModel, readModelConfigs, readJsonObject, type LoadOptions } from "./hub/index.js";
export * from "./intervention/index.js";
// The LanguageModel users get is the remote-capable one (same API plus remote / backend / blocking).
export { LanguageModel, RemoteJob, HttpBackend, RemoteError, ClientError, FreeVariableError, NotAllowedError, toModelKey, fromModelKey, type Backend, type RemoteOptions } from "./client/index.js";
