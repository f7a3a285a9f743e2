/**
 * Safetensors: reading and writing the format Hugging Face checkpoints and tsight's wire use for tensors.
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes. The JSON maps each
 * tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the end of the header) and may
 * hold a `__metadata__` object of string values. Stored float16/bfloat16/float64 widen to float32 at load, small
 * integers to int32, U32 to int64; see `loadedDType`. Files are read tensor by tensor straight into the typed
 * arrays the Tensors keep, so loading a checkpoint holds one copy of the weights. Byte order is little-endian, as
 * on every host Node runs on.
 *
 * Every problem with a file is a `SafetensorsError` naming the file and what is wrong with it.
 */
import type { FileHandle } from "node:fs/promises";
import { lazyNode } from "./node.js";
import { bfloat16ToFloat32, float16ToFloat32, float32ToBfloat16, float32ToFloat16, type DType, type TypedArray } from "./dtype.js";
import { Tensor } from "./tensor.js";

const fs = lazyNode<typeof import("node:fs")>("node:fs");
const fsp = lazyNode<typeof import("node:fs/promises")>("node:fs/promises");
const path = lazyNode<typeof import("node:path")>("node:path");

// #region types

/** The dtypes a safetensors file may name. */
export type SafetensorsDType = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "I16" | "I8" | "U32" | "U16" | "U8" | "BOOL";

/** Bytes per element of each stored dtype. */
export const safetensorsItemSize: Readonly<Record<SafetensorsDType, number>> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U32: 4, U16: 2, U8: 1, BOOL: 1 };

/** The Tensor dtype each stored dtype becomes at load. */
export const loadedDType: Readonly<Record<SafetensorsDType, DType>> = { F64: "float32", F32: "float32", F16: "float32", BF16: "float32", I64: "int64", I32: "int32", I16: "int32", I8: "int32", U32: "int64", U16: "int32", U8: "int32", BOOL: "bool" };

/** The stored dtypes `writeSafetensors` can produce from each Tensor dtype (the first is the default). */
export const writableDTypes: Readonly<Record<DType, readonly SafetensorsDType[]>> = { float32: ["F32", "F16", "BF16"], int64: ["I64"], int32: ["I32"], bool: ["BOOL"] };

/** One tensor as the header describes it. */
export interface SafetensorsEntry {
  readonly name: string;
  /** The dtype in the file. */
  readonly storedDType: SafetensorsDType;
  /** The dtype the tensor has once loaded. */
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** `data_offsets` as written: relative to the first byte after the header. */
  readonly dataOffsets: readonly [number, number];
  /** Where the tensor's bytes start in the file. */
  readonly byteOffset: number;
  readonly byteLength: number;
}

export interface SafetensorsHeader {
  /** The file the header came from, when it came from one. */
  readonly path?: string;
  /** `__metadata__`, or {} when absent. */
  readonly metadata: Record<string, string>;
  /** Entries in the order the header lists them. */
  readonly entries: Map<string, SafetensorsEntry>;
  /** Byte length of the JSON header (N). */
  readonly headerLength: number;
  /** Where tensor data starts in the file: 8 + N. */
  readonly dataStart: number;
  /** Total length of the file or buffer. */
  readonly byteLength: number;
}

export interface SafetensorsData {
  readonly tensors: Map<string, Tensor>;
  readonly metadata: Record<string, string>;
}

export interface ReadSafetensorsOptions {
  /** Load only these tensors; a name the file lacks is an error. */
  names?: Iterable<string>;
  /** Called with the header's JSON text before it is parsed; throwing refuses it (bytes from a network). */
  checkHeader?: (json: string) => void;
}

/** A problem with a safetensors file or a sharded checkpoint: the message names the file and the problem. */
export class SafetensorsError extends Error {
  override readonly name = "SafetensorsError";
  constructor(
    /** The file (or "<bytes>") the problem is in. */
    readonly file: string,
    /** The problem, without the file name. */
    readonly problem: string,
  ) {
    super(`safetensors ${file}: ${problem}`);
  }
}

