/**
 * Loading a model: resolve the source to a folder, read its configs and tokenizer, build the module tree for its
 * model_type, and (unless `dispatch: false`) copy the weights in. A meta model reads only the safetensors header,
 * to check every parameter's shape, never the tensor data.
 */
import { buildModel, loadWeights, planWeights, sourceKeys, sourceShape, WeightsError, type CausalLM, type RawConfig } from "../models/index.js";
import { readModelSafetensors, readModelSafetensorsHeader } from "../tensor/index.js";
import { locateModel, readModelConfigs, type ModelSource, type ModelSourceOptions } from "./source.js";
import { Tokenizer } from "./tokenizer.js";

export interface LoadOptions extends ModelSourceOptions {
  /** Load the weights (default). false gives a meta model: config, module tree with shapes, tokenizer. */
  dispatch?: boolean;
}

export interface LoadedModel {
  source: ModelSource;
  config: RawConfig;
  generationConfig: RawConfig | null;
  model: CausalLM;
  tokenizer: Tokenizer;
  dispatched: boolean;
}

export async function loadPretrained(nameOrPath: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const dispatch = options.dispatch ?? true;
  const source = await locateModel(nameOrPath, { ...options, weights: dispatch ? options.weights : false });
  const { config, generationConfig } = await readModelConfigs(source.path);
  const model = buildModel(config);
  const tokenizer = await Tokenizer.fromFolder(source.path);
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
    if (dispatch) {
      const { tensors } = await readModelSafetensors(source.path, { names: new Set([...sources.values()].flatMap(sourceKeys)) });
      loadWeights(model, tensors);
    }
  }
  return { source, config, generationConfig, model, tokenizer, dispatched: dispatch };
}
