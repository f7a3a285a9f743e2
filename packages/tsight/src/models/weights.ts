/**
 * Loading weights into a module tree: a key-by-key copy with the architecture's listed exceptions (tied heads,
 * aliases, an omitted base prefix, ignored buffers, per-expert tensors stacked into one). Every parameter must be
 * found with its exact shape.
 */
import { Conv1D, Embedding, Linear } from "../nn/index.js";
import { BLOCK_SIZE, PackedWeight, quantizeRows, storedBuffer, Tensor, type ModelWeightsReader, type PackedFormat, type SafetensorsEntry, type StoredValues, type WeightDType, UnquantizableError } from "../tensor/index.js";
import type { CausalLM } from "./causal-lm.js";

export class WeightsError extends Error {
  override readonly name = "WeightsError";
}

/** Where a parameter's value is in a checkpoint: one tensor, or per expert the concatenation of several, stacked. */
export type WeightSource = { key: string } | { stack: string[][] };

/** Every checkpoint key a source reads. */
export const sourceKeys = (s: WeightSource): string[] => ("key" in s ? [s.key] : s.stack.flat());

/** The shape a source gives, from its keys' shapes; a message when the parts do not fit together. */
export function sourceShape(s: WeightSource, shapeOf: (key: string) => readonly number[]): readonly number[] {
  if ("key" in s) return shapeOf(s.key);
  const experts = s.stack.map((keys) => {
    const parts = keys.map(shapeOf);
    if (parts.some((p) => p.length !== parts[0]!.length || p.some((d, i) => i > 0 && d !== parts[0]![i]))) throw new WeightsError(`weights ${keys.map((k) => `"${k}"`).join(", ")} have shapes ${parts.map((p) => `[${p}]`).join(", ")}, which do not concatenate`);
    return [parts.reduce((n, p) => n + p[0]!, 0), ...parts[0]!.slice(1)];
  });
  if (experts.some((e) => e.length !== experts[0]!.length || e.some((d, i) => d !== experts[0]![i]))) throw new WeightsError(`the experts' weights (${s.stack[0]![0]}, ...) differ in shape`);
  return [experts.length, ...experts[0]!];
}

/** Where each parameter's tensor is in `available` (a file's keys), or why it is not. */
export function planWeights(model: CausalLM, available: ReadonlySet<string>): { sources: Map<string, WeightSource>; tied: Map<string, string>; unused: string[] } {
  const rules = model.weightRules();
  const sources = new Map<string, WeightSource>();
  const tied = new Map<string, string>();
  const missing: string[] = [];
  for (const [name, p] of model.namedParameters()) {
    // One that holds values already is not the checkpoint's (an SAE spliced onto a meta model, with its own).
    if (!p.module.getParam(p.name).isMeta) continue;
    const candidates = [name, ...(rules.aliases[name] ?? [])];
    if (rules.basePrefix && name.startsWith(rules.basePrefix)) candidates.push(name.slice(rules.basePrefix.length));
    const found = candidates.find((k) => available.has(k));
    const stack = rules.stacked?.[name];
    if (found) sources.set(name, { key: found });
    else if (stack && stack.flat().every((k) => available.has(k))) sources.set(name, { stack });
    else if (rules.tied[name]) tied.set(name, rules.tied[name]!);
    else missing.push(name);
  }
  if (missing.length) {
    throw new WeightsError(`the weights lack ${missing.length} parameter(s) of this ${model.config.modelType} model: ${missing.slice(0, 8).join(", ")}${missing.length > 8 ? ", ..." : ""}`);
  }
  const used = new Set([...sources.values()].flatMap(sourceKeys));
  const unused = [...available].filter((k) => !used.has(k) && !rules.ignore.some((r) => r.test(k)));
  return { sources, tied, unused };
}