// #endregion
// #region header

/** Largest header accepted, as in the reference implementation: anything larger is a corrupt length. */
const MAX_HEADER = 100_000_000;
const BYTES = "<bytes>";

/** Reads and validates the header of a file without reading any tensor data. */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  const fh = await openFile(file);
  try {
    const size = (await fh.stat()).size;
    const prefix = await readExactly(fh, file, 0, Math.min(8, size));
    const n = headerLength(prefix, size, file);
    const json = await readExactly(fh, file, 8, n);
    return decodeHeader(json, size, file);
  } finally {
    await fh.close();
  }
}

/** Parses and validates the header at the start of `bytes`. */
export function parseSafetensorsHeader(bytes: Uint8Array, file = BYTES, checkHeader?: (json: string) => void): SafetensorsHeader {
  const n = headerLength(bytes, bytes.length, file);
  return decodeHeader(bytes.subarray(8, 8 + n), bytes.length, file, checkHeader);
}

/** Meta tensors (shape and dtype, no data) for every entry of a header: what a model loaded without weights holds. */
export function metaTensors(header: SafetensorsHeader): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [name, e] of header.entries) out.set(name, Tensor.meta(e.dtype, e.shape));
  return out;
}

function headerLength(prefix: Uint8Array, size: number, file: string): number {
  if (size < 8) throw new SafetensorsError(file, `truncated: ${size} bytes, shorter than the 8-byte header length`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(size - 8)) throw new SafetensorsError(file, `header length ${n} is larger than the ${size - 8} bytes after it (truncated or not a safetensors file)`);
  if (n > BigInt(MAX_HEADER)) throw new SafetensorsError(file, `header length ${n} is over the ${MAX_HEADER}-byte limit`);
  return Number(n);
}

