/**
 * Splicing an SAE into a model: the SAE becomes the child `sae` of the module it reads, and runs on that module's
 * output (its first element, for modules returning a tuple) inside the module's call; what the module returns is
 * the SAE's output. So `m.transformer.h[2].sae.latents.output` is read and replaced like any value, and the
 * module's own `.output` is the spliced one. As SAELens's `add_sae`, it changes the model in place (every
 * LanguageModel sharing it) until removed.
 */
import type { Module } from "../nn/index.js";
import { Tensor } from "../tensor/index.js";
import type { SparseAutoencoder } from "./sae.js";

const CHILD = "sae";
/** Where each spliced SAE sits, so it is never in two places at once. */
const spliced = new WeakMap<SparseAutoencoder, Module>();
/** The module's own `forward` property before splicing (its guard against direct calls), put back on removal. */
const ownForward = new WeakMap<Module, PropertyDescriptor | undefined>();

/** Splices `sae` onto `target` (a module of a finalized model). */
export function spliceSae(target: Module, sae: SparseAutoencoder, useErrorTerm: boolean): void {
  if (spliced.has(sae)) throw new Error(`this SAE is already spliced at ${spliced.get(sae)!.path}; load it again to splice it twice`);
  if (CHILD in target) throw new Error(`${target.path} already has ${(target as unknown as Record<string, Module>)[CHILD] ? "an SAE" : "a field"} named "${CHILD}"; remove it first`);
  sae.useErrorTerm = useErrorTerm;
  target.attach(CHILD, sae);
  spliced.set(sae, target);
  const forward = target.forward as (...a: unknown[]) => Promise<unknown>;
  ownForward.set(target, Object.getOwnPropertyDescriptor(target, "forward"));
  Object.defineProperty(target, "forward", {
    configurable: true,
    writable: true,
    value: async (...args: unknown[]) => {
      const out = await forward.apply(target, args);
      if (out instanceof Tensor) return sae.call(out);
      if (Array.isArray(out) && out[0] instanceof Tensor) return [await sae.call(out[0]), ...out.slice(1)];
      throw new TypeError(`${target.path} returns neither a tensor nor a tuple starting with one; an SAE cannot read it`);
    },
  });
}

/** Removes the SAE spliced onto `target`; returns it (undefined when there was none). */
export function unspliceSae(target: Module): SparseAutoencoder | undefined {
  const sae = (target as unknown as Record<string, unknown>)[CHILD] as SparseAutoencoder | undefined;
  if (!sae || spliced.get(sae) !== target) return undefined;
  delete (target as unknown as Record<string, unknown>).forward;
  const own = ownForward.get(target);
  if (own) Object.defineProperty(target, "forward", own);
  ownForward.delete(target);
  target.detach(CHILD);
  spliced.delete(sae);
  return sae;
}

/** The SAEs spliced into a model, by module path. */
export function splicedSaes(root: Module): { at: string; sae: SparseAutoencoder }[] {
  return root.namedModules().flatMap(([p, m]) => {
    const sae = (m as unknown as Record<string, unknown>)[CHILD] as SparseAutoencoder | undefined;
    return sae && spliced.get(sae) === m ? [{ at: p, sae }] : [];
  });
}
