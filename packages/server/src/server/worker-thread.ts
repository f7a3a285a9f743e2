/**
 * Starting a worker thread on `worker-main`. Compiled (dist/), that is `worker-main.js`; run from source (vitest,
 * tsx), the thread first registers tsx's loader so it can import the `.ts` files, and resolves the workspace
 * packages to their sources (the "tsight-source" export condition), as the process that started it does.
 */
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { Worker, type ResourceLimits } from "node:worker_threads";
import type { WorkerData } from "./worker-messages.js";

const fromSource = import.meta.url.endsWith(".ts");

export function spawnWorkerThread(data: WorkerData, resourceLimits?: ResourceLimits): Worker {
  const options = { workerData: data, resourceLimits, stdout: false, stderr: false };
  if (!fromSource) return new Worker(new URL("./worker-main.js", import.meta.url), options);
  const entry = new URL("./worker-main.ts", import.meta.url).href;
  const boot = `const { register } = await import(${JSON.stringify(tsxApi())}); register(); await import(${JSON.stringify(entry)});`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(boot)}`), { ...options, execArgv: ["--conditions=tsight-source"] });
}

let api: string | undefined;

/** The URL of tsx's ESM API module, read from its package exports. */
function tsxApi(): string {
  if (api) return api;
  const pkgFile = createRequire(import.meta.url).resolve("tsx/package.json");
  const pkg = JSON.parse(fs.readFileSync(pkgFile, "utf8")) as { exports: Record<string, { import: { default: string } }> };
  return (api = pathToFileURL(path.join(path.dirname(pkgFile), pkg.exports["./esm/api"]!.import.default)).href);
}
