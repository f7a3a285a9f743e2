/**
 * Gradients of values read in a trace: `await tr.backward(loss, async (g) => { ... })`.
 *
 * Inside the function, `await g.grad(t)` is the gradient of `loss` with respect to `t` (any module value read in
 * the trace, or a tensor computed from one), and `g.setGrad(t, x)` replaces the gradient that flows further back
 * from `t`. Gradients arrive in reverse forward order, as the backward pass computes them (values one op made
 * together, and the graph's leaves, which come last, in any order among themselves; a leaf is a read value that
 * depends on no value read before it, which in a generation may be read at a later step). An invoke's values are
 * rows of batch-wide tensors, so its gradients are those rows only: nothing leaks between invokes.
 */
import { runBackwardAsync, sameShape, Tensor, type GradNode } from "../tensor/index.js";
import { Envoy } from "./envoy.js";
import { StallError, TraceError } from "./errors.js";
import { mergeRows, type Rows } from "./rows.js";

/** Where a tensor handed to user code sits in the forward pass's graph: rows of a batch-wide value. */
export interface GradSource {
  leaf: Tensor;
  rows: Rows | null;
  batch: number;
  /** The value read, for errors (`transformer.h.1.output`); none for a tensor computed from read values. */
  name?: string;
}

interface Pending {
  source: GradSource;
  resolve(g: Tensor): void;
  reject(e: unknown): void;
  origin: Error;
}

export class GradScope {
  private readonly pending: Pending[] = [];
  private readonly replacements = new Map<Tensor, { source: GradSource; value: Tensor | ((g: Tensor) => Tensor); origin: Error }[]>();
  /** Gradients complete right now (their hooks are running). */
  private readonly current = new Map<Tensor, Tensor>();
  /**
   * Gradients whose hooks have run while the walk is still at the op that made them: values one op made together
   * (a split's outputs), or read values that are leaves of the graph (the first ones read, which the walk reaches
   * last, all at once), are asked for in any order among themselves.
   */
  private readonly settled = new Map<Tensor, Tensor>();
  /** Values whose gradients have gone by: their hooks ran and the walk went on past them. */
  private readonly gone = new Set<Tensor>();
  /**
   * Nodes the walk has reached, and the one it is at (null before the first and at the leaves). A value's gradient
   * has gone by once the walk left the node that made it; one whose node the walk never reaches gets none at all.
   */
  private readonly walked = new Set<GradNode>();
  private node: GradNode | null = null;
  private finished = false;
  private wake: (() => void) | null = null;
  private readonly hooked = new Set<Tensor>();
  /** Set while the walk runs: hooks a tensor asked about before the walk reaches it. */
  private hookLeaf: ((leaf: Tensor) => void) | null = null;

  private userDone = false;

  constructor(
    private readonly sources: WeakMap<Tensor, GradSource>,
    /** How long the function may run without asking for a gradient or ending (see TraceOptions.stallTimeoutMs). */
    private readonly stallTimeoutMs = 60_000,
  ) {}

  /**
   * The gradient of the loss with respect to `t`, when the backward pass reaches it. (`origin`, internal: where the
   * code asked, for a caller that is not that code: the sandbox passes the job's own location.)
   */
  grad(t: Tensor, origin: Error = new Error()): Promise<Tensor> {
    return new Promise((resolve, reject) => {
      const source = this.sourceOf(t, "grad", origin);
      const now = this.current.get(source.leaf) ?? this.settled.get(source.leaf);
      if (now) return resolve(rowsOf(now, source));
      if (this.passed(source.leaf)) return reject(new TraceError(this.goneBy(source), origin));
      this.pending.push({ source, resolve, reject, origin });
      this.hookLeaf?.(source.leaf);
      this.signal();
    });
  }

  /** Replaces the gradient flowing back from `t` (a tensor of t's shape, or a function of the gradient); `origin` as in grad. */
  setGrad(t: Tensor, value: Tensor | ((g: Tensor) => Tensor), origin: Error = new Error()): void {
    const source = this.sourceOf(t, "setGrad", origin);
    const now = this.current.get(source.leaf);
    if (now) {
      this.current.set(source.leaf, this.apply(now, source, value, origin));
      return;
    }
    if (this.settled.has(source.leaf) || this.passed(source.leaf)) throw new TraceError(`setGrad: the gradient of ${source.name ?? "this value"} has already flowed back: set gradients in reverse forward order`, origin);
    const list = this.replacements.get(source.leaf) ?? [];
    list.push({ source, value, origin });
    this.replacements.set(source.leaf, list);
    this.hookLeaf?.(source.leaf);
  }

