/** The client: HTTP backend, job handles, display, config, the remote LanguageModel, source checks (and the wire contract). */
export * from "../protocol/index.js";
export { interventionSource, freeVariables, FreeVariableError, NotAllowedError, SourceError, type FreeVariableUse, type InterventionSource, type SourceOptions } from "./source.js";
export { isBackend, type Backend, type JobBackend, type EventsOptions, type ListJobsOptions } from "./backend.js";
export { HttpBackend, ConnectionError, errorFromResponse, type HttpBackendOptions, type RetryOptions } from "./http.js";
export { RemoteJob, type LocalEvent, type LocalHandler, type WaitOptions } from "./job.js";
export { JobDisplay, type StatusStream } from "./display.js";
export { SseParser, parseServerSentEvents, type ServerSentEvent } from "./sse.js";
export { RemoteConfigError, normalizeServerUrl } from "./server-url.js";
export { resolveRemoteTarget, remoteSettings, configFile, readRemoteConfig, type RemoteTargetOptions, type ConfigSources, type RemoteConfigFile, type RemoteSettings } from "./config.js";
export { runLocally, type LocalRunOptions } from "./local.js";
export { LanguageModel, type RemoteOptions } from "./language-model.js";
export { runLocalStep } from "./local-step.js";
