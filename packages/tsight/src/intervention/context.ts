/**
 * Which invoke of which module tree the running intervention code belongs to, told by the stack: an invoke's code
 * runs under an async function named for its tree and invoke, which V8's async stack traces show in every frame of
 * code it awaits, across awaits. A barrier uses it to know which invoke arrived, and a trace started inside another
 * trace's intervention is refused at once instead of waiting forever for the outer one.
 *
 * Not Node's AsyncLocalStorage, which did this before: on Node 20, while one is on, every promise in the process runs
 * its async hooks, and a trace makes dozens (an empty trace on stdlib-gpt2 spent 125-128 µs of JS with it on, 106-116
 * without). The stack is read only where the answer is needed (a barrier, or a trace started while one of the same
 * tree runs). It misses code that runs for the invoke's code without being awaited by it (a timer's callback, a
 * `.then` callback not awaited): such a barrier is counted as parked (as a sandboxed job's is), and such a nested
 * trace waits for the outer one, whose invoke then stalls: the outer trace ends with a StallError after its
 * stallTimeoutMs that says a trace of the model waits for it, and the inner one runs.
 */

/** The numbers of the code that is not an invoke's: a trace function (trace(fn)) and a model's edits (lm.edit). */
export const TRACE_FUNCTION = -1;
export const editCode = (i: number): number => -2 - i;

/** How a refusal names the code a nested trace was started in. */
export function codeName(index: number): string {
  return index === TRACE_FUNCTION ? "its trace function" : index < 0 ? "the code of an edit of the model (lm.edit)" : `invoke ${index}`;
}

/** Numbers for traces (TraceRun), so that code of one that ended is not taken for the running one's. */
let nextRun = 0;
export const newRunId = (): number => nextRun++;

/** Per module tree: the trace of it running (its run id), and how many traces wait for it. */
const traces = new WeakMap<object, { live: number | null; queued: number }>();

function tracesOf(tree: object): { live: number | null; queued: number } {
  let t = traces.get(tree);
  if (!t) traces.set(tree, (t = { live: null, queued: 0 }));
  return t;
}

/** The trace of `tree` that runs now is `run` (null: it ended). */
export function noteLive(tree: object, run: number | null): void {
  tracesOf(tree).live = run;
}

/** The run id of the trace of `tree` running now, if one is. */
export function liveRun(tree: object): number | null {
  return traces.get(tree)?.live ?? null;
}

/** A trace of `tree` began to wait (`delta` 1) or stopped waiting (-1) for the one running. */
export function noteQueued(tree: object, delta: number): void {
  tracesOf(tree).queued += delta;
}

/** How many traces of `tree` wait for the one running. */
export function queuedBehind(tree: object): number {
  return traces.get(tree)?.queued ?? 0;
}

/** Per module tree, the number its invokes' frames are named with. */
const treeIds = new WeakMap<object, number>();
let nextTreeId = 0;

const FRAME = "tsightInvoke";
const FRAME_NAME = /^tsightInvoke_(\d+)$/;

function treeId(tree: object): number {
  let id = treeIds.get(tree);
  if (id === undefined) treeIds.set(tree, (id = nextTreeId++));
  return id;
}

/**
 * The functions code runs under, one per slot, each made and named once (an async function's frames, sync and async,
 * are named after its "name" property): naming a fresh function for every invoke (a new string and a defined
 * property each trace) cost several µs of every trace. A slot is taken by one invoke's code until that code ends
 * (code that never ends keeps its slot: a few numbers and one function), then reused; it says whose code it runs.
 */
interface Slot {
  run: <T>(fn: () => T | Promise<T>) => Promise<T>;
  tree: number;
  trace: number;
  index: number;
}
const slots: Slot[] = [];
const freeSlots: number[] = [];

function newSlot(): number {
  const slot = slots.length;
  const run = async <T>(fn: () => T | Promise<T>): Promise<T> => {
    try {
      return await fn();
    } finally {
      freeSlots.push(slot);
    }
  };
  Object.defineProperty(run, "name", { value: `${FRAME}_${slot}` });
  slots.push({ run, tree: -1, trace: -1, index: 0 });
  return slot;
}

/**
 * Runs `fn` (the code of invoke `index` of trace `run` of `tree`) under a frame naming them; what it returns or
 * throws comes back as a promise.
 */
export function runInInvoke<T>(tree: object, run: number, index: number, fn: () => T | Promise<T>): Promise<T> {
  const slot = slots[freeSlots.pop() ?? newSlot()]!;
  slot.tree = treeId(tree);
  slot.trace = run;
  slot.index = index;
  return slot.run(fn);
}

/** The invoke of trace `run` of `tree` whose code is running now (by the stack, see the header), if any. */
export function invokeInStack(tree: object, run: number | null): number | undefined {
  const id = treeIds.get(tree);
  if (id === undefined || run === null) return undefined;
  // The frames themselves (V8's call sites), whatever formats stacks in this process; every one of them, as the
  // invoke's may be below deep user code.
  const { prepareStackTrace, stackTraceLimit } = Error;
  Error.prepareStackTrace = (_error, sites) => sites;
  Error.stackTraceLimit = 10_000;
  let sites: unknown;
  try {
    sites = new Error().stack;
  } finally {
    Error.prepareStackTrace = prepareStackTrace;
    Error.stackTraceLimit = stackTraceLimit;
  }
  if (!Array.isArray(sites)) return undefined;
  for (const site of sites as { getFunctionName(): string | null }[]) {
    const named = FRAME_NAME.exec(site.getFunctionName() ?? "");
    const slot = named ? slots[Number(named[1])] : undefined;
    if (slot && slot.tree === id && slot.trace === run) return slot.index;
  }
  return undefined;
}
