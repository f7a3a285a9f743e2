/**
 * Pieces every attention shares: the additive mask (causal, padding, optional sliding window) per layer type,
 * position ids derived from the attention mask, and eager scaled dot-product attention returning its weights
 * (interpretability code reads them). What differs between architectures in forming the scores (scale,
 * soft-capping) is one small record, `ScoreOptions`, apart from q, k, v and the mask.
 */
import { activeCapture, functional as F, isGradEnabled, ShapeError, Tensor } from "../tensor/index.js";
import { ModuleCallError } from "./module.js";
import { applyRotary } from "./rotary.js";
import type { AttentionPoints } from "./points.js";

/** What a model's forward takes besides the ids; the same for every architecture. */
export interface ForwardOptions {
  /** [batch, past + new] with 1 for real tokens and 0 for padding; all ones when omitted. */
  attentionMask?: Tensor;
  /** [batch, new]; derived from the attention mask when omitted. */
  positionIds?: Tensor;
  /** The key/value cache to read and extend (generation). */
  cache?: import("./cache.js").KVCache;
  /** Compute logits for only the last N positions (generation needs 1). */
  logitsToKeep?: number;
}

/** Per-forward attention inputs computed once by the base model and passed to every layer. */
export interface AttentionContext {
  mask: Tensor;
  cache?: import("./cache.js").KVCache;
}

const MASKED = -3.4028234663852886e38; // float32 min, as Hugging Face's eager attention uses

/**
 * Additive mask [B, 1, T, S]: 0 where query t (absolute position past + t) may attend key s, float32 min elsewhere.
 * A padded key is never attended; rows of padded queries stay finite so nothing becomes NaN.
 */
export function attentionMask(mask: Tensor, newTokens: number, slidingWindow?: number | null): Tensor {
  if (activeCapture()) return attentionMaskOps(mask, newTokens, slidingWindow);
  const [B, S] = mask.shape as [number, number];
  const past = S - newTokens;
  const m = mask.to("int64").data as BigInt64Array;
  const out = new Float32Array(B * newTokens * S);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < newTokens; t++) {
      const q = past + t;
      const row = (b * newTokens + t) * S;
      for (let s = 0; s < S; s++) {
        const ok = s <= q && m[b * S + s] !== 0n && (!slidingWindow || q - s < slidingWindow);
        out[row + s] = ok ? 0 : MASKED;
      }
    }
  }
  return new Tensor("float32", out, [B, 1, newTokens, S]);
}

/**
 * The same mask made of tensor ops, for code captured into a graph (a whole model's): built from the mask tensor
 * and its shape alone, never from its values, so the graph serves every mask, and each length's capture the same
 * kernel. Its values are those of the loops above (0 or MASKED), so results stay equal to the bit.
 * @internal exported for tests
 */
export function attentionMaskOps(mask: Tensor, newTokens: number, slidingWindow?: number | null): Tensor {
  const [, S] = mask.shape as [number, number];
  const keyPos = positionsAlong(mask); // [B, S]: 0 .. S - 1
  const k = keyPos.unsqueeze(1).unsqueeze(1); // [B, 1, 1, S]
  const q = keyPos.narrow(1, S - newTokens, newTokens).unsqueeze(1).unsqueeze(3); // [B, 1, T, 1]
  let ok = k.le(q).logicalAnd(mask.to("int64").ne(0).unsqueeze(1).unsqueeze(1));
  if (slidingWindow) ok = ok.logicalAnd(q.sub(k).lt(slidingWindow));
  return Tensor.where(ok, 0, MASKED);
}

/** 0, 1, ... along the last axis of a [B, S] tensor, as int64 ops on it (no values of its own). */
function positionsAlong(t: Tensor): Tensor {
  return t.to("int64").mul(0).add(1).cumsum(1).sub(1);
}

/** Positions from the mask: each row counts its real tokens, so left padding does not shift a prompt. */
export function positionIdsFromMask(mask: Tensor, newTokens: number): Tensor {
  if (activeCapture()) return positionIdsOps(mask, newTokens);
  const [B, S] = mask.shape as [number, number];
  const m = mask.to("int64").data as BigInt64Array;
  const out = new BigInt64Array(B * newTokens);
  for (let b = 0; b < B; b++) {
    let count = 0n;
    for (let s = 0; s < S; s++) {
      if (m[b * S + s] !== 0n) count++;
      const t = s - (S - newTokens);
      if (t >= 0) out[b * newTokens + t] = count > 0n ? count - 1n : 0n;
    }
  }
  return new Tensor("int64", out, [B, newTokens]);
}

/**
 * positionIdsFromMask in ops (see attentionMaskOps): the count of real tokens up to each position, less one, at
 * least 0. @internal exported for tests
 */
