/**
 * Sparse autoencoders in SAELens's format (cfg.json + sae_weights.safetensors): standard (ReLU), TopK and JumpReLU,
 * with `apply_b_dec_to_input` and `normalize_activations`. An SAE is a module: spliced into a model (splice.ts) it
 * runs on a module's output, and its points (`pre`, `latents`, `reconstruction`, `error`) are read and replaced
 * like any module value: `m.transformer.h[2].sae.latents.output`.
 */
import { Module, Point } from "../nn/index.js";
import { noGrad, ShapeError, Tensor } from "../tensor/index.js";

export type SaeArchitecture = "standard" | "topk" | "jumprelu";
export const saeArchitectures: readonly SaeArchitecture[] = ["standard", "topk", "jumprelu"];

/**
 * How activations are scaled on the way in (and back on the way out). "expected_average_only_in" is SAELens's
 * training-time scaling, folded into the weights it saves, so it is the identity here.
 */
export type SaeNormalization = "none" | "expected_average_only_in" | "constant_norm_rescale" | "layer_norm";
export const saeNormalizations: readonly SaeNormalization[] = ["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"];

export interface SaeConfig {
  architecture: SaeArchitecture;
  dIn: number;
  dSae: number;
  /** TopK: how many latents stay active per token. */
  k: number | null;
  applyBDecToInput: boolean;
  normalizeActivations: SaeNormalization;
  /** Where the SAE was trained to read: the module path (SAELens `metadata.hf_hook_point`), when the file says. */
  hookPoint: string | null;
  /** SAELens's TransformerLens hook name (`blocks.2.hook_resid_post`), for reference. */
  hookName: string | null;
  /** cfg.json as read. */
  raw: Record<string, unknown>;
}

/** A cfg.json that cannot describe an SAE tsight runs; `field` names the key. */
export class SaeConfigError extends Error {
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
    this.name = "SaeConfigError";
  }
}

/** The largest width an SAE may declare (d_in, d_sae); d_in * d_sae must also fit one float32 tensor's limit. */
const MAX_WIDTH = 1 << 24;
const MAX_WEIGHTS = 2 ** 31 - 1;

/** Reads SAELens's cfg.json (the keys it writes: architecture, d_in, d_sae, k, apply_b_dec_to_input, ...). */
export function saeConfig(raw: Record<string, unknown>): SaeConfig {
  const int = (field: string): number => {
    const v = raw[field];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1 || v > MAX_WIDTH) throw new SaeConfigError(`SAE config: ${field} must be a whole number from 1 to ${MAX_WIDTH}, got ${JSON.stringify(v)}`, field);
    return v;
  };
  const architecture = raw.architecture ?? "standard";
  if (!saeArchitectures.includes(architecture as SaeArchitecture)) throw new SaeConfigError(`SAE config: architecture ${JSON.stringify(architecture)} is not one tsight runs (${saeArchitectures.join(", ")})`, "architecture");
  const dIn = int("d_in");
  const dSae = int("d_sae");
  if (dIn * dSae > MAX_WEIGHTS) throw new SaeConfigError(`SAE config: d_in ${dIn} x d_sae ${dSae} is more weights than one tensor may hold`, "d_sae");
  let k: number | null = null;
  if (architecture === "topk") {
    k = int("k");
    if (k > dSae) throw new SaeConfigError(`SAE config: k ${k} is more than d_sae ${dSae}`, "k");
  }
  const norm = raw.normalize_activations ?? "none";
  if (!saeNormalizations.includes(norm as SaeNormalization)) throw new SaeConfigError(`SAE config: normalize_activations ${JSON.stringify(norm)} is not one tsight runs (${saeNormalizations.join(", ")})`, "normalize_activations");
  const applyBDec = raw.apply_b_dec_to_input ?? true;
  if (typeof applyBDec !== "boolean") throw new SaeConfigError(`SAE config: apply_b_dec_to_input must be true or false, got ${JSON.stringify(applyBDec)}`, "apply_b_dec_to_input");
  const meta = (typeof raw.metadata === "object" && raw.metadata !== null ? raw.metadata : raw) as Record<string, unknown>;
  const text = (v: unknown) => (typeof v === "string" && v.length > 0 && v.length < 1000 ? v : null);
  return { architecture: architecture as SaeArchitecture, dIn, dSae, k, applyBDecToInput: applyBDec, normalizeActivations: norm as SaeNormalization, hookPoint: text(meta.hf_hook_point), hookName: text(meta.hook_name) ?? text(raw.hook_name), raw };
}

