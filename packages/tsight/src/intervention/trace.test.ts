/** The tracing suite, in process. */
import { beforeAll, describe, it } from "vitest";
import { fixtureDir, type HfFixtureName } from "../../../../test/fixtures.js";
import { LanguageModel } from "./language-model.js";
import { generateCases } from "./generate.case.js";
import { traceCases, type TraceBackend } from "./trace.case.js";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/** A fixture architecture as a loadable folder (the fixtures lack a tokenizer; any will do for id inputs). */
export async function loadArch(arch: HfFixtureName): Promise<LanguageModel> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tsight-${arch}-`));
  for (const file of ["config.json", "model.safetensors"]) fs.copyFileSync(path.join(fixtureDir(arch), file), path.join(dir, file));
  fs.copyFileSync(path.join(fixtureDir("stdlib-gpt2"), "tokenizer.json"), path.join(dir, "tokenizer.json"));
  return LanguageModel.load(dir);
}

describe("tracing (in process)", () => {
  const archs = new Map<string, Promise<LanguageModel>>();
  const backend = {} as TraceBackend;
  beforeAll(async () => {
    Object.assign(backend, {
      options: (extra = {}) => extra,
      gpt2: await LanguageModel.load("stdlib-gpt2"),
      llama: await LanguageModel.load("stdlib-llama"),
      arch: (name) => {
        if (!archs.has(name)) archs.set(name, loadArch(name));
        return archs.get(name)!;
      },
    } satisfies TraceBackend);
  });
  for (const c of [...traceCases, ...generateCases]) it(c.name, () => c.run(backend));
});
