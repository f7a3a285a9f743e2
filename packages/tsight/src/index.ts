/** tsight's public API. */
export * from "./tensor/index.js";
export * from "./optim/index.js";
// The building blocks, for module trees of one's own (traced with new Model(module)).
export { KVCache, Module, ModuleList, ModuleCallError, ParameterError, Linear, Conv1D, Embedding, LayerNorm, RMSNorm, Dropout, Activation, activationNames, Point, Points, AttentionPoints, MlpPoints, isPoint, holderRefusal, pointRefusal, transformerLensNames, transformerLensNotes, NO_SOURCE_HINT, type ModuleHooks, type ActivationName } from "./nn/index.js";
export { buildModel, supportedModelTypes, ConfigError, WeightsError, type CausalLM, type ModelConfig, type GenerateOptions, type LoadProgress } from "./models/index.js";
// The architectures, for typed envoy trees: LanguageModel.load(path, { architecture: MixtralForCausalLM }).
export { GPT2LMHeadModel, LlamaForCausalLM, GPTNeoXForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM, Olmo2ForCausalLM, MixtralForCausalLM, Qwen3MoeForCausalLM } from "./models/index.js";
export { Tokenizer, loadPretrained, embeddedModelNames, locateModel, readModelConfigs, readJsonObject, checkWeightDType, type LoadOptions } from "./hub/index.js";
export { HubError, UnknownModelError, ModelConfigError, TokenizerError, HubNotFoundError, HubAuthError, HubOfflineError, HubDownloadError } from "./hub/index.js";
// A load's progress as a bar on a terminal (the commands' own; for scripts that load big models too).
export { LoadBar, describeLoad, type BarStream, type LoadTotals } from "./cli/progress.js";
export * from "./intervention/index.js";
export { loadSae, saeMeta, embeddedSaeNames, SparseAutoencoder, SaeConfigError, saeConfig, moduleForHook, type SaeConfig, type SaeArchitecture, type LoadSaeOptions, type SaeSpec, type SaeMeta } from "./sae/index.js";
// The LanguageModel users get is the remote-capable one (same API plus remote / backend / blocking).
export { LanguageModel, RemoteJob, HttpBackend, RemoteError, ClientError, FreeVariableError, NotAllowedError, toModelKey, fromModelKey, type Backend, type RemoteOptions } from "./client/index.js";
