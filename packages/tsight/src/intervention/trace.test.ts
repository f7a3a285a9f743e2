/** The tracing suite, in process. */
import { beforeAll, describe, it } from "vitest";
import { fixtureFolder, type HfFixtureName } from "../../../../test/fixtures.js";
import { LanguageModel } from "./language-model.js";
import { pointCases } from "./points.case.js";
import { generateCases } from "./generate.case.js";
import { trainCases } from "../optim/train.case.js";
import { traceCases, type TraceBackend } from "./trace.case.js";

/** A fixture as a model loaded from a folder. */
async function loadArch(arch: HfFixtureName): Promise<LanguageModel> {
  return LanguageModel.load(fixtureFolder(arch));
}

describe("tracing (in process)", () => {
  const archs = new Map<string, Promise<LanguageModel>>();
  const backend = {} as TraceBackend;
  beforeAll(async () => {
    Object.assign(backend, {
      options: (extra = {}) => extra,
      gpt2: await LanguageModel.load("stdlib-gpt2"),
      llama: await LanguageModel.load("stdlib-llama"),
      renamed: (rename) => LanguageModel.load("stdlib-gpt2", { rename }) as never,
      arch: (name) => {
        if (!archs.has(name)) archs.set(name, loadArch(name));
        return archs.get(name)!;
      },
    } satisfies TraceBackend);
  });
  for (const c of [...traceCases, ...generateCases, ...pointCases, ...trainCases]) it(c.name, () => c.run(backend));
});
