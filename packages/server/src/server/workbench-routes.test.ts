import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { Hono } from "hono";
import { afterAll, describe, expect, it } from "vitest";
import type { AppEnv } from "./guards.js";
import { WORKBENCH_CSP, workbenchRoutes } from "./workbench-routes.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-workbench-routes-"));
fs.writeFileSync(path.join(dir, "index.html"), '<!doctype html><script type="module" src="/workbench/workbench-ABC.js"></script>');
fs.writeFileSync(path.join(dir, "workbench-ABC.js"), "console.log(1);");
fs.writeFileSync(path.join(dir, "workbench-ABC.js.gz"), gzipSync("console.log(1);"));
fs.writeFileSync(path.join(dir, "workbench-DEF.css"), "body{}");
fs.writeFileSync(path.join(dir, "notes.txt"), "not a page file");
fs.writeFileSync(path.join(path.dirname(dir), "outside.js"), "secret");
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function app(at: string | null) {
  const a = new Hono<AppEnv>();
  workbenchRoutes(a, at);
  return a;
}

describe("the workbench page's routes", () => {
  it("serve the page at / with a strict CSP, checked on every visit", async () => {
    const res = await app(dir).request("/");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/html; charset=utf-8");
    expect(res.headers.get("cache-control")).toBe("no-cache");
    expect(res.headers.get("content-security-policy")).toBe(WORKBENCH_CSP);
    expect(WORKBENCH_CSP).toContain("script-src 'self'");
    expect(WORKBENCH_CSP).not.toContain("unsafe-inline");
    expect(WORKBENCH_CSP).not.toContain("unsafe-eval");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    expect(await res.text()).toContain("/workbench/workbench-ABC.js");
  });

  it("serve hashed assets with their types, cached for good, gzipped when asked", async () => {
    const js = await app(dir).request("/workbench/workbench-ABC.js");
    expect(js.headers.get("content-type")).toBe("text/javascript; charset=utf-8");
    expect(js.headers.get("cache-control")).toBe("public, max-age=31536000, immutable");
    expect(js.headers.get("content-encoding")).toBeNull();
    expect(await js.text()).toBe("console.log(1);");
    const gz = await app(dir).request("/workbench/workbench-ABC.js", { headers: { "accept-encoding": "gzip, br" } });
    expect(gz.headers.get("content-encoding")).toBe("gzip");
    expect(gz.headers.get("vary")).toBe("accept-encoding");
    const css = await app(dir).request("/workbench/workbench-DEF.css");
    expect(css.headers.get("content-type")).toBe("text/css; charset=utf-8");
  });

  it("serve nothing else: other types, other folders, missing files", async () => {
    for (const p of ["/workbench/notes.txt", "/workbench/..%2Foutside.js", "/workbench/missing.js", "/workbench/.hidden.js"]) {
      const res = await app(dir).request(p);
      expect(res.status, p).toBe(404);
    }
  });

  it("say why there is no page when it is not built or turned off", async () => {
    const missing = await app(path.join(dir, "nope")).request("/");
    expect(missing.status).toBe(404);
    expect(await missing.text()).toContain("npm run build");
    const off = await app(null).request("/");
    expect(await off.text()).toContain("turned off");
  });
});
