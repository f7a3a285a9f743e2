/**
 * Modules marked `fusible` (the decoder blocks) run as one fused ONNX Runtime graph when nothing inside them is
 * watched, or only read (see replay). The block's forward is captured once per kind of arguments (prompt length);
 * the kernel it compiles to holds the block's weights (see tensor/fuse.ts's WeightBinding) and serves every length.
 * Generation steps (a KV cache that grows) are captured at each step and run as one shape-free graph per block,
 * holding its repacked matrices as the other paths do (see tensor/packing.ts); a step with values read inside hands
 * them out of its graph as a block does (see replayedStep). Blocks that record gradients, or
 * whose forward cannot be captured, run op by op as before. Calls of the modules inside a fused block are counted
 * for the hooks (`pass`), so later calls keep their numbers.
 *
 * A small model is fusible as a whole ("whole", see models/registry.ts): for a few tokens (WHOLE_MODEL_ROWS) its
 * forward, or a generation step, is one graph, which hands out values read inside it as a block's does (see
 * holdOffs for what a replacement found meanwhile costs). Its mask and positions are then made by ops
 * (nn/attention.ts), and its rotary cos and sin picked from tables of every position (nn/rotary.ts), so the graph
 * never bakes in one call's values. A model whose forward still reads values (rope types that depend on the
 * sequence length, MoE routing) is not captured whole: its blocks' graphs run as before.
 */
import { argumentSignature, Capture, compileCapture, dropKernel, engineStats, fusionEnabled, isGradEnabled, runCaptured, runCaptureGeneric, runCaptureTapped, Tensor, UNKNOWN_VALUE, type CapturedCall, type FusedGraph } from "../tensor/index.js";
import { decideTogether } from "../tensor/packing.js";
import { cacheIn, KVCache } from "./cache.js";
import { Module, type InOrderValue, type ModuleHooks, type Replay, type StepEdits } from "./module.js";

/**
 * Per module: the fused graph for each kind of arguments, or null where its forward cannot be captured; all made
 * since the module tree last changed (Module.treeChanges: an SAE spliced in or removed makes them stale).
 */
const graphs = new WeakMap<Module, { changes: number; byArgs: Map<string, FusedGraph | null>; stale: FusedGraph[] }>();
/** Kinds of arguments remembered per module (prompt lengths, mostly); the oldest is forgotten past this. */
const MAX_SIGNATURES = 64;

/**
 * The module's forward as a fused graph, or null when it must run op by op. `forward` runs the module's own
 * forward (for the capture, and when capturing fails).
 */
export function fusedForward(module: Module, args: unknown[], hooks: ModuleHooks | null, forward: (args: unknown[]) => Promise<unknown>): Promise<unknown> | null {
  decideTogether(paramsOf(module));
  if (!fusionEnabled()) return null;
  // Something inside is watched: the block may still run fused and hand out its modules' values (see replay).
  const watched = hooks !== null && (!hooks.watchesWithin || hooks.watchesWithin(module.path));
  if (watched && !hooks.replay) return null;
  if (module.fusible === "whole" && (!wholeTakes(args) || wholeRefused.get(module) === Module.treeChanges)) return null;
  const cache = cacheIn(args);
  if (cache) {
    // Positions past a whole model's rotary tables: op by op computes them (its graph would fail on them).
    if (module.fusible === "whole" && cache.length + tokensIn(args) > positionsOf(module)) return null;
    if (!watched) return fusedStep(module, args, hooks, forward, cache);
    return holdingOff(module) ? null : replayedStep(module, args, hooks!, forward, cache);
  }
  if (watched && module.fusible === "whole" && holdingOff(module)) return null;
  const signature = argumentSignature(args);
  if (signature === null) return null;
  const byArgs = graphsOf(module);
  const known = byArgs.get(signature);
  if (known === null || known?.cannotRun()) return null;
  if (known) {
    // Most recently used last: the oldest-used kind of arguments is the one forgotten (see remember).
    byArgs.delete(signature);
    byArgs.set(signature, known);
  }
  const run = (graph: FusedGraph): unknown => {
    if (watched) return replay(module, hooks!, graph, args, forward);
    const out = graph.run(args);
    if (hooks) passInner(module, hooks, treeOf(module, graph)?.uncalled);
    return out;
  };
  if (known) return Promise.resolve().then(() => run(known));
  const params = fusableParams(module);
  if (!params) return null;
  return (async () => {
    let graph: FusedGraph | null = null;
    try {
      const capture = new Capture();
      const result = await runCaptured(capture, () => forward(args));
      graph = compileCapture(capture, args, params, result);
    } catch {
      graph = null; // reads data, or an op without a graph form: op by op from now on
    }
    if (graphsOf(module) !== byArgs) {
      // The module tree changed while the capture ran: the graph serves this call only.
      const out = await (graph ? run(graph) : forward(args));
      graph?.release();
      return out;
    }
    remember(byArgs, signature, graph);
    if (!graph) {
      // A whole model's forward that cannot be captured (routing reads values, an SAE without a graph form) will not
      // be at other lengths either: it is not tried again until the module tree changes.
      if (module.fusible === "whole") wholeRefused.set(module, Module.treeChanges);
      settleStale(module);
      return forward(args);
    }
    try {
      return await run(graph);
    } finally {
      settleStale(module);
    }
  })();
}