export function positionIdsOps(mask: Tensor, newTokens: number): Tensor {
  const [, S] = mask.shape as [number, number];
  return mask.to("int64").ne(0).long().cumsum(1).sub(1).maximum(0).narrow(1, S - newTokens, newTokens);
}

/** Fills in the defaults of ForwardOptions for `ids` [B, T]. */
export function resolveForward(ids: Tensor, o: ForwardOptions): { mask: Tensor; positions: Tensor } {
  const [B, T] = ids.shape as [number, number];
  const past = o.cache?.length ?? 0;
  // Captured into a graph without a cache: ones made from the ids by ops, so the graph is not one per length.
  const mask = o.attentionMask ?? (activeCapture() && past === 0 ? ids.to("int64").mul(0).add(1) : Tensor.full([B, past + T], 1, "int64"));
  if (mask.shape[0] !== B || mask.shape[1] !== past + T) {
    throw new RangeError(`attention mask has shape [${mask.shape}] but ids [${B}, ${T}] with ${past} cached positions need [${B}, ${past + T}]`);
  }
  // Counted by the cache even if no layer keeps them (every layer skipped); a captured step's are its layers' once
  // its graph has run (a capture that fails leaves the cache as it was).
  if (!activeCapture()) o.cache?.advance(past + T);
  return { mask, positions: o.positionIds ?? positionIdsFromMask(mask, T) };
}

/**
 * How an architecture forms attention scores from q k^T, besides the mask: the scale (1/sqrt(head_dim), or
 * Gemma's query_pre_attn_scalar^-0.5) and an optional soft cap, cap * tanh(scores / cap) (Gemma 2).
 */
export interface ScoreOptions {
  scale: number;
  softcap?: number | null;
}

/**
 * Attention with its operation points (see AttentionPoints): q, k and v pass their points, k and v go to the
 * layer's cache, then the scores, pattern and per-head outputs. When nobody watches the scores or the pattern
 * (decided once the code waiting on q, k and v has run), they are computed inside one fused kernel; otherwise
 * step by step, the same ops in the same order, so an edit of either flows on. q [B, H, T, D], k and v
 * [B, KV, T, D]. Returns the heads merged [B, T, H*D] and the pattern [B, H, T, S].
 */
export async function attend(points: AttentionPoints, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, layerIdx: number, scores: ScoreOptions | number, heads: HeadsMerge = "own"): Promise<[Tensor, Tensor]> {
  const o = typeof scores === "number" ? { scale: scores } : scores;
  if (!ctx?.mask) throw missingContext(points, "its attention context (mask, positions, KV cache)");
  // The call's [batch, tokens], before any edit (Hugging Face's input_shape).
  const input = [q.shape[0]!, q.shape[2]!] as const;
  const merge = (z: Tensor) => (heads === "input" ? mergeAs(z, input) : mergeOwn(z));
  q = await points.q.at(q);
  k = await points.k.at(k);
  v = await points.v.at(v);
  const [B, H, T, D] = q.shape as [number, number, number, number];
  // The mask's columns of the positions this layer's keys are at (it lacks those of steps it was skipped at).
  const total = ctx.mask.shape[3]!;
  const at = total - k.shape[2]!;
  const columns = ctx.cache?.columns(layerIdx, total, k.shape[2]!);
  const mask = columns ? ctx.mask.indexSelect(3, new Tensor("int64", BigInt64Array.from(columns, BigInt), [columns.length])) : ctx.mask;
  // A cache is read in place (see nn/cache.ts) unless gradients are recorded through it (its keys are then joined by ops).
  const recording = isGradEnabled() && (q.requiresGrad || k.requiresGrad || v.requiresGrad);
  const past = ctx.cache && !recording ? ctx.cache.past(layerIdx, k) : null;
  const kv = past ? null : ctx.cache ? ctx.cache.update(layerIdx, k, v, at) : { keys: k, values: v };
  // Recording gradients, the steps: the pattern (output[1]) is then what the output is computed from, and gets its
  // gradient through it, as in PyTorch (the fused kernel gives it beside the output).
  if (!points.scores.watched && !points.pattern.watched && !recording) {
    let [out, pattern] = past ? F.attentionPast(q, k, v, past, mask, o.scale, o.softcap ?? null) : F.attention(q, kv!.keys, kv!.values, mask, o.scale, o.softcap ?? null);
    if (past) ctx.cache!.append(layerIdx, k, v, at);
    points.scores.pass();
    await points.pattern.gave(pattern);
    if (points.z.watched) out = merge(await points.z.call(out.reshape(B, T, H, D).transpose(1, 2)));
    else points.z.pass();
    return [out, pattern];
  }
  if (past) {
    // The kernel's own steps over the cache in place: the same numbers to the bit (see F.attentionPastScores).
    const s = await points.scores.call(F.attentionPastScores(q, k, past, o.scale, o.softcap || null).add(mask));
    const pattern = await points.pattern.call(F.attentionPastSoftmax(s, past));
    const z = await points.z.call(F.attentionPastValues(pattern, v, past));
    ctx.cache!.append(layerIdx, k, v, at);
    return [merge(z), pattern];
  }
  // The fused kernel's own halves and ops, in its order: the same numbers to the bit (see F.attentionScores).
  const raw = F.attentionScores(q, kv!.keys, o.scale, o.softcap || null);
  const s = await points.scores.call(raw.add(mask));
  const pattern = await points.pattern.call(s.softmax(-1));
  const z = await points.z.call(F.attentionValues(pattern, kv!.values));
  return [merge(z), pattern];
}

