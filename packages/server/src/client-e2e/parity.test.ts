/**
 * Every tracing behaviour again, through the remote path: once with the job encoded, decoded and run in the
 * sandbox exactly as a server runs it (`remote: "local"`), once through a real server on a loopback port (HTTP,
 * worker threads, the sandbox). Results must equal the in-process runs (the suites compare against the same
 * references).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, it } from "vitest";
import { fixtureFolder, hfFixtures, type HfFixtureName } from "../../../../test/fixtures.js";
import { pointCases } from "../../../tsight/src/intervention/points.case.js";
import { generateCases } from "../../../tsight/src/intervention/generate.case.js";
import { trainCases } from "../../../tsight/src/optim/train.case.js";
import { traceCases, type TraceBackend } from "../../../tsight/src/intervention/trace.case.js";
import { startServer, type RunningServer } from "../server/index.js";
import { LanguageModel, type RemoteOptions } from "../../../tsight/src/client/language-model.js";

/** Each Hugging Face fixture (both batches) as a model folder. */
const archFolders = Object.fromEntries(hfFixtures.map((name) => [name, fixtureFolder(name)])) as Record<HfFixtureName, string>;

function suite(name: string, options: () => RemoteOptions): void {
  describe(name, () => {
    const archs = new Map<string, Promise<LanguageModel>>();
    const backend = {} as TraceBackend;
    beforeAll(async () => {
      Object.assign(backend, {
        options: (extra = {}) => ({ ...extra, ...options(), print: null }),
        gpt2: await LanguageModel.load("stdlib-gpt2"),
        llama: await LanguageModel.load("stdlib-llama"),
        renamed: (rename) => LanguageModel.load("stdlib-gpt2", { rename }) as never,
        arch: (a) => {
          if (!archs.has(a)) archs.set(a, LanguageModel.load(archFolders[a]));
          return archs.get(a)! as Promise<never>;
        },
      } satisfies TraceBackend);
    });
    for (const c of [...traceCases, ...generateCases, ...pointCases, ...trainCases]) it(c.name, () => c.run(backend));
  });
}

suite("tracing in the local sandbox, as a server runs it", () => ({ remote: "local" }));

let server: RunningServer;
let apiKey: string;
beforeAll(async () => {
  server = await startServer({ port: 0, dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "tsight-parity-")), models: ["stdlib-gpt2", "stdlib-llama", ...Object.values(archFolders)], log: () => undefined });
  apiKey = server.keys.create("parity").key;
}, 120_000);
afterAll(() => server?.close(), 120_000);

suite("tracing through a server on a loopback port", () => ({ backend: server.url, apiKey }));