/**
 * The module's graphs by kind of arguments, forgotten when the module tree has changed. Their kernels are let go of
 * once a graph made since has run (see settleStale): a block the change did not touch makes the same kernel again,
 * which then survives instead of being built anew.
 */
function graphsOf(module: Module): Map<string, FusedGraph | null> {
  const known = graphs.get(module);
  if (known && known.changes === Module.treeChanges) return known.byArgs;
  const stale = [...(known?.stale ?? []), ...[...(known?.byArgs.values() ?? [])].filter((g): g is FusedGraph => g !== null)];
  const byArgs = new Map<string, FusedGraph | null>();
  graphs.set(module, { changes: Module.treeChanges, byArgs, stale });
  return byArgs;
}

/** Lets go of the module's graphs from before the last tree change (after one made since has taken its kernel). */
function settleStale(module: Module): void {
  const known = graphs.get(module);
  if (!known?.stale.length) return;
  for (const graph of known.stale) graph.release();
  known.stale = [];
}

/** Keeps `graph` for `signature`, letting go of one it replaces and, past MAX_SIGNATURES, of the oldest. */
function remember(byArgs: Map<string, FusedGraph | null>, signature: string, graph: FusedGraph | null): void {
  byArgs.get(signature)?.release();
  byArgs.set(signature, graph);
  if (byArgs.size <= MAX_SIGNATURES) return;
  const [oldest, old] = byArgs.entries().next().value!;
  byArgs.delete(oldest);
  old?.release();
}

/**
 * The module's parameters for a graph (each read again at every run, so new weights are used), or null while one
 * has no weights yet (the op-by-op path says so), records gradients (a graph has no gradient) or is packed (its
 * own kernel multiplies by it; a graph cannot take it).
 */
function fusableParams(module: Module): Map<Tensor, () => Tensor> | null {
  const params = new Map<Tensor, () => Tensor>();
  for (const slot of slotsOf(module)) {
    const t = slot.module.getParam(slot.name);
    if (!t || t.isMeta || t.packed || (t.requiresGrad && isGradEnabled())) return null;
    params.set(t, slot.read);
  }
  // Constant tensors the forward reads (rotary tables): fed like parameters, never frozen into the graph.
  for (const m of [module, ...innerModules(module)]) for (const t of m.buffers()) params.set(t, () => t);
  return params;
}

/** Per block: where its parameters are (walked once per shape of the tree), to read the tensors now. */
const paramSlots = new WeakMap<Module, { changes: number; slots: { module: Module; name: string; read: () => Tensor }[] }>();

function slotsOf(module: Module): { module: Module; name: string; read: () => Tensor }[] {
  let known = paramSlots.get(module);
  if (!known || known.changes !== Module.treeChanges) {
    const slots = [...module.namedParameters().values()].map(({ module, name }) => ({ module, name, read: () => module.getParam(name) }));
    paramSlots.set(module, (known = { changes: Module.treeChanges, slots }));
  }
  return known.slots;
}

/**
 * The block's parameters now. Whether its matrices are repacked is decided for all of them at once, before any
 * path multiplies by one (see packing.ts's decideTogether): a large model's blocks are then fed whichever path
 * runs first.
 */
function paramsOf(module: Module): Tensor[] {
  return slotsOf(module).map(({ module, name }) => module.getParam(name));
}

/** The path of a captured call's module (what FusedGraph.tapped and runCaptureTapped name calls by). */
const pathOf = (owner: object): string => (owner as Module).path;

/** Thrown through a replay when a module inside the block must really run (the block then runs op by op). */
class MustRun extends Error {}

/** What a fused run's module calls tell about counting them (see replay and passInner). */
interface CallTree {
  /** The paths of the modules called, but for operation points an op computed inside itself (a replay cannot give those). */
  paths: Set<string>;
  /** The paths of the modules below the block it did not call: never counted, as op by op never calls them. */
  uncalled: Set<string>;
  /**
   * Calls inside which no module is called twice, and none outside the call's own path, with the paths of the
   * modules below them not called: such a call nobody watches is counted in one step (see ModuleHooks.passWithin).
   */
  whole: Map<CapturedCall, Set<string>>;
  /**
   * The values of the calls in the order op by op gives them (a call's input, those of the calls inside it, its
   * output), with the indices of each module's input and output by its path, and the calls they are of in order
   * (each before those inside it); null when a module is called twice, or one outside the block (see Replay.inOrder).
   */
  inOrder: { values: InOrderValue[]; at: Map<string, [number, number]>; calls: readonly CapturedCall[] } | null;
}

/** Per fused graph: its call tree (null when its calls overlapped or were not captured). */
const trees = new WeakMap<FusedGraph, CallTree | null>();

function treeOf(block: Module, graph: FusedGraph): CallTree | null {
  let tree = trees.get(graph);
  if (tree === undefined) trees.set(graph, (tree = graph.calls ? callTree(block, graph.calls) : null));
  return tree;
}

