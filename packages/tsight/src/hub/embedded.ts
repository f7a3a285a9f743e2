/**
 * Embedded models: small trained models that ship inside the package under `models/<name>/`, so a first run needs
 * no download. Each folder is a Hugging Face model folder (config.json, model.safetensors, tokenizer.json,
 * tokenizer_config.json, generation_config.json).
 */
import { lazyNode } from "../tensor/index.js";

const fs = lazyNode<typeof import("node:fs")>("node:fs");
const path = lazyNode<typeof import("node:path")>("node:path");
const url = lazyNode<typeof import("node:url")>("node:url");
import { UnknownModelError } from "./errors.js";

export const embeddedModelNames = ["stdlib-gpt2", "stdlib-llama"] as const;
export type EmbeddedModelName = (typeof embeddedModelNames)[number];

export function isEmbeddedModel(name: string): name is EmbeddedModelName {
  return (embeddedModelNames as readonly string[]).includes(name);
}

let root: string | undefined;

/**
 * The folder holding tsight's package.json: found by walking up from this file, so it is the same whether this runs
 * from `src/hub/` (tsx, vitest) or `dist/hub/` (compiled).
 */
export function packageRoot(): string {
  if (root) return root;
  let dir = path.dirname(url.fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, "package.json");
    if (fs.existsSync(pkg) && readPackageName(pkg) === "tsight") return (root = dir);
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`cannot find tsight's package.json above ${path.dirname(url.fileURLToPath(import.meta.url))}`);
    dir = parent;
  }
}

function readPackageName(file: string): string | undefined {
  try {
    return (JSON.parse(fs.readFileSync(file, "utf8")) as { name?: string }).name;
  } catch {
    return undefined;
  }
}

/** The folder of an embedded model. */
export function embeddedModelPath(name: string): string {
  if (!isEmbeddedModel(name)) throw new UnknownModelError(name, embeddedModelNames, "not an embedded model");
  const dir = path.join(packageRoot(), "models", name);
  if (!fs.existsSync(path.join(dir, "config.json"))) throw new UnknownModelError(name, embeddedModelNames, `its files are missing from ${dir} (a broken install?)`);
  return dir;
}
