/**
 * The execution engine: ONNX Runtime sessions, one per kernel, run synchronously.
 *
 * onnxruntime-node's public `InferenceSession.run` is async (it defers the native call with setImmediate). Eager
 * tensor math has to be synchronous (`h.mul(0.5)` returns a tensor), so we call the package's native binding, which
 * the public class wraps, directly. The version is pinned in package.json because this binding is internal.
 */
import { lazyNode } from "./node.js";

const nodeModule = lazyNode<typeof import("node:module")>("node:module");
const os = lazyNode<typeof import("node:os")>("node:os");
const workerThreads = lazyNode<typeof import("node:worker_threads")>("node:worker_threads");
import type { StorageArray, StorageDType } from "./dtype.js";
import { GraphBuilder } from "./onnx.js";
import { numberSetting, switchSetting } from "./settings.js";

/** What crosses into a kernel and back: a dense row-major array with its shape. */
export interface RawTensor {
  readonly dtype: StorageDType;
  readonly shape: readonly number[];
  readonly data: StorageArray;
}

interface NativeSession {
  loadModel(buffer: ArrayBufferLike, byteOffset: number, byteLength: number, options: object): void;
  run(feeds: Record<string, object>, fetches: Record<string, null>, options: object): Record<string, { type: StorageDType; dims: readonly number[]; data: StorageArray }>;
  dispose(): void;
  readonly inputMetadata: { name: string }[];
  readonly outputMetadata: { name: string }[];
}
interface NativeBinding {
  InferenceSession: new () => NativeSession;
}

const require = (id: string): unknown => nodeModule.createRequire(import.meta.url)(id);
let native: NativeBinding | undefined;
function binding(): NativeBinding {
  if (!native) {
    const mod = require("onnxruntime-node/dist/binding.js") as { binding: NativeBinding; initOrt(): void };
    mod.initOrt();
    native = mod.binding;
  }
  return native;
}

/** Threads per kernel: TSIGHT_THREADS, else every core this process may use. */
export function threadCount(): number {
  threads ??= numberSetting("TSIGHT_THREADS", { min: 1, max: 1024, integer: true }) ?? os.availableParallelism();
  return threads;
}
/** Read once: the environment is slow to read, and this is asked at every kernel call (see smallWork). */
let threads: number | undefined;

