/**
 * Values across the wire. A value becomes JSON in which tensors, and the few things JSON cannot say, are marked
 * objects; the tensors travel beside the JSON as safetensors. An envelope is one safetensors file: its tensors,
 * plus the JSON in the metadata field "tsight". Any safetensors reader can open it.
 *
 *   {"$t": "t0"}              a tensor (stored as t0)            {"$meta": {dtype, shape}}  a meta tensor
 *   {"$num": "NaN"}           NaN, Infinity, -Infinity           {"$big": "12"}             a bigint
 *   {"$undef": 1}             undefined                          {"$obj": {...}}            an object with $-keys
 *   {"$cache": {path: entry}} a tr.cache() result                {"$error": ErrorInfo}      an error value
 *                             (its key "$lists", {path: n}: how many modules each list its paths go through has)
 *   {"$function": "source"}   a helper function in a job's vars (checked by the client, compiled in the sandbox)
 */
import { Cache, type CacheEntry } from "../intervention/index.js";
import { isDType, MAX_ELEMENTS, MAX_RANK, parseSafetensors, Tensor, writeSafetensors } from "../tensor/index.js";
import { ClientError, errorFromInfo, infoFromError, knownErrorClass } from "./errors.js";
import type { ErrorInfo } from "./wire.js";

export class CodecError extends ClientError {
  override readonly name: string = "CodecError";
}
knownErrorClass("CodecError", CodecError);

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null);

/**
 * A function sent by its source (a helper in a job's vars). Decoding never runs it: the sandbox compiles it in the
 * job's isolate.
 */
export class FunctionSource {
  constructor(readonly source: string) {}
}

/** How functions are encoded, where a value may hold them (a job's vars): their checked source. */
export type FunctionEncoder = (fn: Function, where: string) => string;

/** Encodes `value` to JSON-safe data, collecting its tensors into `tensors`. Functions only with `functions`. */
export function encodeValue(value: unknown, tensors: Map<string, Tensor>, where = "value", functions?: FunctionEncoder, depth = 0): unknown {
  if (depth > MAX_DEPTH) throw new CodecError(`${where.length > 200 ? `${where.slice(0, 200)}...` : where} nests arrays or objects more than ${MAX_DEPTH} deep, more than a remote value may`);
  if (typeof value === "function" && functions) return { $function: functions(value, where) };
  if (value instanceof FunctionSource) return { $function: value.source };
  if (value === null || typeof value === "string" || typeof value === "boolean") return value;
  if (typeof value === "number") return Number.isFinite(value) ? value : { $num: String(value) };
  if (typeof value === "bigint") return { $big: value.toString() };
  if (value === undefined) return { $undef: 1 };
  if (value instanceof Tensor) {
    if (value.isMeta) return { $meta: { dtype: value.dtype, shape: [...value.shape] } };
    return { $t: tensorName(value, tensors) };
  }
  if (Array.isArray(value)) return value.map((v, i) => encodeValue(v, tensors, `${where}[${i}]`, functions, depth + 1));
  if (value instanceof Cache) {
    const entries: Record<string, unknown> = {};
    for (const path of value.keys()) entries[path] = encodeValue({ ...value.get(path)! }, tensors, `${where}.cache(${path})`, undefined, depth + 1);
    // No module path starts with "$". The lists' lengths let `cache.transformer.h[-1]` resolve where the model is not.
    const lists = value.listLengths();
    if (lists.size) entries.$lists = Object.fromEntries(lists);
    return { $cache: entries };
  }
  if (value instanceof Error) return { $error: infoFromError(value) };
  if (isPlainObject(value)) {
    // Made as own entries (Object.fromEntries): `out[k] = v` for an own "__proto__" key would set the prototype.
    const out: Record<string, unknown> = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encodeValue(v, tensors, `${where}.${k}`, functions, depth + 1)]));
    return Object.keys(out).some((k) => k.startsWith("$")) ? { $obj: out } : out;
  }
  const kind = typeof value === "function" ? "a function" : `a ${(value as object).constructor?.name ?? typeof value}`;
  throw new CodecError(`${where} is ${kind}, which cannot cross to or from a remote job: send JSON values, tensors, caches and errors (and functions, in vars)`);
}

