/**
 * tsight never crashes the user's process: plain JavaScript in a child process (importing the built package, as a
 * user's script does) makes the usual mistakes — a value request left pending by tr.stop() or by an error, a
 * forgotten `await`, a `.then` chain with no catch — and must exit 0, having printed what the user should see.
 * Node ends a process on an unhandled rejection, so one from tsight anywhere in these paths fails the test.
 * Each case runs in process, in the local sandbox (remote: "local") and through a real server.
 */
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "../packages/server/src/server/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Each case: an intervention (source), and the line the script must print for it. */
const cases: { name: string; source: string; expect: string }[] = [
  { name: "read left pending by tr.stop()", source: "(m, tr) => { m.lm_head.output; tr.stop(1); }", expect: "value 1" },
  { name: ".then on a read, then tr.stop()", source: "(m, tr) => { m.lm_head.output.then((x) => x.shape); tr.stop(2); }", expect: "value 2" },
  { name: "read left pending by the user's error", source: 'async (m) => { m.lm_head.output.then((x) => x.shape); throw new Error("my bug"); }', expect: "caught Error: my bug" },
  { name: "forgotten await on a value", source: "async (m) => { const h = m.transformer.h[0].output; return h.mul(2); }", expect: "caught TypeError: h.mul is not a function" },
  { name: "forgotten await on a failing backward", source: "async (m, tr) => { const l = await m.lm_head.output; tr.backward(l.sum()); return 3; }", expect: "caught TraceError: backward: this trace records no gradients" },
  { name: "forgotten await on a failing hybrid step", source: 'async (m, tr) => { tr.local(() => { throw new Error("local bug"); }, {}); return 4; }', expect: "caught Error: local bug" },
];

/** An invoke that stops, and another whose `.then` chain and read are left pending (tracer form). */
const stopMany = `async (tr) => {
  tr.invoke("a", async (m, t) => { await m.transformer.h[0].output; t.stop(); });
  tr.invoke("b", async (m) => { m.lm_head.output.then((x) => x); await m.lm_head.output; });
  return 5;
}`;
/** One invoke fails while another waits on a `.then` chain. */
const failMany = `async (tr) => {
  tr.invoke("a", async () => { throw new Error("first"); });
  tr.invoke("b", async (m) => { m.lm_head.output.then((x) => x); await m.lm_head.output; });
}`;

function script(options: string): string {
  return `
import { LanguageModel } from "tsight";
const lm = await LanguageModel.load("stdlib-gpt2");
const options = ${options};
const run = async (name, call) => {
  try {
    console.log(name + ": value " + JSON.stringify(await call()));
  } catch (e) {
    console.log(name + ": caught " + e.name + ": " + e.message.split("\\n")[0]);
  }
};
${cases.map((c, i) => `await run("case${i}", () => lm.trace("def f(", ${c.source}, options));`).join("\n")}
await run("stopMany", () => lm.trace(${stopMany}, options));
await run("failMany", () => lm.trace(${failMany}, options));
// The user forgets to await a whole trace that fails: a warning, not a crash.
lm.trace("def f(", async () => { throw new Error("never awaited"); }, options);
await new Promise((resolve) => setTimeout(resolve, 500));
console.log("end");
`;
}

async function runScript(options: string, env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const args = ["--input-type=module", "-e", script(options)];
  return promisify(execFile)(process.execPath, args, { cwd: root, env: { ...process.env, ...env }, timeout: 120_000 }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" }),
  );
}

function expectNoCrash(out: { code: number; stdout: string; stderr: string }): void {
  expect(out.stderr).not.toMatch(/triggerUncaughtException|Unhandled/);
  expect(out.code).toBe(0);
  const lines = out.stdout.trim().split("\n");
  cases.forEach((c, i) => expect(lines.find((l) => l.startsWith(`case${i}:`)), c.name).toMatch(new RegExp(`^case${i}: ${c.expect.replace(/[()[\]{}.*+?^$|\\]/g, "\\$&")}`)));
  expect(lines).toContain("stopMany: value 5");
  expect(lines).toContain("failMany: caught Error: first");
  expect(lines.at(-1)).toBe("end");
  expect(out.stderr).toMatch(/TsightWarning: trace\(\) failed, and nothing awaited it \(a missing await\?\): Error: never awaited/);
}

let server: RunningServer;
let apiKey: string;
beforeAll(async () => {
  server = await startServer({ port: 0, dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "tsight-unhandled-")), models: ["stdlib-gpt2"], log: () => undefined });
  apiKey = server.keys.create("unhandled").key;
}, 60_000);
afterAll(() => server?.close());

describe("no unhandled rejection reaches the user's process", () => {
  it("in process", async () => expectNoCrash(await runScript("{}")), 120_000);
  it("a loop of traces nobody awaits prints at most 20 warnings a minute (a server's job cannot flood its log)", async () => {
    const text = `import { LanguageModel } from "tsight";
const lm = await LanguageModel.load("stdlib-gpt2");
for (let i = 0; i < 60; i++) lm.trace("def f(", async () => { throw new Error("never awaited " + i); });
await new Promise((resolve) => setTimeout(resolve, 1000));
console.log("end");`;
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", text], { cwd: root, timeout: 120_000 });
    expect(stdout.trim()).toBe("end");
    expect(stderr.match(/TsightWarning: trace\(\) failed, and nothing awaited it/g)).toHaveLength(20);
  }, 120_000);
  it('in the local sandbox (remote: "local")', async () => expectNoCrash(await runScript('{ remote: "local" }')), 120_000);
  it("through a server", async () => expectNoCrash(await runScript(`{ backend: process.env.TSIGHT_TEST_URL, apiKey: process.env.TSIGHT_TEST_KEY, print: null }`, { TSIGHT_TEST_URL: server.url, TSIGHT_TEST_KEY: apiKey })), 120_000);
});
