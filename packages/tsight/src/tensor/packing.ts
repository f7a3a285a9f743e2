/**
 * Model weights held by kernels as constants, and repacked there for ONNX Runtime's matrix kernels.
 *
 * ONNX Runtime multiplies by a constant matrix it has repacked once much faster than by one fed at each call
 * (GPT-2-small's output layer at 128 tokens on a 2-core Xeon: 35 ms against 55 fed; a block's matrices 15-25%), but
 * it sums in another order then: the last bits differ. So whether a weight is repacked is decided once per weight
 * (`packs`) and every path follows it: the op-by-op `linear` (a kernel of its own holding the weight), a fused
 * block's graph and a decode step's graph. Fused and op-by-op results agree to the bit either way.
 *
 * Copies cost memory (ONNX Runtime keeps its own), so they are made within a budget (`mayCopyWeights`).
 */
import { evictPinned, heldWeightBytes, runKernel, tieToWeights, type RawTensor } from "./engine.js";
import { lazyNode } from "./node.js";
import { numberSetting, switchSetting } from "./settings.js";
import type { GraphBuilder } from "./onnx.js";
import type { Tensor } from "./tensor.js";

const os = lazyNode<typeof import("node:os")>("node:os");

let prepackSet: boolean | null = null;
let prepackFromEnv: boolean | undefined;

/** Whether weights are repacked for the matrix kernels: on unless TSIGHT_PREPACK=0 (or `setPrepack`). */
export function prepackWeights(): boolean {
  return prepackSet ?? (prepackFromEnv ??= switchSetting("TSIGHT_PREPACK", true));
}

/**
 * Turns repacking on or off in this thread for weights seen from now on (benchmarks, tests); null goes back to
 * TSIGHT_PREPACK. A weight already decided keeps its decision (its kernels exist).
 */
export function setPrepack(on: boolean | null): void {
  prepackSet = on;
}

/** The arrays of model parameters (set on a module): only those are worth a kernel of their own. */
const parameterArrays = new WeakSet<object>();

/** Notes that `t` is a module's parameter (Module.setParam). */
export function markParameter(t: Tensor): void {
  if (!t.isMeta && !t.packed) parameterArrays.add(t.data);
}

/** Per weight array: whether it is repacked (decided at its first use, kept while the array lives). */
const decisions = new WeakMap<object, boolean>();

/** The largest single weight repacked by default (GPT-2's 147 MiB output layer is; Llama-3's 1 GiB one is not). */
const MAX_PACKED_WEIGHT = 256 * 2 ** 20;

/**
 * Copies of a block's repacked matrix asked room for when it is decided, since every path must then hold it alike
 * (kernels holding it are made without asking again): the op-by-op kernel's, its fused graph's (one that gives
 * values read inside it is another), and a generation's steps' graph (the prompt's pass included). A matrix outside
 * the blocks (an output layer) has the op-by-op kernel only.
 */
const BLOCK_COPIES = 4;

/** Room asked for copies not made yet, per repacked array (see noteCopies); the arrays' sum is `pendingBytes`. */
const pending = new WeakMap<object, { bytes: number; left: number }>();
let pendingBytes = 0;
const pendingCollected = new FinalizationRegistry<{ bytes: number; left: number }>((p) => (pendingBytes -= p.bytes * p.left));

function decide(w: Tensor, yes: boolean, copies: number): void {
  decisions.set(w.data, yes);
  if (!yes) return;
  const room = { bytes: w.data.byteLength, left: copies };
  pending.set(w.data, room);
  pendingCollected.register(w.data, room);
  pendingBytes += room.bytes * room.left;
}

/** The bytes of weight copies the budget counts now: those held, and room reserved for repacked ones to come. */
export function countedCopyBytes(): number {
  return heldWeightBytes() + pendingBytes;
}

/** A kernel holding `weights` was made: the repacked ones' room asked for is now taken by a real copy. */
export function noteCopies(weights: readonly Tensor[]): void {
  for (const w of weights) {
    const room = pending.get(w.data);
    if (!room || room.left === 0) continue;
    room.left--;
    pendingBytes -= room.bytes;
  }
}

/**
 * Whether `w` is repacked wherever it multiplies (see the header): a float32 matrix set as a module's parameter,
 * trained by no optimizer (its values change at every step: kernels would be rebuilt at each), while repacking is
 * on and its copy fits the budget. A block's matrices are decided together before (decideTogether); one decided
 * here is outside them.
 */
export function packs(w: Tensor): boolean {
  if (w.isMeta || w.packed) return false;
  const known = decisions.get(w.data);
  if (known !== undefined) return known;
  const bytes = w.data.byteLength;
  decide(w, eligible(w) && bytes <= MAX_PACKED_WEIGHT && mayCopyWeights(bytes, Infinity), 1);
  return decisions.get(w.data)!;
}

const eligible = (w: Tensor): boolean => prepackWeights() && w.dtype === "float32" && w.shape.length === 2 && parameterArrays.has(w.data) && !w.requiresGrad;

/**
 * Decides the weights of one block not decided yet, all alike: repacked if room for their copies (BLOCK_COPIES
 * each) fits the budget, not when they are many (a block of a large model: its graph, built with them as constants,
 * takes seconds; see MAX_DEFAULT_COPY).
 */
export function decideTogether(weights: readonly Tensor[]): void {
  const undecided = weights.filter((w) => !w.isMeta && !w.packed && eligible(w) && !decisions.has(w.data));
  if (!undecided.length) return;
  const yes = bytesOf(weights) <= MAX_DEFAULT_COPY && mayCopyWeights(BLOCK_COPIES * bytesOf(undecided), Infinity);
  for (const w of undecided) decide(w, yes, BLOCK_COPIES);
}