/** The scaling of `normalize_activations`: into the SAE's space and back. */
function normalizer(kind: SaeNormalization, x: Tensor): { into: (t: Tensor) => Tensor; back: (t: Tensor) => Tensor } {
  if (kind === "constant_norm_rescale") {
    // Every token scaled to norm sqrt(d_in), and back.
    const factor = x.norm(2, -1, true).reciprocal().mul(Math.sqrt(x.shape.at(-1)!));
    return { into: (t) => t.mul(factor), back: (t) => t.div(factor) };
  }
  if (kind === "layer_norm") {
    const mu = x.mean(-1, true);
    const std = x.sub(mu).std(-1, { keepdim: true });
    return { into: (t) => t.sub(mu).div(std.add(1e-5)), back: (t) => t.mul(std).add(mu) };
  }
  return { into: (t) => t, back: (t) => t };
}

/**
 * A sparse autoencoder: encode(x) = act((x - b_dec?) W_enc + b_enc), decode(f) = f W_dec + b_dec. As a module its
 * forward is what it does spliced into a model: x in, the reconstruction out (plus the error term x - x̂ of the
 * clean run when `useErrorTerm`, so an unedited SAE changes nothing). Its points, in order:
 *
 *   pre            encoder pre-activations [.., d_sae]  (SAELens hook_sae_acts_pre)
 *   latents        feature activations [.., d_sae]      (hook_sae_acts_post)
 *   reconstruction the decoded activations [.., d_in]   (hook_sae_recons)
 *   error          x - the clean reconstruction         (hook_sae_error; only with the error term)
 */
export class SparseAutoencoder extends Module {
  W_enc: Tensor;
  b_enc: Tensor;
  W_dec: Tensor;
  b_dec: Tensor;
  threshold: Tensor | undefined;
  pre = new Point();
  latents = new Point();
  reconstruction = new Point();
  error = new Point();
  /** Keep the reconstruction error (SAELens `use_error_term`); set when spliced. */
  useErrorTerm = false;

  constructor(readonly cfg: SaeConfig) {
    super();
    const { dIn, dSae } = cfg;
    this.W_enc = this.param("W_enc", [dIn, dSae]);
    this.b_enc = this.param("b_enc", [dSae]);
    this.W_dec = this.param("W_dec", [dSae, dIn]);
    this.b_dec = this.param("b_dec", [dIn]);
    this.threshold = cfg.architecture === "jumprelu" ? this.param("threshold", [dSae]) : undefined;
    this.error.absent = () => (this.useErrorTerm ? null : `${this.error.path} is not computed: this SAE was spliced without the error term; splice it with lm.addSae(sae, { useErrorTerm: true }) to read or edit its error`);
  }

  override get typeName(): string {
    return { standard: "StandardSAE", topk: "TopKSAE", jumprelu: "JumpReLUSAE" }[this.cfg.architecture];
  }

  /** Pre-activations of `x` [.., d_in] (already in the SAE's space: normalised). */
  preActivations(x: Tensor): Tensor {
    return (this.cfg.applyBDecToInput ? x.sub(this.b_dec) : x).matmul(this.W_enc).add(this.b_enc);
  }

  /** The architecture's activation of pre-activations [.., d_sae]. */
  activate(pre: Tensor): Tensor {
    const f = pre.relu();
    switch (this.cfg.architecture) {
      case "standard":
        return f;
      case "jumprelu":
        return f.mul(pre.gt(this.threshold!).float());
      case "topk": {
        // The k largest pre-activations per token, ReLU'd; the rest zero. Exactly k, as torch.topk keeps, even where
        // values tie (a mask made from the indices, not from a threshold); made from `pre` so no shape is fixed.
        const { values, indices } = pre.topk(this.cfg.k!, -1);
        return f.mul(pre.mul(0).scatterAdd(-1, indices, values.mul(0).add(1)));
      }
    }
  }

