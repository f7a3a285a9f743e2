/**
 * Extra names for modules in envoy trees and caches (`rename` at load), in nnsight's forms.
 */
import type { Module } from "../nn/index.js";
import { TraceError } from "./errors.js";

/** What `rename` maps: a module name, relative path, or pattern -> one alias or several. */
export type Rename = Record<string, string | readonly string[]>;

/**
 * Alias maps for envoy trees (parent path -> alias -> child name or relative path), from load-time `rename`, in
 * nnsight's forms:
 *
 *   { h: "layers" }                        every module named `h` is also `layers` (on its parent)
 *   { "transformer.h": "layers" }          a path: mounted wherever it resolves, here on the model (m.layers)
 *   { ".transformer": ["model", "mdl"] }   a leading dot is the same path; several aliases
 *   { "transformer.h.*.mlp": "ffn" }       a pattern (* is one name): each match is also `ffn` on its parent
 */
export function buildAliases(model: Module, rename: Rename): Map<string, Map<string, string>> {
  const aliases = new Map<string, Map<string, string>>();
  const add = (at: string, alias: string, target: string) => {
    let m = aliases.get(at);
    if (!m) aliases.set(at, (m = new Map()));
    m.set(alias, target);
  };
  const paths = model.namedModules().map(([p]) => p);
  const known = new Set(paths);
  const join = (at: string, rel: string) => (at ? `${at}.${rel}` : rel);
  const parentOf = (p: string) => p.split(".").slice(0, -1).join(".");
  for (const [rawFrom, to] of Object.entries(rename)) {
    const from = rawFrom.replace(/^\./, "");
    const names = (typeof to === "string" ? [to] : Array.isArray(to) ? to : [to]).map((n) => (typeof n === "string" ? n.replace(/^\./, "") : n));
    if (names.length === 0) throw new TraceError(`rename: "${rawFrom}" has no alias`);
    for (const n of names) if (typeof n !== "string" || !/^[A-Za-z_$][\w$]*$/.test(n)) throw new TraceError(`rename: "${String(n)}" is not a valid name (letters, digits, _ and $)`);
    if (!from || from.split(".").some((part) => part === "")) throw new TraceError(`rename: "${rawFrom}" is not a module name or path`);
    let matched = 0;
    if (from.includes("*")) {
      const pattern = new RegExp(`^${from.split(".").map((part) => (part === "*" ? "[^.]+" : part.replace(/[$()+?[\]^{|}\\]/g, "\\$&"))).join("\\.")}$`);
      for (const p of paths) if (p && pattern.test(p)) for (const n of names) (add(parentOf(p), n, p.split(".").at(-1)!), matched++);
    } else if (from.includes(".")) {
      for (const at of paths) if (known.has(join(at, from))) for (const n of names) (add(at, n, from), matched++);
    } else {
      for (const p of paths) if (p && p.split(".").at(-1) === from) for (const n of names) (add(parentOf(p), n, from), matched++);
    }
    if (!matched) throw new TraceError(`rename: the model has no module "${rawFrom}"${from.includes("*") ? " (no path matches the pattern)" : ""}`);
  }
  return aliases;
}

/** The longest path resolved: a model's paths are a few dozen characters, and a longer one is none of them. */
const MAX_PATH = 4096;

/**
 * A module path written with rename aliases (`layers.1.self_attn`) as the model's own (`model.layers.1.self_attn`).
 * A path too long to be a module's comes back as it is.
 */
export function resolveAliases(path: string, aliases: ReadonlyMap<string, ReadonlyMap<string, string>>): string {
  if (path.length > MAX_PATH) return path;
  let real = "";
  for (const name of path.split(".")) {
    const step = aliases.get(real)?.get(name) ?? name;
    real = real ? `${real}.${step}` : step;
  }
  return real;
}