function callTree(block: Module, calls: readonly CapturedCall[]): CallTree {
  const paths = new Set<string>();
  const called = new Set<string>();
  const whole = new Map<CapturedCall, Set<string>>();
  // The paths of the calls below `c`, or null when one is called twice or lies outside c's path.
  const walk = (c: CapturedCall): Set<string> | null => {
    const path = (c.owner as Module).path;
    called.add(path);
    if (!c.passed) paths.add(path);
    const below = new Set<string>();
    let once = true;
    for (const child of c.children) {
      const inner = walk(child);
      if (!inner) once = false;
      else for (const p of [(child.owner as Module).path, ...inner]) (once &&= !below.has(p) && isBelowPath(p, path)), below.add(p);
    }
    if (!once) return null;
    if (c.children.length) whole.set(c, uncalledBelow(c.owner as Module, below));
    return below;
  };
  calls.forEach(walk);
  return { paths, uncalled: uncalledBelow(block, called), whole, inOrder: valuesInOrder(block, calls) };
}

/** See CallTree.inOrder. */
function valuesInOrder(block: Module, calls: readonly CapturedCall[]): CallTree["inOrder"] {
  const values: InOrderValue[] = [];
  const at = new Map<string, [number, number]>();
  const flat: CapturedCall[] = [];
  let once = true;
  const walk = (c: CapturedCall): void => {
    const path = (c.owner as Module).path;
    once &&= path !== block.path && isBelowPath(path, block.path) && !at.has(path);
    const call = flat.push(c) - 1;
    const passed = !!c.passed;
    const both: [number, number] = [values.push({ path, kind: "input", call, passed }) - 1, -1];
    at.set(path, both);
    c.children.forEach(walk);
    both[1] = values.push({ path, kind: "output", call, passed }) - 1;
  };
  calls.forEach(walk);
  return once ? { values, at, calls: flat } : null;
}

/**
 * The paths of the modules below `module` not among `called`. A capture that notes no operation point nobody
 * watches (a generation step's: see Capture.replayable) has its points taken as called, as op by op counts them.
 */
function uncalledBelow(module: Module, called: ReadonlySet<string>, pointsNoted = true): Set<string> {
  const uncalled = new Set<string>();
  for (const m of innerModules(module)) if (!called.has(m.path) && (pointsNoted || !m.isOperationPoint)) uncalled.add(m.path);
  return uncalled;
}

/** Whether the module at `path` lies below the one at `above` (the root's path is ""). */
const isBelowPath = (path: string, above: string): boolean => above === "" || path.startsWith(`${above}.`);

/**
 * Per block: the values asked of the modules inside it, tapped from then on (the set grows, and shrinks to those
 * still read; see noteTapsUsed). Shared by
 * its graphs for every kind of arguments, so that a prompt of a new length needs no learning, and its tapped graph
 * is the same kernel as the other lengths' (one copy of the weights).
 */
const blockTaps = new WeakMap<Module, Set<string>>();

/**
 * A block with watched modules inside, run as its fused graph that also gives the values asked of the modules
 * inside it (FusedGraph.tapped); the values asked for are then handed out in the order op by op gives them
 * (Replay.inOrder, where the block calls each of its modules once: the calls counted at once afterwards), or the
 * calls go through the hooks in their order and nesting, each with a forward that gives the known result; either
 * way reads are answered as if the block ran op by op (a trace reading one value of stdlib-gpt2: 84-118 µs of
 * JavaScript in context through the hooks, 45-62 in order). Where something asked
 * needs a module to really run (a replacement, a skip, an operation point, a value the graph does not give),
 * before it is taken: the call counts go back and the block runs op by op from its start (the values handed out
 * already are those it computes again). A value asked that the graph did not give is tapped from the next run on:
 * a trace run again (a loop over prompts) stays fused.
 */
async function replay(block: Module, hooks: ModuleHooks, graph: FusedGraph, args: unknown[], forward: (args: unknown[]) => Promise<unknown>): Promise<unknown> {
  const calls = graph.calls;
  const tree = treeOf(block, graph);
  if (!calls || !tree) return forward(args);
  const session = hooks.replay!(block, tree.paths);
  if (!session) return forward(args);
  const tapped = (taps: ReadonlySet<string>) => {
    const made = graph.tapped(taps, pathOf);
    return made && (() => made.run(args));
  };
  try {
    return await handOut(block, hooks, tapped, args, forward, calls, tree, session);
  } finally {
    session.end();
  }
}

/**
 * How a replay runs its graph with values asked for as outputs too (`taps`, see FusedGraph.tapped): a function
 * giving the result and `real` (a call's captured value as in this run, or UNKNOWN_VALUE), which gives null when
 * the graph could not run; null when there is no such graph. `undo` (a generation step's) takes back what the run
 * did before the block runs op by op instead.
 */
type TappedRun = (taps: ReadonlySet<string>) => (() => { result: unknown; real: (captured: unknown) => unknown; undo?: () => void } | null) | null;

