/**
 * Model keys: `"<ClassName>:<json>"`, e.g. `LanguageModel:{"repo_id":"stdlib-gpt2","revision":null}`. A key names
 * a model a server hosts; `fromModelKey` parses it through a registry of known classes and never imports or loads
 * anything named in it (the server decides what it serves).
 */
import { ClientError } from "./errors.js";

export interface ModelKeyArgs {
  repo_id: string;
  revision: string | null;
}

export interface ParsedModelKey {
  className: string;
  args: ModelKeyArgs;
}

/** Classes a key may name. */
const knownClasses = new Set(["LanguageModel"]);

export function registerModelClass(name: string): void {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new RangeError(`bad model class name "${name}"`);
  knownClasses.add(name);
}

export function toModelKey(className: string, repoId: string, revision: string | null = null): string {
  return `${className}:${JSON.stringify({ repo_id: repoId, revision })}`;
}

export class ModelKeyError extends ClientError {}

export function fromModelKey(key: string): ParsedModelKey {
  if (typeof key !== "string" || key.length > 2048) throw new ModelKeyError("a model key must be a string of at most 2048 characters");
  const colon = key.indexOf(":");
  if (colon < 0) throw new ModelKeyError(`model key "${key}" has no "<Class>:" prefix`);
  const className = key.slice(0, colon);
  if (!knownClasses.has(className)) throw new ModelKeyError(`model key names class "${className}"; known: ${[...knownClasses].join(", ")}`);
  let args: unknown;
  try {
    args = JSON.parse(key.slice(colon + 1));
  } catch {
    throw new ModelKeyError(`model key "${key}": the part after "${className}:" is not JSON`);
  }
  const a = args as Record<string, unknown>;
  if (typeof a !== "object" || a === null || typeof a.repo_id !== "string" || !a.repo_id || !(a.revision === null || a.revision === undefined || typeof a.revision === "string")) {
    throw new ModelKeyError(`model key "${key}": expected {"repo_id": string, "revision": string | null}`);
  }
  return { className, args: { repo_id: a.repo_id, revision: (a.revision as string | null | undefined) ?? null } };
}

/** The canonical form of a key (so equal models have equal keys). */
export function canonicalModelKey(key: string): string {
  const { className, args } = fromModelKey(key);
  return toModelKey(className, args.repo_id, args.revision);
}
