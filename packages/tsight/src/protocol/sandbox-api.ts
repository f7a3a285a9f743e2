/**
 * What remote intervention code can use, declared once. The sandbox builds the isolate's objects (tensor methods,
 * global functions, envoys, tracers, caches, gradient scopes, sessions) from this table, the host checks every call
 * against it (names and argument kinds) before doing anything, and the client's free-variable check allows exactly
 * its global names. Nothing about this surface is written down twice.
 *
 * Argument kinds (a trailing `?`: may be left out or null; `...`: the rest of the arguments):
 *   tensor   a tensor                       value    a tensor or a number
 *   number   any number                     int      a whole number (may be negative: a dim)
 *   ints     a whole number or a list of them (dims, split sizes)
 *   shape    a list of whole numbers, 0 or more each
 *   int...   whole numbers as arguments, or one list of them (reshape(2, 3) or reshape([2, 3]))
 *   bool     true or false                  dtype    "float32", "int64", "int32" or "bool"
 *   string   a short string                 options  a plain object of numbers, booleans and short strings
 *   index... index entries: an integer, null, slice(...), a list of integers, an integer tensor, or "..."
 *   indices  a list of index entries        tensors  a list of tensors
 *   generator  a Generator (new Generator(seed)) function a function of the job's code
 *   any      any value that can cross (checked where it is used)
 */
export type ArgKind =
  | "tensor"
  | "value"
  | "number"
  | "int"
  | "ints"
  | "shape"
  | "int..."
  | "bool"
  | "dtype"
  | "string"
  | "options"
  | "index..."
  | "indices"
  | "tensors"
  | "generator"
  | "function"
  | "any"
  | "any...";
export type ArgSpec = ArgKind | `${Exclude<ArgKind, `${string}...`>}?`;

/** Tensor methods: pure functions of their tensors (nothing that mutates, hooks or reaches the model). */
export const TENSOR_METHODS = {
  // elementwise, two operands
  add: ["value"],
  sub: ["value"],
  mul: ["value"],
  div: ["value"],
  pow: ["value"],
  fmod: ["value"],
  maximum: ["value"],
  minimum: ["value"],
  eq: ["value"],
  ne: ["value"],
  lt: ["value"],
  le: ["value"],
  gt: ["value"],
  ge: ["value"],
  logicalAnd: ["value"],
  logicalOr: ["value"],
  logicalXor: ["value"],
  where: ["tensor", "value"],
  maskedFill: ["tensor", "number"],
  clamp: ["number?", "number?"],
  // elementwise, one operand
  neg: [],
  exp: [],
  log: [],
  log1p: [],
  softplus: ["number?", "number?"],
  sqrt: [],
  rsqrt: [],
  reciprocal: [],
  square: [],
  abs: [],
  sign: [],
  floor: [],
  ceil: [],
  round: [],
  tanh: [],
  sigmoid: [],
  relu: [],
  gelu: ["string?"],
  silu: [],
  erf: [],
  sin: [],
  cos: [],
  isnan: [],
  logicalNot: [],
  // dtype and copies
  to: ["dtype"],
  float: [],
  long: [],
  int: [],
  bool: [],
  clone: [],
  contiguous: [],
  detach: [],
  // reductions
  sum: ["ints?", "bool?"],
  mean: ["ints?", "bool?"],
  max: ["ints?", "bool?"],
  min: ["ints?", "bool?"],
  amax: ["ints?", "bool?"],
  amin: ["ints?", "bool?"],
  any: ["ints?", "bool?"],
  all: ["ints?", "bool?"],
  argmax: ["int?", "bool?"],
  argmin: ["int?", "bool?"],
  var: ["ints?", "options?"],
  std: ["ints?", "options?"],
  norm: ["number?", "ints?", "bool?"],
  logsumexp: ["ints", "bool?"],
  softmax: ["int"],
  logSoftmax: ["int"],
  cumsum: ["int", "bool?"],
  topk: ["int", "int?", "bool?"],
  sort: ["int?", "bool?"],
  argsort: ["int?", "bool?"],
  matmul: ["tensor"],
  // shapes
  reshape: ["int..."],
  view: ["int..."],
  flatten: ["int?", "int?"],
  squeeze: ["ints?"],
  unsqueeze: ["int"],
  transpose: ["int", "int"],
  permute: ["int..."],
  expand: ["int..."],
  expandAs: ["tensor"],
  repeatInterleave: ["int", "int?"],
  repeat: ["int..."],
  narrow: ["int", "int", "int"],
  flip: ["ints"],
  split: ["ints", "int?"],
  chunk: ["int", "int?"],
  tril: ["int?"],
  triu: ["int?"],
  // indexing
  indexSelect: ["int", "tensor"],
  gather: ["int", "tensor"],
  scatterAdd: ["int", "tensor", "tensor"],
  index: ["index..."],
  put: ["indices", "value"],
  // reading values
  numel: [],
  dim: [],
  size: ["int?"],
  item: [],
  tolist: [],
  toArray: [],
  toString: [],
} as const satisfies Record<string, readonly ArgSpec[]>;

