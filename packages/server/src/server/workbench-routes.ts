/**
 * The workbench web page (built from src/web into dist/workbench by the package's build): `GET /` is its HTML and
 * `GET /workbench/<file>` its script and stylesheet, under names that carry a hash of their content, so they are
 * cached for good while the HTML is checked every time. No API key is needed to load the page; what it shows
 * comes from /v1 with the key the user enters. A strict Content-Security-Policy allows only this server's own
 * scripts, styles and connections (the page has no inline script or style).
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Context, Hono } from "hono";
import type { AppEnv } from "./guards.js";

export const WORKBENCH_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".json": "application/json",
};

const SECURITY_HEADERS = {
  "content-security-policy": WORKBENCH_CSP,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cross-origin-opener-policy": "same-origin",
};

interface Asset {
  body: Uint8Array<ArrayBuffer>;
  gzip: Uint8Array<ArrayBuffer> | undefined;
  type: string;
}

/** Serves the page from `dir` (a built dist/workbench); with null, `/` says the page is off. */
export function workbenchRoutes(app: Hono<AppEnv>, dir: string | null): void {
  const assets = new Map<string, Asset>();

  app.get("/", (c) => {
    const file = dir && path.join(dir, "index.html");
    if (!file || !fs.existsSync(file)) {
      const why = dir ? `is not built in ${dir}: run \`npm run build\` in the tsight repository` : "is turned off on this server";
      return c.text(`The tsight workbench page ${why}. The API is at /v1.`, 404, { ...SECURITY_HEADERS, "cache-control": "no-store" });
    }
    // Read at every request (it is small): after a rebuild it names the new files at once.
    return c.body(new Uint8Array(fs.readFileSync(file)), 200, { ...SECURITY_HEADERS, "content-type": TYPES[".html"]!, "cache-control": "no-cache" });
  });

  app.get("/workbench/:name", (c) => {
    const name = c.req.param("name");
    const asset = dir ? load(assets, dir, name) : undefined;
    if (!asset) return c.text(`no workbench file ${name}`, 404, { ...SECURITY_HEADERS, "cache-control": "no-store" });
    return send(c, asset);
  });
}

/** A built file by name, read once; only plain files directly in `dir`, with a type this page uses. */
function load(assets: Map<string, Asset>, dir: string, name: string): Asset | undefined {
  const known = assets.get(name);
  if (known) return known;
  const type = TYPES[path.extname(name)];
  if (!type || !/^[\w-]+(\.[\w-]+)*$/.test(name)) return undefined;
  const file = path.join(dir, name);
  try {
    if (!fs.statSync(file).isFile()) return undefined;
    const gz = `${file}.gz`;
    const asset: Asset = { body: new Uint8Array(fs.readFileSync(file)), gzip: fs.existsSync(gz) ? new Uint8Array(fs.readFileSync(gz)) : undefined, type };
    assets.set(name, asset);
    return asset;
  } catch {
    return undefined;
  }
}

function send(c: Context<AppEnv>, asset: Asset): Response {
  const headers: Record<string, string> = { ...SECURITY_HEADERS, "content-type": asset.type, "cache-control": "public, max-age=31536000, immutable" };
  if (!asset.gzip) return c.body(asset.body, 200, headers);
  headers.vary = "accept-encoding";
  if (!/\bgzip\b/.test(c.req.header("accept-encoding") ?? "")) return c.body(asset.body, 200, headers);
  return c.body(asset.gzip, 200, { ...headers, "content-encoding": "gzip" });
}

/**
 * Where the package's build puts the page: dist/workbench beside the compiled server, or, when the server runs
 * from its TypeScript sources (tests, tsx), the package's dist/workbench.
 */
export function defaultWorkbenchDir(): string {
  const compiled = fileFromHere("../workbench");
  return fs.existsSync(path.join(compiled, "index.html")) ? compiled : fileFromHere("../../dist/workbench");
}

function fileFromHere(relative: string): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), relative);
}
