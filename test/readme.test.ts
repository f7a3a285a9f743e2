/**
 * The README's examples run, against the built package (`import ... from "tsight"` resolves to dist/), and print
 * exactly the output the README shows after them.
 */
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import os from "node:os";
import { startServer, type RunningServer } from "../packages/server/src/server/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const readme = fs.readFileSync(path.join(root, "README.md"), "utf8");

/** Each ```ts block that is followed directly by a ```text block: code and the output it must print. */
function examples(): { code: string; output: string; line: number }[] {
  const out: { code: string; output: string; line: number }[] = [];
  const re = /```ts\n((?:(?!```)[\s\S])*)```\s*\n```text\n([\s\S]*?)```/g;
  for (let m = re.exec(readme); m; m = re.exec(readme)) out.push({ code: m[1]!, output: m[2]!, line: readme.slice(0, m.index).split("\n").length });
  return out;
}

/** A server for the remote examples (they find it through TSIGHT_HOST and TSIGHT_API_KEY, as the README says). */
let server: RunningServer;
const remoteEnv: Record<string, string> = {};
beforeAll(async () => {
  server = await startServer({ port: 0, dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "tsight-readme-")), models: ["stdlib-gpt2"], log: () => undefined });
  Object.assign(remoteEnv, { TSIGHT_HOST: server.url, TSIGHT_API_KEY: server.keys.create("readme").key });
}, 60_000);
afterAll(() => server?.close());

describe("README examples", () => {
  const found = examples();
  it("has examples with outputs", () => expect(found.length).toBeGreaterThanOrEqual(2));

  it("type-check against the package's declarations", async () => {
    const blocks = [...readme.matchAll(/```ts\n((?:(?!```)[\s\S])*)```/g)].map((m) => m[1]!);
    const dir = fs.mkdtempSync(path.join(root, ".readme-"));
    try {
      blocks.forEach((code, i) => fs.writeFileSync(path.join(dir, `example${i}.ts`), `${code}\nexport {};\n`));
      const config = { extends: "../tsconfig.base.json", compilerOptions: { noEmit: true, composite: false, rootDir: "..", noUnusedLocals: false }, include: ["*.ts"], exclude: [] };
      fs.writeFileSync(path.join(dir, "tsconfig.json"), JSON.stringify(config));
      const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");
      const run = await promisify(execFile)(process.execPath, [tsc, "-p", dir]).catch((e: { stdout: string }) => e);
      expect(run.stdout).toBe("");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  for (const ex of found) {
    it(`the example at README.md:${ex.line} prints what the README shows`, async () => {
      const dir = fs.mkdtempSync(path.join(root, ".readme-"));
      try {
        const file = path.join(dir, "example.ts");
        fs.writeFileSync(file, ex.code);
        const tsx = path.join(root, "node_modules", "tsx", "dist", "cli.mjs");
        const { stdout } = await promisify(execFile)(process.execPath, [tsx, file], { cwd: root, env: { ...process.env, ...remoteEnv, TSIGHT_THREADS: "1" } });
        expect(stdout).toBe(ex.output);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