/** Copies `tensors` into the model's parameters, checking shapes. Returns file keys that matched nothing. */
export function loadWeights(model: CausalLM, tensors: ReadonlyMap<string, Tensor>): string[] {
  const params = model.namedParameters();
  const { sources, tied, unused } = planWeights(model, new Set(tensors.keys()));
  for (const [name, src] of sources) {
    if ("key" in src) setWeight(params, name, tensors.get(src.key)!, src.key);
    else {
      sourceShape(src, (k) => tensors.get(k)!.shape); // parts that do not fit together fail here, by name
      setWeight(params, name, Tensor.stack(src.stack.map((keys) => Tensor.cat(keys.map((k) => tensors.get(k)!), 0)), 0), stackedName(src));
    }
  }
  tieWeights(params, tied);
  return unused;
}

type Params = ReturnType<CausalLM["namedParameters"]>;

/** Sets parameter `name` to `t` (read from `from`), which must have its shape and be float32. */
function setWeight(params: Params, name: string, t: Tensor, from: string): void {
  const p = params.get(name)!;
  if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
    throw new WeightsError(`weight "${from}" has shape [${t.shape}] but ${name} needs [${p.shape}]`);
  }
  if (t.dtype !== "float32") throw new WeightsError(`weight "${from}" is ${t.dtype}; parameters are float32`);
  p.module.setParam(p.name, t);
}

/** Tied parameters get their targets' tensors (the same object: a packed head shares its embedding's kernel). */
function tieWeights(params: Params, tied: ReadonlyMap<string, string>): void {
  for (const [name, target] of tied) setWeight(params, name, params.get(target)!.module.getParam(params.get(target)!.name), target);
}

/** How a stacked source is named in messages. */
const stackedName = (src: { stack: string[][] }): string => `${src.stack[0]![0]}, ... (${src.stack.flat().length} tensors)`;

/** How far a load has got: tensors and bytes of tensor data read so far, of how many. */
export interface LoadProgress {
  tensors: number;
  totalTensors: number;
  bytes: number;
  totalBytes: number;
}

export interface StreamWeightsOptions {
  /** What the matrices of linear layers and embeddings are kept as; everything else is float32. */
  dtype?: WeightDType;
  onProgress?: (progress: LoadProgress) => void;
}

/** Most bytes of float32 one band of a quantized matrix takes while it is converted. */
const BAND_BYTES = 32 << 20;

/**
 * Loads weights tensor by tensor from `reader`, converting each as it arrives: a load holds the model as it will be
 * kept plus at most one tensor in flight (a band of rows of a big matrix being quantized), never the whole file as
 * float32. Matrices of Linear, Conv1D and Embedding modules are packed for dtypes other than float32 (bfloat16 and
 * float16 bits read as stored when the file holds that format); norms, biases and stacked experts stay float32.
 */
export async function streamWeights(model: CausalLM, reader: ModelWeightsReader, options: StreamWeightsOptions = {}): Promise<void> {
  const dtype = options.dtype ?? "float32";
  const params = model.namedParameters();
  const { sources, tied } = planWeights(model, new Set(reader.entries.keys()));
  const entryOf = (k: string): SafetensorsEntry => reader.entries.get(k)!;
  const totalBytes = [...sources.values()].flatMap(sourceKeys).reduce((n, k) => n + entryOf(k).byteLength, 0);
  const progress: LoadProgress = { tensors: 0, totalTensors: sources.size, bytes: 0, totalBytes };
  const readFloat32 = async (key: string): Promise<Tensor> => {
    const e = entryOf(key);
    if (e.dtype !== "float32") throw new WeightsError(`weight "${key}" is stored as ${e.storedDType}; parameters are float32`);
    const target = storedBuffer(e);
    await reader.read(key, 0, target.raw);
    return new Tensor("float32", target.finish(), e.shape);
  };
  // In file order, so the disk is read front to back.
  const order = [...sources].sort(([, a], [, b]) => entryOf(sourceKeys(a)[0]!).byteOffset - entryOf(sourceKeys(b)[0]!).byteOffset);
  for (const [name, src] of order) {
    const p = params.get(name)!;
    if ("stack" in src) {
      sourceShape(src, (k) => entryOf(k).shape);
      const experts = [];
      for (const keys of src.stack) experts.push(Tensor.cat(await Promise.all(keys.map(readFloat32)), 0));
      setWeight(params, name, Tensor.stack(experts, 0), stackedName(src));
    } else if (dtype !== "float32" && packable(p.module, p.name, p.shape)) {
      const packed = await readPacked(reader, entryOf(src.key), p.module instanceof Conv1D, dtype).catch((err: unknown) => {
        // Quantizing refuses values int8/int4 cannot hold (NaN, infinities) instead of turning them into numbers.
        throw err instanceof UnquantizableError ? new WeightsError(`weight "${src.key}" cannot be kept as ${dtype}: ${err.at(p.module instanceof Conv1D)} (load it as float32, bfloat16 or float16)`) : err;
      });
      // Its kernel now (ONNX Runtime prepacks the matrix), so memory after a load is what the model runs with; the
      // copy here goes (the file gives values back when they are read, an embedding's rows when looked up).
      packed.compile(true);
      setWeight(params, name, Tensor.fromPacked(packed), src.key);
    } else setWeight(params, name, await readFloat32(src.key), src.key);
    progress.tensors++;
    progress.bytes += sourceKeys(src).reduce((n, k) => n + entryOf(k).byteLength, 0);
    options.onProgress?.({ ...progress });
  }
  tieWeights(params, tied);
}