/** Names already given to tensors (by identity, by storage, and by content), per collection of tensors being encoded. */
interface Seen {
  byTensor: Map<Tensor, string>;
  /** Tensors viewing the same stored values (`detach()` of one another): dtype and shape -> name, per data array. */
  byData: Map<ArrayBufferView, Map<string, string>>;
  byContent: Map<string, string[]>;
}
const names = new WeakMap<Map<string, Tensor>, Seen>();

/**
 * The name of `t` in `tensors`, adding it when it is new. Identical tensors (the same object, views of the same
 * values, or equal dtype, shape and values) are stored once, whatever the value holds: a result with one tensor
 * sixty times is one tensor, hashed once. Linear in the data (see MAX_SAME_HASH).
 */
function tensorName(t: Tensor, tensors: Map<string, Tensor>): string {
  let seen = names.get(tensors);
  if (!seen) names.set(tensors, (seen = { byTensor: new Map(), byData: new Map(), byContent: new Map() }));
  const known = seen.byTensor.get(t);
  if (known !== undefined) return known;
  const form = `${t.dtype}|${t.shape.join(",")}`;
  const sharing = seen.byData.get(t.data)?.get(form);
  if (sharing !== undefined) {
    seen.byTensor.set(t, sharing);
    return sharing;
  }
  const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const key = `${form}|${hash(bytes)}`;
  const alike = seen.byContent.get(key) ?? [];
  let name = alike.find((n) => {
    const other = tensors.get(n)!;
    return sameBytes(bytes, new Uint8Array(other.data.buffer, other.data.byteOffset, other.data.byteLength));
  });
  if (name === undefined) {
    name = `t${tensors.size}`;
    tensors.set(name, t.detach());
    // A tensor is compared with at most MAX_SAME_HASH others: past that, one more with the hash is stored as it is.
    // (The hash is cheap, not strong: a job's code made 20,000 tensors of one hash, and comparing each with all the
    // others before it held a model's thread past its deadline.)
    if (alike.length < MAX_SAME_HASH) seen.byContent.set(key, [...alike, name]);
  }
  seen.byTensor.set(t, name);
  if (!seen.byData.has(t.data)) seen.byData.set(t.data, new Map());
  seen.byData.get(t.data)!.set(form, name);
  return name;
}

/** The most stored tensors with one hash a new one is compared with (see tensorName). */
const MAX_SAME_HASH = 8;

/** Whole 32-bit words of `bytes` when it is aligned to them (a quarter of the steps), else undefined. */
function words(bytes: Uint8Array): Int32Array | undefined {
  return bytes.byteOffset % 4 === 0 && bytes.byteLength % 4 === 0 ? new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4) : undefined;
}

/** 32-bit FNV-1a-style hash of some bytes, a word at a time where it can (for finding equal tensors; equal hashes are then compared in full). */
function hash(bytes: Uint8Array): number {
  const w = words(bytes);
  const xs = w ?? bytes;
  let h = 0x811c9dc5;
  for (let i = 0; i < xs.length; i++) h = Math.imul(h ^ xs[i]!, 0x01000193);
  return h >>> 0;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  const [wa, wb] = [words(a), words(b)];
  const [xa, xb] = wa && wb ? [wa, wb] : [a, b];
  for (let i = 0; i < xa.length; i++) if (xa[i] !== xb[i]) return false;
  return true;
}

