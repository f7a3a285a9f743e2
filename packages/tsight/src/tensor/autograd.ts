/**
 * Reverse-mode autograd over tensor ops.
 *
 * Every op whose inputs require grad records a GradNode: its inputs, its outputs and a rule (from the primitive
 * table) that turns output gradients into input gradients using tensor ops. Nodes carry a creation number, so
 * walking them from newest to oldest is a valid reverse topological order and is exactly reverse forward order,
 * which is the order users see gradient hooks fire in.
 */
import { AsyncScope } from "./async-scope.js";
import { Tensor } from "./tensor.js";
import { GradError } from "./errors.js";
import { fmt } from "./shape.js";
import { sumOfBoxed } from "./zero-box.js";

export type GradRule = (grads: readonly (Tensor | null)[], node: GradNode) => readonly (Tensor | null)[];

export class GradNode {
  private static counter = 0;
  readonly seq = GradNode.counter++;
  outputs: readonly Tensor[] = [];
  constructor(
    readonly op: string,
    readonly inputs: readonly Tensor[],
    readonly attrs: unknown,
    readonly rule: GradRule,
  ) {}
}

/** A hook on a tensor's gradient: return a tensor to replace the gradient flowing further back. */
export type GradHook = (grad: Tensor) => Tensor | void | Promise<Tensor | void>;

let gradEnabled = true;
/** The noGrad scopes of async functions, carried across their awaits. */
const scopes = new AsyncScope<boolean>();

export function isGradEnabled(): boolean {
  return gradEnabled && (scopes.get() ?? true);
}

/**
 * Runs `fn` without recording gradients (like torch.no_grad). For an async `fn` the scope follows its own awaits
 * only: code running meanwhile elsewhere still records.
 */
export function noGrad<T>(fn: () => T): T {
  return withoutGrad(() => scopes.run(false, fn));
}

/** Runs a synchronous `fn` without recording gradients: the flag alone (the backward walk, at every node). */
function withoutGrad<T>(fn: () => T): T {
  const before = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = before;
  }
}

/** Reachable nodes from `root`, newest first. */
function nodesFrom(root: Tensor): GradNode[] {
  const seen = new Set<GradNode>();
  const stack: GradNode[] = root.gradNode ? [root.gradNode] : [];
  while (stack.length) {
    const n = stack.pop()!;
    if (seen.has(n)) continue;
    seen.add(n);
    for (const t of n.inputs) if (t.gradNode && !seen.has(t.gradNode)) stack.push(t.gradNode);
  }
  return [...seen].sort((a, b) => b.seq - a.seq);
}

/**
 * The backward walk as a generator: it yields whenever a tensor's gradient is complete and that tensor has hooks,
 * so the same walk serves the synchronous `backward()` and the intervention layer's async one (where a hook waits
 * for user code).
 */
type HookStep = { tensor: Tensor; grad: Tensor; hook: GradHook };

export function* backwardSteps(root: Tensor, seed: Tensor, onNode?: (node: GradNode) => void, beforeLeaves?: (leaves: ReadonlySet<Tensor>) => void): Generator<HookStep, void, Tensor | void> {
  if (!root.requiresGrad) throw new GradError("backward: this tensor does not require grad (no input of its computation requires grad); in a trace, module values record gradients when it is started with { grad: true }");
  if (seed.shape.length !== root.shape.length || seed.shape.some((d, i) => d !== root.shape[i])) {
    throw new GradError(`backward: gradient shape [${seed.shape}] does not match tensor shape [${root.shape}]`);
  }
  const grads = new Map<Tensor, Tensor>([[root, seed]]);
  const leaves = new Set<Tensor>();
  // Gradients are values, not part of a graph (no create_graph): rules and sums run without recording.
  const add = (t: Tensor, g: Tensor): void => {
    const prev = grads.get(t);
    grads.set(t, prev ? withoutGrad(() => sumOfBoxed(prev, g) ?? prev.add(g)) : g);
  };
  function* finish(t: Tensor): Generator<HookStep, Tensor | undefined, Tensor | void> {
    let g: Tensor | undefined = grads.get(t);
    if (!g) return undefined;
    for (const hook of t.gradHooks) {
      const replaced: Tensor | void = yield { tensor: t, grad: g, hook };
      if (replaced !== undefined && replaced !== null) g = checkedHookGrad(replaced, g);
    }
    grads.set(t, g);
    return g;
  }
  for (const node of nodesFrom(root)) {
    onNode?.(node);
    const outGrads: (Tensor | null)[] = [];
    for (const o of node.outputs) outGrads.push((yield* finish(o)) ?? null);
    if (outGrads.every((g) => g === null)) continue;
    const inGrads = withoutGrad(() => node.rule(outGrads, node));
    node.inputs.forEach((t, i) => {
      const g = inGrads[i];
      if (!g || !t.requiresGrad) return;
      if (t.gradNode) add(t, g);
      else {
        add(t, g);
        leaves.add(t);
      }
    });
    for (const o of node.outputs) if (o !== root) grads.delete(o);
  }
  if (!root.gradNode) leaves.add(root);
  beforeLeaves?.(leaves);
  for (const leaf of leaves) {
    const g = yield* finish(leaf);
    if (g) leaf.grad = leaf.grad ? withoutGrad(() => leaf.grad!.add(g)) : g;
  }
}

/** Runs the walk with synchronous hooks. */
export function runBackward(root: Tensor, seed: Tensor): void {
  const steps = backwardSteps(root, seed);
  let reply: Tensor | void = undefined;
  for (let step = steps.next(); !step.done; step = steps.next(reply)) {
    const r = step.value.hook(step.value.grad);
    if (r instanceof Promise) throw new GradError("backward(): a gradient hook returned a promise; use backwardAsync() for async hooks");
    reply = r ?? undefined;
  }
}

/**
 * Runs the walk awaiting each hook, for hooks that wait on other code; `onNode` sees each node as it is reached
 * (before its outputs' hooks run), `beforeLeaves` the leaves, which come last, all complete (hooks added to them
 * then run).
 */
export async function runBackwardAsync(root: Tensor, seed: Tensor, onNode?: (node: GradNode) => void, beforeLeaves?: (leaves: ReadonlySet<Tensor>) => void): Promise<void> {
  const steps = backwardSteps(root, seed, onNode, beforeLeaves);
  let reply: Tensor | void = undefined;
  for (let step = steps.next(); !step.done; step = steps.next(reply)) {
    reply = (await step.value.hook(step.value.grad)) ?? undefined;
  }
}

/** What a gradient hook returned, if it can stand for `grad`: a tensor of its shape and dtype (PyTorch checks alike). */
function checkedHookGrad(replaced: unknown, grad: Tensor): Tensor {
  if (!(replaced instanceof Tensor)) throw new GradError(`a gradient hook returned ${typeof replaced === "object" ? "an object that is not a Tensor" : `a ${typeof replaced}`}: return a Tensor of the gradient's shape ${fmt(grad.shape)}, or nothing to keep it`);
  if (replaced.dtype !== grad.dtype || replaced.shape.length !== grad.shape.length || replaced.shape.some((d, i) => d !== grad.shape[i])) {
    throw new GradError(`a gradient hook returned a ${replaced.dtype} tensor of shape ${fmt(replaced.shape)} for a ${grad.dtype} gradient of shape ${fmt(grad.shape)}: a hook may change the values, not the shape or dtype`);
  }
  return replaced;
}
