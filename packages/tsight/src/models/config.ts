/**
 * Reading Hugging Face config.json files: typed getters that fail with the field's name, not deep in a forward.
 */
import { longropeAttentionFactor, ropeTypes, yarnAttentionFactor, type RopeScaling, type RopeSpec, type RopeType } from "../nn/index.js";

export type RawConfig = Record<string, unknown>;

/** What `ConfigReader.rope` needs besides the config. */
export interface RopeOptions {
  /** Features per head; the rotary dimension is head_dim x partial_rotary_factor. */
  headDim: number;
  /** Read the parameters of this layer type where they are nested by layer type. */
  layerType?: string;
  /** rope_theta when the config has none. */
  defaultTheta?: number;
  /** Other names this architecture gives rope types (Phi-3 reads "su" and "yarn" as "longrope"). */
  aliases?: Record<string, RopeType>;
  /** original_max_position_embeddings when the config's top level has none (Phi-3's 4096). */
  originalMaxDefault?: number;
  /** Parameters assembled by the architecture (Gemma 3's older per-layer-type fields) instead of the config's. */
  source?: { field: string; params: Record<string, unknown> };
}

/** A config that cannot build a model: a missing or wrong field, or an unsupported model_type. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

export class ConfigReader {
  constructor(
    readonly raw: RawConfig,
    readonly modelType: string,
  ) {}

  private missing(field: string, want: string): never {
    throw new ConfigError(`${this.modelType} config: field "${field}" is required (${want}) but is ${JSON.stringify(this.raw[field]) ?? "missing"}`, field);
  }

  /** A ConfigError naming `field`, saying what it must be. */
  invalid(field: string, want: string): never {
    throw new ConfigError(`${this.modelType} config: field "${field}" must be ${want}, got ${JSON.stringify(this.raw[field]) ?? "nothing"}`, field);
  }

  /** A positive integer field; the first name present wins (configs spell some fields several ways). */
  int(...names: string[]): number {
    for (const n of names) {
      const v = this.raw[n];
      if (v === undefined || v === null) continue;
      if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) this.missing(n, "a positive integer");
      return v;
    }
    return this.missing(names[0]!, "a positive integer");
  }

  intOr(fallback: number | null, ...names: string[]): number | null {
    return names.some((n) => this.raw[n] !== undefined && this.raw[n] !== null) ? this.int(...names) : fallback;
  }

  number(name: string, fallback?: number): number {
    const v = this.raw[name];
    if (v === undefined || v === null) return fallback ?? this.missing(name, "a number");
    if (typeof v !== "number" || !Number.isFinite(v)) this.missing(name, "a number");
    return v;
  }

  bool(name: string, fallback: boolean): boolean {
    const v = this.raw[name];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "boolean") this.missing(name, "true or false");
    return v;
  }

  string<T extends string>(name: string, allowed: readonly T[], fallback?: T): T {
    const v = this.raw[name];
    if ((v === undefined || v === null) && fallback !== undefined) return fallback;
    if (typeof v !== "string" || !allowed.includes(v as T)) {
      throw new ConfigError(`${this.modelType} config: field "${name}" is ${JSON.stringify(v) ?? "missing"}; supported: ${allowed.join(", ")}`, name);
    }
    return v as T;
  }

  /** Which field holds the rope settings: rope_scaling wins where both exist, as in transformers. */
  private ropeField(): "rope_scaling" | "rope_parameters" {
    return this.raw.rope_scaling ? "rope_scaling" : "rope_parameters";
  }

  /**
   * The rope table of the model, or of one layer type where `rope_parameters` is nested by layer type (Gemma 3):
   * transformers 5's `rope_parameters`, or the older `rope_scaling` with a top-level `rope_theta`.
   */
  rope(o: RopeOptions): RopeSpec {
    const field = o.source?.field ?? this.ropeField();
    const all = o.source ? o.source.params : (this.raw.rope_scaling || this.raw.rope_parameters || {});
    if (typeof all !== "object" || all === null || Array.isArray(all)) throw new ConfigError(`${this.modelType} config: field "${field}" must be an object, got ${JSON.stringify(all)}`, field);
    const dict = all as Record<string, unknown>;
    let params = dict;
    let where = field;
    const nested = o.layerType !== undefined && typeof dict[o.layerType] === "object" && dict[o.layerType] !== null;
    if (nested) {
      params = dict[o.layerType!] as Record<string, unknown>;
      where = `${field}.${o.layerType}`;
    }
    const bad = (key: string, want: string): never => {
      throw new ConfigError(`${this.modelType} config: "${where}.${key}" must be ${want}, got ${JSON.stringify(params[key]) ?? "nothing"}`, `${where}.${key}`);
    };
    const num = (key: string, fallback?: number | null, check: (v: number) => boolean = (v) => v > 0): number => {
      const v = params[key];
      if (v === undefined || v === null) return fallback ?? bad(key, "a positive number");
      if (typeof v !== "number" || !Number.isFinite(v) || !check(v)) bad(key, "a positive number");
      return v as number;
    };
    const declared = String(params.rope_type ?? params.type ?? "default");
    const type = (o.aliases?.[declared] ?? declared) as RopeType;
    if (!ropeTypes.includes(type)) {
      throw new ConfigError(`${this.modelType} config: rope type "${declared}" (${where}) is not supported; supported: ${ropeTypes.join(", ")}`, where);
    }
    const theta = params.rope_theta ?? (nested ? undefined : this.raw.rope_theta) ?? o.defaultTheta ?? 10000;
    if (typeof theta !== "number" || !(theta > 0)) throw new ConfigError(`${this.modelType} config: rope_theta must be a positive number, got ${JSON.stringify(theta)}`, nested ? `${where}.rope_theta` : "rope_theta");
    const partial = params.partial_rotary_factor ?? this.raw.partial_rotary_factor ?? this.raw.rotary_pct ?? 1;
    if (typeof partial !== "number" || partial <= 0 || partial > 1) throw new ConfigError(`${this.modelType} config: partial_rotary_factor must be in (0, 1], got ${JSON.stringify(partial)}`, "partial_rotary_factor");
    const dim = Math.trunc(o.headDim * partial);
    if (dim % 2) throw new ConfigError(`${this.modelType} config: the rotary dimension ${dim} (head_dim ${o.headDim} x partial_rotary_factor ${partial}) must be even`, "partial_rotary_factor");
    const maxPositions = (): number => {
      const v = this.raw.max_position_embeddings;
      if (typeof v !== "number" || !(v > 0)) throw new ConfigError(`${this.modelType} config: rope type "${type}" needs max_position_embeddings`, "max_position_embeddings");
      return v;
    };
    // Pretraining context of the scaled types: a top-level field wins (Phi-3 keeps it there), as in transformers.
    const originalMax = (): number => {
      const top = nested ? undefined : (this.raw.original_max_position_embeddings ?? o.originalMaxDefault);
      if (top !== undefined && top !== null) {
        if (typeof top !== "number" || !(top > 0)) throw new ConfigError(`${this.modelType} config: original_max_position_embeddings must be a positive number, got ${JSON.stringify(top)}`, "original_max_position_embeddings");
        return top;
      }
      return num("original_max_position_embeddings", params.original_max_position_embeddings == null ? maxPositions() : null);
    };
    const factors = (key: string): number[] => {
      const v = params[key];
      if (!Array.isArray(v) || v.length !== dim / 2 || v.some((x) => typeof x !== "number" || !(x > 0))) bad(key, `a list of ${dim / 2} positive numbers (one per rotated frequency)`);
      return v as number[];
    };
    let scaling: RopeScaling;
    switch (type) {
      case "default":
        scaling = { type };
        break;
      case "linear":
        scaling = { type, factor: num("factor") };
        break;
      case "dynamic":
        scaling = { type, factor: num("factor"), maxPositions: maxPositions() };
        break;
      case "llama3":
        scaling = { type, factor: num("factor"), lowFreqFactor: num("low_freq_factor"), highFreqFactor: num("high_freq_factor"), originalMaxPositions: originalMax() };
        if (scaling.lowFreqFactor >= scaling.highFreqFactor) bad("low_freq_factor", `smaller than high_freq_factor (${scaling.highFreqFactor})`);
        break;
      case "yarn": {
        const original = originalMax();
        const factor = num("factor");
        const mscale = params.mscale == null ? null : num("mscale");
        const mscaleAllDim = params.mscale_all_dim == null ? null : num("mscale_all_dim");
        const attentionFactor = num("attention_factor", params.attention_factor == null ? yarnAttentionFactor(factor, mscale, mscaleAllDim) : null);
        const truncate = params.truncate ?? true;
        if (typeof truncate !== "boolean") bad("truncate", "true or false");
        scaling = { type, factor, originalMaxPositions: original, attentionFactor, betaFast: num("beta_fast", params.beta_fast ? null : 32), betaSlow: num("beta_slow", params.beta_slow ? null : 1), truncate: truncate as boolean };
        break;
      }
      case "longrope": {
        const original = originalMax();
        const factor = num("factor", params.factor == null ? maxPositions() / original : null);
        const attentionFactor = num("attention_factor", params.attention_factor == null ? longropeAttentionFactor(factor, original) : null);
        scaling = { type, shortFactor: factors("short_factor"), longFactor: factors("long_factor"), originalMaxPositions: original, attentionFactor };
        break;
      }
    }
    return { dim, theta, scaling };
  }
}
