/**
 * Checks the arguments of a call from job code against its declared kinds (tsight/protocol's sandbox table)
 * before the host does anything with them: every number that crosses from user code is bounded here or by the
 * tensor layer's own checks, never used raw to size an allocation.
 */
import { checkDType, Generator, isDType, MAX_RANK, Tensor } from "tsight";
import type { ArgSpec } from "tsight/protocol";

/** Longest string argument (a gelu mode, a cache's module path). */
const MAX_STRING = 1024;
/** Most entries in a list argument (dims, index entries, tensors to concatenate). */
const MAX_LIST = 4096;

export class ArgumentError extends TypeError {
  override readonly name = "TypeError";
}

const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v);

/** Checks `args` of `where` (e.g. "reshape") against `specs`; throws a TypeError naming the argument. */
export function checkArgs(where: string, specs: readonly ArgSpec[], args: readonly unknown[]): void {
  const rest = specs.at(-1)?.endsWith("...") ? specs.at(-1)! : null;
  if (!rest && args.length > specs.length) throw new ArgumentError(`${where} takes at most ${specs.length} argument${specs.length === 1 ? "" : "s"}, got ${args.length}`);
  specs.forEach((spec, i) => {
    if (spec.endsWith("...")) return checkRest(where, spec, args.slice(i));
    const optional = spec.endsWith("?");
    const kind = optional ? spec.slice(0, -1) : spec;
    const v = args[i];
    if (v === undefined || v === null) {
      if (!optional && kind !== "any") throw new ArgumentError(`${where}: argument ${i + 1} (${kind}) is missing`);
      return;
    }
    // A wrong dtype gets the tensor layer's own DTypeError (one message for local and remote code).
    if (kind === "dtype") checkDType(v, where.replace(/^tensor\./, ""));
    if (!matches(kind, v)) throw new ArgumentError(`${where}: argument ${i + 1} must be ${describeKind(kind)}, got ${describeValue(v)}`);
  });
}

function checkRest(where: string, spec: string, rest: readonly unknown[]): void {
  if (rest.length > MAX_LIST) throw new ArgumentError(`${where}: at most ${MAX_LIST} arguments`);
  if (spec === "any...") return;
  if (spec === "int...") {
    const list = rest.length === 1 && Array.isArray(rest[0]) ? (rest[0] as unknown[]) : rest;
    if (list.length > MAX_RANK || !list.every(isInt)) throw new ArgumentError(`${where} takes whole numbers (at most ${MAX_RANK}), as arguments or as one list; got ${describeValue(rest)}`);
    return;
  }
  if (spec === "index...") {
    if (rest.length > MAX_RANK || !rest.every(isIndexEntry)) throw new ArgumentError(`${where}: each index entry is an integer, null, slice(start, stop, step), a list of integers (at most ${MAX_LIST}), an integer tensor or "..." (at most ${MAX_RANK} entries)`);
  }
}

function matches(kind: string, v: unknown): boolean {
  switch (kind) {
    case "tensor":
      return v instanceof Tensor;
    case "value":
      return v instanceof Tensor || typeof v === "number";
    case "number":
      return typeof v === "number";
    case "int":
      return isInt(v);
    case "ints":
      return isInt(v) || (Array.isArray(v) && v.length <= MAX_LIST && v.every(isInt));
    case "shape":
      return Array.isArray(v) && v.length <= MAX_RANK && v.every((d) => isInt(d) && d >= 0);
    case "bool":
      return typeof v === "boolean";
    case "dtype":
      return isDType(v);
    case "string":
      return typeof v === "string" && v.length <= MAX_STRING;
    case "options":
      return isOptions(v);
    case "indices":
      return Array.isArray(v) && v.length <= MAX_RANK && v.every(isIndexEntry);
    case "tensors":
      return Array.isArray(v) && v.length <= MAX_LIST && v.every((t) => t instanceof Tensor);
    case "generator":
      return v instanceof Generator;
    case "function":
      return typeof v === "function";
    case "any":
      return true;
  }
  return false;
}

/** A plain object (options, cache settings) of numbers, booleans, short strings and short lists of them (or of modules). */
function isOptions(v: unknown, depth = 0): boolean {
  if (typeof v !== "object" || v === null || Array.isArray(v) || Object.getPrototypeOf(v) !== Object.prototype) return false;
  const entries = Object.entries(v);
  if (entries.length > 64) return false;
  return entries.every(([, x]) => x === undefined || x === null || typeof x === "number" || typeof x === "boolean" || (typeof x === "string" && x.length <= MAX_STRING) || (Array.isArray(x) && x.length <= MAX_LIST && x.every((y) => typeof y === "string" || typeof y === "number" || isModuleRef(y))) || (x instanceof Tensor) || (depth < 2 && isOptions(x, depth + 1)));
}

/** An envoy as it crosses from the isolate: `{ path }` (the modules of tr.cache({ modules: [...] })). */
function isModuleRef(v: unknown): boolean {
  if (typeof v !== "object" || v === null || Object.getPrototypeOf(v) !== Object.prototype) return false;
  const keys = Object.keys(v);
  return keys.length === 1 && keys[0] === "path" && typeof (v as { path: unknown }).path === "string" && (v as { path: string }).path.length <= MAX_STRING;
}

function isIndexEntry(v: unknown): boolean {
  if (v === null || v === "...") return true;
  if (isInt(v)) return true;
  if (Array.isArray(v)) return v.length <= MAX_LIST && v.every(isInt);
  if (v instanceof Tensor) return v.dtype === "int64" || v.dtype === "int32" || v.dtype === "bool";
  if (typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    const s = v as Record<string, unknown>;
    return Object.keys(s).every((k) => k === "start" || k === "stop" || k === "step") && ["start", "stop", "step"].every((k) => s[k] === undefined || s[k] === null || isInt(s[k]));
  }
  return false;
}

function describeKind(kind: string): string {
  return (
    {
      tensor: "a tensor",
      value: "a tensor or a number",
      number: "a number",
      int: "a whole number",
      ints: "a whole number or a list of them",
      shape: `a list of at most ${MAX_RANK} whole numbers, none negative`,
      bool: "true or false",
      dtype: 'a dtype ("float32", "int64", "int32" or "bool")',
      string: `a string of at most ${MAX_STRING} characters`,
      options: "a plain object of numbers, booleans and strings",
      indices: "a list of index entries",
      tensors: "a list of tensors",
      generator: "a Generator",
      function: "a function",
    } as Record<string, string>
  )[kind] ?? kind;
}

function describeValue(v: unknown): string {
  if (v instanceof Tensor) return `a tensor of shape [${v.shape}]`;
  if (Array.isArray(v)) return `a list of ${v.length}`;
  if (typeof v === "number") return String(v);
  if (typeof v === "string") return `the string ${JSON.stringify(v.slice(0, 40))}`;
  // An envoy crosses as its module's path alone (see Bridge.fromDesc).
  const path = v !== null && typeof v === "object" && Object.keys(v).length === 1 ? (v as { path?: unknown }).path : undefined;
  if (typeof path === "string") return `${path || "the model"}'s envoy (pass the value it gives, \`await m.${path}.output\`)`;
  return v === null ? "null" : typeof v;
}
