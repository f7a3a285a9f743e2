/** The remote layer: protocol, value codec, model keys, the client (backends, jobs) and intervention sources. */
export * from "./protocol.js";
export { encodeValue, decodeValue, encodeEnvelope, decodeEnvelope, packValue, unpackValue, packBase64, unpackBase64, CodecError } from "./codec.js";
export { RemoteError, ClientError, errorFromInfo, infoFromError } from "./errors.js";
export { toModelKey, fromModelKey, canonicalModelKey, registerModelClass, ModelKeyError, type ModelKeyArgs, type ParsedModelKey } from "./model-key.js";
export { decodeJob, ValidationError, type DecodedJob, type ExecutionContext, type JobExecutor } from "./executor.js";
export { SANDBOX_GLOBALS, JS_GLOBALS, TENSOR_GLOBALS, COMPILER_HELPERS } from "./globals.js";
export { interventionSource, freeVariables, FreeVariableError, NotAllowedError, SourceError, type FreeVariableUse, type InterventionSource, type SourceOptions } from "./source.js";
export { isBackend, type Backend, type JobBackend, type EventsOptions, type ListJobsOptions } from "./backend.js";
export { HttpBackend, ConnectionError, errorFromResponse, type HttpBackendOptions, type RetryOptions } from "./http.js";
export { RemoteJob, type LocalEvent, type LocalHandler, type WaitOptions } from "./job.js";
export { JobDisplay, type StatusStream } from "./display.js";
export { SseParser, parseServerSentEvents, type ServerSentEvent } from "./sse.js";
export { RemoteConfigError, normalizeServerUrl } from "./server-url.js";
export { resolveRemoteTarget, remoteSettings, configFile, readRemoteConfig, type RemoteTargetOptions, type ConfigSources, type RemoteConfigFile, type RemoteSettings } from "./config.js";
export { runLocally, registerLocalExecutor, type LocalRunOptions } from "./local.js";
export { LanguageModel, type RemoteOptions } from "./language-model.js";
export { runLocalStep } from "./local-step.js";
export { verifyWebhook, webhookSignature, WebhookVerificationError, type VerifyWebhookOptions, type WebhookProblem } from "./webhook.js";
