/**
 * Loading weights into a module tree: a key-by-key copy with the architecture's listed exceptions (tied heads,
 * aliases, an omitted base prefix, ignored buffers). Every parameter must be found with its exact shape.
 */
import type { Tensor } from "../tensor/index.js";
import type { CausalLM } from "./causal-lm.js";

export class WeightsError extends Error {
  override readonly name = "WeightsError";
}

/** Where each parameter's tensor is in `available` (a file's keys), or why it is not. */
export function planWeights(model: CausalLM, available: ReadonlySet<string>): { sources: Map<string, string>; tied: Map<string, string>; unused: string[] } {
  const rules = model.weightRules();
  const sources = new Map<string, string>();
  const tied = new Map<string, string>();
  const missing: string[] = [];
  for (const name of model.namedParameters().keys()) {
    const candidates = [name, ...(rules.aliases[name] ?? [])];
    if (rules.basePrefix && name.startsWith(rules.basePrefix)) candidates.push(name.slice(rules.basePrefix.length));
    const found = candidates.find((k) => available.has(k));
    if (found) sources.set(name, found);
    else if (rules.tied[name]) tied.set(name, rules.tied[name]!);
    else missing.push(name);
  }
  if (missing.length) {
    throw new WeightsError(`the weights lack ${missing.length} parameter(s) of this ${model.config.modelType} model: ${missing.slice(0, 8).join(", ")}${missing.length > 8 ? ", ..." : ""}`);
  }
  const used = new Set(sources.values());
  const unused = [...available].filter((k) => !used.has(k) && !rules.ignore.some((r) => r.test(k)));
  return { sources, tied, unused };
}

/** Copies `tensors` into the model's parameters, checking shapes. Returns file keys that matched nothing. */
export function loadWeights(model: CausalLM, tensors: ReadonlyMap<string, Tensor>): string[] {
  const params = model.namedParameters();
  const { sources, tied, unused } = planWeights(model, new Set(tensors.keys()));
  const set = (name: string, t: Tensor, from: string): void => {
    const p = params.get(name)!;
    if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
      throw new WeightsError(`weight "${from}" has shape [${t.shape}] but ${name} needs [${p.shape}]`);
    }
    if (t.dtype !== "float32") throw new WeightsError(`weight "${from}" is ${t.dtype}; parameters are float32`);
    p.module.setParam(p.name, t);
  };
  for (const [name, key] of sources) set(name, tensors.get(key)!, key);
  for (const [name, target] of tied) set(name, params.get(target)!.module.getParam(params.get(target)!.name), target);
  return unused;
}
