/**
 * Loading weights into a module tree: a key-by-key copy with the architecture's listed exceptions (tied heads,
 * aliases, an omitted base prefix, ignored buffers, per-expert tensors stacked into one). Every parameter must be
 * found with its exact shape.
 */
import { Tensor } from "../tensor/index.js";
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
  for (const name of model.namedParameters().keys()) {
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
  const set = (name: string, t: Tensor, from: string): void => {
    const p = params.get(name)!;
    if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
      throw new WeightsError(`weight "${from}" has shape [${t.shape}] but ${name} needs [${p.shape}]`);
    }
    if (t.dtype !== "float32") throw new WeightsError(`weight "${from}" is ${t.dtype}; parameters are float32`);
    p.module.setParam(p.name, t);
  };
  for (const [name, src] of sources) {
    if ("key" in src) set(name, tensors.get(src.key)!, src.key);
    else {
      sourceShape(src, (k) => tensors.get(k)!.shape); // parts that do not fit together fail here, by name
      set(name, Tensor.stack(src.stack.map((keys) => Tensor.cat(keys.map((k) => tensors.get(k)!), 0)), 0), `${src.stack[0]![0]}, ... (${src.stack.flat().length} tensors)`);
    }
  }
  for (const [name, target] of tied) set(name, params.get(target)!.module.getParam(params.get(target)!.name), target);
  return unused;
}