/** The value `encodeValue` encoded, with tensors taken from `tensors`. */
export function decodeValue(data: unknown, tensors: ReadonlyMap<string, Tensor>, depth = 0): unknown {
  if (data === null || typeof data !== "object") return data;
  if (depth > MAX_DEPTH) throw new CodecError(`the value nests arrays or objects more than ${MAX_DEPTH} deep, more than a remote value may`);
  if (Array.isArray(data)) return data.map((v) => decodeValue(v, tensors, depth + 1));
  const o = data as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length === 1) {
    const [k] = keys;
    const v = o[k!];
    switch (k) {
      case "$t": {
        const t = tensors.get(String(v));
        if (!t) throw new CodecError(`the payload refers to tensor "${String(v)}", which it does not hold`);
        return t;
      }
      case "$meta": {
        const m = v as { dtype: unknown; shape: unknown };
        if (!isDType(m.dtype) || !Array.isArray(m.shape) || !m.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new CodecError("bad $meta tensor description");
        // A shape no tensor with values could have is refused here, where the job's input is read, rather than by
        // the first op that makes values of it (an error that named that op, not the input).
        const elements = m.shape.reduce((n: number, d: number) => n * d, 1);
        if (m.shape.length > MAX_RANK || elements > MAX_ELEMENTS) throw new CodecError(`bad $meta tensor description: shape [${m.shape.slice(0, 10).join(", ")}${m.shape.length > 10 ? ", ..." : ""}] has ${m.shape.length > MAX_RANK ? `${m.shape.length} dimensions, more than ${MAX_RANK}` : `${elements} elements, more than a tensor can hold (${MAX_ELEMENTS})`}`);
        return Tensor.meta(m.dtype, m.shape as number[]);
      }
      case "$num":
        return Number(v);
      case "$big":
        // Parsing a bigint takes time that grows faster than its digits: an int64 needs 20.
        if (typeof v !== "string" || v.length > MAX_BIGINT_CHARS) throw new CodecError(`bad $big: a string of at most ${MAX_BIGINT_CHARS} digits is needed`);
        return BigInt(v);
      case "$undef":
        return undefined;
      case "$obj":
        if (v === null || typeof v !== "object") throw new CodecError("bad $obj: an object is needed");
        return Object.fromEntries(Object.entries(v as object).map(([kk, vv]) => [kk, decodeValue(vv, tensors, depth + 1)]));
      case "$cache": {
        if (v === null || typeof v !== "object" || Array.isArray(v)) throw new CodecError("bad $cache: an object of module paths and entries is needed");
        const { $lists, ...entries } = v as Record<string, unknown>;
        return Cache.fromEntries(Object.entries(entries).map(([path, e]) => [path, decodeValue(e, tensors, depth + 1) as CacheEntry]), listLengthsIn($lists));
      }
      case "$error":
        if (v === null || typeof v !== "object" || typeof (v as ErrorInfo).message !== "string") throw new CodecError("bad $error: an ErrorInfo with a message is needed");
        return errorFromInfo(v as ErrorInfo);
      case "$function":
        if (typeof v !== "string") throw new CodecError("bad $function: its source must be a string");
        return new FunctionSource(v);
    }
  }
  return Object.fromEntries(keys.map((kk) => [kk, decodeValue(o[kk], tensors, depth + 1)]));
}

/** How deep arrays and objects may nest in a value crossing to or from a job (real values nest a few levels). */
export const MAX_DEPTH = 256;

/** The most characters of a bigint in a remote value. */
export const MAX_BIGINT_CHARS = 1000;

/** A remote cache's list lengths ($lists), checked: whole numbers of modules (at most a million per list). */
function listLengthsIn(lists: unknown): [string, number][] {
  if (lists === undefined) return [];
  if (lists === null || typeof lists !== "object" || Array.isArray(lists)) throw new CodecError("bad $lists in a cache: an object of list paths and lengths is needed");
  return Object.entries(lists).map(([path, n]) => {
    if (!Number.isSafeInteger(n) || (n as number) < 0 || (n as number) > 1_000_000) throw new CodecError(`bad $lists in a cache: ${JSON.stringify(path.slice(0, 200))} has length ${String(n).slice(0, 40)}`);
    return [path, n as number];
  });
}

/**
 * The most arrays, objects and elements (counted by their separators) the JSON of one request or hybrid-step answer
 * may hold: its data beyond that goes as tensors. (Results, which a server makes, are not bounded so.)
 */
export const MAX_JSON_VALUES = 2 ** 18;

/**
 * Throws a CodecError when JSON text from the network nests arrays or objects deeper than `maxDepth` or holds more
 * than MAX_JSON_VALUES values: checked before it is parsed, since JSON.parse has no bounds that matter here. A few
 * megabytes of `[{},{},...]` become millions of objects (3 bytes each on the wire, about 50 in the heap, copied
 * again at each hand-off), and a value nested a million deep parses but overflows the stack of whatever walks it
 * next (the structured clone that hands a job to its model's thread).
 */