/** Whether a parameter is a matrix that is kept packed: a linear layer's or an embedding's weight. */
function packable(module: unknown, name: string, shape: readonly number[]): boolean {
  return name === "weight" && shape.length === 2 && (module instanceof Linear || module instanceof Conv1D || module instanceof Embedding);
}

/**
 * Reads a matrix as `format`; `transposed` for Conv1D's [in, out] layout. The weight can pack itself again from
 * the file (the same values: quantization is per block, whatever the bands).
 */
async function readPacked(reader: ModelWeightsReader, e: SafetensorsEntry, transposed: boolean, format: PackedFormat): Promise<PackedWeight> {
  if (e.dtype !== "float32") throw new WeightsError(`weight "${e.name}" is stored as ${e.storedDType}; parameters are float32`);
  const [rows, cols] = (transposed ? [e.shape[1], e.shape[0]] : e.shape) as [number, number];
  const file = reader.keep(e.name);
  const rowBytes = e.byteLength / e.shape[0]!;
  const read = (firstRow: number, count: number): Float32Array => {
    const target = storedBuffer(e, count * rowBytes);
    file.read(e, target.raw, firstRow * rowBytes);
    return target.finish() as Float32Array;
  };
  // Rows of the file are the packed matrix's rows unless it is transposed.
  const source: StoredValues = { all: () => read(0, e.shape[0]!), rows: transposed ? undefined : read };
  const stored = { bfloat16: "BF16", float16: "F16" } as const;
  if ((format === "bfloat16" || format === "float16") && e.storedDType === stored[format] && !transposed) {
    const bits = new Uint16Array(rows * cols);
    await reader.read(e.name, 0, new Uint8Array(bits.buffer));
    return new PackedWeight(rows, cols, false, { format, bits }, source);
  }
  if (format === "bfloat16" || format === "float16" || transposed) {
    const target = storedBuffer(e);
    await reader.read(e.name, 0, target.raw);
    return new PackedWeight(rows, cols, transposed, PackedWeight.pack(target.finish() as Float32Array, rows, cols, transposed, format), source);
  }
  // Quantized, [rows, cols] as stored: a band of rows at a time.
  const bits = format === "int8" ? 8 : 4;
  const blocks = Math.ceil(cols / BLOCK_SIZE);
  const into = { q: new Uint8Array(rows * blocks * ((BLOCK_SIZE * bits) / 8)), scales: new Float32Array(rows * blocks), zeros: new Uint8Array(rows * Math.ceil((blocks * bits) / 8)), firstRow: 0 };
  const band = Math.max(1, Math.floor(BAND_BYTES / (cols * 4)));
  for (let first = 0; first < rows; first += band) {
    const count = Math.min(band, rows - first);
    const target = storedBuffer(e, count * rowBytes);
    await reader.read(e.name, first * rowBytes, target.raw);
    quantizeRows(target.finish() as Float32Array, count, cols, bits, BLOCK_SIZE, format, { ...into, firstRow: first });
  }
  return new PackedWeight(rows, cols, false, { format, q: into.q, scales: into.scales, zeros: into.zeros, blockSize: BLOCK_SIZE }, source);
}