/** The body of replay (and of replayedStep), with its session begun (ended by the caller whatever happens here). */
async function handOut(block: Module, hooks: ModuleHooks, tappedRun: TappedRun, args: unknown[], forward: (args: unknown[]) => Promise<unknown>, calls: readonly CapturedCall[], tree: CallTree, session: Replay): Promise<unknown> {
  let taps = blockTaps.get(block);
  if (!taps) blockTaps.set(block, (taps = new Set()));
  for (const v of session.asked) addTap(block, taps, v);
  const run = tappedRun(taps);
  const ran = run?.();
  if (!ran) return forward(args);
  const { result, real, undo } = ran;
  // Whether the run op by op is only to learn a value to tap (not a replacement, skip or operation point).
  let learned = false;
  const learn = (value: string) => {
    addTap(block, taps, value);
    learned = true;
  };
  // A call with nothing asked of it or below it when its turn comes is counted, not played through the hooks.
  const quiet = hooks.watches && hooks.watchesWithin && hooks.pass ? (path: string) => !hooks.watches!(path) && !hooks.watchesWithin!(path) : () => false;
  const count = (call: CapturedCall): void => {
    hooks.pass!(call.owner as Module);
    const uncalled = hooks.passWithin && tree.whole.get(call);
    if (!uncalled) return call.children.forEach(count);
    hooks.passWithin!(call.owner as Module, uncalled);
  };
  const watchesItself = (path: string): boolean => !hooks.watches || hooks.watches(path);
  // Synchronous where it can be (a call counted, a call with no calls inside): a trace takes many of these, and
  // every await costs a microtask turn.
  const give = (call: CapturedCall): Promise<void> | void => {
    const module = call.owner as Module;
    if (quiet(module.path)) return count(call);
    // Asked for, but computed inside an op of the graph: only a run op by op (that op in steps) gives it.
    if (call.passed) throw new MustRun();
    return giveWatched(call, module);
  };
  const giveWatched = async (call: CapturedCall, module: Module): Promise<void> => {
    // A call watched only below it (the blocks above a value read) gets its captured values, which nobody asked for:
    // mapping them to this run's costs a walk of each, at every level above every read. One asked for while it is
    // handed out is mapped then (see done).
    const own = watchesItself(module.path);
    const input = own ? real(call.args) : UNKNOWN_VALUE;
    let output = own ? real(call.out) : UNKNOWN_VALUE;
    const gives = { input: input !== UNKNOWN_VALUE, output: output !== UNKNOWN_VALUE };
    if (session.needsRun(module.path, gives, learn)) throw new MustRun();
    // Values nobody asks for are not tapped: the calls get the captured ones, which no read can reach (a read of
    // them now or while they are handed out would have made the module run).
    const args_ = gives.input ? (input as unknown[]) : call.args;
    let out = gives.output ? output : call.out;
    const handOut = (a: unknown[]): unknown => {
      // Skipped as it was handed out, for some rows (code that reads the input and then skips the module).
      if (session.skipping(module.path)) throw new MustRun();
      // Replaced as it was handed out (code that reads a value and then replaces it).
      if (a !== args_) {
        session.keep(module.path, "input", a);
        throw new MustRun();
      }
      const inner = giveAll(call.children);
      return inner ? inner.then(done) : done();
    };
    const done = (): unknown => {
      if (!own && watchesItself(module.path)) {
        output = real(call.out);
        if ((gives.output = output !== UNKNOWN_VALUE)) out = output;
      }
      if (session.needsRun(module.path, gives, learn)) throw new MustRun();
      return out;
    };
    // Hooks that replay take a forward that may give its result itself (see ModuleHooks.replay).
    const got = await hooks.call(module, args_, handOut as (a: unknown[]) => Promise<unknown>);
    if (got !== out) {
      session.keep(module.path, "output", got);
      throw new MustRun();
    }
  };
  // The calls from `from` on, in order: synchronous until one must wait (no async frame per level of calls).
  const giveAll = (list: readonly CapturedCall[], from = 0): Promise<void> | void => {
    for (let i = from; i < list.length; i++) {
      const given = give(list[i]!);
      if (given) return given.then(() => giveAll(list, i + 1));
    }
  };
  // The values of the block's calls the code reads as they are handed out (see noteTapsUsed).
  const inBlock = (value: string) => tree.paths.has(value.slice(value.indexOf("|") + 1));
  const used = new Set<string>();
  const stopHearing = session.hearReads((value) => inBlock(value) && used.add(value));
  try {
    // Hooks that can hand the values out in order do it without playing the calls; the calls are then counted.
    const inOrder = tree.inOrder && session.inOrder;
    if (inOrder) {
      const { values, at, calls: flat } = tree.inOrder!;
      const valueOf = (v: InOrderValue): unknown => real(v.kind === "input" ? flat[v.call]!.args : flat[v.call]!.out);
      if (!(await inOrder(values, at, valueOf, learn))) throw new MustRun();
      passInner(block, hooks, tree.uncalled);
    } else await giveAll(calls);
  } catch (e) {
    stopHearing();
    if (!(e instanceof MustRun)) throw e;
    session.rewind();
    undo?.();
    if (!learned) {
      // A step's replay costs a capture as well as its graph's run: a block's steps hold off like a whole model.
      if (block.fusible === "whole" || undo) holdOff(block);
      return forward(args);
    }
    // Learning: every value of the block's calls the code reads while it runs op by op is tapped from the next run.
    const stop = session.hearReads((value) => inBlock(value) && addTap(block, taps, value));
    try {
      return await forward(args);
    } finally {
      stop();
    }
  }
  stopHearing();
  noteTapsUsed(block, taps, used);
  holdOffs.delete(block);
  return result;
}

/**
 * Per block: the values its replays handed out since its taps last changed, and in how many replays. Taps only grow
 * while code asks for more (a loop reading other values each time keeps one graph), but a graph giving values
 * nobody reads any more costs every run (stdlib-gpt2: a one-read trace took 1.32 ms after traces that read 20
 * values and an attention pattern, against 1.13 ms on a fresh model): after a number of replays (the block's
 * window) that read fewer of the values than are tapped, the taps become those read. A value dropped so and asked
 * for again doubles the window (from SHRINK_AFTER to MAX_SHRINK_AFTER): code that reads a value only now and then
 * (every 20th trace), or cycles through more values than the window holds, would otherwise have its graph rebuilt,
 * and the value learned op by op, again and again.
 */
