/**
 * Rotary position embeddings (RoPE) and the ways checkpoints stretch them to longer contexts (transformers'
 * modeling_rope_utils): the inverse frequencies of each rope type, the attention scaling some types apply to cos
 * and sin, and the `rotary_emb` module, which holds one table per layer type where a model has several (Gemma 3's
 * local and global layers).
 */
import { activeCapture, CaptureError, functional as F, Tensor } from "../tensor/index.js";
import { Module } from "./module.js";

/** How a rope type changes the default frequencies; `dynamic` and `longrope` depend on the sequence length. */
export type RopeScaling =
  | { type: "default" }
  /** Positions divided by `factor` (all frequencies / factor). */
  | { type: "linear"; factor: number }
  /** Dynamic NTK: past `maxPositions` the base grows with the sequence length. */
  | { type: "dynamic"; factor: number; maxPositions: number }
  /** Llama 3.1: low frequencies / factor, high ones kept, a smooth ramp between (wavelengths vs the old context). */
  | { type: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number }
  /** YaRN: interpolation and extrapolation blended per dimension, cos/sin scaled by `attentionFactor`. */
  | { type: "yarn"; factor: number; originalMaxPositions: number; attentionFactor: number; betaFast: number; betaSlow: number; truncate: boolean }
  /** LongRoPE (Phi-3): per-dimension factors, short up to `originalMaxPositions` tokens and long past it. */
  | { type: "longrope"; shortFactor: number[]; longFactor: number[]; originalMaxPositions: number; attentionFactor: number };

export type RopeType = RopeScaling["type"];
export const ropeTypes: readonly RopeType[] = ["default", "linear", "dynamic", "llama3", "yarn", "longrope"];

/** One rope table: `dim` rotated features per head (head_dim x partial_rotary_factor), base `theta`. */
export interface RopeSpec {
  dim: number;
  theta: number;
  scaling: RopeScaling;
}

const f32 = Math.fround;

/** 1 / theta^(2i / dim) for i < dim / 2, rounded the way torch computes it in float32. */
function defaultInvFreq(dim: number, theta: number): Float32Array {
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) out[i] = f32(1 / f32(Math.pow(theta, f32((2 * i) / dim))));
  return out;
}

/** YaRN's attention factor when the config does not give one: 0.1 ln(factor) + 1 (with optional mscales). */
export function yarnAttentionFactor(factor: number, mscale?: number | null, mscaleAllDim?: number | null): number {
  const get = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
  return mscale && mscaleAllDim ? get(factor, mscale) / get(factor, mscaleAllDim) : get(factor);
}

/** LongRoPE's attention factor when the config does not give one: sqrt(1 + ln(factor) / ln(original context)). */
export function longropeAttentionFactor(factor: number, originalMaxPositions: number): number {
  return factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(originalMaxPositions));
}

/**
 * The inverse frequencies [dim / 2] of `spec` for a forward whose longest sequence is `seqLen` (the largest
 * position id + 1, over the whole batch, as Hugging Face decides), and the factor applied to cos and sin.
 */
