/**
 * The wire contract both sides share (DESIGN.md, "Remote protocol"): request and event types, the value codec
 * and envelope, error codes and their data form, model keys, the job-running contract (`decodeJob`,
 * `JobExecutor`), the names the sandbox defines, and webhook signatures. The server imports this, never the client.
 */
export * from "./wire.js";
export { encodeValue, decodeValue, encodeEnvelope, decodeEnvelope, packValue, unpackValue, packBase64, unpackBase64, toBase64, CodecError, ResultTooLargeError, MAX_DEPTH, MAX_JSON_DEPTH, MAX_JSON_VALUES, checkJsonText, FunctionSource, type FunctionEncoder } from "./codec.js";
export { RemoteError, ClientError, errorFromInfo, infoFromError } from "./errors.js";
export { toModelKey, fromModelKey, canonicalModelKey, registerModelClass, ModelKeyError, type ModelKeyArgs, type ParsedModelKey } from "./model-key.js";
export { decodeJob, pastDeadline, ValidationError, type DecodedJob, type ExecutionContext, type ExecutionModel, type JobExecutor } from "./executor.js";
export * from "./sandbox-api.js";
export { localStepSites } from "./local-steps.js";
export { verifyWebhook, webhookSignature, WebhookVerificationError, type VerifyWebhookOptions, type WebhookProblem } from "./webhook.js";
