/**
 * Pieces every attention shares: the additive mask (causal, padding, optional sliding window), position ids
 * derived from the attention mask, rotary embeddings, grouped-query head repetition and eager scaled dot-product
 * attention returning its weights (interpretability code reads them).
 */
import { functional as F, Tensor } from "../tensor/index.js";
import { Module } from "./module.js";

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

/** Positions from the mask: each row counts its real tokens, so left padding does not shift a prompt. */
export function positionIdsFromMask(mask: Tensor, newTokens: number): Tensor {
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

/** Fills in the defaults of ForwardOptions for `ids` [B, T]. */
export function resolveForward(ids: Tensor, o: ForwardOptions): { mask: Tensor; positions: Tensor } {
  const [B, T] = ids.shape as [number, number];
  const past = o.cache?.length ?? 0;
  const mask = o.attentionMask ?? Tensor.full([B, past + T], 1, "int64");
  if (mask.shape[0] !== B || mask.shape[1] !== past + T) {
    throw new RangeError(`attention mask has shape [${mask.shape}] but ids [${B}, ${T}] with ${past} cached positions need [${B}, ${past + T}]`);
  }
  return { mask, positions: o.positionIds ?? positionIdsFromMask(mask, T) };
}

/** Rotary embedding tables (the `rotary_emb` module of Llama-style models): cos and sin [B, T, dim]. */
export class RotaryEmbedding extends Module {
  private readonly invFreq: Float32Array;
  constructor(
    readonly dim: number,
    readonly base: number,
  ) {
    super();
    this.invFreq = new Float32Array(dim / 2);
    for (let i = 0; i < dim / 2; i++) this.invFreq[i] = 1 / Math.pow(base, (2 * i) / dim);
  }
  override async forward(_x: Tensor, positions: Tensor): Promise<[Tensor, Tensor]> {
    const [B, T] = positions.shape as [number, number];
    const half = this.dim / 2;
    const pos = positions.data as BigInt64Array;
    const cos = new Float32Array(B * T * this.dim);
    const sin = new Float32Array(B * T * this.dim);
    const f = new Float32Array(1);
    for (let i = 0; i < B * T; i++) {
      const p = Number(pos[i]);
      for (let j = 0; j < half; j++) {
        f[0] = p * this.invFreq[j]!; // the float32 product, as torch computes it
        const c = Math.cos(f[0]!),
          s = Math.sin(f[0]!);
        cos[i * this.dim + j] = cos[i * this.dim + j + half] = c;
        sin[i * this.dim + j] = sin[i * this.dim + j + half] = s;
      }
    }
    return [new Tensor("float32", cos, [B, T, this.dim]), new Tensor("float32", sin, [B, T, this.dim])];
  }
}

/** Rotates the first cos.shape[-1] features of x [B, H, T, D] (all of them unless the rotary is partial). */
export function applyRotary(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const rd = cos.shape.at(-1)!;
  const D = x.shape.at(-1)!;
  const [rot, pass] = rd === D ? [x, null] : x.split([rd, D - rd], -1);
  const c = cos.unsqueeze(1);
  const s = sin.unsqueeze(1);
  const [x1, x2] = rot!.split(rd / 2, -1) as [Tensor, Tensor];
  const rotated = Tensor.cat([x2.neg(), x1], -1);
  const out = rot!.mul(c).add(rotated.mul(s));
  return pass ? Tensor.cat([out, pass], -1) : out;
}

/**
 * Eager attention: softmax(q k^T * scale + mask) v (one kernel), with the weights returned too.
 * q [B, H, T, D], k and v [B, KV, S, D]; returns the output with heads merged [B, T, H*D] and weights [B, H, T, S].
 */
export function eagerAttention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: number): [Tensor, Tensor] {
  return F.attention(q, k, v, mask, scale);
}