/** Global functions that make tensors. */
export const TENSOR_FUNCTIONS = {
  tensor: ["any", "dtype?", "shape?"],
  zeros: ["shape", "dtype?"],
  ones: ["shape", "dtype?"],
  empty: ["shape", "dtype?"],
  full: ["shape", "number", "dtype?"],
  arange: ["number", "number?", "number?"],
  linspace: ["number", "number", "int"],
  logspace: ["number", "number", "int", "number?"],
  eye: ["int", "dtype?"],
  randn: ["shape", "generator?"],
  rand: ["shape", "generator?"],
  randint: ["int", "int", "shape", "generator?"],
  randperm: ["int", "generator?"],
  cat: ["tensors", "int?"],
  stack: ["tensors", "int?"],
  where: ["tensor", "value", "value"],
  einsum: ["string", "any..."],
  /** Behind `new Generator(seed)`: a seeded random generator the job's random functions advance. */
  Generator: ["int?"],
  /** A trainable copy of a float32 tensor (tsight's optim layer); only an optimizer step changes it. */
  parameter: ["tensor"],
  /** Behind `new SGD(params, options)`, `new Adam(...)`, `new AdamW(...)`: an optimizer (see OPTIMIZER_ACTIONS). */
  SGD: ["tensors", "options"],
  Adam: ["tensors", "options"],
  AdamW: ["tensors", "options"],
} as const satisfies Record<string, readonly ArgSpec[]>;

/** Functions of TENSOR_FUNCTIONS that are classes in tsight: the isolate's versions are called with `new`. */
export const CONSTRUCTORS = ["Generator", "SGD", "Adam", "AdamW"] as const satisfies readonly TensorFunction[];

/**
 * Autograd on a tensor, apart from TENSOR_METHODS because it reads or changes gradients: `loss.backward()` (the
 * job's own graph: model weights never require grad, so only its parameters get gradients), and `p.grad`,
 * `p.requiresGrad` read as properties.
 */
export const TENSOR_AUTOGRAD = {
  backward: { getter: false },
  grad: { getter: true },
  requiresGrad: { getter: true },
} as const satisfies Record<string, { getter: boolean }>;
export type TensorAutograd = keyof typeof TENSOR_AUTOGRAD;

/** Globals the isolate defines itself (no host call): `slice(start, stop, step)`, `new Generator(seed)`, the Tensor class, console. */
export const ISOLATE_GLOBALS = ["slice", "Generator", "Tensor", "console"] as const;

/** How a host action answers: a value, a promise, a step iterator, a cache, or a barrier function. */
export type Answer = "value" | "promise" | "steps" | "cache" | "barrier" | "never";

/** Actions of one kind of host object; a `getter` is read as a property (`tr.result`) rather than called. */
type Actions = Record<string, { args: readonly ArgSpec[]; answer: Answer; getter?: boolean }>;

/** What an invoke's tracer (`tr`) can do. */
export const TRACER_ACTIONS = {
  vars: { args: [], answer: "value", getter: true },
  stop: { args: ["any?"], answer: "never" },
  cache: { args: ["options?"], answer: "cache" },
  result: { args: [], answer: "promise", getter: true },
  next: { args: ["int?"], answer: "value" },
  iter: { args: ["ints", "int?"], answer: "steps" },
  all: { args: [], answer: "steps" },
  local: { args: ["function", "any?"], answer: "promise" },
  backward: { args: ["tensor", "function?"], answer: "promise" },
  invoke: { args: ["any", "any?"], answer: "promise" },
  barrier: { args: ["int"], answer: "barrier" },
} as const satisfies Actions;

/** What an envoy (`m.transformer.h[0]`) can do besides reading and writing `output`, `input` and `inputs`. */
export const ENVOY_ACTIONS = {
  skip: { args: ["any"], answer: "value" },
  call: { args: ["any..."], answer: "promise" },
  next: { args: ["int?"], answer: "value" },
} as const satisfies Actions;

/** What a cache from `tr.cache()` can do. */
export const CACHE_ACTIONS = {
  get: { args: ["string"], answer: "value" },
  /** The entry of a path, or the cache's own error saying why it was not recorded (what navigation reads). */
  entryAt: { args: ["string"], answer: "value" },
  keys: { args: [], answer: "value" },
  toObject: { args: [], answer: "value" },
} as const satisfies Actions;

