/**
 * Every tracing behaviour again, with the job encoded, decoded and run in the sandbox exactly as a server runs it
 * (`remote: "local"`): the same numbers and the same errors as in process.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { beforeAll, describe, it } from "vitest";
import { fixtureDir, type hfArchitectures } from "../../test/fixtures.js";
import { generateCases } from "../intervention/generate.case.js";
import { traceCases, type TraceBackend } from "../intervention/trace.case.js";
import "../server/sandbox/register.js";
import { LanguageModel } from "./language-model.js";

async function loadArch(arch: (typeof hfArchitectures)[number]): Promise<LanguageModel> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tsight-${arch}-`));
  for (const file of ["config.json", "model.safetensors"]) fs.copyFileSync(path.join(fixtureDir(arch), file), path.join(dir, file));
  fs.copyFileSync(path.join(fixtureDir("stdlib-gpt2"), "tokenizer.json"), path.join(dir, "tokenizer.json"));
  return LanguageModel.load(dir);
}

describe("tracing (local sandbox, as a server runs it)", () => {
  const archs = new Map<string, Promise<LanguageModel>>();
  const backend = {} as TraceBackend;
  beforeAll(async () => {
    Object.assign(backend, {
      options: (extra = {}) => ({ ...extra, remote: "local" as const, print: null }),
      gpt2: await LanguageModel.load("stdlib-gpt2"),
      llama: await LanguageModel.load("stdlib-llama"),
      arch: (name) => {
        if (!archs.has(name)) archs.set(name, loadArch(name));
        return archs.get(name)! as Promise<never>;
      },
    } satisfies TraceBackend);
  });
  for (const c of [...traceCases, ...generateCases]) it(c.name, () => c.run(backend));
});