function decodeHeader(json: Uint8Array, size: number, file: string, checkHeader?: (json: string) => void): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(json);
  } catch (e) {
    throw new SafetensorsError(file, `header is not valid JSON (${(e as Error).message})`);
  }
  checkHeader?.(text);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(parsed)) throw new SafetensorsError(file, "header is not a JSON object");
  const dataStart = 8 + json.length;
  const dataLength = size - dataStart;
  const metadata: Record<string, string> = {};
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, raw] of Object.entries(parsed)) {
    if (name === "__metadata__") {
      if (!isObject(raw)) throw new SafetensorsError(file, "__metadata__ is not an object");
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== "string") throw new SafetensorsError(file, `__metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    entries.set(name, decodeEntry(name, raw, dataStart, dataLength, file));
  }
  checkOverlaps(entries, file);
  return { path: file === BYTES ? undefined : file, metadata, entries, headerLength: json.length, dataStart, byteLength: size };
}

function decodeEntry(name: string, raw: unknown, dataStart: number, dataLength: number, file: string): SafetensorsEntry {
  const bad = (problem: string): SafetensorsError => new SafetensorsError(file, `tensor "${name}": ${problem}`);
  if (!isObject(raw)) throw bad("entry is not an object");
  const { dtype, shape, data_offsets: offsets } = raw;
  if (typeof dtype !== "string" || !(dtype in safetensorsItemSize)) throw bad(`unknown dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(safetensorsItemSize).join(", ")})`);
  if (!Array.isArray(shape) || !shape.every(isCount)) throw bad(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) throw bad(`data_offsets ${JSON.stringify(offsets)} is not [begin, end]`);
  const [begin, end] = offsets as [number, number];
  const stored = dtype as SafetensorsDType;
  if (begin > end) throw bad(`data_offsets [${begin}, ${end}] end before they begin`);
  if (end > dataLength) throw bad(`data_offsets [${begin}, ${end}] run past the ${dataLength} data bytes in the file (truncated?)`);
  const numel = (shape as number[]).reduce((a, b) => a * b, 1);
  const expected = numel * safetensorsItemSize[stored];
  if (end - begin !== expected) throw bad(`shape [${shape.join(", ")}] of ${stored} needs ${expected} bytes, data_offsets [${begin}, ${end}] hold ${end - begin}`);
  return { name, storedDType: stored, dtype: loadedDType[stored], shape: shape as number[], dataOffsets: [begin, end], byteOffset: dataStart + begin, byteLength: end - begin };
}

function checkOverlaps(entries: Map<string, SafetensorsEntry>, file: string): void {
  const sorted = [...entries.values()].filter((e) => e.byteLength > 0).sort((a, b) => a.byteOffset - b.byteOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.byteOffset < prev.byteOffset + prev.byteLength) {
      throw new SafetensorsError(file, `tensors "${prev.name}" [${prev.dataOffsets.join(", ")}] and "${cur.name}" [${cur.dataOffsets.join(", ")}] overlap`);
    }
  }
}

// #endregion
// #region reading

/** Reads tensors from a file path or from the bytes of a whole file. */
export async function readSafetensors(source: string | Uint8Array, options: ReadSafetensorsOptions = {}): Promise<SafetensorsData> {
  if (typeof source !== "string") return parseSafetensors(source, options);
  const header = await readSafetensorsHeader(source);
  return { tensors: await loadEntries(source, selectEntries(header, options.names, source)), metadata: header.metadata };
}

/** Reads the data of `entries` from a file whose header has been checked. */
async function loadEntries(file: string, entries: readonly SafetensorsEntry[]): Promise<Map<string, Tensor>> {
  const fh = await openFile(file);
  try {
    const tensors = new Map<string, Tensor>();
    for (const e of entries) {
      const target = allocateFor(e);
      await readInto(fh, file, e.byteOffset, target.raw);
      tensors.set(e.name, new Tensor(e.dtype, target.finish(), e.shape));
    }
    return tensors;
  } finally {
    await fh.close();
  }
}

/** Reads tensors from the bytes of a whole file, synchronously (the wire format's tensors arrive this way). */
export function parseSafetensors(bytes: Uint8Array, options: ReadSafetensorsOptions & { file?: string } = {}): SafetensorsData {
  const file = options.file ?? BYTES;
  const header = parseSafetensorsHeader(bytes, file, options.checkHeader);
  const tensors = new Map<string, Tensor>();
  for (const e of selectEntries(header, options.names, file)) {
    const target = allocateFor(e);
    target.raw.set(bytes.subarray(e.byteOffset, e.byteOffset + e.byteLength));
    tensors.set(e.name, new Tensor(e.dtype, target.finish(), e.shape));
  }
  return { tensors, metadata: header.metadata };
}

function selectEntries(header: SafetensorsHeader, names: Iterable<string> | undefined, file: string): SafetensorsEntry[] {
  if (names === undefined) return [...header.entries.values()];
  return [...new Set(names)].map((name) => {
    const e = header.entries.get(name);
    if (!e) throw new SafetensorsError(file, `has no tensor named "${name}"`);
    return e;
  });
}

/** Where a tensor's bytes go (`raw`), and how they become the loaded typed array. */
function allocateFor(e: SafetensorsEntry): { raw: Uint8Array; finish: () => TypedArray } {
  const n = e.byteLength / safetensorsItemSize[e.storedDType];
  const view = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const direct = (a: TypedArray): { raw: Uint8Array; finish: () => TypedArray } => ({ raw: view(a), finish: () => a });
  const widen = <A extends ArrayBufferView>(a: A, convert: (a: A) => TypedArray): { raw: Uint8Array; finish: () => TypedArray } => ({ raw: view(a), finish: () => convert(a) });
  switch (e.storedDType) {
    case "F32":
      return direct(new Float32Array(n));
    case "I64":
      return direct(new BigInt64Array(n));
    case "I32":
      return direct(new Int32Array(n));
    case "BOOL": {
      const a = new Uint8Array(n);
      return { raw: a, finish: () => a.map((v) => (v ? 1 : 0)) };
    }
    case "F16":
      return widen(new Uint16Array(n), (a) => float16ToFloat32(a));
    case "BF16":
      return widen(new Uint16Array(n), (a) => bfloat16ToFloat32(a));
    case "F64":
      return widen(new Float64Array(n), (a) => Float32Array.from(a));
    case "I16":
      return widen(new Int16Array(n), (a) => Int32Array.from(a));
    case "I8":
      return widen(new Int8Array(n), (a) => Int32Array.from(a));
    case "U16":
      return widen(new Uint16Array(n), (a) => Int32Array.from(a));
    case "U8":
      return widen(new Uint8Array(n), (a) => Int32Array.from(a));
    case "U32":
      return widen(new Uint32Array(n), (a) => BigInt64Array.from(a, (v) => BigInt(v)));
  }
}

// #endregion
// #region writing

export interface WriteSafetensorsOptions {
  /** Written as `__metadata__`. */
  metadata?: Record<string, string>;
  /**
   * The stored dtype: one for every float32 tensor (e.g. "F16"), a per-name record, or a function of name and
   * tensor (undefined keeps the default). Only float32 converts (to F16 or BF16); other dtypes store as they are.
   */
  dtype?: SafetensorsDType | Record<string, SafetensorsDType> | ((name: string, tensor: Tensor) => SafetensorsDType | undefined);
}

export type TensorMap = Map<string, Tensor> | Record<string, Tensor>;

/** The bytes of a safetensors file holding `tensors`, in their given order. */
export function writeSafetensors(tensors: TensorMap, options: WriteSafetensorsOptions = {}): Uint8Array {
  const list = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const header: Record<string, unknown> = Object.create(null);
  if (options.metadata) {
    for (const [k, v] of Object.entries(options.metadata)) if (typeof v !== "string") throw new SafetensorsError(BYTES, `metadata ${k} must be a string, got ${typeof v}`);
    header.__metadata__ = options.metadata;
  }
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of list) {
    if (name === "__metadata__") throw new SafetensorsError(BYTES, `"__metadata__" cannot name a tensor`);
    if (t.isMeta) throw new SafetensorsError(BYTES, `tensor "${name}" is a meta tensor: it has no values to write`);
    const stored = storedDTypeFor(name, t, options.dtype);
    const bytes = encodeData(t, stored);
    header[name] = { dtype: stored, shape: [...t.shape], data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  const jsonBytes = () => new TextEncoder().encode(json);
  // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
  json += " ".repeat((8 - (jsonBytes().length % 8)) % 8);
  const encoded = jsonBytes();
  const out = new Uint8Array(8 + encoded.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(encoded.length), true);
  out.set(encoded, 8);
  let at = 8 + encoded.length;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Writes a safetensors file atomically (a temporary file renamed into place). */
export async function writeSafetensorsFile(file: string, tensors: TensorMap, options: WriteSafetensorsOptions = {}): Promise<void> {
  const bytes = writeSafetensors(tensors, options);
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  try {
    await fsp.writeFile(tmp, bytes);
    await fsp.rename(tmp, file);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}

function storedDTypeFor(name: string, t: Tensor, choice: WriteSafetensorsOptions["dtype"]): SafetensorsDType {
  const allowed = writableDTypes[t.dtype];
  let want: SafetensorsDType | undefined;
  if (typeof choice === "function") want = choice(name, t);
  else if (typeof choice === "string") want = t.dtype === "float32" ? choice : undefined;
  else if (choice) want = choice[name];
  want ??= allowed[0]!;
  if (!allowed.includes(want)) throw new SafetensorsError(BYTES, `tensor "${name}" is ${t.dtype} and cannot be stored as ${want} (allowed: ${allowed.join(", ")})`);
  return want;
}

function encodeData(t: Tensor, stored: SafetensorsDType): Uint8Array {
  const data = t.data;
  const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  if (stored === "F16") return bytesOf(float32ToFloat16(data as Float32Array));
  if (stored === "BF16") return bytesOf(float32ToBfloat16(data as Float32Array));
  return bytesOf(data);
}

// #endregion
// #region checkpoints

/** `model.safetensors.index.json`: which shard holds each tensor. */
export interface SafetensorsIndex {
  metadata?: Record<string, unknown>;
  weight_map: Record<string, string>;
}

export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";

/** Reads and checks an index file; shard names must stay inside the index's folder. */
export async function readSafetensorsIndex(indexFile: string): Promise<SafetensorsIndex> {
  let text: string;
  try {
    text = await fsp.readFile(indexFile, "utf8");
  } catch (e) {
    throw new SafetensorsError(indexFile, `cannot read the index (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(indexFile, `index is not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(parsed) || !isObject(parsed.weight_map)) throw new SafetensorsError(indexFile, `index has no "weight_map" object`);
  for (const [name, shard] of Object.entries(parsed.weight_map)) {
    if (typeof shard !== "string" || shard === "" || path.isAbsolute(shard) || shard.split(/[\\/]/).includes("..")) {
      throw new SafetensorsError(indexFile, `weight_map["${name}"] = ${JSON.stringify(shard)} is not a shard file name in the index's folder`);
    }
  }
  return parsed as unknown as SafetensorsIndex;
}

