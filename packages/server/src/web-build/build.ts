/**
 * Builds the workbench page (src/web) into a folder the server serves: the script and style bundled by esbuild
 * under names that carry a hash of their content (so they can be cached for good), gzip copies of them, and
 * index.html naming them. Run after tsc (`node dist/web-build/build.js`, part of the package's build), and by the
 * browser tests, which build the page they test into a folder of their own.
 *
 * Not minified: the recipes' intervention functions are sent, and shown, as their compiled source.
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build, transform } from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
/** src/web, from src/web-build (tsx, vitest) or from dist/web-build (compiled). */
const webSource = path.resolve(here, "../../src/web");

export interface BuiltPage {
  dir: string;
  /** The files written, by name. */
  files: string[];
}

export async function buildWorkbench(outDir: string): Promise<BuiltPage> {
  const result = await build({
    entryPoints: { workbench: path.join(webSource, "main.ts") },
    bundle: true,
    platform: "browser",
    format: "esm",
    target: "es2022",
    // tsight's TypeScript sources, as in the tests: the page is built from this repository, not from what npm has.
    conditions: ["tsight-source"],
    entryNames: "[name]-[hash]",
    assetNames: "[name]-[hash]",
    outdir: outDir,
    write: false,
    logLevel: "silent",
    legalComments: "none",
  });
  const script = result.outputFiles.find((f) => f.path.endsWith(".js"));
  if (script) await checkRecipeSources(script.text);
  fs.rmSync(outDir, { recursive: true, force: true });
  fs.mkdirSync(outDir, { recursive: true });
  const names: string[] = [];
  for (const file of result.outputFiles) {
    const name = path.basename(file.path);
    fs.writeFileSync(path.join(outDir, name), file.contents);
    fs.writeFileSync(path.join(outDir, `${name}.gz`), gzipSync(file.contents, { level: 9 }));
    names.push(name, `${name}.gz`);
  }
  const scriptName = names.find((n) => n.endsWith(".js"));
  const styleName = names.find((n) => n.endsWith(".css"));
  if (!scriptName || !styleName) throw new Error(`the workbench build made no ${scriptName ? "stylesheet" : "script"} (made: ${names.join(", ")})`);
  const html = fs.readFileSync(path.join(webSource, "index.html"), "utf8").replaceAll("{{script}}", `/workbench/${scriptName}`).replaceAll("{{style}}", `/workbench/${styleName}`);
  fs.writeFileSync(path.join(outDir, "index.html"), html);
  return { dir: outDir, files: ["index.html", ...names] };
}

/** Top-level `async` functions of a module, by name: their text from `async` to the closing brace. */
function asyncFunctions(code: string): Map<string, string> {
  return new Map([...code.matchAll(/^(?:var|const|let) (\w+) = (async [\s\S]*?\n)\};$/gm)].map((m) => [m[1]!, m[2]!]));
}

/**
 * The recipes' intervention functions are sent, and shown, as their text in the bundle. esbuild renames a local
 * that collides with a top-level name elsewhere in the bundle (`h` becomes `h2`): correct code, but not what the
 * source says. Refuse such a build, naming the function, so its locals get other names.
 */
async function checkRecipeSources(bundle: string): Promise<void> {
  const bundled = asyncFunctions(bundle);
  const dir = path.join(webSource, "recipes");
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".ts"))) {
    const alone = asyncFunctions((await transform(fs.readFileSync(path.join(dir, file), "utf8"), { loader: "ts", format: "esm", target: "es2022" })).code);
    for (const [name, text] of alone) {
      const inBundle = bundled.get(name);
      if (inBundle === undefined) throw new Error(`workbench build: ${name} (recipes/${file}) is not in the bundle under its own name; give it a name no other module uses`);
      if (inBundle !== text) {
        const renamed = [...new Set([...inBundle.matchAll(/\b([A-Za-z_$]+)(\d+)\b/g)].map((m) => m[0]).filter((w) => !text.includes(w)))];
        throw new Error(`workbench build: esbuild renamed locals of ${name} (recipes/${file}): ${renamed.join(", ") || "see the bundle"}; rename them in the source so the code the page shows is the code written`);
      }
    }
  }
}

/** Where the package's build puts the page: dist/workbench. */
export const defaultOutDir = path.resolve(here, "../../dist/workbench");

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const started = Date.now();
  const page = await buildWorkbench(process.argv[2] ? path.resolve(process.argv[2]) : defaultOutDir);
  process.stdout.write(`workbench page built into ${page.dir} (${page.files.length} files, ${Date.now() - started} ms)\n`);
}
