/**
 * `tsight/client` is for web pages too: bundled for the browser it must pull in no Node built-in module (those
 * that tsight uses for files and the native engine load lazily, and only where a client never goes).
 */
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { describe, expect, it } from "vitest";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

describe("tsight/client", () => {
  it("bundles for a browser without Node's built-in modules", async () => {
    const result = await build({ entryPoints: [path.join(root, "packages/tsight/src/client.ts")], bundle: true, platform: "browser", format: "esm", write: false, logLevel: "silent", metafile: true }).catch((e: { errors: { text: string }[] }) => e);
    const errors = "errors" in result ? result.errors.map((e) => e.text) : [];
    expect(errors).toEqual([]);
    const inputs = Object.keys((result as { metafile: { inputs: Record<string, unknown> } }).metafile.inputs);
    expect(inputs.some((f) => f.includes("src/client/http.ts"))).toBe(true);
    expect(inputs.filter((f) => f.startsWith("node:"))).toEqual([]);
  });
});
