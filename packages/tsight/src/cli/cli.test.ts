/** The `tsight` command, in process and as the README runs it. */
import { execFile, spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { sink } from "../../../../test/streams.js";
import { fixture } from "../../../../test/fixtures.js";
import { LanguageModel } from "../intervention/index.js";
import { runGenerate } from "./generate.js";
import { main } from "./main.js";
import { describeLoad, LoadBar } from "./progress.js";


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
      // Checked in the flags' own names, before the model loads or the prompt is printed.
      for (const bad of [["--top-k", "0"], ["--top-p", "2"], ["--temperature", "0"], ["-n", "0"], ["--temprature", "0.5"]]) {
        const out: string[] = [];
        const stdout = process.stdout.write;
        process.stdout.write = ((s: string) => (out.push(String(s)), true)) as typeof process.stdout.write;
        try {
          expect(await main(["generate", "the prompt", ...bad])).toBe(2);
        } finally {
          process.stdout.write = stdout;
        }
        expect(out.join("")).not.toContain("the prompt");
      }
      expect(await main(["generate", "x", "--model", "no-such-model"])).toBe(1);
    } finally {
      process.stderr.write = write;
    }
    const text = errors.join("");
    expect(text).toContain("--temperature must be a number");
    expect(text).toContain("--top-k must be a positive integer, got 0");
    expect(text).toContain("--top-p must be in (0, 1], got 2");
    expect(text).toContain("--temperature must be > 0, got 0");
    expect(text).toContain("--max-new-tokens must be a positive whole number, got 0");
    expect(text).toContain("unknown option --temprature (did you mean --temperature?)");
    expect(text).toContain("unknown command");
    expect(text).toMatch(/no-such-model.*stdlib-gpt2/s);
  });

  it("--dtype int4 continues with the int4 model, with a load bar on a terminal only (cleared before the text)", async () => {
    const prompt = "def __init__(self";
    const expected = await (await LanguageModel.load("stdlib-gpt2", { dtype: "int4" })).generate(prompt, { maxNewTokens: 12 });
    const out = sink();
    const tty = Object.assign(sink(), { isTTY: true, columns: 60 });
    expect(await runGenerate([prompt, "-n", "12", "--dtype", "int4"], out, tty)).toBe(0);
    expect(out.text).toBe(prompt + expected.text[0] + "\n");
    const frames = tty.text.split("\r").slice(1);
    expect(frames.length).toBeGreaterThanOrEqual(2);
    expect(frames.at(-1)).toBe("\x1b[K"); // the bar is gone before the first token
    for (const frame of frames.slice(0, -1)) {
      expect(frame).toMatch(/^loading stdlib-gpt2 \(int4\) \[[=> ]{20}\] +\d+%/);
      expect(frame.length - "\x1b[K".length).toBeLessThan(60);
    }
    expect(frames.at(-2)).toContain("[====================] 100%");
    // Not a terminal: nothing on stderr.
    const err = sink();
    expect(await runGenerate([prompt, "-n", "2", "--dtype", "int4"], sink(), err)).toBe(0);
    expect(err.text).toBe("");
  });

  it("an invalid --dtype is a usage error naming the choices", async () => {
    const errors: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((s: string) => (errors.push(String(s)), true)) as typeof process.stderr.write;
    try {
      expect(await main(["generate", "x", "--dtype", "fp8"])).toBe(2);
    } finally {
      process.stderr.write = write;
    }
    expect(errors.join("")).toMatch(/--dtype: dtype "fp8" is not one weights can be kept as; choose "float32", "bfloat16", "float16", "int8", "int4"[\s\S]*usage: tsight generate/);
  });

  it("--dtype twice, or serve's MODEL=D form, is a usage error saying what to give", async () => {
    await expect(runGenerate(["x", "--dtype", "int4", "--dtype", "int8"], sink(), sink())).rejects.toThrow(/--dtype is given 2 times \(int4, int8\); give it once/);
    await expect(runGenerate(["x", "--dtype", "stdlib-gpt2=int8"], sink(), sink())).rejects.toThrow(/MODEL=D is for tsight serve[\s\S]*\(--dtype int8\)/);
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

  it("ends quietly when its reader closes the pipe early, as `| head -1` does", async () => {
    const root = fileURLToPath(new URL("../../../..", import.meta.url));
    const child = spawn(process.execPath, [path.join(root, "node_modules", ".bin", "tsight"), "generate", "class ", "-n", "200"], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += String(d)));
    // The first bytes read, then the pipe closed while tokens still stream.
    await new Promise<void>((resolve) => child.stdout.once("data", () => resolve()));
    child.stdout.destroy();
    const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
    expect(stderr).not.toMatch(/EPIPE|Error/);
    expect(code).toBe(0);
  });
});

describe("LoadBar", () => {
  const progress = (tensors: number, totalTensors: number, bytes: number, totalBytes: number) => ({ tensors, totalTensors, bytes, totalBytes });

  it("draws the parts' sum in place, at most every 80 ms but always at the end, and clears itself", () => {
    const tty = Object.assign(sink(), { isTTY: true, columns: 200 });
    const bar = new LoadBar(tty, "a, b");
    bar.update("a", progress(1, 4, 1e6, 4e6));
    bar.update("a", progress(2, 4, 2e6, 4e6)); // within 80 ms of the first: not drawn
    bar.update("b", progress(2, 2, 4e6, 4e6)); // b is complete: drawn
    expect(tty.text.split("\r").slice(1)).toEqual([
      "loading a, b [=====>              ]  25%  1.0/4.0 MB  1/4 tensors\x1b[K",
      "loading a, b [===============>    ]  75%  6.0/8.0 MB  4/6 tensors\x1b[K",
    ]);
    const totals = bar.finish();
    expect(totals).toMatchObject({ loaded: ["b"], tensors: 4, bytes: 6e6 });
    expect(describeLoad({ ...totals, seconds: 1.24 })).toBe("4 tensors, 6.0 MB in 1.2 s");
    expect(tty.text.endsWith("\r\x1b[K")).toBe(true);
    const before = tty.text;
    bar.update("a", progress(4, 4, 4e6, 4e6)); // a thread's reload later draws nothing
    expect(tty.text).toBe(before);
  });

  it("writes nothing where the stream is not a terminal, and counts all the same", () => {
    const log = sink();
    const bar = new LoadBar(log, "m");
    bar.update("m", progress(3, 3, 2.5e9, 2.5e9));
    expect(bar.finish()).toMatchObject({ loaded: ["m"], tensors: 3 });
    expect(log.text).toBe("");
    expect(describeLoad({ loaded: ["m"], tensors: 1, bytes: 2.5e9, seconds: 3 })).toBe("1 tensor, 2.50 GB in 3.0 s");
  });
});