/**
 * Reads a sharded checkpoint: `folder/model.safetensors.index.json` (or the index file given) and the shards its
 * `weight_map` names, each shard opened once. Tensors a shard holds but the index does not list are skipped.
 */
export async function readShardedSafetensors(folderOrIndex: string, options: ReadSafetensorsOptions = {}): Promise<SafetensorsData> {
  const { indexFile, byShard } = await planShards(folderOrIndex, options.names);
  const tensors = new Map<string, Tensor>();
  const metadata: Record<string, string> = {};
  for (const [shardFile, names] of byShard) {
    const header = await readShardHeader(indexFile, shardFile);
    const loaded = await loadEntries(shardFile, shardEntries(indexFile, header, shardFile, names));
    for (const [name, t] of loaded) tensors.set(name, t);
    Object.assign(metadata, header.metadata);
  }
  return { tensors, metadata };
}

/** The headers of a sharded checkpoint merged into one (entry offsets stay relative to each shard's file). */
export async function readShardedSafetensorsHeader(folderOrIndex: string): Promise<SafetensorsHeader> {
  const { indexFile, byShard } = await planShards(folderOrIndex, undefined);
  const entries = new Map<string, SafetensorsEntry>();
  const metadata: Record<string, string> = {};
  let byteLength = 0;
  for (const [shardFile, names] of byShard) {
    const header = await readShardHeader(indexFile, shardFile);
    for (const e of shardEntries(indexFile, header, shardFile, names)) entries.set(e.name, e);
    Object.assign(metadata, header.metadata);
    byteLength += header.byteLength;
  }
  return { path: indexFile, metadata, entries, headerLength: 0, dataStart: 0, byteLength };
}