/**
 * How the per-head outputs z [B, H, T, D] become one vector per token, as each architecture's Hugging Face code
 * does: "own", by z's own shape ([B, T, H*D]: GPT-2, `reshape(*attn_output.shape[:-2], -1)`), so an edit of z with
 * other tokens gives that many; "input", to the call's [batch, tokens] (`reshape(*input_shape, -1)`: every other
 * architecture), so z with fewer positions is a ShapeError there too, not broadcast over the tokens later.
 */
export type HeadsMerge = "own" | "input";

function checkZ(z: Tensor): void {
  if (z.ndim !== 4) throw new ShapeError(`attention: the per-head outputs z must be [batch, heads, tokens, head_dim], got [${z.shape.join(", ")}]`);
}

function mergeOwn(z: Tensor): Tensor {
  checkZ(z);
  const [B, , T] = z.shape as [number, number, number, number];
  return z.transpose(1, 2).reshape(B, T, -1);
}

function mergeAs(z: Tensor, [B, T]: readonly [number, number]): Tensor {
  checkZ(z);
  const t = z.transpose(1, 2);
  if (t.numel() % (B * T) !== 0 || t.numel() === 0) {
    throw new ShapeError(`attention: the per-head outputs z [${z.shape.join(", ")}] cannot be merged into the call's ${B} x ${T} tokens (as Hugging Face reshapes them: [batch, tokens, -1])`);
  }
  return t.reshape(B, T, -1);
}

/**
 * What every rotary architecture does once q, k and v are projected (and normed): rotate q and k, then attend.
 * q [B, H, T, D], k and v [B, KV, T, D]. Returns the heads merged [B, T, H*D] and the weights [B, H, T, S].
 */
export function rotaryAttention(points: AttentionPoints, q: Tensor, k: Tensor, v: Tensor, rope: [Tensor, Tensor], ctx: AttentionContext, layerIdx: number, scores: ScoreOptions): Promise<[Tensor, Tensor]> {
  if (!Array.isArray(rope)) throw missingContext(points, "the rotary tables (cos, sin) the stack makes");
  const [cos, sin] = rope;
  return attend(points, applyRotary(q, cos, sin), applyRotary(k, cos, sin), v, ctx, layerIdx, scores, "input");
}

/**
 * An attention module (or the decoder layer around it) called with its hidden state alone, as `lm_head` or a norm
 * can be: it also takes what the decoder stack gives every layer.
 */
function missingContext(points: AttentionPoints, what: string): ModuleCallError {
  const attention = points.path.replace(/\.source$/, "");
  return new ModuleCallError(`${attention} was called without ${what}: call a decoder layer or its attention with every argument the stack passes it, \`layer.call(...(await layer.inputs))\` (its .inputs read in the same pass), or call the parts that take a hidden state alone (the MLP, the norms)`);
}

/** Hugging Face's `layer_types` values tsight runs: causal attention over everything, or over a sliding window. */
export type LayerType = "full_attention" | "sliding_attention";
export const layerTypeNames: readonly LayerType[] = ["full_attention", "sliding_attention"];

/**
 * One attention context per layer: the additive mask of its layer type (built once per type and forward) and the
 * cache. `window` is the sliding window of "sliding_attention" layers.
 */
export function layerContexts(mask: Tensor, newTokens: number, layerTypes: readonly LayerType[], window: number | null, cache?: import("./cache.js").KVCache): AttentionContext[] {
  const masks = new Map<LayerType, Tensor>();
  return layerTypes.map((type) => {
    let m = masks.get(type);
    if (!m) masks.set(type, (m = attentionMask(mask, newTokens, type === "sliding_attention" ? window : null)));
    return { mask: m, cache };
  });
}