  /** Feature activations of `x` [.., d_in] -> [.., d_sae], normalisation included. */
  encode(x: Tensor): Tensor {
    this.checkWidth(x, "encode(x)", "x", this.cfg.dIn, "d_in");
    return this.activate(this.preActivations(normalizer(this.cfg.normalizeActivations, x).into(x)));
  }

  /**
   * Activations [.., d_in] from features `f` [.., d_sae], on the scale of the activations `x` they were encoded from.
   * An SAE with `normalize_activations` needs `x` to undo its scaling (per token, from `x`), as SAELens's decode does
   * after its encode; without it, decoding would give values on the normalised scale, silently off by that factor.
   */
  decode(f: Tensor, x?: Tensor): Tensor {
    this.checkWidth(f, "decode(f)", "f", this.cfg.dSae, "d_sae");
    if (this.cfg.normalizeActivations === "none") return this.decodeNormalised(f);
    if (!x) throw new TypeError(`decode(f): this SAE normalises its input (normalize_activations: ${this.cfg.normalizeActivations}), so decoding needs the activations the features came from to undo it: decode(f, x), for f = encode(x)`);
    this.checkWidth(x, "decode(f, x)", "x", this.cfg.dIn, "d_in");
    return normalizer(this.cfg.normalizeActivations, x).back(this.decodeNormalised(f));
  }

  /** f W_dec + b_dec: the decoding in the SAE's (normalised) space. */
  private decodeNormalised(f: Tensor): Tensor {
    return f.matmul(this.W_dec).add(this.b_dec);
  }

  private checkWidth(t: Tensor, call: string, name: string, width: number, field: string): void {
    if (t.shape.at(-1) !== width) throw new ShapeError(`${this.path || "SAE"}.${call}: ${name} has ${t.shape.at(-1)} features on its last axis (shape [${t.shape.join(", ")}]), the SAE's ${field} is ${width}`);
  }

  override async forward(x: Tensor): Promise<Tensor> {
    if (x.shape.at(-1) !== this.cfg.dIn) throw new ShapeError(`${this.path || "SAE"}: its input has ${x.shape.at(-1)} features on the last axis, the SAE reads ${this.cfg.dIn} (d_in): it is spliced at a module whose output it does not fit`);
    const norm = normalizer(this.cfg.normalizeActivations, x);
    const cleanPre = this.preActivations(norm.into(x));
    const pre = await this.pre.at(cleanPre);
    const cleanLatents = this.activate(pre);
    const latents = await this.latents.at(cleanLatents);
    const decoded = norm.back(this.decodeNormalised(latents));
    const recon = await this.reconstruction.at(decoded);
    if (!this.useErrorTerm) return recon;
    // The error of the unedited SAE, with no gradient (as SAELens computes it): an unedited SAE is the identity,
    // and gradients reach the input through the features only.
    const error = noGrad(() => {
      const clean = pre === cleanPre && latents === cleanLatents ? decoded : norm.back(this.decodeNormalised(this.activate(cleanPre)));
      return x.sub(clean).detach();
    });
    return recon.add(await this.error.at(error));
  }
}

/**
 * The module whose output is TransformerLens's hook `hookName` (SAELens's `hook_name`), in a model whose decoder
 * layers are at `layerPaths`: `blocks.N.hook_resid_post` is layer N's output, `blocks.N.hook_resid_pre` layer N - 1's
 * (N >= 1: layer 0's input is no module's output), `blocks.N.hook_mlp_out` layer N's MLP's. Null for any other hook.
 */
export function moduleForHook(hookName: string, layerPaths: readonly string[]): string | null {
  const m = /^blocks\.(\d+)\.hook_(resid_post|resid_pre|mlp_out)$/.exec(hookName);
  if (!m) return null;
  const n = Number(m[1]);
  const layer = m[2] === "resid_pre" ? n - 1 : n;
  const path = layerPaths[layer];
  if (path === undefined) return null;
  return m[2] === "mlp_out" ? `${path}.mlp` : path;
}