const tapsUsed = new WeakMap<Module, { taps: Set<string>; size: number; read: Set<string>; replays: number }>();
/** Per block: its window, and the values its last shrink dropped. */
const shrinks = new WeakMap<Module, { window: number; dropped: Set<string> }>();
const SHRINK_AFTER = 8;
const MAX_SHRINK_AFTER = 1024;

function noteTapsUsed(block: Module, taps: Set<string>, read: ReadonlySet<string>): void {
  let use = tapsUsed.get(block);
  if (!use || use.taps !== taps || use.size !== taps.size) tapsUsed.set(block, (use = { taps, size: taps.size, read: new Set(), replays: 0 }));
  for (const value of read) use.read.add(value);
  const window = shrinks.get(block)?.window ?? SHRINK_AFTER;
  if (++use.replays < window) return;
  tapsUsed.delete(block);
  // Values read are not all tapped (an argument of the block is given without a tap): the taps kept are those read.
  const kept = [...taps].filter((v) => use.read.has(v));
  if (kept.length === taps.size) return;
  blockTaps.set(block, new Set(kept));
  shrinks.set(block, { window, dropped: new Set([...taps].filter((v) => !use.read.has(v))) });
}

/** Taps `value` in `block` from its next run; one its last shrink dropped doubles its window (see noteTapsUsed). */
function addTap(block: Module, taps: Set<string>, value: string): void {
  if (taps.has(value)) return;
  taps.add(value);
  const shrink = shrinks.get(block);
  if (!shrink?.dropped.delete(value)) return;
  shrink.window = Math.min(MAX_SHRINK_AFTER, shrink.window * 2);
}

/**
 * Counts a call of every module inside a fused one that its run called (all but those at the paths `uncalled`)
 * for the hooks, so later calls keep their numbers.
 */
function passInner(module: Module, hooks: ModuleHooks, uncalled: ReadonlySet<string> | undefined): void {
  if (hooks.passWithin) hooks.passWithin(module, uncalled);
  else for (const m of innerModules(module)) if (!uncalled?.has(m.path)) hooks.pass?.(m);
}

/** The modules below each fused module (walked once per shape of the tree: SAEs change it). */
const inner = new WeakMap<Module, { changes: number; modules: Module[] }>();

function innerModules(module: Module): Module[] {
  let known = inner.get(module);
  if (!known || known.changes !== Module.treeChanges) inner.set(module, (known = { changes: Module.treeChanges, modules: module.namedModules().slice(1).map(([, m]) => m) }));
  return known.modules;
}

/**
 * Per whole model (or block run as generation steps) whose last replays had to run op by op after all for a
 * replacement, skip or operation point found while its values were handed out (code that reads a value and then
 * replaces a later one): how many watched calls run op by op before it tries again, and how many the next such
 * failure skips. Each failure costs the graph's run (and a step's capture), so code that keeps doing that pays for it
 * rarely (doubling up to MAX_HOLD_OFF: reading a block's attention output and then replacing its MLP's at every
 * step cost 1.3-1.4x the op-by-op generation's time without this), and read-only code keeps the one graph. Learning
 * a value to tap does not count.
 */
const holdOffs = new WeakMap<Module, { left: number; next: number }>();
const MAX_HOLD_OFF = 64;

function holdOff(model: Module): void {
  const h = holdOffs.get(model);
  const next = Math.min(MAX_HOLD_OFF, h ? h.next * 2 : 1);
  holdOffs.set(model, { left: next, next });
}

/** Whether the whole model runs op by op this time (its last replays failed; see holdOffs). */
function holdingOff(model: Module): boolean {
  const h = holdOffs.get(model);
  if (!h || h.left === 0) return false;
  h.left--;
  return true;
}

/** Whole models whose capture failed, with the shape of the tree then (Module.treeChanges). */
const wholeRefused = new WeakMap<Module, number>();

/**
 * A whole model runs as one graph for at most this many rows (tokens over the batch). Its graph runs on one thread
 * (see tensor/engine.ts's smallWork); past this, its blocks' graphs do better. stdlib-gpt2, one graph against its
 * blocks' graphs: 1.24x at 1 token, 1.22x at 5, 1.10x at 32, 0.89x at 64.
 */
const WHOLE_MODEL_ROWS = 32;

/**
 * Whether a whole model's graph takes these arguments: its token ids (the first tensor) have at most
 * WHOLE_MODEL_ROWS values, and no positions are given (they may lie past the model's context, where its rotary
 * tables end; op by op computes them for any position).
 */
function wholeTakes(args: readonly unknown[]): boolean {
  const ids = idsIn(args);
  const options = args.find((a): a is { positionIds?: unknown } => a !== null && typeof a === "object" && !(a instanceof Tensor));
  return ids !== undefined && ids.numel() <= WHOLE_MODEL_ROWS && options?.positionIds === undefined;
}

/** A model call's token ids [batch, tokens]: the first tensor among its arguments. */
function idsIn(args: readonly unknown[]): Tensor | undefined {
  return args.find((a): a is Tensor => a instanceof Tensor);
}

