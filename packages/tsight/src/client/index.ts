/** The client: HTTP backend, job handles, display, config, the remote LanguageModel, source checks (and the wire contract). */
export * from "../protocol/index.js";
export { interventionSource, freeVariables, FreeVariableError, NotAllowedError, SourceError, type FreeVariableUse, type InterventionSource, type SourceOptions } from "./source.js";
export { isBackend, isJobBackend, type Backend, type JobBackend, type EventsOptions, type ListJobsOptions, type SubmitOptions } from "./backend.js";
export { HttpBackend, ConnectionError, LostEventsError, errorFromResponse, IDEMPOTENCY_HEADER, type HttpBackendOptions, type RetryOptions } from "./http.js";
export { RemoteJob, type LocalEvent, type LocalHandler, type WaitOptions } from "./job.js";
export { JobDisplay, type StatusStream } from "./display.js";
export { SseParser, parseServerSentEvents, type ServerSentEvent } from "./sse.js";
export { RemoteConfigError, normalizeServerUrl } from "./server-url.js";
export { resolveRemoteTarget, remoteSettings, configFile, readRemoteConfig, type RemoteTargetOptions, type ConfigSources, type RemoteConfigFile, type RemoteSettings } from "./config.js";
export { runLocally, type LocalRunOptions } from "./local.js";
export { LanguageModel, REMOTE_OPTIONS, type RemoteOptions } from "./language-model.js";
export { OptionsError } from "../intervention/options.js";
export { runLocalStep } from "./local-step.js";
