/**
 * An invoke's view of batched values: its rows of every batch-major tensor, and putting replaced rows back.
 * Values are module inputs/outputs: tensors, arrays (tuples), plain objects (ModelOutput-like), anything else
 * (a KV cache, numbers) passes through untouched.
 */
import { sameShape, Tensor } from "../tensor/index.js";
import { isThenable } from "../tensor/async-scope.js";
import { named, TraceError } from "./errors.js";

/** Rows [start, start + length) of a batch of `batch` rows; `null` rows mean the whole batch. */
export interface Rows {
  start: number;
  length: number;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && Object.getPrototypeOf(v) === Object.prototype;

/** A value of a batch that holds other invokes' data and cannot be split into one invoke's rows. */
export class RowsError extends TraceError {
  override readonly name: string = "RowsError";
}
named(RowsError, "RowsError");

/**
 * The invoke's part of `value`. With `strict` (the value's name), invokes are separate jobs: anything that is not
 * batch-major, and so may mix rows of other jobs, is refused instead of shared: a message (string) says why, which
 * the caller turns into a RowsError at the user's line.
 */
export function selectRows(value: unknown, rows: Rows | null, batch: number, strict?: string): unknown {
  if (rows === null || (rows.start === 0 && rows.length === batch)) return value;
  if (value instanceof Tensor) {
    if (value.ndim > 0 && value.shape[0] === batch) return value.narrow(0, rows.start, rows.length);
    if (strict !== undefined) throw `${strict} is a tensor of shape [${value.shape}], which is not split by batch row, so it may hold other jobs' data: a job sharing a forward pass cannot read it`;
    return value;
  }
  if (Array.isArray(value)) return value.map((v, i) => selectRows(v, rows, batch, strict === undefined ? undefined : `${strict}[${i}]`));
  if (isPlainObject(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, selectRows(v, rows, batch, strict === undefined ? undefined : `${strict}.${k}`)]));
  if (strict !== undefined && typeof value === "object" && value !== null) throw `${strict} holds a ${value.constructor?.name ?? "object"}, which is shared by every row of the batch: a job sharing a forward pass cannot read it`;
  return value;
}

/**
 * `full` with the invoke's rows replaced by `part` (which has the structure selectRows gave). Throws a message
 * (string) describing the mismatch; the caller turns it into a SwapError at the user's line.
 */
export function mergeRows(full: unknown, part: unknown, rows: Rows | null, batch: number, where = "value"): unknown {
  const whole = rows === null || (rows.start === 0 && rows.length === batch);
  if (full instanceof Tensor) {
    const batchMajor = full.ndim > 0 && full.shape[0] === batch;
    if (!(part instanceof Tensor)) {
      // The invoke sees its own rows of a batch-major value: its shape is what it would compare with.
      const mine = !whole && batchMajor ? `${fmt([rows!.length, ...full.shape.slice(1)])} for this invoke's rows` : fmt(full.shape);
      throw `${where} is a tensor of shape ${mine}; the replacement is ${describeValue(part)}`;
    }
    // A shape without values in a run with values: everything computed from it would be shapes only, the other
    // invokes' rows of a shared batch too.
    if (part.isMeta && !full.isMeta) throw `${where} has values; the replacement is a meta tensor of shape ${fmt(part.shape)} (a shape without values; one made from a value that a function edit kept from a call while a generation step was compiled has none: see the README's function edits)`;
    // An invoke that has the whole batch may change the shape, as in PyTorch: later ops get the new one (and an op
    // that cannot take it names this replacement; see Interleaver.explain).
    if (whole) return castLike(part, full, where);
    if (!batchMajor) {
      if (!sameShape(part.shape, full.shape)) throw `${where} has shape ${fmt(full.shape)}, shared by every invoke of the batch; the replacement has shape ${fmt(part.shape)}`;
      return castLike(part, full, where);
    }
    const want = [rows!.length, ...full.shape.slice(1)];
    if (!sameShape(part.shape, want)) throw `${where} has shape ${fmt(want)} for this invoke's rows (other invokes share the batch, so its shape cannot change); the replacement has shape ${fmt(part.shape)}`;
    return full.put([{ start: rows!.start, stop: rows!.start + rows!.length }], castLike(part, full, where));
  }
  if (Array.isArray(full)) {
    if (!Array.isArray(part) || part.length !== full.length) throw `${where} is a tuple of ${full.length}; the replacement is ${describeValue(part)}`;
    return full.map((v, i) => mergeRows(v, part[i], rows, batch, `${where}[${i}]`));
  }
  if (isPlainObject(full)) {
    if (!isPlainObject(part)) throw `${where} is an object with keys ${Object.keys(full).join(", ")}; the replacement is ${describeValue(part)}`;
    return Object.fromEntries(Object.entries(full).map(([k, v]) => [k, k in part ? mergeRows(v, part[k], rows, batch, `${where}.${k}`) : v]));
  }
  // Anything else (a number, a flag, an empty slot) is the batch's, not this invoke's rows: it can change only with
  // the whole batch (one invoke put a tensor where a layer's cache slot was empty, and every invoke failed).
  if (!whole && !Object.is(part, full)) throw `${where} is ${describeValue(full)}, shared by every invoke of the batch; the replacement is ${describeValue(part)}`;
  return part;
}

/**
 * `part` in `full`'s dtype. Integers and booleans convert among themselves (masks, ids), but a float value replaced
 * by integers or booleans, or the other way round, is refused: a cast would silently change the values (an argmax
 * put where activations were, fractional token ids).
 */
function castLike(part: Tensor, full: Tensor, where: string): Tensor {
  if (part.dtype === full.dtype) return part;
  if ((part.dtype === "float32") !== (full.dtype === "float32")) throw `${where} is ${full.dtype}; the replacement is ${part.dtype} (convert it with .to("${full.dtype}") if that is meant)`;
  return part.to(full.dtype);
}

const fmt = (shape: readonly number[]): string => `[${shape.join(", ")}]`;


/** A value, for an error about it: a tensor's shape, an array's length, else its type. */
export function describeValue(v: unknown): string {
  if (v instanceof Tensor) return `a tensor of shape ${fmt(v.shape)}`;
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (v === null || v === undefined) return String(v);
  // An async function edit gives a promise: a function edit must give its value itself.
  if (isThenable(v)) return "a promise (a function edit must return its value, not a promise: no async)";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

/**
 * `value` with every tensor in it (through arrays and plain objects) replaced by `f(tensor)`. A tensor that occurs
 * several times is mapped once, and stays one object.
 */
export function mapTensors<T>(value: T, f: (t: Tensor) => Tensor, done = new Map<Tensor, Tensor>()): T {
  if (value instanceof Tensor) {
    let out = done.get(value);
    if (!out) done.set(value, (out = f(value)));
    return out as T;
  }
  if (Array.isArray(value)) return value.map((v) => mapTensors(v, f, done)) as T;
  if (isPlainObject(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, mapTensors(v, f, done)])) as T;
  return value;
}

/** Tensors in a returned value, detached from any autograd graph (what leaves a trace is plain data). */
export function detachAll<T>(value: T): T {
  return mapTensors(value, (t) => t.detach());
}