/** The tokens per row of a model's call. */
function tokensIn(args: readonly unknown[]): number {
  return idsIn(args)?.shape[1] ?? 0;
}

/**
 * The positions a whole model's graph can take: the fewest of its modules' (see Module.capturedPositions), found
 * once per shape of the tree (asked at every generation step).
 */
const positions = new WeakMap<Module, { changes: number; n: number }>();
function positionsOf(model: Module): number {
  let known = positions.get(model);
  if (!known || known.changes !== Module.treeChanges) {
    let n = Infinity;
    for (const m of innerModules(model)) n = Math.min(n, m.capturedPositions ?? Infinity);
    positions.set(model, (known = { changes: Module.treeChanges, n }));
  }
  return known.n;
}

/**
 * Per module run as generation steps: the calls its last step made (see CallsSeen) and the paths of the modules below
 * it not called, with the shape of the tree then. Every step calls the same modules, mostly: they are compared, not
 * gathered into a set again.
 */
const stepCalls = new WeakMap<Module, { changes: number; seen: CallsSeen; uncalled: Set<string> }>();

/** The paths of the modules below `module` that its step (`capture`) did not call, or undefined if unknown. */
function uncalledInStep(module: Module, capture: Capture): Set<string> | undefined {
  if (!capture.callsNested) return undefined;
  const flat = inOrder(capture.calls);
  const known = stepCalls.get(module);
  if (known && known.changes === Module.treeChanges && sameCalls(flat, known.seen)) return known.uncalled;
  const uncalled = uncalledBelow(module, new Set(flat.map((c) => (c.owner as Module).path)), capture.replayable);
  stepCalls.set(module, { changes: Module.treeChanges, seen: seenOf(flat), uncalled });
  return uncalled;
}

/** Captured calls in order, each before the calls inside it. */
function inOrder(calls: readonly CapturedCall[]): CapturedCall[] {
  const flat: CapturedCall[] = [];
  const walk = (c: CapturedCall): void => {
    flat.push(c);
    c.children.forEach(walk);
  };
  calls.forEach(walk);
  return flat;
}

/**
 * A step's calls in order (see inOrder), to tell whether the next step's are the same: the modules called, whether
 * each was an operation point passed, and how many calls each made inside (which, in this order, fixes their nesting).
 */
interface CallsSeen {
  owners: object[];
  passed: boolean[];
  sizes: number[];
}

const seenOf = (flat: readonly CapturedCall[]): CallsSeen => ({ owners: flat.map((c) => c.owner), passed: flat.map((c) => !!c.passed), sizes: flat.map((c) => c.children.length) });

const sameCalls = (flat: readonly CapturedCall[], seen: CallsSeen): boolean =>
  flat.length === seen.owners.length && flat.every((c, i) => c.owner === seen.owners[i] && !!c.passed === seen.passed[i] && c.children.length === seen.sizes[i]);

/** Modules whose forward with a KV cache could not be captured (they run op by op with one). */
const unfusibleSteps = new WeakSet<Module>();
/**
 * Modules whose step graph has run: a later failure of it is of that call's values (a whole model's positions past
 * its rotary tables, through model.call with a long cache), which the step then runs op by op, not every step after.
 */
const stepsRan = new WeakSet<Module>();

/**
 * A block's forward with a KV cache (a generation step) as one graph. The code is captured at every call (it
 * changes the cache, and its lengths grow each step) but compiled once: the graph takes every shape as an input
 * and is looked up by its ops alone. The cache entries the code made are outputs of the graph, put into the cache
 * once it has run. With `edits` (nothing but edits by functions asked of the modules inside), the graph computes
 * them too, and they are done.
 */
function fusedStep(module: Module, args: unknown[], hooks: ModuleHooks | null, forward: (args: unknown[]) => Promise<unknown>, cache: KVCache, edits: StepEdits | null = null): Promise<unknown> | null {
  const params = stepParams(module, args, cache);
  if (!params) {
    edits?.release();
    return null;
  }
  const opByOp = () => letGo(edits, forward, args);
  return (async () => {
    const step = await captureStep(module, args, forward, cache, false, edits);
    if (!step) return opByOp();
    const builds = edits ? engineStats().builds : 0;
    const ran = runStep(module, step, () => runCaptureGeneric(step.capture, step.result, step.written, (t) => params.has(t)));
    if (!ran) return opByOp();
    if (edits) {
      editsRan(edits, builds);
      noteCodeKernel(module, ran.key);
    }
    if (hooks) passInner(module, hooks, uncalledInStep(module, step.capture));
    return ran.result;
  })();
}

/**
 * A generation step of a block (or a whole model) with modules inside watched: captured as fusedStep does, its graph
 * also gives the values asked of the modules inside, which are then handed out as a fused block's are (see replay);
 * what needs the block to really run (a replacement, a skip, a value the graph did not give) sends it back to run op
 * by op, with the cache as it was before the step. A small model read at every step (activations gathered while
 * generating) then runs one graph a step instead of its blocks' graphs and the ops between them. A step whose code
 * replaces or skips something inside runs op by op at once (the paths its last capture gave tell that before a
 * capture is paid for).
 */