export function checkJsonText(text: string, what: string, maxDepth = MAX_JSON_DEPTH, maxValues = MAX_JSON_VALUES): void {
  let depth = 0;
  let values = 1;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // A string: skipped to its closing quote (a backslash escapes the character after it).
      for (i++; i < n; i++) {
        const s = text.charCodeAt(i);
        if (s === 0x5c) i++;
        else if (s === 0x22) break;
      }
      continue;
    }
    if (c === 0x5d || c === 0x7d) depth--;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) throw new CodecError(`${what} nests arrays or objects more than ${maxDepth} deep`);
      values++;
    } else if (c === 0x2c) values++;
    else continue;
    if (values > maxValues) throw new CodecError(`${what} holds more than ${maxValues} values; send large data as tensors`);
  }
}

/**
 * How deep a request's or message's JSON may nest: a remote value's depth, each level of it possibly wrapped in a
 * `$`-keyed object (`$obj`, `$plain`), inside the few levels that hold it.
 */
export const MAX_JSON_DEPTH = 2 * MAX_DEPTH + 16;

/** One binary message: JSON `payload` (already encoded) plus its tensors, as a safetensors file. */
export function encodeEnvelope(payload: unknown, tensors: ReadonlyMap<string, Tensor>): Uint8Array {
  return writeSafetensors(new Map(tensors), { metadata: { tsight: JSON.stringify(payload) } });
}

/** An envelope's payload and tensors; `maxValues` bounds its JSON (see checkJsonText: a request's is). */
export function decodeEnvelope(bytes: Uint8Array, maxValues = Infinity): { payload: unknown; tensors: Map<string, Tensor> } {
  // The safetensors header is JSON too (its entries may carry keys nobody reads): bounded before it is parsed.
  const checkHeader = maxValues === Infinity ? undefined : (json: string) => checkJsonText(json, "the message's header", MAX_JSON_DEPTH, maxValues);
  const { tensors, metadata } = parseSafetensors(bytes, { file: "message", checkHeader });
  if (typeof metadata.tsight !== "string") throw new CodecError('the message is a safetensors file without the "tsight" metadata field');
  checkJsonText(metadata.tsight, "the message's JSON", MAX_JSON_DEPTH, maxValues);
  let payload: unknown;
  try {
    payload = JSON.parse(metadata.tsight);
  } catch (e) {
    throw new CodecError(`the message's JSON does not parse: ${(e as Error).message}`);
  }
  return { payload, tensors };
}

/** A value whose envelope would be larger than allowed (found before the envelope is made). */
export class ResultTooLargeError extends CodecError {
  override readonly name: string = "ResultTooLargeError";
  override readonly code = "MEMORY";
  constructor(
    /** About how many bytes the envelope would take. */
    readonly size: number,
    readonly limit: number,
  ) {
    super(`the value would take about ${size} bytes, over the limit of ${limit}`);
  }
}

/** Encodes a whole value into an envelope; with `maxBytes`, refuses (before allocating it) one that would be larger. */
export function packValue(value: unknown, maxBytes = Infinity): Uint8Array {
  const tensors = new Map<string, Tensor>();
  const json = encodeValue(value, tensors);
  if (maxBytes !== Infinity) {
    let size = JSON.stringify(json).length;
    for (const t of tensors.values()) size += t.data.byteLength + 128;
    if (size > maxBytes) throw new ResultTooLargeError(size, maxBytes);
  }
  return encodeEnvelope({ value: json }, tensors);
}

export function unpackValue(bytes: Uint8Array, maxValues = Infinity): unknown {
  const { payload, tensors } = decodeEnvelope(bytes, maxValues);
  return decodeValue((payload as { value?: unknown }).value, tensors);
}

/** A value as base64 text of its envelope (how JSON events carry values with tensors). */
export function packBase64(value: unknown): string {
  return toBase64(packValue(value));
}

export function unpackBase64(text: string): unknown {
  return unpackValue(Uint8Array.from(atob(text), (c) => c.charCodeAt(0)));
}

export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
