/**
 * Names remote intervention code may use without defining them: JavaScript's own globals that exist inside the
 * sandbox, and the tensor functions the sandbox provides (the same names tsight exports). Anything else is a free
 * variable, refused on the client before the job is sent.
 */

/** JavaScript built-ins available in the sandbox (no timers, no I/O, no module system). */
export const JS_GLOBALS: readonly string[] = [
  "undefined", "NaN", "Infinity", "globalThis",
  "Object", "Function", "Array", "Number", "String", "Boolean", "Symbol", "BigInt", "Math", "JSON", "Date", "RegExp",
  "Map", "Set", "WeakMap", "WeakSet", "WeakRef", "Promise", "Reflect", "Proxy",
  "Error", "TypeError", "RangeError", "SyntaxError", "ReferenceError", "EvalError", "URIError", "AggregateError",
  "ArrayBuffer", "DataView", "Float32Array", "Float64Array", "Int8Array", "Int16Array", "Int32Array", "Uint8Array",
  "Uint16Array", "Uint32Array", "Uint8ClampedArray", "BigInt64Array", "BigUint64Array",
  "parseInt", "parseFloat", "isNaN", "isFinite", "encodeURIComponent", "decodeURIComponent", "encodeURI", "decodeURI",
  "console",
];

/** Tensor functions the sandbox defines as globals (a subset of tsight's exports, same behaviour). */
export const TENSOR_GLOBALS: readonly string[] = ["tensor", "zeros", "ones", "full", "arange", "eye", "cat", "stack", "where", "slice", "randn", "rand", "Generator", "Tensor"];

/** Helpers TypeScript/esbuild emit into compiled functions (`__name` for keepNames); the sandbox defines them. */
export const COMPILER_HELPERS: readonly string[] = ["__name"];

export const SANDBOX_GLOBALS: ReadonlySet<string> = new Set([...JS_GLOBALS, ...TENSOR_GLOBALS, ...COMPILER_HELPERS]);
