/** The tracing suite, in process. */
import { afterAll, beforeAll, describe, it } from "vitest";
import { fixtureFolder, type HfFixtureName } from "../../../../test/fixtures.js";
import { setFusion } from "../tensor/index.js";
import { LanguageModel } from "./language-model.js";
import { pointCases } from "./points.case.js";
import { generateCases } from "./generate.case.js";
import { trainCases } from "../optim/train.case.js";
import { traceCases, type TraceBackend } from "./trace.case.js";

/** A fixture as a model loaded from a folder. */
async function loadArch(arch: HfFixtureName): Promise<LanguageModel> {
  return LanguageModel.load(fixtureFolder(arch));
}

// Fusion is invisible: the whole suite again with every op its own kernel (TSIGHT_FUSE=0), where nothing is fused or
// replayed, must give the same answers (each case checks Hugging Face's numbers, or equality with the unedited run).
for (const fused of [true, false]) {
  describe(fused ? "tracing (in process)" : "tracing (in process, nothing fused)", () => {
    const archs = new Map<string, Promise<LanguageModel>>();
    const backend = {} as TraceBackend;
    beforeAll(async () => {
      setFusion(fused ? null : false);
      Object.assign(backend, {
        options: (extra = {}) => extra,
        gpt2: await LanguageModel.load("stdlib-gpt2"),
        llama: await LanguageModel.load("stdlib-llama"),
        renamed: (rename) => LanguageModel.load("stdlib-gpt2", { rename }) as never,
        arch: async (name) => {
          if (!archs.has(name)) archs.set(name, loadArch(name));
          // A turn of the event loop between architectures: a case looping over all of them computes for a minute
          // with nothing but microtasks between its kernels, and vitest's worker, unable to hear its reports answered
          // meanwhile, failed the run ("Timeout calling onTaskUpdate") on a loaded machine.
          await new Promise((resolve) => setImmediate(resolve));
          return archs.get(name)!;
        },
      } satisfies TraceBackend);
    });
    afterAll(() => setFusion(null));
    for (const c of [...traceCases, ...generateCases, ...pointCases, ...trainCases]) it(c.name, () => c.run(backend));
  });
}
