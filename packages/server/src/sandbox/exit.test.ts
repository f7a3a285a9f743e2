/**
 * A script that ran a job with `remote: "local"` ends as it would without: at once, with its own exit code,
 * whether it ends normally, throws or calls process.exit, also from code a job leads to (onToken, a hybrid step)
 * and while a job still computes. Each script runs in a child process (tsx, on the TypeScript sources); one that
 * hangs is killed as a group after a while, and fails the test.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
const TSX_CLI = path.join(root, "node_modules/tsx/dist/cli.mjs");
const ENTRY = pathToFileURL(path.join(root, "packages/tsight/src/index.ts")).href;
/** Most time from a script's last line to its exit (a hang lasts until the kill). */
const EXIT_WITHIN_MS = 5_000;
const KILL_AFTER_MS = 45_000;
/** Printed by a script just before it ends: the exit is timed from it. */
const ENDING = "ENDING";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-exit-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Ms from ENDING to the exit; null if the script never got there. */
  exitMs: number | null;
  stderr: string;
}

let scripts = 0;

/** Runs `body` after a model is loaded (`lm`; `end()` prints ENDING) in a fresh process. */
function runScript(body: string): Promise<Outcome> {
  // .mts: an ES module (top-level await) outside any package.
  const file = path.join(dir, `script${scripts++}.mts`);
  const lines = [`import { LanguageModel } from ${JSON.stringify(ENTRY)};`, 'const lm = await LanguageModel.load("stdlib-gpt2");', `const end = () => console.log(${JSON.stringify(ENDING)});`, body];
  fs.writeFileSync(file, lines.join("\n"));
  const env = { ...process.env, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --conditions=tsight-source`.trim() };
  return new Promise((resolve) => {
    // Its own process group: tsx runs the script in a child process of its own, killed with it.
    const child = spawn(process.execPath, [TSX_CLI, file], { cwd: root, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let endedAt: number | null = null;
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      if (endedAt === null && stdout.includes(ENDING)) endedAt = Date.now();
    });
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const kill = setTimeout(() => process.kill(-child.pid!, "SIGKILL"), KILL_AFTER_MS);
    child.on("close", (code, signal) => {
      clearTimeout(kill);
      resolve({ code, signal, exitMs: endedAt === null ? null : Date.now() - endedAt, stderr });
    });
  });
}

function expectExit(outcome: Outcome, code: number): void {
  expect(outcome.signal, outcome.stderr).toBeNull();
  expect(outcome.code, outcome.stderr).toBe(code);
  expect(outcome.exitMs).not.toBeNull();
  expect(outcome.exitMs!).toBeLessThan(EXIT_WITHIN_MS);
}

const traced = 'await lm.trace("x", async (m) => (await m.lm_head.output).shape, { remote: "local" });';

describe('a script after remote: "local"', () => {
  it("ends normally with 0", async () => {
    expectExit(await runScript(`${traced}\nend();`), 0);
  });

  it("ends at once with 1 when it throws", async () => {
    const outcome = await runScript(`${traced}\nend();\nthrow new Error("boom");`);
    expectExit(outcome, 1);
    expect(outcome.stderr).toMatch(/boom/);
  });

  it("ends at once with the code it gives process.exit", async () => {
    expectExit(await runScript(`${traced}\nend();\nprocess.exit(3);`), 3);
  });

  it("ends at once when a job's error is left uncaught", async () => {
    const outcome = await runScript('end();\nawait lm.trace("x", async () => { throw new Error("in the job"); }, { remote: "local" });');
    expectExit(outcome, 1);
    expect(outcome.stderr).toMatch(/in the job/);
  });

  it("ends at once when onToken calls process.exit", async () => {
    expectExit(await runScript('await lm.generate("x", { maxNewTokens: 3, onToken: () => { end(); process.exit(4); } }, async () => 1, { remote: "local" });'), 4);
  });

  it("ends at once when a hybrid step calls process.exit", async () => {
    // A step runs from its source text: it sees globals only.
    expectExit(await runScript(`await lm.trace("x", async (m, tr) => await tr.local(async () => { console.log("${ENDING}"); process.exit(5); }, {}), { remote: "local" });`), 5);
  });

  it("ends at once when it throws while a job still computes", async () => {
    const body = 'void lm.trace("x", async () => { for (;;); }, { remote: "local" }).catch(() => undefined);\nawait new Promise((resolve) => setTimeout(resolve, 300));\nend();\nthrow new Error("boom");';
    expectExit(await runScript(body), 1);
  });
});