export function ropeFrequencies(spec: RopeSpec, seqLen: number): { invFreq: Float32Array; attentionScaling: number } {
  const { dim, theta, scaling: s } = spec;
  switch (s.type) {
    case "default":
      return { invFreq: defaultInvFreq(dim, theta), attentionScaling: 1 };
    case "linear":
      return { invFreq: defaultInvFreq(dim, theta).map((f) => f32(f / s.factor)), attentionScaling: 1 };
    case "dynamic": {
      if (seqLen <= s.maxPositions) return { invFreq: defaultInvFreq(dim, theta), attentionScaling: 1 };
      const base = theta * Math.pow((s.factor * seqLen) / s.maxPositions - (s.factor - 1), dim / (dim - 2));
      return { invFreq: defaultInvFreq(dim, base), attentionScaling: 1 };
    }
    case "llama3": {
      const lowWavelen = s.originalMaxPositions / s.lowFreqFactor;
      const highWavelen = s.originalMaxPositions / s.highFreqFactor;
      const invFreq = defaultInvFreq(dim, theta).map((f) => {
        const wavelen = (2 * Math.PI) / f;
        if (wavelen < highWavelen) return f; // high frequencies: unchanged
        if (wavelen > lowWavelen) return f32(f / s.factor); // low frequencies: interpolated
        const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        return f32((1 - smooth) * (f / s.factor) + smooth * f);
      });
      return { invFreq, attentionScaling: 1 };
    }
    case "yarn": {
      // Dimensions that turn more than beta_fast times over the original context extrapolate (keep their
      // frequency), those turning fewer than beta_slow times interpolate (divide by factor); a linear ramp between.
      const correctionDim = (rotations: number) => (dim * Math.log(s.originalMaxPositions / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
      let low = correctionDim(s.betaFast);
      let high = correctionDim(s.betaSlow);
      if (s.truncate) [low, high] = [Math.floor(low), Math.ceil(high)];
      [low, high] = [Math.max(low, 0), Math.min(high, dim - 1)];
      if (low === high) high += 0.001;
      const invFreq = new Float32Array(dim / 2);
      for (let i = 0; i < dim / 2; i++) {
        const posFreq = f32(Math.pow(theta, f32((2 * i) / dim)));
        const extrapolation = f32(1 / posFreq);
        const interpolation = f32(1 / f32(s.factor * posFreq));
        const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
        const keep = f32(1 - ramp); // the share of extrapolation
        invFreq[i] = f32(f32(interpolation * f32(1 - keep)) + f32(extrapolation * keep));
      }
      return { invFreq, attentionScaling: s.attentionFactor };
    }
    case "longrope": {
      const factors = seqLen > s.originalMaxPositions ? s.longFactor : s.shortFactor;
      const invFreq = new Float32Array(dim / 2);
      for (let i = 0; i < dim / 2; i++) invFreq[i] = f32(1 / f32(f32(factors[i]!) * f32(Math.pow(theta, f32((2 * i) / dim)))));
      return { invFreq, attentionScaling: s.attentionFactor };
    }
  }
}

/** The largest cos and sin tables a rotary module makes for graphs (a small model's context, not Llama 3's 128k). */
const MAX_TABLE_BYTES = 16 * 2 ** 20;

/** The rope types whose frequencies depend on the sequence length of each forward. */
const lengthDependent = (s: RopeScaling) => s.type === "dynamic" || s.type === "longrope";

/**
 * The `rotary_emb` module of Llama-style models: cos and sin tables [B, T, dim] for position ids [B, T]. With
 * several layer types (a record of specs), `forward` takes the layer type as its third argument, as Hugging Face's
 * Gemma 3 does; with one spec it takes none.
 */
export class RotaryEmbedding extends Module {
  private readonly specs: Record<string, RopeSpec>;
  private readonly fixed = new Map<string, { invFreq: Float32Array; attentionScaling: number }>();
  /** Per layer type: cos and sin for every position below maxPositions (made when a graph first needs them). */
  private readonly tables = new Map<string, [Tensor, Tensor]>();
  constructor(
    specs: RopeSpec | Record<string, RopeSpec>,
    /** The model's context (max_position_embeddings), when its config gives one: the rows of the tables. */
    private readonly maxPositions: number | null = null,
  ) {
    super();
    this.specs = "dim" in specs && typeof specs.dim === "number" ? { "": specs as RopeSpec } : (specs as Record<string, RopeSpec>);
    for (const [type, spec] of Object.entries(this.specs)) if (!lengthDependent(spec.scaling)) this.fixed.set(type, ropeFrequencies(spec, 0));
  }

  /**
   * Whether code captured into a graph (a whole model's) can take its cos and sin: from tables of every position,
   * picked by the positions in the graph. Not for rope types whose frequencies depend on the sequence length, nor
   * without a known context, nor for tables over MAX_TABLE_BYTES.
   */
  get capturable(): boolean {
    if (this.maxPositions === null || this.fixed.size !== Object.keys(this.specs).length) return false;
    const bytes = Object.values(this.specs).reduce((n, s) => n + 2 * 4 * this.maxPositions! * s.dim, 0);
    return bytes <= MAX_TABLE_BYTES;
  }

  override get capturedPositions(): number | null {
    return this.capturable ? this.maxPositions : null;
  }

  override buffers(): Tensor[] {
    return this.capturable ? Object.keys(this.specs).flatMap((key) => this.table(key)) : [];
  }

  /** cos and sin [maxPositions, dim] of a fixed layer type: the values forward computes for each position. */
  private table(key: string): [Tensor, Tensor] {
    let known = this.tables.get(key);
    if (!known) {
      const rows = this.maxPositions!;
      const positions = new Tensor("int64", BigInt64Array.from({ length: rows }, (_, i) => BigInt(i)), [1, rows]);
      const [cos, sin] = this.tablesFor(key, positions);
      this.tables.set(key, (known = [cos.reshape([rows, -1]), sin.reshape([rows, -1])]));
    }
    return known;
  }
  /** Rotated features per head (of the first layer type). */
  get dim(): number {
    return Object.values(this.specs)[0]!.dim;
  }
  /** The layer types this module has tables for ("" when it has one). */
  get layerTypes(): string[] {
    return Object.keys(this.specs);
  }

  override async forward(_x: Tensor, positions: Tensor, layerType?: string): Promise<[Tensor, Tensor]> {
    const key = layerType ?? "";
    if (!this.specs[key]) throw new RangeError(`rotary_emb has no table for layer type "${key}"; it has ${Object.keys(this.specs).map((k) => `"${k}"`).join(", ")}`);
    if (activeCapture()) {
      // Computed from the positions' values, which a graph would bake in: picked from the tables by ops instead.
      if (!this.capturable) throw new CaptureError("these rotary tables are computed from the positions' values");
      const [B, T] = positions.shape as [number, number];
      const at = positions.to("int64").reshape([B * T]);
      return this.table(key).map((t) => t.indexSelect(0, at).reshape([B, T, -1])) as [Tensor, Tensor];
    }
    return this.tablesFor(key, positions);
  }

  /** cos and sin [B, T, dim] for positions [B, T], computed from their values. */
  private tablesFor(key: string, positions: Tensor): [Tensor, Tensor] {
    const spec = this.specs[key]!;
    const [B, T] = positions.shape as [number, number];
    const pos = positions.to("int64").data as BigInt64Array;
    let seqLen = 0;
    for (const p of pos) seqLen = Math.max(seqLen, Number(p) + 1);
    const { invFreq, attentionScaling } = this.fixed.get(key) ?? ropeFrequencies(spec, seqLen);
    const dim = spec.dim;
    const half = dim / 2;
    const scale = f32(attentionScaling);
    const cos = new Float32Array(B * T * dim);
    const sin = new Float32Array(B * T * dim);
    for (let i = 0; i < B * T; i++) {
      const p = Number(pos[i]);
      for (let j = 0; j < half; j++) {
        const angle = f32(p * invFreq[j]!); // the float32 product, as torch computes it
        const c = scale === 1 ? Math.cos(angle) : f32(f32(Math.cos(angle)) * scale);
        const s = scale === 1 ? Math.sin(angle) : f32(f32(Math.sin(angle)) * scale);
        cos[i * dim + j] = cos[i * dim + j + half] = c;
        sin[i * dim + j] = sin[i * dim + j + half] = s;
      }
    }
    return [new Tensor("float32", cos, [B, T, dim]), new Tensor("float32", sin, [B, T, dim])];
  }
}

/** Rotates the first cos.shape[-1] features of x [B, H, T, D] (all of them unless the rotary is partial). */
export function applyRotary(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const rd = cos.shape.at(-1)!;
  const D = x.shape.at(-1)!;
  const [rot, pass] = rd === D ? [x, null] : x.split([rd, D - rd], -1);
  const c = cos.unsqueeze(1);
  const s = sin.unsqueeze(1);
  const out = F.rotary(rot!, c, s);
  return pass ? Tensor.cat([out, pass], -1) : out;
}
