/**
 * Bench code that times tsight runs in plain Node (`node`, as users run the built package), not under the tsx the
 * bench itself runs in: tsx's loader (module hooks on a thread of their own) made ONNX Runtime-bound work slower
 * here (the GPT-2-small-sized prefill took 144-168 ms under it against 134-140 ms with plain node, six alternating
 * pairs). A bench file is bundled by esbuild into the ignored .bench-js/ (tsight's own modules left as imports of
 * its built package, whose relative paths hold from there as from bench/) and its bundle run with `node`.
 */
import path from "node:path";
import { fileURLToPath } from "node:url";
import { buildSync } from "esbuild";

const outDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", ".bench-js");
const built = new Map<string, string>();

/** The plain-Node bundle of the bench file at `file` (a path or file: URL), built once per process. */
export function plainNodeBundle(file: string): string {
  const entry = file.startsWith("file:") ? fileURLToPath(file) : file;
  let out = built.get(entry);
  if (!out) {
    out = path.join(outDir, `${path.basename(entry, ".ts")}.mjs`);
    buildSync({ entryPoints: [entry], outfile: out, bundle: true, platform: "node", format: "esm", packages: "external", external: ["../packages/*"], logLevel: "error" });
    built.set(entry, out);
  }
  return out;
}