/** Ops whose kernels use more than one thread: the matrix products, where threads pay off, and GELU's gradient (a dozen ops over the MLP's activations). */
const THREADED_OPS = /^(matmul|linear|attention\(|fused:|gelu_grad)/;

/** How a kernel's session is made when its key does not decide it. */
export interface KernelOptions {
  threads?: number;
  /** false: no graph optimization (a Cast of a constant weight must not be folded into a float32 copy). */
  optimize?: boolean;
  /** Run independent branches of the graph at once, on this many threads. */
  parallelBranches?: number;
  /**
   * false: constant matrices are used as they are, not repacked for the matrix kernels (which sum in another order
   * than with a fed matrix, so results would differ from the op-by-op path's in the last bits).
   */
  prepack?: boolean;
  /**
   * The bytes of model weights the graph holds as constants: such a kernel is kept outside the bounded cache
   * (see `pinned`) and counted in `heldWeightBytes`.
   */
  holds?: number;
  /** The bytes of the largest weight array among those (how much work each of the graph's matrix products is). */
  largestHeld?: number;
}

/**
 * Switches, read once: every kernel threaded (TSIGHT_ALL_THREADED=1) and ONNX Runtime's arena on (TSIGHT_ARENA=1)
 * are for debugging; TSIGHT_SPIN says whether a weight-holding graph's threads spin during its runs (by default on
 * the main thread only: see sessionOptions).
 */
let switches: { allThreaded: boolean; arena: boolean; spin: boolean } | undefined;

function sessionOptions(key: string, options: KernelOptions): object {
  switches ??= { allThreaded: switchSetting("TSIGHT_ALL_THREADED", false), arena: switchSetting("TSIGHT_ARENA", false), spin: switchSetting("TSIGHT_SPIN", workerThreads.isMainThread) };
  // Every session owns a pool of intraOpNumThreads - 1 threads; small ops gain nothing from them.
  const threads = options.threads ?? (switches.allThreaded || THREADED_OPS.test(key) ? threadCount() : 1);
  // A graph holding weights (a block, a decode step, the model) runs many ops in a row: its threads spin between
  // them rather than sleep and be woken for each (GPT-2-small: prefill ~8% and decode ~6% faster), and stop
  // spinning when the run ends. Spinning past the run, as ONNX Runtime does by default, took the time slices of the
  // next graph's threads (prefill 2.4x slower) and of every eager call (10-15x slower). Not by default in a worker
  // thread: a server's model threads run graphs at once, and two GPT-2-small-sized models prefilling side by side
  // on 2 cores took 1.4x as long with spinning.
  const spin = switches.spin && (options.holds ?? 0) > 0 && threads > 1 ? "1" : "0";
  return {
    intraOpNumThreads: threads,
    interOpNumThreads: options.parallelBranches ?? 1,
    executionMode: options.parallelBranches ? "parallel" : "sequential",
    // A memory pattern keeps one buffer for all of a run's intermediates per input shape: for a widened weight,
    // that is its float32 copy, kept.
    enableMemPattern: !options.parallelBranches,
    graphOptimizationLevel: options.optimize === false ? "disabled" : "all",
    logSeverityLevel: LOG_FATAL_ONLY,
    // No arena: memory a big op took goes back when its tensors are collected, instead of staying with ORT (a
    // server's memory must come back after a job that made large tensors).
    enableCpuMemArena: switches.arena,
    extra: { session: { ...(options.prepack === false ? { disable_prepacking: "1" } : {}), intra_op: { allow_spinning: spin }, force_spinning_stop: spin, inter_op: { allow_spinning: "0" } } },
  };
}

/**
 * ONNX Runtime logs only fatal errors: a failing run also throws its error, and its log line (which may quote a
 * job's own strings, newlines and escape sequences included) went to the server's stderr, once per failing call.
 */
const LOG_FATAL_ONLY = 4;
const RUN_OPTIONS = { logSeverityLevel: LOG_FATAL_ONLY };

/** A compiled graph and the names of its inputs and outputs. */
export class Kernel {
  private readonly session: NativeSession;
  private readonly inputNames: string[];
  private readonly fetches: Record<string, null>;
  private readonly outputNames: string[];

  constructor(readonly key: string, model: Uint8Array, options: KernelOptions = {}) {
    this.session = new (binding().InferenceSession)();
    this.session.loadModel(model.buffer, model.byteOffset, model.byteLength, sessionOptions(key, options));
    this.inputNames = this.session.inputMetadata.map((m) => m.name);
    this.outputNames = this.session.outputMetadata.map((m) => m.name);
    this.fetches = Object.fromEntries(this.outputNames.map((n) => [n, null]));
  }

  /** Frees the session (and its threads). */
  dispose(): void {
    this.session.dispose();
  }

  run(inputs: readonly RawTensor[]): RawTensor[] {
    if (inputs.length !== this.inputNames.length) throw new Error(`kernel ${this.key} takes ${this.inputNames.length} inputs, got ${inputs.length}`);
    const feeds: Record<string, object> = {};
    for (let i = 0; i < inputs.length; i++) {
      const t = inputs[i]!;
      feeds[this.inputNames[i]!] = { type: t.dtype, dims: t.shape, data: t.data, location: "cpu" };
    }
    const result = this.session.run(feeds, this.fetches, RUN_OPTIONS);
    return this.outputNames.map((n) => {
      const r = result[n]!;
      return { dtype: r.type, shape: r.dims, data: r.data };
    });
  }
}

/** Kernels kept, least recently used first. Attributes (axes, permutations) make keys, so the cache is bounded. */
const kernels = new Map<string, Kernel>();
const MAX_KERNELS = 256;
/**
 * Kernels that hold a model's weights as constants (a fused block), with those weights' bytes: outside the bounded
 * cache, whose evictions would rebuild them (costly) or whose bound they would fill; they go when their weights
 * change or are collected.
 */
const pinned = new Map<string, { kernel: Kernel; bytes: number }>();
let pinnedBytes = 0;
let kernelRuns = 0;
let kernelBuilds = 0;

/**
 * The kernel for `key`, built by `build` the first time the key is seen. The key must name everything the
 * graph depends on (op, attributes, input dtypes) and the options; shapes are not part of it, graphs are
 * shape-generic. `options` apply when it is made.
 */
export function kernel(key: string, build: (g: GraphBuilder) => void, options: KernelOptions = {}): Kernel {
  const held = pinned.get(key);
  if (held) {
    // Most recently used last (see evictPinned).
    pinned.delete(key);
    pinned.set(key, held);
    return held.kernel;
  }
  let k = kernels.get(key);
  if (k) {
    kernels.delete(key);
    kernels.set(key, k);
    return k;
  }
  const g = new GraphBuilder();
  build(g);
  k = new Kernel(key, g.build(), options);
  kernelBuilds++;
  if (options.holds) {
    pinned.set(key, { kernel: k, bytes: options.holds });
    pinnedBytes += options.holds;
    return k;
  }
  kernels.set(key, k);
  if (kernels.size > MAX_KERNELS) {
    const [oldest, evicted] = kernels.entries().next().value as [string, Kernel];
    kernels.delete(oldest);
    evicted.dispose();
  }
  return k;
}

/**
 * Frees the least recently used kernels holding weights, but `keep`, while the weights they hold exceed `limit`
 * bytes: graphs made by code (a step's edits, the values a trace reads) are many over time, and each holds a copy.
 */
export function evictPinned(limit: number, keep: string): void {
  if (pinnedBytes <= limit) return;
  for (const [key, held] of pinned) {
    if (pinnedBytes <= limit) return;
    if (key === keep) continue;
    pinned.delete(key);
    pinnedBytes -= held.bytes;
    held.kernel.dispose();
  }
}

/** Whether a kernel for `key` is made (and kept). */
export function hasKernel(key: string): boolean {
  return pinned.has(key) || kernels.has(key) || pinned.has(key + ONE_THREAD) || kernels.has(key + ONE_THREAD);
}

/** The bytes of weights the kernels kept hold as constants (ONNX Runtime's copies of them). */
export function heldWeightBytes(): number {
  return pinnedBytes;
}

/** Frees the kernel for `key`, if there is one (the next run with that key builds it again). */
export function dropKernel(key: string): void {
  if (!key.endsWith(ONE_THREAD)) dropKernel(key + ONE_THREAD);
  const held = pinned.get(key);
  if (held) {
    pinned.delete(key);
    pinnedBytes -= held.bytes;
    held.kernel.dispose();
    return;
  }
  const k = kernels.get(key);
  if (!k) return;
  kernels.delete(key);
  k.dispose();
}

/** How many graphs (see fuse.ts's WeightBinding) use each pinned kernel's key. */
const users = new Map<string, number>();

/** One more graph uses the pinned kernel `key` (made now or later). */
export function retainKernel(key: string): void {
  users.set(key, (users.get(key) ?? 0) + 1);
}

/** One graph fewer uses the pinned kernel `key`: with none left, it is freed. */
export function releaseKernel(key: string): void {
  const n = (users.get(key) ?? 0) - 1;
  if (n > 0) return void users.set(key, n);
  users.delete(key);
  dropKernel(key);
}

/**
 * The pinned kernels holding each weight array as a constant: one set per array, registered once for its
 * collection (emptied when the array's tensor takes other values, filled again when it is bound again).
 */
const kernelsOfWeight = new WeakMap<object, Set<string>>();
/** An array collected: no graph can use the kernels holding it any more. */
const weightsCollected = new FinalizationRegistry<Set<string>>((keys) => {
  for (const key of keys) {
    users.delete(key);
    dropKernel(key);
  }
});

/** Ties the pinned kernel `key` to the weight arrays it holds: it is freed when one is released or collected. */
export function tieToWeights(key: string, arrays: readonly object[]): void {
  for (const a of arrays) {
    let keys = kernelsOfWeight.get(a);
    if (!keys) {
      kernelsOfWeight.set(a, (keys = new Set()));
      weightsCollected.register(a, keys);
    }
    keys.add(key);
  }
}

/** Frees the kernels holding `array` as a constant (its tensor has taken other values). */
export function releaseWeight(array: object): void {
  const keys = kernelsOfWeight.get(array);
  if (!keys) return;
  for (const key of keys) dropKernel(key);
  keys.clear();
}

export function runKernel(key: string, build: (g: GraphBuilder) => void, inputs: readonly RawTensor[], options: KernelOptions = {}): RawTensor[] {
  kernelRuns++;
  if (options.threads === undefined) {
    const largest = options.largestHeld ?? options.holds ?? 0;
    // A kernel holding weights has one form (each would hold a copy of them): its first call's work decides which.
    const small = options.holds ? pinned.has(oneThreadKey(key)) || (!pinned.has(key) && smallWork(key, inputs, largest)) : smallWork(key, inputs, 0);
    if (small) return kernel(oneThreadKey(key), build, { ...options, threads: 1 }).run(inputs);
  }
  return kernel(key, build, options).run(inputs);
}

/**
 * Below this much work a threaded kernel runs on one thread: waking a sleeping thread for each of a graph's ops
 * costs more than it saves (stdlib-gpt2 at 5 tokens: 1.79 ms a forward on one thread, 2.07 on two). The work is
 * told by the largest weight the kernel holds (the size of its matrix products) and the bytes fed to it (a block of
 * a small model at a few tokens, or the whole model), so GPT-2-small's blocks (9 MiB matrices), whose one-row
 * decode steps are bound by memory, stay threaded. A kernel holding weights is made in one form only, as its first
 * call's work says.
 */
const SMALL_HELD = 8 * 2 ** 20;
const SMALL_FED = 64 * 2 ** 10;
/** The key of a kernel's one-thread form (see smallWork): freed with it. */
const ONE_THREAD = "\none thread";

/**
 * The one-thread form's key, the same string each time: a string made anew is hashed anew at each lookup, and a
 * fused graph's key runs to kilobytes.
 */
const oneThreadKeys = new Map<string, string>();
function oneThreadKey(key: string): string {
  let k = oneThreadKeys.get(key);
  if (k === undefined) {
    if (oneThreadKeys.size >= 4 * MAX_KERNELS) oneThreadKeys.clear();
    oneThreadKeys.set(key, (k = key + ONE_THREAD));
  }
  return k;
}

function smallWork(key: string, inputs: readonly RawTensor[], largestHeld: number): boolean {
  if (largestHeld > SMALL_HELD || threadCount() === 1 || !THREADED_OPS.test(key)) return false;
  let fed = 0;
  for (const t of inputs) fed += t.data.byteLength;
  return fed <= SMALL_FED;
}

/**
 * Counters for benchmarks and tests: kernels kept, kernels built and kernel calls so far, bytes of weights held as
 * graph constants.
 */
export function engineStats(): { kernels: number; builds: number; runs: number; weightBytes: number } {
  return { kernels: kernels.size + pinned.size, builds: kernelBuilds, runs: kernelRuns, weightBytes: pinnedBytes };
}