function replayedStep(module: Module, args: unknown[], hooks: ModuleHooks, forward: (args: unknown[]) => Promise<unknown>, cache: KVCache): Promise<unknown> | null {
  const params = stepParams(module, args, cache);
  if (!params || !hooks.replay) return null;
  const known = stepPaths.get(module);
  if (known?.never && known.changes === Module.treeChanges) return null;
  // Edits by functions inside (steering) are set aside first: the graph computes them, so they need no run op by op.
  // With nothing else asked inside, nothing is handed out: the step runs as an unwatched one, its edits in its graph.
  const edits = hooks.stepEdits?.(module) ?? null;
  if (edits?.alone) return fusedStep(module, args, hooks, forward, cache, edits);
  if (known && known.changes === Module.treeChanges) {
    const probe = hooks.replay(module, known.paths);
    probe?.end();
    if (!probe || asksFor(probe, known.cacheInputs)) {
      edits?.release();
      return null;
    }
  }
  const opByOp = () => letGo(edits, forward, args);
  return (async () => {
    const step = await captureStep(module, args, forward, cache, true, edits);
    if (!step) return opByOp();
    const calls = step.capture.callsNested && step.capture.calls.length > 0 ? step.capture.calls : null;
    if (!calls) {
      // Its calls overlapped (their nesting is unknown): nothing can be handed out, at this step or later ones.
      stepPaths.set(module, { changes: Module.treeChanges, paths: new Set(), cacheInputs: new Set(), never: true });
      return opByOp();
    }
    const { tree, cacheInputs } = stepStructure(module, calls);
    stepPaths.set(module, { changes: Module.treeChanges, paths: tree.paths, cacheInputs });
    const session = hooks.replay!(module, tree.paths);
    if (session && asksFor(session, cacheInputs)) session.end();
    else if (session) {
      const tapped: TappedRun = (taps) => () => {
        const builds = edits ? engineStats().builds : 0;
        const ran = runStep(module, step, () => runCaptureTapped(step.capture, step.result, step.written, taps, pathOf, (t) => params.has(t)));
        if (ran && (taps.size > 0 || edits)) noteCodeKernel(module, ran.key);
        if (!ran || !edits) return (edits?.release(), ran);
        // A run op by op after all (something handed out needs one) applies them again.
        editsRan(edits, builds);
        return { ...ran, undo: () => (ran.undo(), edits.restore()) };
      };
      try {
        return await handOut(module, hooks, tapped, args, opByOp, calls, tree, session);
      } finally {
        session.end();
      }
    }
    return opByOp();
  })();
}

/**
 * Per module replayed as generation steps, from its last step's capture: the paths of the modules it called, and
 * the inputs holding the KV cache (`input|PATH`: a block's, its attention's), which a step's graph cannot hand out.
 * The cache is written by the graph before any value is handed out, where op by op a block's call sees it without
 * its own keys and those after it; and a block skipped as its input is handed out must really be skipped (its keys
 * not written), which only a run op by op from the step's start does.
 */
const stepPaths = new WeakMap<Module, { changes: number; paths: ReadonlySet<string>; cacheInputs: ReadonlySet<string>; never?: true }>();

/**
 * Per module replayed as generation steps: its last step's call tree and the inputs holding the KV cache (`input|PATH`,
 * see stepPaths), with the calls it made (see CallsSeen) and, by a call's place in their order, its entry in the
 * tree's `whole`. Every step calls the same modules, mostly: walking the tree again cost stdlib-gpt2 about 60 µs
 * a step (of 2-2.5 ms).
 */
const stepStructures = new WeakMap<Module, { changes: number; seen: CallsSeen; wholeAt: Map<number, Set<string>>; tree: CallTree; cacheInputs: ReadonlySet<string> }>();

/**
 * The call tree of a step with these calls and the inputs among them holding the cache: its last step's if its calls
 * were the same (see CallsSeen).
 */
function stepStructure(module: Module, calls: readonly CapturedCall[]): { tree: CallTree; cacheInputs: ReadonlySet<string> } {
  const flat = inOrder(calls);
  const last = stepStructures.get(module);
  if (last && last.changes === Module.treeChanges && sameCalls(flat, last.seen)) {
    const whole = new Map<CapturedCall, Set<string>>();
    for (const [i, uncalled] of last.wholeAt) whole.set(flat[i]!, uncalled);
    // The same values in order, of this step's calls.
    const inOrder = last.tree.inOrder && { ...last.tree.inOrder, calls: flat };
    return { tree: { ...last.tree, whole, inOrder }, cacheInputs: last.cacheInputs };
  }
  const tree = callTree(module, calls);
  const cacheInputs = new Set<string>();
  for (const c of flat) if (cacheIn(c.args)) cacheInputs.add(`input|${(c.owner as Module).path}`);
  const index = new Map(flat.map((c, i) => [c, i]));
  const wholeAt = new Map([...tree.whole].map(([c, uncalled]) => [index.get(c)!, uncalled]));
  stepStructures.set(module, { changes: Module.treeChanges, seen: seenOf(flat), wholeAt, tree, cacheInputs });
  return { tree, cacheInputs };
}

/** Whether the replay was asked for one of `values` when it began. */
const asksFor = (replay: Replay, values: ReadonlySet<string>): boolean => [...replay.asked].some((v) => values.has(v));

