/**
 * Model sources: turning what a user names into a local model folder, and reading that folder's configs.
 *
 * A name is, in this order: an existing directory; an embedded model (`stdlib-gpt2`, `stdlib-llama`); a Hugging
 * Face repo id "org/name", downloaded into (or found in) the huggingface_hub cache. Anything else is an
 * `UnknownModelError` that lists the embedded models.
 */
import { lazyNode } from "../tensor/index.js";

const fsp = lazyNode<typeof import("node:fs/promises")>("node:fs/promises");
const os = lazyNode<typeof import("node:os")>("node:os");
const path = lazyNode<typeof import("node:path")>("node:path");
import { embeddedModelNames, embeddedModelPath, isEmbeddedModel } from "./embedded.js";
import { ModelConfigError, UnknownModelError } from "./errors.js";
import { downloadModel, isRepoId, type HubOptions } from "./huggingface.js";

export type ModelSourceKind = "folder" | "embedded" | "hub";

export interface ModelSource {
  kind: ModelSourceKind;
  /** What the user named. */
  name: string;
  /** The local folder holding config.json and the rest. */
  path: string;
  /** For hub models: the revision asked for and the commit it resolved to. */
  revision?: string;
  commit?: string;
}

export type ModelSourceOptions = HubOptions;

/** Finds (downloading if needed) the folder `nameOrPath` stands for, and says what kind of source it was. */
export async function locateModel(nameOrPath: string, options: ModelSourceOptions = {}): Promise<ModelSource> {
  const name = nameOrPath.trim();
  const asPath = name === "~" || name.startsWith("~/") ? path.join(os.homedir(), name.slice(1)) : name;
  const stat = await fsp.stat(asPath).catch(() => null);
  if (stat?.isDirectory()) return { kind: "folder", name, path: path.resolve(asPath) };
  if (stat) throw new UnknownModelError(name, embeddedModelNames, `${path.resolve(asPath)} is a file; give the folder that holds config.json`);
  if (isEmbeddedModel(name)) return { kind: "embedded", name, path: embeddedModelPath(name) };
  if (looksLikePath(name)) throw new UnknownModelError(name, embeddedModelNames, `there is no folder at ${path.resolve(asPath)}`);
  if (name.includes("/") && isRepoId(name)) {
    const snap = await downloadModel(name, options);
    return { kind: "hub", name, path: snap.path, revision: snap.revision, commit: snap.commit };
  }
  throw new UnknownModelError(name, embeddedModelNames);
}

/** The local folder `nameOrPath` stands for: an existing directory, an embedded model or a hub repo id. */
export async function resolveModelSource(nameOrPath: string, options: ModelSourceOptions = {}): Promise<string> {
  return (await locateModel(nameOrPath, options)).path;
}

function looksLikePath(name: string): boolean {
  return path.isAbsolute(name) || /^\.{1,2}([\\/]|$)/.test(name) || name.startsWith("~") || name.includes("\\") || name.split("/").length > 2;
}

export type JsonObject = Record<string, unknown>;

export interface ModelConfigs {
  /** config.json */
  config: JsonObject;
  /** generation_config.json, or null when the folder has none. */
  generationConfig: JsonObject | null;
}

/** Reads a model folder's config.json (required) and generation_config.json (optional). */
export async function readModelConfigs(folder: string): Promise<ModelConfigs> {
  const config = await readJsonObject(path.join(folder, "config.json"), true);
  const generationConfig = await readJsonObject(path.join(folder, "generation_config.json"), false);
  return { config: config!, generationConfig };
}

/** A JSON object file; null if it is absent and not required. Missing-but-required, unreadable or non-object JSON throw. */
export async function readJsonObject(file: string, required: boolean): Promise<JsonObject | null> {
  let text: string;
  try {
    text = await fsp.readFile(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" && !required) return null;
    throw new ModelConfigError(file, code === "ENOENT" ? `missing: a model folder needs ${path.basename(file)}` : `cannot be read (${code ?? (e as Error).message})`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new ModelConfigError(file, `is not valid JSON (${(e as Error).message})`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new ModelConfigError(file, "is not a JSON object");
  return parsed as JsonObject;
}