/** The bytes the weights hold (a meta weight, which holds none, counts none). */
export const bytesOf = (weights: readonly Tensor[]): number => weights.reduce((n, w) => n + (w.isMeta ? 0 : w.data.byteLength), 0);

/** A number per weight array, for kernel keys (an array is replaced, never written, when a weight changes). */
const weightIds = new WeakMap<object, number>();
let nextWeightId = 0;

const PREPACKED = " prepacked";

/**
 * `base` (a graph's key) with its constant weights named by identity, and whether its kernel repacks them: when one
 * is a repacked matrix (the others are then vectors: a matrix not repacked is fed, see fuse.ts's planInputs).
 */
export function boundKey(base: string, weights: readonly Tensor[]): string {
  if (!weights.length) return base;
  const ids = weights.map((w) => {
    let id = weightIds.get(w.data);
    if (id === undefined) weightIds.set(w.data, (id = nextWeightId++));
    return id;
  });
  return `${base}\nweights:${ids.join(",")}${weights.some(packs) ? PREPACKED : ""}`;
}

/** Whether a kernel key made by boundKey repacks its weights. */
const isPrepacked = (key: string): boolean => key.endsWith(PREPACKED);

/**
 * Runs a kernel whose graph holds `weights` as constants (`build` adds them): kept until they change or are
 * collected, counted against the budget, repacked as its key says. `holds`: their bytes, when known already.
 */
export function runHolding(key: string, weights: readonly Tensor[], build: (g: GraphBuilder) => void, inputs: readonly RawTensor[], holds = bytesOf(weights)): RawTensor[] {
  const out = runKernel(
    key,
    (g) => {
      build(g);
      if (holds) tieToWeights(key, weights.map((w) => w.data));
      noteCopies(weights);
    },
    inputs,
    { holds, largestHeld: weights.reduce((n, w) => Math.max(n, w.data.byteLength), 0), prepack: holds > 0 && isPrepacked(key) },
  );
  if (holds) evictPinned(heldLimit ?? Math.max(copyBudget() ?? 0, (quarterOfMemory ??= memory().total / 4)), key);
  return out;
}

/**
 * The most bytes of weights ONNX Runtime's kernels hold, copies all: a quarter of the machine's memory (a container's
 * limit, if lower), or TSIGHT_WEIGHT_COPY_MB if more. The copy budget (see mayCopyWeights) keeps the copies a model's
 * own graphs make within it; graphs that code makes (the values a trace reads, a generation step's edits) are made
 * anew as the code changes, each with its copy, and the least recently used go past it (see engine.ts's
 * evictPinned). A safety net: fusion.ts keeps a few of each module's step graphs made for code.
 */
let heldLimit: number | undefined;
let quarterOfMemory: number | undefined;

/** Sets the limit of the weights kernels hold in this thread (tests); null goes back to the default. */
export function setHeldWeightLimit(bytes: number | null): void {
  heldLimit = bytes ?? undefined;
}

let weightBudget: number | null | undefined;
/** Sets the budget of mayCopyWeights in this thread (tests, benchmarks); null goes back to the default. */
export function setWeightCopyBudget(bytes: number | null): void {
  weightBudget = bytes ?? undefined;
}

/**
 * Whether ONNX Runtime may hold a copy of `bytes` more of weights. Within TSIGHT_WEIGHT_COPY_MB when set; else for
 * copies up to `largest` at once, while this thread's copies stay within a quarter of the machine's memory (a
 * container's limit, if lower) and a quarter of it stays available after this one (several models' threads, each
 * with its own copies, must not fill it). Past that, weights are fed: no copy, slower. The copies counted are those
 * held and those repacked matrices are promised (see BLOCK_COPIES).
 */
export function mayCopyWeights(bytes: number, largest = MAX_DEFAULT_COPY): boolean {
  const budget = copyBudget();
  const held = countedCopyBytes() + bytes;
  if (budget !== null) return held <= budget;
  if (bytes > largest) return false;
  const { total, available } = memory();
  return held <= total / 4 && available - bytes >= total / 4;
}

/** TSIGHT_WEIGHT_COPY_MB in bytes (or what setWeightCopyBudget set), null when not set. */
function copyBudget(): number | null {
  if (weightBudget === undefined) {
    const mb = numberSetting("TSIGHT_WEIGHT_COPY_MB", { min: 0, max: 2 ** 30 });
    weightBudget = mb === undefined ? null : mb * 2 ** 20;
  }
  return weightBudget;
}

/**
 * The largest block whose weights are copied by default. What a copy gains shrinks as blocks grow while its cost
 * does not: GPT-2-small (28 MiB blocks) prefills 9% faster at 128 tokens; a Llama-3.2-1B-shaped model (256 MiB
 * blocks) 1% (1994 against 2018 ms, without repacking), for 3.8 GiB more memory and a first forward of 19.5 s
 * instead of 2.2 (building its 16 graphs).
 */
export const MAX_DEFAULT_COPY = 64 * 2 ** 20;

/** The memory this process may use and how much of it is available: a container's limit when it has one. */
function memory(): { total: number; available: number } {
  const limit = process.constrainedMemory?.() ?? 0;
  const total = os.totalmem();
  if (limit > 0 && limit < total) return { total: limit, available: limit - process.memoryUsage.rss() };
  return { total, available: os.freemem() };
}
