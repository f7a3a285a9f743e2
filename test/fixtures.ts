/**
 * The Hugging Face reference fixtures (../shared/fixtures, see its README): where they are and how to read them.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { buildModel, loadWeights, type CausalLM } from "../packages/tsight/src/models/index.js";
import { isPoint, type ForwardOptions } from "../packages/tsight/src/nn/index.js";
import { readSafetensors, Tensor } from "../packages/tsight/src/tensor/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** TSIGHT_FIXTURES, else ../shared/fixtures beside the project, else the workplace's /work/shared/fixtures. */
export const fixturesDir: string = (() => {
  const candidates = [process.env.TSIGHT_FIXTURES, path.resolve(root, "../shared/fixtures"), "/work/shared/fixtures"].filter((p): p is string => !!p);
  const found = candidates.find((p) => fs.existsSync(path.join(p, "README.md")));
  if (!found) throw new Error(`reference fixtures not found (looked in ${candidates.join(", ")}); set TSIGHT_FIXTURES`);
  return found;
})();

/** hf-fixtures/: one tiny random model per architecture of the first batch, named by model_type. */
export const hfArchitectures = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "gemma"] as const;
/** hf-fixtures-2/: current model families and rope types (transformers 5.18), named by what they exercise. */
export const hfFixtures2 = ["llama3", "gemma2", "gemma3_text", "phi3", "olmo2", "mixtral", "qwen3_moe", "llama_linear", "qwen2_yarn", "phi3_longrope"] as const;
/** Every tiny Hugging Face fixture, both batches: same format, same inputs, same intervention references. */
export const hfFixtures = [...hfArchitectures, ...hfFixtures2] as const;
export type HfFixtureName = (typeof hfFixtures)[number];
export const stdlibModels = ["stdlib-gpt2", "stdlib-llama"] as const;
export type FixtureName = HfFixtureName | (typeof stdlibModels)[number];

export function fixtureDir(name: FixtureName): string {
  if (name.startsWith("stdlib-")) return path.join(fixturesDir, name);
  return path.join(fixturesDir, (hfFixtures2 as readonly string[]).includes(name) ? "hf-fixtures-2" : "hf-fixtures", name);
}

export interface Manifest {
  /** hf-fixtures-2 only: the model_type and every parameter's shape. */
  arch?: string;
  parameters?: Record<string, number[]>;
  modules: string[];
  single: { pre_order: string[]; post_order: string[]; output_kinds: Record<string, string> };
  probes?: { text: string; ids: number[]; greedy: string }[];
  tokenizer_cases?: { text: string; ids: number[] }[];
}

export interface Fixture {
  name: FixtureName;
  dir: string;
  config: Record<string, unknown>;
  manifest: Manifest;
  reference: Map<string, Tensor>;
}

const cache = new Map<FixtureName, Promise<Fixture>>();
export function fixture(name: FixtureName): Promise<Fixture> {
  let f = cache.get(name);
  if (!f) {
    f = (async () => {
      const dir = fixtureDir(name);
      const read = (file: string) => JSON.parse(fs.readFileSync(path.join(dir, file), "utf8"));
      const { tensors } = await readSafetensors(path.join(dir, "reference.safetensors"));
      return { name, dir, config: read("config.json"), manifest: read("manifest.json"), reference: tensors };
    })();
    cache.set(name, f);
  }
  return f;
}

/**
 * A Hugging Face fixture as a loadable model folder (config, weights, and stdlib-gpt2's tokenizer, since the tiny
 * fixtures have none; token-id inputs need none), made once per process.
 */
const folders = new Map<HfFixtureName, string>();
export function fixtureFolder(name: HfFixtureName): string {
  let dir = folders.get(name);
  if (!dir) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), `tsight-${name}-`));
    for (const file of ["config.json", "model.safetensors"]) fs.copyFileSync(path.join(fixtureDir(name), file), path.join(dir, file));
    fs.copyFileSync(path.join(fixtureDir("stdlib-gpt2"), "tokenizer.json"), path.join(dir, "tokenizer.json"));
    folders.set(name, dir);
  }
  return dir;
}

/** The fixture's checkpoint tensors by file key, as Hugging Face saved them. */
export async function fixtureWeights(name: FixtureName): Promise<Map<string, Tensor>> {
  return (await readSafetensors(path.join(fixtureDir(name), "model.safetensors"))).tensors;
}

/** A fresh model with the fixture's weights (fresh: tests may install hooks). */
export async function fixtureModel(name: FixtureName): Promise<CausalLM> {
  const f = await fixture(name);
  const model = buildModel(f.config);
  loadWeights(model, await fixtureWeights(name));
  return model;
}

export function ref(f: Fixture, key: string): Tensor {
  const t = f.reference.get(key);
  if (!t) throw new Error(`${f.name}: reference.safetensors has no "${key}"`);
  return t;
}

/** Largest absolute difference; throws on a shape mismatch so it cannot pass by accident. */
export function maxAbsDiff(a: Tensor, b: Tensor): number {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) throw new Error(`shape [${a.shape}] vs [${b.shape}]`);
  const x = a.float().data as Float32Array;
  const y = b.float().data as Float32Array;
  let worst = 0;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i]! - y[i]!);
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

/** The value the fixtures recorded for an output: a tensor, a tuple's first element, a ModelOutput's main field. */
export const firstTensor = (v: unknown): Tensor => (v instanceof Tensor ? v : Array.isArray(v) ? v[0] : ((v as { logits?: Tensor }).logits ?? (v as { last_hidden_state: Tensor }).last_hidden_state));

/**
 * One forward of `model` recording the call order and the first input/output of every module, under the keys the
 * fixtures use (`path:input`, `path:output`).
 */
export async function recordForward(model: CausalLM, ids: Tensor, options: ForwardOptions = {}) {
  const pre: string[] = [];
  const post: string[] = [];
  const values = new Map<string, Tensor>();
  model.tree.hooks = {
    async call(m, args, forward) {
      // Operation points are tsight's own (Hugging Face has no module there).
      if (isPoint(m)) return forward(args);
      pre.push(m.path);
      if (!values.has(`${m.path}:input`)) values.set(`${m.path}:input`, args[0] as Tensor);
      const out = await forward(args);
      post.push(m.path);
      if (!values.has(`${m.path}:output`)) values.set(`${m.path}:output`, firstTensor(out));
      return out;
    },
  };
  try {
    const out = await model.call(ids, options);
    return { pre, post, values, logits: out.logits };
  } finally {
    model.tree.hooks = null;
  }
}
