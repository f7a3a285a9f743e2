/**
 * Loading a model: resolve the source to a folder, read its configs and tokenizer, build the module tree for its
 * model_type, and (unless `dispatch: false`) copy the weights in. A meta model reads only the safetensors header,
 * to check every parameter's shape, never the tensor data.
 */
import { buildModel, planWeights, sourceShape, streamWeights, WeightsError, type CausalLM, type LoadProgress, type RawConfig } from "../models/index.js";
import { DTypeError, lazyNode, openModelWeights, readModelSafetensorsHeader, weightDTypes, type WeightDType } from "../tensor/index.js";
import { locateModel, readModelConfigs, type ModelSource, type ModelSourceOptions } from "./source.js";
import { TokenizerError } from "./errors.js";
import { Tokenizer } from "./tokenizer.js";

const fsp = lazyNode<typeof import("node:fs/promises")>("node:fs/promises");
const path = lazyNode<typeof import("node:path")>("node:path");

export interface LoadOptions extends ModelSourceOptions {
  /** Load the weights (default). false gives a meta model: config, module tree with shapes, tokenizer. */
  dispatch?: boolean;
  /**
   * The tokenizer to use instead of the folder's tokenizer.json: a Tokenizer, or a folder holding a tokenizer.json
   * (another model's, say). Without either, a folder with no tokenizer.json loads for token-id input only.
   */
  tokenizer?: Tokenizer | string;
  /**
   * What the matrices of linear layers and embeddings are kept as: "float32" (default; Hugging Face's numbers),
   * "bfloat16"/"float16" (the stored bits, widened inside each product), or block-quantized "int8"/"int4" (ONNX
   * Runtime's MatMulNBits). Norms, biases and experts' stacked weights stay float32; activations are float32.
   */
  dtype?: WeightDType;
  /** Told after each tensor of the weights loads (tensors and bytes so far, of how many). */
  onLoadProgress?: (progress: LoadProgress) => void;
}

/** `dtype` if weights can be kept as it, else a DTypeError listing the choices. */
export function checkWeightDType(dtype: unknown, where: string): WeightDType {
  if (dtype === undefined) return "float32";
  if (typeof dtype === "string" && (weightDTypes as readonly string[]).includes(dtype)) return dtype as WeightDType;
  const given = typeof dtype === "string" ? `"${dtype.slice(0, 40)}"` : typeof dtype === "number" || typeof dtype === "boolean" || dtype === null ? String(dtype) : `of type ${typeof dtype}`;
  const near = typeof dtype === "string" ? nearDTypes(dtype) : [];
  throw new DTypeError(`${where}: dtype ${given} is not one weights can be kept as; choose ${weightDTypes.map((d) => `"${d}"`).join(", ")}${near.length ? ` (did you mean ${near.map((d) => `"${d}"`).join(" or ")}?)` : ""}`);
}

/** The dtypes a mistyped one may have meant: the same name in PyTorch's or another case or short form, else those one letter away. */
function nearDTypes(text: string): WeightDType[] {
  const name = text.toLowerCase().replace(/^torch\./, "");
  const alias = ({ bf16: "bfloat16", fp16: "float16", half: "float16", fp32: "float32", float: "float32" } as Record<string, WeightDType>)[name];
  if (alias) return [alias];
  if ((weightDTypes as readonly string[]).includes(name)) return [name as WeightDType];
  return weightDTypes.filter((d) => oneEditApart(d, name));
}

function oneEditApart(a: string, b: string): boolean {
  if (Math.abs(a.length - b.length) > 1) return false;
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  // The rest must match after one replacement, insertion or deletion.
  return a.slice(i + 1) === b.slice(i + 1) || a.slice(i + 1) === b.slice(i) || a.slice(i) === b.slice(i + 1);
}

export interface LoadedModel {
  source: ModelSource;
  config: RawConfig;
  generationConfig: RawConfig | null;
  model: CausalLM;
  tokenizer: Tokenizer;
  dispatched: boolean;
  /** What the weights are kept as. */
  dtype: WeightDType;
}

export async function loadPretrained(nameOrPath: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const dispatch = options.dispatch ?? true;
  const dtype = checkWeightDType(options.dtype, "load");
  if (options.onLoadProgress !== undefined && typeof options.onLoadProgress !== "function") throw new TypeError(`load: onLoadProgress must be a function, got ${typeof options.onLoadProgress}`);
  const source = await locateModel(nameOrPath, { ...options, weights: dispatch ? options.weights : false });
  const { config, generationConfig } = await readModelConfigs(source.path);
  const model = buildModel(config);
  const tokenizer = await chooseTokenizer(options.tokenizer, source.path, config);
  const header = await readModelSafetensorsHeader(source.path).catch((e) => {
    if (dispatch) throw e;
    return null; // a meta model needs no weights on disk
  });
  if (header) {
    const { sources } = planWeights(model, new Set(header.entries.keys()));
    const params = model.namedParameters();
    for (const [name, src] of sources) {
      const want = params.get(name)!.shape;
      const got = sourceShape(src, (k) => header.entries.get(k)!.shape);
      if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
        const what = "key" in src ? `weight "${src.key}"` : `the stacked weights ${src.stack[0]![0]}, ...`;
        throw new WeightsError(`${source.path}: ${what} has shape [${got}] but the config gives ${name} the shape [${want}]`);
      }
    }
    if (dispatch) await readWeights(model, source.path, { dtype, onProgress: options.onLoadProgress });
  }
  return { source, config, generationConfig, model, tokenizer, dispatched: dispatch, dtype };
}

async function readWeights(model: CausalLM, folder: string, options: { dtype: WeightDType; onProgress?: (p: LoadProgress) => void }): Promise<void> {
  const reader = await openModelWeights(folder);
  try {
    await streamWeights(model, reader, options);
  } finally {
    await reader.close();
  }
}

/**
 * Loads the weights of a model built without them (`dispatch: false`) into it: downloads them first if the
 * source is a Hugging Face repo (with `onProgress`), then reads them as a normal load does.
 */
export async function dispatchWeights(model: CausalLM, nameOrPath: string, options: LoadOptions = {}): Promise<void> {
  const dtype = checkWeightDType(options.dtype, "load");
  const source = await locateModel(nameOrPath, { ...options, weights: options.weights });
  await readWeights(model, source.path, { dtype, onProgress: options.onLoadProgress });
}

/** The tokenizer given, the folder's, or (no tokenizer.json) an ids-only one built from config.json. */
async function chooseTokenizer(given: Tokenizer | string | undefined, folder: string, config: RawConfig): Promise<Tokenizer> {
  if (given instanceof Tokenizer) return given;
  if (typeof given === "string") return Tokenizer.fromFolder(given);
  if (given !== undefined) throw new TokenizerError(`the tokenizer option must be a Tokenizer or the folder of a tokenizer.json, got ${given === null ? "null" : typeof given}`);
  const file = path.join(folder, "tokenizer.json");
  if (await fsp.stat(file).then(() => true, () => false)) return Tokenizer.fromFolder(folder);
  return Tokenizer.idsOnlyFor(
    config,
    `${folder} has no tokenizer.json, so this model takes token ids only (a list of ids, or an int64 tensor); for text, load it with { tokenizer } (a Tokenizer, or the folder of a tokenizer.json)`,
  );
}
