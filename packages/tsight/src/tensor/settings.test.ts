import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { numberSetting, SettingError, switchSetting } from "./settings.js";

describe("environment settings", () => {
  it("a switch takes 1 and 0, and is its default when unset or empty", () => {
    expect(switchSetting("TSIGHT_FUSE", true, {})).toBe(true);
    expect(switchSetting("TSIGHT_FUSE", false, { TSIGHT_FUSE: " " })).toBe(false);
    expect(switchSetting("TSIGHT_FUSE", true, { TSIGHT_FUSE: "0" })).toBe(false);
    expect(switchSetting("TSIGHT_FUSE", false, { TSIGHT_FUSE: " 1\n" })).toBe(true);
  });

  it("any other switch value is a SettingError naming the variable, the value and what it takes", () => {
    for (const bad of ["off", "false", "yes", "2", "00"]) {
      const e = (() => {
        try {
          switchSetting("TSIGHT_PREPACK", true, { TSIGHT_PREPACK: bad });
        } catch (x) {
          return x;
        }
      })() as SettingError;
      expect(e).toBeInstanceOf(SettingError);
      expect(e.variable).toBe("TSIGHT_PREPACK");
      expect(e.message).toContain(`TSIGHT_PREPACK="${bad}"`);
      expect(e.message).toContain("1 (on) or 0 (off)");
    }
  });

  it("a number is checked against its bounds and kind before use", () => {
    const threads = { min: 1, max: 1024, integer: true };
    expect(numberSetting("TSIGHT_THREADS", threads, {})).toBeUndefined();
    expect(numberSetting("TSIGHT_THREADS", threads, { TSIGHT_THREADS: "4" })).toBe(4);
    expect(numberSetting("TSIGHT_WEIGHT_COPY_MB", { min: 0, max: 2 ** 30 }, { TSIGHT_WEIGHT_COPY_MB: "0.5" })).toBe(0.5);
    for (const bad of ["0", "-1", "1.5", "1e3", "0x10", "four", "Infinity", "2000", "NaN"]) {
      expect(() => numberSetting("TSIGHT_THREADS", threads, { TSIGHT_THREADS: bad }), bad).toThrow(SettingError);
    }
    expect(() => numberSetting("TSIGHT_WEIGHT_COPY_MB", { min: 0, max: 2 ** 30 }, { TSIGHT_WEIGHT_COPY_MB: "-5" })).toThrow(/a number from 0 to 1073741824/);
  });

  it("a bad value in the environment stops the first kernel with the SettingError (not a silent default)", async () => {
    const here = path.dirname(fileURLToPath(import.meta.url));
    const tsx = path.resolve(here, "../../../../node_modules/tsx/dist/cli.mjs");
    const script = path.join(mkdtempSync(path.join(os.tmpdir(), "tsight-settings-")), "run.mts");
    writeFileSync(
      script,
      `import { Tensor } from ${JSON.stringify(pathToFileURL(path.join(here, "index.ts")).href)};
try { Tensor.full([2], 1).add(1).toArray(); console.log("ran"); } catch (e) { console.log(e.name + ": " + e.message); }`,
    );
    for (const [variable, value] of [
      ["TSIGHT_THREADS", "two"],
      ["TSIGHT_ARENA", "on"],
      ["TSIGHT_SPIN", "yes"],
      ["TSIGHT_THREADS", "2"],
    ]) {
      const { stdout } = await promisify(execFile)(process.execPath, [tsx, script], { env: { ...process.env, [variable]: value } });
      if (value === "2") {
        expect(stdout.trim()).toBe("ran");
        continue;
      }
      expect(stdout.trim()).toBe(`SettingError: ${variable}="${value}" is not a value it takes: ${variable === "TSIGHT_THREADS" ? "a whole number from 1 to 1024, or unset for the default" : `1 (on) or 0 (off), or unset for the default (${variable === "TSIGHT_SPIN" ? "on" : "off"})`}`);
    }
  }, 60_000);
});