/** A model folder's weights: `model.safetensors`, or the sharded checkpoint its index describes. */
export async function readModelSafetensors(folder: string, options: ReadSafetensorsOptions = {}): Promise<SafetensorsData> {
  const single = path.join(folder, SINGLE_FILE);
  if (await exists(single)) return readSafetensors(single, options);
  if (await exists(path.join(folder, INDEX_FILE))) return readShardedSafetensors(folder, options);
  throw new SafetensorsError(folder, `holds neither ${SINGLE_FILE} nor ${INDEX_FILE}`);
}

/** The header of a model folder's weights, single or sharded, for a model loaded without weights. */
export async function readModelSafetensorsHeader(folder: string): Promise<SafetensorsHeader> {
  const single = path.join(folder, SINGLE_FILE);
  if (await exists(single)) return readSafetensorsHeader(single);
  if (await exists(path.join(folder, INDEX_FILE))) return readShardedSafetensorsHeader(folder);
  throw new SafetensorsError(folder, `holds neither ${SINGLE_FILE} nor ${INDEX_FILE}`);
}

async function planShards(folderOrIndex: string, names: Iterable<string> | undefined): Promise<{ indexFile: string; byShard: Map<string, string[]> }> {
  const indexFile = folderOrIndex.endsWith(".json") ? folderOrIndex : path.join(folderOrIndex, INDEX_FILE);
  const index = await readSafetensorsIndex(indexFile);
  const wanted = names === undefined ? Object.keys(index.weight_map) : [...new Set(names)];
  const byShard = new Map<string, string[]>();
  for (const name of wanted) {
    const shard = index.weight_map[name];
    if (shard === undefined) throw new SafetensorsError(indexFile, `weight_map has no tensor named "${name}"`);
    const shardFile = path.join(path.dirname(indexFile), shard);
    const list = byShard.get(shardFile) ?? [];
    list.push(name);
    byShard.set(shardFile, list);
  }
  return { indexFile, byShard };
}