/** The module's parameters for a step's graph, or null when the step must run op by op. */
function stepParams(module: Module, args: unknown[], cache: KVCache): Map<Tensor, () => Tensor> | null {
  if (unfusibleSteps.has(module) || (isGradEnabled() && cache.recordsGrad())) return null;
  // The arguments besides the cache must be ones a graph can take (see argumentSignature).
  const withoutCache = args.map((a) => (a !== null && typeof a === "object" && !(a instanceof Tensor) && !Array.isArray(a) ? { ...a, cache: undefined } : a));
  const params = fusableParams(module);
  return argumentSignature(withoutCache) === null ? null : params;
}

/**
 * A generation step's code captured against the cache, which is left as it was: the keys and values it wrote
 * (`written`, captured tensors) go in with `write` once the graph has given them, and `undo` takes them out again.
 */
interface CapturedStep {
  capture: Capture;
  result: unknown;
  written: Tensor[];
  write(real: readonly Tensor[]): void;
  undo(): void;
}

async function captureStep(module: Module, args: unknown[], forward: (args: unknown[]) => Promise<unknown>, cache: KVCache, replayable: boolean, edits: StepEdits | null = null): Promise<CapturedStep | null> {
  const before = cache.snapshot();
  // Only a step that hands values out may have to take its writes back (a plain step's run is its last word).
  const undo = replayable ? cache.mark() : () => undefined;
  let captured: { capture: Capture; result: unknown } | null = null;
  const capture = new Capture(replayable);
  const edited = edits ? editInCapture(capture, edits) : null;
  try {
    const result = await runCaptured(capture, () => forward(args));
    captured = { capture, result };
  } catch {
    // With an edit applied, the edit is what failed (it read values, or made a value the code after it cannot
    // take): the edits of later steps run op by op. Else the module's steps do.
    if (edited?.applied) edits!.refuse();
    else unfusibleSteps.add(module);
  }
  // What the code wrote: new positions for layers kept in place, and whole entries for layers joined by ops.
  const { appends, joins } = cache.takeAppends();
  const after = cache.snapshot();
  cache.restore(before);
  if (!captured) return null;
  const changed = after.flatMap((entry, layer) => (entry && entry !== before[layer] ? [{ layer, entry }] : []));
  const written = [...changed.map(({ entry }) => entry), ...appends.map(([, entry]) => entry)].flatMap((entry) => [entry.keys, entry.values]);
  const write = (real: readonly Tensor[]) => {
    // Positions first (they are noted against the entries before this step's), then the entries.
    cache.noteJoined(joins);
    const entries = [...before];
    changed.forEach(({ layer }, i) => (entries[layer] = { keys: real[2 * i]!, values: real[2 * i + 1]! }));
    cache.restore(entries);
    appends.forEach(([layer, { at }], i) => cache.append(layer, real[2 * (changed.length + i)]!, real[2 * (changed.length + i) + 1]!, at));
  };
  return { ...captured, written, write, undo };
}

/** Runs the step op by op, letting `edits` go first: that run applies them. */
function letGo(edits: StepEdits | null, forward: (args: unknown[]) => Promise<unknown>, args: unknown[]): Promise<unknown> {
  edits?.release();
  return forward(args);
}

/** A step's graph computed `edits`: they are done. `builds`: the kernels built before it ran (see StepEdits.compiled). */
function editsRan(edits: StepEdits, builds: number): void {
  if (engineStats().builds > builds) edits.compiled();
  edits.done();
  edits.release();
}

/**
 * Per module: the kernels of its step graphs that code asked for (values read, edits), least recently used first;
 * at most MAX_CODE_KERNELS are kept: the prompt's and the decode steps' of the last kind of code (a loop of the same
 * generation compiles none again). Each holds its own copy of the module's weights (a server's memory: four of
 * stdlib-gpt2's held 140 MB more after a hostile job), and code makes new ones at will (a generation reading or
 * steering another layer, or with other ops), where the model's own are few.
 */
const codeKernels = new WeakMap<Module, Map<string, true>>();
const MAX_CODE_KERNELS = 2;

function noteCodeKernel(module: Module, key: string): void {
  let kept = codeKernels.get(module);
  if (!kept) codeKernels.set(module, (kept = new Map()));
  kept.delete(key);
  kept.set(key, true);
  if (kept.size <= MAX_CODE_KERNELS) return;
  const [oldest] = kept.keys();
  kept.delete(oldest!);
  dropKernel(oldest!);
}

/**
 * Applies `edits` to the calls of `capture` they are for, counting each module's calls in the step; `applied` tells
 * whether one was.
 */
function editInCapture(capture: Capture, edits: StepEdits): { applied: boolean } {
  const state = { applied: false };
  const seen = new Map<object, number>();
  capture.edit = (owner, out) => {
    if (!edits.paths.has((owner as Module).path)) return out;
    const nth = seen.get(owner) ?? 0;
    seen.set(owner, nth + 1);
    const edit = edits.at((owner as Module).path, nth);
    if (!edit) return out;
    state.applied = true;
    return edit(out);
  };
  return state;
}

/**
 * Runs a captured step's graph (`run`) and writes the cache entries it gave; null when the graph failed, the step
 * then running op by op (see stepsRan).
 */
function runStep<R extends { result: unknown; extra: Tensor[] }>(module: Module, step: CapturedStep, run: () => R): (R & { undo: () => void }) | null {
  let ran: R;
  try {
    ran = run();
    stepsRan.add(module);
  } catch {
    if (!stepsRan.has(module)) unfusibleSteps.add(module);
    return null;
  }
  step.write(ran.extra);
  return { ...ran, undo: step.undo };
}