  private sourceOf(t: Tensor, what: string, origin: Error): GradSource {
    if (!(t instanceof Tensor)) {
      const given: unknown = t;
      const hint =
        given instanceof Envoy
          ? ` (got ${given.path || "the model"}'s envoy: pass the value read in the forward pass, \`const h = await m.${given.path}.output\` before the loss)`
          : given instanceof Promise
            ? " (got a promise: await the value in the forward pass, before the loss)"
            : "";
      throw new TraceError(`${what}: expected a tensor${hint}`, origin);
    }
    const source = this.sources.get(t) ?? { leaf: t, rows: null, batch: t.shape[0] ?? 1 };
    if (!source.leaf.requiresGrad) throw new TraceError(`${what}: this tensor is not part of the graph; read it in a trace started with { grad: true }, before the loss is computed from it`, origin);
    if (this.finished) throw new TraceError(`${what}: the backward pass is over`, origin);
    return source;
  }

  /**
   * Why a value's gradient can no longer be given: asked for after a later one's (or after a leaf's, which the walk
   * reaches only after every op: a value that depends on no value read before it, such as one a generation step
   * makes from its new token alone, even if read late).
   */
  private goneBy(source: GradSource): string {
    const made = source.leaf.gradNode;
    const leaf = made ? this.walkedForLeaf.get(made) : undefined;
    const what = `the gradient of ${source.name ?? "this value"} has already gone by`;
    if (leaf === undefined) return `${what}: ask for gradients in reverse forward order (later values first)`;
    return `${what} while this code waited for the gradient of ${leaf ?? "a value"}, a leaf of the graph (it depends on no value read before it), which the backward pass reaches only after every other value: ask for leaves' gradients last, and the others in reverse forward order`;
  }

  /** Nodes the walk went past while the code waited for a leaf's gradient, with that leaf's name. */
  private readonly walkedForLeaf = new Map<GradNode, string | null>();

  /** Whether the walk went past `leaf` (its hooks can no longer run). */
  private passed(leaf: Tensor): boolean {
    const made = leaf.gradNode;
    return this.gone.has(leaf) || (made !== null && made !== this.node && this.walked.has(made));
  }

  private apply(g: Tensor, source: GradSource, value: Tensor | ((g: Tensor) => Tensor), origin: Error): Tensor {
    const mine = rowsOf(g, source);
    const replacement = typeof value === "function" ? value(mine) : value;
    // A gradient flows on into the ops that made the value: it must have the value's shape (PyTorch refuses a hook's
    // gradient of another shape too), with the whole batch as with one invoke's rows.
    if (replacement instanceof Tensor && mine instanceof Tensor && !sameShape(replacement.shape, mine.shape)) {
      throw new TraceError(`setGrad: the gradient has shape [${mine.shape.join(", ")}]; the replacement has shape [${replacement.shape.join(", ")}]`, origin);
    }
    try {
      return mergeRows(g, replacement, source.rows, source.batch, "the gradient") as Tensor;
    } catch (e) {
      throw typeof e === "string" ? new TraceError(`setGrad: ${e}`, origin) : e;
    }
  }

