/**
 * ModelRegistry: the models this server serves, fixed at start. Each is found (and for a hub id, downloaded) once,
 * in the main thread; its model key is `toModelKey("LanguageModel", <name or folder as given>)`. Requests name
 * models only by key, and a key not listed here is refused: nothing named in a request is ever loaded.
 */
import { locateModel, readModelConfigs, saeMeta, Tokenizer, type SaeMeta, type SaeSpec, type WeightDType } from "tsight";
import { canonicalModelKey, fromModelKey, toModelKey, type ModelMeta } from "tsight/protocol";
import { ApiError } from "./api-error.js";
import { readModelMeta } from "./model-meta.js";

export interface ServedModel {
  key: string;
  /** What clients call it: its name or folder, or the NAME of `--model NAME=FOLDER`. */
  name: string;
  /** What it is loaded from: the name or folder (FOLDER for `--model NAME=FOLDER`). */
  source: string;
  folder: string;
  modelType: string;
  /** SAEs spliced into it, each with where it goes (resolved) and its config. */
  saes: (SaeSpec & SaeMeta)[];
  /** What its weights are kept as in the worker threads. */
  dtype: WeightDType;
}

/**
 * A `--model` value: a name or folder served under itself, or `NAME=FOLDER` (NAME letters, digits, `_`, `.` and `-`)
 * served as NAME, so that clients ask for `NAME` rather than a path on the server.
 */
export function servedModel(spec: string): { name: string; source: string } {
  const text = spec.trim();
  const m = /^([A-Za-z0-9][\w.-]*)=(.+)$/.exec(text);
  return m ? { name: m[1]!, source: m[2]!.trim() } : { name: text, source: text };
}

export class ModelRegistry {
  private readonly byKey = new Map<string, ServedModel>();
  private readonly metas = new Map<string, Promise<ModelMeta>>();
  private readonly tokenizers = new Map<string, Tokenizer | Promise<Tokenizer | undefined>>();

  private constructor(models: ServedModel[]) {
    for (const m of models) {
      if (this.byKey.has(m.key)) throw new RangeError(`model "${m.name}" is listed twice`);
      this.byKey.set(m.key, m);
    }
  }

  /** Finds each model's folder and reads its config. `dtypes`: by name, what each model's weights are kept as (default float32). */
  static async open(names: readonly string[], saes: Readonly<Record<string, readonly SaeSpec[]>> = {}, dtypes: Readonly<Record<string, WeightDType>> = {}): Promise<ModelRegistry> {
    for (const name of Object.keys(saes)) if (!names.some((n) => n.trim() === name)) throw new RangeError(`an SAE is given for "${name}", which is not a served model`);
    const models = await Promise.all(
      names.map(async (raw) => {
        const { name, source } = servedModel(raw);
        const located = await locateModel(source);
        const { config } = await readModelConfigs(located.path);
        // Each SAE's config is read and checked now: a server with a bad one does not start.
        const spliced = await Promise.all((saes[name] ?? []).map(async (spec) => ({ ...spec, ...(await saeMeta(spec)) })));
        return { key: toModelKey("LanguageModel", name, null), name, source, folder: located.path, modelType: String(config.model_type ?? "unknown"), saes: spliced, dtype: dtypes[name] ?? "float32" };
      }),
    );
    return new ModelRegistry(models);
  }

  /** The served model with this key (in any spelling that canonicalizes to it). */
  get(key: string): ServedModel | undefined {
    try {
      return this.byKey.get(canonicalModelKey(key));
    } catch {
      return undefined;
    }
  }

  list(): ServedModel[] {
    return [...this.byKey.values()];
  }

  /**
   * The 404 for a model key this server does not serve: the name asked for (the repo id of a well-formed key) and
   * the names it serves, each with its key (what a client sends).
   */
  unserved(key: string): ApiError {
    let asked = key;
    try {
      asked = `"${fromModelKey(key).args.repo_id}" (key ${key})`;
    } catch {
      // Not a model key at all: named as it came.
    }
    const served = this.list().map((m) => `${m.name} (key ${m.key})`);
    return new ApiError(404, "VALIDATION", `this server does not serve ${asked}; it serves ${served.join(", ")}`);
  }

  /**
   * The model's tokenizer if it is loaded; the first call starts loading it (in this thread: the main thread
   * reads token counts to batch jobs) and gives undefined until it is there.
   */
  tokenizer(model: ServedModel): Tokenizer | undefined {
    const t = this.tokenizers.get(model.key);
    if (t instanceof Tokenizer) return t;
    if (!t) void this.loadTokenizer(model);
    return undefined;
  }

  /** Loads the model's tokenizer (once); undefined when it cannot be read (jobs then batch only on token ids). */
  loadTokenizer(model: ServedModel): Promise<Tokenizer | undefined> {
    const t = this.tokenizers.get(model.key);
    if (t) return Promise.resolve(t);
    const loading = Tokenizer.fromFolder(model.folder).then(
      (tokenizer) => (this.tokenizers.set(model.key, tokenizer), tokenizer),
      () => undefined,
    );
    this.tokenizers.set(model.key, loading);
    return loading;
  }

  meta(model: ServedModel): Promise<ModelMeta> {
    let m = this.metas.get(model.key);
    if (!m) {
      m = readModelMeta(model.key, model.folder).then((meta) => ({ ...meta, ...(model.saes.length ? { saes: model.saes.map(({ at, config }) => ({ at, config })) } : {}), dtype: model.dtype }));
      m.catch(() => this.metas.delete(model.key));
      this.metas.set(model.key, m);
    }
    return m;
  }
}