/** What a gradient scope (the `g` of `tr.backward(loss, async (g) => ...)`) can do. */
export const GRAD_ACTIONS = {
  grad: { args: ["tensor"], answer: "promise" },
  setGrad: { args: ["tensor", "any"], answer: "value" },
} as const satisfies Actions;

/** What an optimizer (`new Adam([p], { lr })`) can do. */
export const OPTIMIZER_ACTIONS = {
  step: { args: [], answer: "value" },
  zeroGrad: { args: [], answer: "value" },
  lr: { args: [], answer: "value", getter: true },
  currentLr: { args: [], answer: "value", getter: true },
  steps: { args: [], answer: "value", getter: true },
  setLr: { args: ["number"], answer: "value" },
} as const satisfies Actions;

/** What a random generator (`new Generator(seed)`, passed to randn and its kin) can do besides being passed. */
export const GENERATOR_ACTIONS = {
  manualSeed: { args: ["number"], answer: "value" },
} as const satisfies Actions;

/**
 * What a decoder layer's KV cache (in the attention context a layer takes during generation: `(await layer.inputs)[1]`)
 * can do besides being passed back to a module call: tell how many positions it holds.
 */
export const KV_CACHE_ACTIONS = {
  length: { args: [], answer: "value", getter: true },
} as const satisfies Actions;

/** What a session (`model.session(async (s) => ...)`) can do. */
export const SESSION_ACTIONS = {
  vars: { args: [], answer: "value", getter: true },
  trace: { args: ["any", "any?", "any?"], answer: "promise" },
  scan: { args: ["any", "any?", "any?"], answer: "promise" },
  generate: { args: ["any", "any?", "any?", "any?"], answer: "promise" },
} as const satisfies Actions;

/** What a barrier (from `tr.barrier(n)`) can do: arrive and wait for the others. */
export const BARRIER_ACTIONS = {
  arrive: { args: [], answer: "promise" },
} as const satisfies Actions;

/** What a step iterator (from `tr.iter` / `tr.all`) can do. */
export const STEPS_ACTIONS = {
  next: { args: [], answer: "promise" },
} as const satisfies Actions;

/** Every kind of object job code holds, with its actions: what the sandbox's runtime and host dispatch both read. */
export const SANDBOX_OBJECTS = {
  tracer: TRACER_ACTIONS,
  envoy: ENVOY_ACTIONS,
  cache: CACHE_ACTIONS,
  grad: GRAD_ACTIONS,
  session: SESSION_ACTIONS,
  barrier: BARRIER_ACTIONS,
  steps: STEPS_ACTIONS,
  optimizer: OPTIMIZER_ACTIONS,
  generator: GENERATOR_ACTIONS,
  kvcache: KV_CACHE_ACTIONS,
} as const;
export type SandboxObject = keyof typeof SANDBOX_OBJECTS;
export type ActionOf<K extends SandboxObject> = keyof (typeof SANDBOX_OBJECTS)[K];

export type TensorMethod = keyof typeof TENSOR_METHODS;
export type TensorFunction = keyof typeof TENSOR_FUNCTIONS;
export type TracerAction = keyof typeof TRACER_ACTIONS;

/** JavaScript built-ins available in the sandbox (no timers, no I/O, no module system). */
export const JS_GLOBALS: readonly string[] = [
  "undefined", "NaN", "Infinity", "globalThis",
  "Object", "Function", "Array", "Number", "String", "Boolean", "Symbol", "BigInt", "Math", "JSON", "Date", "RegExp",
  "Map", "Set", "WeakMap", "WeakSet", "WeakRef", "Promise", "Reflect", "Proxy",
  "Error", "TypeError", "RangeError", "SyntaxError", "ReferenceError", "EvalError", "URIError", "AggregateError",
  "ArrayBuffer", "DataView", "Float32Array", "Float64Array", "Int8Array", "Int16Array", "Int32Array", "Uint8Array",
  "Uint16Array", "Uint32Array", "Uint8ClampedArray", "BigInt64Array", "BigUint64Array",
  "parseInt", "parseFloat", "isNaN", "isFinite", "encodeURIComponent", "decodeURIComponent", "encodeURI", "decodeURI",
];

/** The tensor globals of the sandbox: its functions and its own helpers. */
export const TENSOR_GLOBALS: readonly string[] = [...new Set([...Object.keys(TENSOR_FUNCTIONS), ...ISOLATE_GLOBALS.filter((n) => n !== "console")])];

/** Helpers TypeScript/esbuild emit into compiled functions (`__name` for keepNames); the sandbox defines them. */
export const COMPILER_HELPERS: readonly string[] = ["__name"];

/** Every name remote code may use without defining it. */
export const SANDBOX_GLOBALS: ReadonlySet<string> = new Set([...JS_GLOBALS, ...TENSOR_GLOBALS, "console", ...COMPILER_HELPERS]);
