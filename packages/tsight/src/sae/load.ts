/**
 * Loading SAEs as SAELens saves them: a folder (or a Hugging Face repo and a subfolder in it, SAELens's release
 * layout) with cfg.json and sae_weights.safetensors. Tensors are checked by name and shape before they are used.
 */
import fs from "node:fs";
import path from "node:path";
import { downloadFile, isRepoId, packageRoot, type HubOptions } from "../hub/index.js";
import { readSafetensors } from "../tensor/index.js";
import { saeConfig, SaeConfigError, SparseAutoencoder } from "./sae.js";

export interface LoadSaeOptions extends HubOptions {
  /** The SAE's folder inside the repo (SAELens releases keep one SAE per folder, e.g. "layer_2/width_16k"). */
  subfolder?: string;
}

/**
 * SAEs that ship with tsight: a TopK SAE (k = 16, 2048 features) trained on 765k tokens of Python at the output of
 * stdlib-gpt2's block 2 (transformer.h.2), for examples and tests that run anywhere.
 */
export const embeddedSaeNames = ["stdlib-gpt2-res2-topk"] as const;

const CONFIG = "cfg.json";
const WEIGHTS = "sae_weights.safetensors";
/** A cfg.json is a few hundred bytes; anything near this is not one. */
const MAX_CONFIG_BYTES = 1 << 20;

/** A served SAE: where it is (a folder or a repo id, and a subfolder) and the module it reads (default: its config's). */
export interface SaeSpec {
  source: string;
  subfolder?: string;
  at?: string;
}

/** What clients learn of a served SAE: where it is spliced and its cfg.json (to splice a meta copy). */
export interface SaeMeta {
  at: string;
  config: Record<string, unknown>;
}

/**
 * Loads an SAE: one that ships with tsight (embeddedSaeNames), a folder, or a Hugging Face repo id (with
 * `subfolder`), downloaded to the hub cache.
 */
export async function loadSae(source: string, options: LoadSaeOptions = {}): Promise<SparseAutoencoder> {
  const { configFile, weightsFile } = await locateSae(source, options);
  const sae = new SparseAutoencoder(saeConfig(readSaeConfig(configFile)));
  const { tensors } = await readSafetensors(weightsFile);
  for (const [name, info] of sae.namedParameters()) {
    const t = tensors.get(name);
    if (!t) throw new SaeConfigError(`loadSae: ${weightsFile} has no tensor "${name}" (it has ${[...tensors.keys()].join(", ") || "none"})`, name);
    if (t.shape.length !== info.shape.length || t.shape.some((d, i) => d !== info.shape[i])) throw new SaeConfigError(`loadSae: "${name}" has shape [${t.shape.join(", ")}] where the config says [${info.shape.join(", ")}]`, name);
    info.module.setParam(info.name, t.dtype === "float32" ? t : t.float());
  }
  return sae;
}

/** A served SAE's meta: its cfg.json read (and checked), and the module it is spliced at. */
export async function saeMeta(spec: SaeSpec, options: HubOptions = {}): Promise<SaeMeta> {
  const { configFile } = await locateSae(spec.source, { ...options, subfolder: spec.subfolder, weights: false });
  const config = readSaeConfig(configFile);
  const at = spec.at ?? saeConfig(config).hookPoint;
  if (!at) throw new SaeConfigError(`the SAE at ${spec.source} names no module (metadata.hf_hook_point); say where it goes (SOURCE@MODULE)`, "hf_hook_point");
  return { at, config };
}

/** The files of an SAE: local, or downloaded from the hub (the weights only unless `weights: false`). */
async function locateSae(source: string, options: LoadSaeOptions): Promise<{ configFile: string; weightsFile: string }> {
  const sub = (options.subfolder ?? "").replace(/^\/+|\/+$/g, "");
  if (sub.split("/").includes("..")) throw new SaeConfigError(`loadSae: subfolder ${JSON.stringify(options.subfolder)} may not leave the repo`, "subfolder");
  let configFile: string;
  let weightsFile: string;
  if ((embeddedSaeNames as readonly string[]).includes(source)) source = path.join(packageRoot(), "models", "saes", source);
  if (fs.existsSync(source)) {
    const folder = path.join(source, sub);
    [configFile, weightsFile] = [path.join(folder, CONFIG), path.join(folder, WEIGHTS)];
  } else if (isRepoId(source)) {
    const inRepo = (f: string) => (sub ? `${sub}/${f}` : f);
    configFile = await downloadFile(source, inRepo(CONFIG), options);
    weightsFile = options.weights === false ? "" : await downloadFile(source, inRepo(WEIGHTS), options);
  } else {
    throw new SaeConfigError(`loadSae: ${JSON.stringify(source)} is neither a folder nor a Hugging Face repo id`, "source");
  }
  return { configFile, weightsFile };
}

function readSaeConfig(configFile: string): Record<string, unknown> {
  const size = fs.statSync(configFile, { throwIfNoEntry: false })?.size;
  if (size === undefined) throw new SaeConfigError(`loadSae: ${configFile} is missing (an SAELens folder has ${CONFIG} and ${WEIGHTS})`, "cfg.json");
  if (size > MAX_CONFIG_BYTES) throw new SaeConfigError(`loadSae: ${configFile} is ${size} bytes, not an SAE config`, "cfg.json");
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(configFile, "utf8"));
  } catch (e) {
    throw new SaeConfigError(`loadSae: ${configFile} is not JSON (${(e as Error).message})`, "cfg.json");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new SaeConfigError(`loadSae: ${configFile} does not hold an object`, "cfg.json");
  return raw as Record<string, unknown>;
}
