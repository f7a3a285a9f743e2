/**
 * Operation points: named values inside a module's forward (attention's q, k, v, scores, pattern, z; an MLP's
 * pre and post), read and replaced like module values (`attn.source.pattern.output`). Each point is a leaf module
 * whose forward is the identity, so everything that works on a module's output (reads, edits, caches, gradients,
 * per-step access in generation, the remote path) works on a point. Points are tsight's, not Hugging Face's: they
 * hang under a `source` child that is never called itself, and `isPoint` tells them apart.
 */
import { activeCapture, isGradEnabled, type Tensor } from "../tensor/index.js";
import { Module } from "./module.js";

/** One named value of a forward: calling it lets the tree's hooks read or replace the value. */
export class Point extends Module {
  override get isOperationPoint(): boolean {
    return true;
  }

  /** Why the value is not computed in this model as it is now (an SAE's error without the error term), if it is not. */
  absent: (() => string | null) | null = null;

  /**
   * The identity; while gradients are recorded through `x`, a new node of the graph (a view), so that the backward
   * pass reaches the point where the forward called it. Without it, a point whose value was made earlier than the
   * points called before it (a Llama's v, made before q and k are rotated) had its gradient go by before theirs:
   * no one order of asking (later points first) held for every architecture.
   */
  override async forward(x: Tensor): Promise<Tensor> {
    return x.requiresGrad && isGradEnabled() ? x.unsqueeze(0).squeeze(0) : x;
  }

  /** Whether the tree's hooks read, replace or record this point (hooks that cannot tell are taken to). */
  get watched(): boolean {
    const hooks = this.tree.hooks;
    return this.spliced || (hooks !== null && (!hooks.watches || hooks.watches(this.path)));
  }

  /** An SAE spliced onto this point (lm.addSae at a point) runs whenever the point is computed. */
  private get spliced(): boolean {
    return Object.prototype.hasOwnProperty.call(this, "sae");
  }

  /**
   * `x` as the hooks leave it. Unwatched (or with no hooks at all) it is `x` itself, at about no cost. While a
   * fused graph is captured, it is a call (of the identity, without hooks), so a replay of the graph gives it in its
   * place, watched or not.
   */
  async at(x: Tensor): Promise<Tensor> {
    if (this.watched || activeCapture()?.replayable) return (this as Point).call(x);
    this.pass();
    return x;
  }

  /**
   * The point is `x`, which a fused kernel gave along with its result (attention's weights are its pattern), and
   * nobody watches it: counted, or, while a graph is captured, a call with that value, which a replay of the graph
   * can hand out (a replacement of it still runs the op in steps).
   */
  async gave(x: Tensor): Promise<void> {
    if (activeCapture()?.replayable) await (this as Point).call(x);
    else this.pass();
  }

  /**
   * The point was computed inside a fused kernel and nobody watches it: counted only (a capture notes where, so a
   * replay counts it in order too, and knows it cannot give its value).
   */
  pass(): void {
    const capture = activeCapture();
    if (!capture) this.tree.hooks?.pass?.(this);
    else if (capture.replayable) capture.recordPassed(this);
  }
}

/** A module holding points: not callable, like a ModuleList. */
export abstract class Points extends Module {
  override async forward(): Promise<never> {
    throw new Error(`${this.path} holds operation points; it is not called itself`);
  }
}

/**
 * Why `m` cannot be skipped or called, if it is an operation point: a point is a value inside its module's forward,
 * not a computation of its own (skipping it would be replacing its value, calling it the identity). Envoys in
 * process and in the sandbox refuse such a request at once with it.
 */
export function pointRefusal(m: Module, action: "skip" | "call"): string | null {
  if (!(m instanceof Point)) return null;
  const how = action === "skip" ? `to replace its value, assign it: ${m.path}.output = value` : `read it as ${m.path}.output, or call the module that holds it`;
  return `${m.path} is an operation point, a value inside its module's forward, not a computation: it cannot be ${action === "skip" ? "skipped" : "called"}; ${how}`;
}

/**
 * Why `m` has no values to read, replace or skip: a holder of points (`attn.source`; the message names its
 * points), or a point its module does not compute as it is now (see Point.absent). Envoys in process and in the
 * sandbox refuse such a request at once with it (it would otherwise wait for a call that never comes).
 */
export function holderRefusal(m: Module): string | null {
  if (m instanceof Point) return m.absent?.() ?? null;
  if (!(m instanceof Points)) return null;
  const names = m.children().map(([name]) => name);
  const example = names.includes("pattern") ? "pattern" : names[0];
  return `${m.path} holds operation points (${names.join(", ")}) and is never called itself: read or edit one of them${example ? `, e.g. ${m.path}.${example}.output` : ""}`;
}

/**
 * Attention's points, all [batch, heads, tokens, ...]: q [B, H, T, D] and k, v [B, KV, T, D] (this call's tokens,
 * after rotary and q/k norms, before the cache; an edit of k or v is what the cache keeps), scores [B, H, T, S]
 * (scaled, soft-capped and masked, before softmax), pattern [B, H, T, S] (after softmax), z [B, H, T, D] (each
 * head's output, before the heads are merged and projected).
 */
export class AttentionPoints extends Points {
  q = new Point();
  k = new Point();
  v = new Point();
  scores = new Point();
  pattern = new Point();
  z = new Point();
}

/** An MLP's points: pre (the input to the activation) and post (after the activation, and the gating if any). */
export class MlpPoints extends Points {
  pre = new Point();
  post = new Point();
}

/**
 * TransformerLens's hook names for the points (`hook_pattern` is `pattern`), for the hint an unknown name gets, in
 * process and in the sandbox. `q` and `k` are after rotary: TransformerLens's hook_rot_q and hook_rot_k on a rotary
 * model, its hook_q and hook_k on one without (GPT-2); see transformerLensNotes.
 */
export const transformerLensNames: Readonly<Record<string, string | undefined>> = Object.freeze(
  Object.assign(Object.create(null) as Record<string, string>, { hook_q: "q", hook_k: "k", hook_rot_q: "q", hook_rot_k: "k", hook_v: "v", hook_attn_scores: "scores", hook_pattern: "pattern", hook_z: "z", hook_pre: "pre", hook_post: "post" }),
);

/** What the hint adds for a TransformerLens name that matches a point only on some models. */
export const transformerLensNotes: Readonly<Record<string, string | undefined>> = Object.freeze(
  Object.assign(Object.create(null) as Record<string, string>, {
    hook_q: "on a model without rotary; on a rotary one q is after rotary, TransformerLens's hook_rot_q",
    hook_k: "on a model without rotary; on a rotary one k is after rotary, TransformerLens's hook_rot_k",
  }),
);

/** The hint for TransformerLens's `name`, found at `at` among a module's children. */
export function transformerLensHint(name: string, at: string): string {
  const note = transformerLensNotes[name];
  return ` (TransformerLens's ${name} is ${at} here${note ? `, ${note}` : ""})`;
}

/** The hint for a module asked for `source` that has no operation points. */
export const NO_SOURCE_HINT = " (operation points are in attention modules and dense MLPs: `attn.source`, `mlp.source`)";

/** Whether a module is an operation point or holds them (tsight's addition to a Hugging Face module tree). */
export function isPoint(m: Module): boolean {
  return m instanceof Point || m instanceof Points;
}
