export * from "./inputs.js";
export * from "./language-model.js";
export * from "./errors.js";
export { Tracer, InvokeTracer, type Barrier, type InterventionFn } from "./tracer.js";
export { GradScope } from "./backward.js";
export { Cache, type CacheOptions, type CacheEntry } from "./cache.js";
export type { EnvoyOf, EnvoyTree, AnyEnvoy } from "./envoy-types.js";
export { RowsError } from "./rows.js";
export { Mediator } from "./mediator.js";
