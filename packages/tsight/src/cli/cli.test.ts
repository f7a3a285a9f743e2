/** The `tsight` command, in process and as the README runs it. */
import { execFile } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { sink } from "../../../../test/streams.js";
import { fixture } from "../../../../test/fixtures.js";
import { runGenerate } from "./generate.js";
import { main } from "./main.js";


describe("tsight generate", () => {
  it("streams the embedded model's greedy continuation after the prompt", async () => {
    const f = await fixture("stdlib-gpt2");
    const probe = f.manifest.probes![0]!;
    const out = sink();
    const err = sink();
    expect(await runGenerate([probe.text, "-n", "24", "--stats"], out, err)).toBe(0);
    expect(out.text).toBe(probe.text + probe.greedy + "\n");
    expect(err.text).toMatch(/24 tokens; first after \d+ ms; then [\d.]+ tokens\/s/);
  });

  it("reports bad options as usage errors with exit code 2", async () => {
    const errors: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((s: string) => (errors.push(String(s)), true)) as typeof process.stderr.write;
    try {
      expect(await main(["generate", "x", "--temperature", "hot"])).toBe(2);
      expect(await main(["generate", "--bogus"])).toBe(2);
      expect(await main(["frobnicate"])).toBe(2);
      expect(await main(["generate", "x", "--model", "no-such-model"])).toBe(1);
    } finally {
      process.stderr.write = write;
    }
    const text = errors.join("");
    expect(text).toContain("--temperature must be a number");
    expect(text).toContain("unknown command");
    expect(text).toMatch(/no-such-model.*stdlib-gpt2/s);
  });

  it("runs from the bin script as the README says", async () => {
    // `npx tsight` runs node_modules/.bin/tsight: bin/tsight.js, which runs the compiled dist/ (npm install and
    // `npm test` build it first).
    const root = fileURLToPath(new URL("../../../..", import.meta.url));
    const { stdout } = await promisify(execFile)(process.execPath, [path.join(root, "node_modules", ".bin", "tsight"), "generate", "class ", "-n", "8"], { cwd: root });
    const f = await fixture("stdlib-gpt2");
    const probe = f.manifest.probes!.find((p) => p.text === "class ")!;
    expect(probe.greedy.startsWith(stdout.slice("class ".length).trimEnd())).toBe(true);
    expect(stdout.length).toBeGreaterThan("class ".length + 5);
  });
});