async function readShardHeader(indexFile: string, shardFile: string): Promise<SafetensorsHeader> {
  if (!(await exists(shardFile))) throw new SafetensorsError(indexFile, `points to shard ${path.basename(shardFile)}, which is missing from ${path.dirname(shardFile)}`);
  return readSafetensorsHeader(shardFile);
}

function shardEntries(indexFile: string, header: SafetensorsHeader, shardFile: string, names: readonly string[]): SafetensorsEntry[] {
  return names.map((name) => {
    const e = header.entries.get(name);
    if (!e) throw new SafetensorsError(indexFile, `lists tensor "${name}" in shard ${path.basename(shardFile)}, which does not hold it`);
    return e;
  });
}

/**
 * A model folder's weights opened for reading tensor by tensor, or a band of one at a time, so a load never holds
 * more than the tensor it is converting (single file or sharded; each shard opened once, on first use).
 * `bytesRead` counts every byte read from tensor data.
 */
export interface ModelWeightsReader {
  readonly entries: ReadonlyMap<string, SafetensorsEntry>;
  /** Reads `into.length` bytes of tensor `name`'s data, starting `offset` bytes into it. */
  read(name: string, offset: number, into: Uint8Array): Promise<void>;
  /** The file holding tensor `name`, kept open for reading again after the load (one per file). */
  keep(name: string): KeptFile;
  readonly bytesRead: number;
  close(): Promise<void>;
}

export async function openModelWeights(folder: string): Promise<ModelWeightsReader> {
  const single = path.join(folder, SINGLE_FILE);
  const files = new Map<string, string>();
  const entries = new Map<string, SafetensorsEntry>();
  if (await exists(single)) {
    const header = await readSafetensorsHeader(single);
    for (const [name, e] of header.entries) {
      entries.set(name, e);
      files.set(name, single);
    }
  } else if (await exists(path.join(folder, INDEX_FILE))) {
    const { indexFile, byShard } = await planShards(folder, undefined);
    for (const [shardFile, names] of byShard) {
      const header = await readShardHeader(indexFile, shardFile);
      for (const e of shardEntries(indexFile, header, shardFile, names)) {
        entries.set(e.name, e);
        files.set(e.name, shardFile);
      }
    }
  } else throw new SafetensorsError(folder, `holds neither ${SINGLE_FILE} nor ${INDEX_FILE}`);
  const handles = new Map<string, Promise<FileHandle>>();
  const kept = new Map<string, KeptFile>();
  let bytesRead = 0;
  return {
    entries,
    get bytesRead() {
      return bytesRead;
    },
    keep(name) {
      const file = files.get(name);
      if (!file) throw new SafetensorsError(folder, `has no tensor named "${name}"`);
      let k = kept.get(file);
      if (!k) kept.set(file, (k = new KeptFile(file)));
      return k;
    },
    async read(name, offset, into) {
      const e = entries.get(name);
      const file = files.get(name);
      if (!e || !file) throw new SafetensorsError(folder, `has no tensor named "${name}"`);
      if (!(offset >= 0 && offset + into.length <= e.byteLength)) throw new SafetensorsError(file, `read of bytes [${offset}, ${offset + into.length}) is outside tensor "${name}" (${e.byteLength} bytes)`);
      let fh = handles.get(file);
      if (!fh) handles.set(file, (fh = openFile(file)));
      await readInto(await fh, file, e.byteOffset + offset, into);
      bytesRead += into.length;
    },
    async close() {
      await Promise.all([...handles.values()].map(async (h) => (await h).close()));
      handles.clear();
    },
  };
}

