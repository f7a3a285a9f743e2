/**
 * Reading Hugging Face config.json files: typed getters that fail with the field's name, not deep in a forward.
 */
export type RawConfig = Record<string, unknown>;

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

  /** rope_theta, from `rope_parameters` (transformers 5) or the top level (older configs). */
  ropeTheta(fallback = 10000): number {
    const params = this.raw.rope_parameters as Record<string, unknown> | undefined;
    const scaling = (params ?? (this.raw.rope_scaling as Record<string, unknown> | undefined)) as Record<string, unknown> | undefined;
    const type = scaling?.rope_type ?? scaling?.type ?? "default";
    if (type !== "default") throw new ConfigError(`${this.modelType} config: rope type "${String(type)}" is not supported yet (only "default")`, "rope_parameters");
    const theta = params?.rope_theta ?? this.raw.rope_theta ?? fallback;
    if (typeof theta !== "number") throw new ConfigError(`${this.modelType} config: rope_theta must be a number`, "rope_theta");
    return theta;
  }

  /** partial_rotary_factor (or GPT-NeoX's rotary_pct), 1 when absent. */
  partialRotary(): number {
    const params = this.raw.rope_parameters as Record<string, unknown> | undefined;
    const v = params?.partial_rotary_factor ?? this.raw.partial_rotary_factor ?? this.raw.rotary_pct ?? 1;
    if (typeof v !== "number" || v <= 0 || v > 1) throw new ConfigError(`${this.modelType} config: partial_rotary_factor must be in (0, 1], got ${JSON.stringify(v)}`, "partial_rotary_factor");
    return v;
  }
}