  private signal(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Waits until the function is blocked on the backward pass again: it asked for a gradient, or ended. */
  private async untilBlocked(): Promise<void> {
    const since = Date.now();
    while (!this.userDone && this.pending.length === 0) {
      const left = this.stallTimeoutMs - (Date.now() - since);
      if (left <= 0) throw new StallError(`the backward function neither asked for a gradient nor finished for ${this.stallTimeoutMs} ms`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([new Promise<void>((r) => (this.wake = r)), new Promise<void>((r) => (timer = setTimeout(r, left)))]);
      clearTimeout(timer);
    }
  }

  /** Runs the backward pass, answering `grad` requests and applying `setGrad`s at each hooked tensor. */
  async run(loss: Tensor, user: Promise<unknown>, origin?: Error): Promise<void> {
    if (!loss.requiresGrad) throw new TraceError("backward: the loss does not depend on any value read in this trace; start the trace with { grad: true } and compute the loss from module values", origin);
    if (loss.numel() !== 1) throw new TraceError(`backward: the loss must be a single number, got a tensor of shape [${loss.shape}]; reduce it (e.g. .sum())`, origin);
    const removers: (() => void)[] = [];
    const done = () => {
      this.userDone = true;
      this.signal();
    };
    user.then(done, done);
    // Hook every tensor asked about so far; requests made later (while the walk runs) for tensors not yet
    // reached are hooked as they come, before the walk gets to them.
    const hook = (leaf: Tensor) =>
      removers.push(
        leaf.registerHook(async (g) => {
          let grad = g;
          this.current.set(leaf, grad);
          for (;;) {
            const due = this.pending.filter((p) => p.source.leaf === leaf);
            if (!due.length) break;
            for (const p of due) {
              this.pending.splice(this.pending.indexOf(p), 1);
              p.resolve(rowsOf(this.current.get(leaf)!, p.source));
            }
            if (this.userDone) break;
            await this.untilBlocked();
          }
          for (const r of this.replacements.get(leaf) ?? []) this.current.set(leaf, this.apply(this.current.get(leaf)!, r.source, r.value, r.origin));
          this.replacements.delete(leaf);
          grad = this.current.get(leaf)!;
          this.current.delete(leaf);
          this.settled.set(leaf, grad);
          return grad === g ? undefined : grad;
        }),
      );
    this.hookLeaf = (leaf) => {
      if (this.hooked.has(leaf)) return;
      this.hooked.add(leaf);
      hook(leaf);
    };
    // The function makes its first requests before the walk starts.
    await this.untilBlocked();
    for (const p of this.pending) this.hookLeaf(p.source.leaf);
    for (const leaf of this.replacements.keys()) this.hookLeaf(leaf);
    // The walk moves on: gradients settled at the op it leaves have gone by.
    const moveOn = () => {
      for (const leaf of this.settled.keys()) this.gone.add(leaf);
      this.settled.clear();
    };
    const onNode = (node: GradNode) => {
      this.walked.add(node);
      const waiting = this.pending.find((p) => p.source.leaf.gradNode === null);
      if (waiting) this.walkedForLeaf.set(node, waiting.source.name ?? null);
      this.node = node;
      moveOn();
      // A value asked for comes out of this op with others: their gradients are kept too (see settled).
      if (node.outputs.length > 1 && node.outputs.some((o) => this.hooked.has(o))) for (const o of node.outputs) this.hookLeaf!(o);
    };
    // The graph's leaves (values read first in the trace, among them) come last, together: all kept (see settled).
    const beforeLeaves = (leaves: ReadonlySet<Tensor>) => {
      // Past every node: values they made (even the oldest node's, made right after a leaf) have gone by.
      this.node = null;
      moveOn();
      for (const leaf of leaves) this.hookLeaf!(leaf);
    };
    try {
      await runBackwardAsync(loss, Tensor.full(loss.shape, 1), onNode, beforeLeaves);
    } finally {
      for (const remove of removers) remove();
      this.hookLeaf = null;
      this.finished = true;
      this.settled.clear();
      this.walked.clear();
      this.walkedForLeaf.clear();
      this.node = null;
    }
    for (const p of this.pending.splice(0)) p.reject(new TraceError(NO_GRADIENT, p.origin));
  }
}

/**
 * What a gradient request that nothing reached says. A module output read first in a trace is a leaf of its own, so
 * a value of it the rest does not use (attention's output[1], the pattern, beside the output it is computed with)
 * gets nothing; with a value read before it (its input), the module's ops are in the graph.
 */
const NO_GRADIENT =
  "no gradient reached this value: the loss does not depend on it. (If it is a value a module gives beside its output, as attention's output[1], read something before that module first, such as its .input, so that its ops are recorded, or take the gradient of the operation point, attn.source.pattern)";

function rowsOf(g: Tensor, source: GradSource): Tensor {
  return source.rows ? g.narrow(0, source.rows.start, source.rows.length) : g;
}