/** Closes kept files nothing refers to any more. */
const keptFiles = typeof FinalizationRegistry === "function" ? new FinalizationRegistry<number>((fd) => fs.close(fd, () => undefined)) : null;

/**
 * A checkpoint file kept open to read tensors again after a load (packed weights whose own copy was let go of). The
 * open descriptor keeps the data readable if the file is deleted or replaced by another file; a file changed in
 * place (its size or modification time) is refused rather than read. Closed when nothing refers to it.
 */
export class KeptFile {
  private readonly fd: number;
  private readonly size: number;
  private readonly mtimeMs: number;

  constructor(readonly path: string) {
    this.fd = fs.openSync(path, "r");
    const st = fs.fstatSync(this.fd);
    this.size = st.size;
    this.mtimeMs = st.mtimeMs;
    keptFiles?.register(this, this.fd);
  }

  /** Reads `into.length` bytes of entry `e`'s data, starting `offset` bytes into it, synchronously. */
  read(e: SafetensorsEntry, into: Uint8Array, offset = 0): void {
    if (!(offset >= 0 && offset + into.length <= e.byteLength)) throw new SafetensorsError(this.path, `read of bytes [${offset}, ${offset + into.length}) is outside tensor "${e.name}" (${e.byteLength} bytes)`);
    const st = fs.fstatSync(this.fd);
    if (st.size !== this.size || st.mtimeMs !== this.mtimeMs) {
      throw new SafetensorsError(this.path, `was changed in place after the model loaded from it, so tensor "${e.name}" cannot be read again; reload the model`);
    }
    let done = 0;
    while (done < into.length) {
      const n = fs.readSync(this.fd, into, done, Math.min(1 << 30, into.length - done), e.byteOffset + offset + done);
      if (n === 0) throw new SafetensorsError(this.path, `truncated: ended inside tensor "${e.name}"`);
      done += n;
    }
  }
}

/**
 * Where `byteLength` stored bytes of entry `e` are read to (`raw`), and `finish` to get them as the typed array
 * they load as (the same memory for float32; a widened copy for float16/bfloat16).
 */
export function storedBuffer(e: SafetensorsEntry, byteLength = e.byteLength): { raw: Uint8Array; finish: () => TypedArray } {
  return allocateFor({ ...e, byteLength });
}

// #endregion
// #region file helpers

async function openFile(file: string): Promise<FileHandle> {
  try {
    return await fsp.open(file, "r");
  } catch (e) {
    throw new SafetensorsError(file, `cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

async function exists(file: string): Promise<boolean> {
  return fsp.stat(file).then(
    (s) => s.isFile(),
    () => false,
  );
}

async function readExactly(fh: FileHandle, file: string, position: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  await readInto(fh, file, position, out);
  return out;
}

/** Fills `into` from the file at `position`, in chunks under the 2 GiB limit of one read. */
async function readInto(fh: FileHandle, file: string, position: number, into: Uint8Array): Promise<void> {
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < into.length) {
    const { bytesRead } = await fh.read(into, done, Math.min(CHUNK, into.length - done), position + done);
    if (bytesRead === 0) throw new SafetensorsError(file, `truncated: ended at byte ${position + done}, expected ${into.length - done} more`);
    done += bytesRead;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

// #endregion
