/**
 * A server that splices an SAE into its model (`tsight serve --sae`): clients see it in the model's envoy tree,
 * read and clamp its latents remotely, and get exactly what the same SAE spliced in process gives.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fixturesDir, maxAbsDiff } from "../../../../test/fixtures.js";
import { LanguageModel } from "../../../tsight/src/client/language-model.js";
import { loadSae } from "../../../tsight/src/sae/index.js";
import type { Tensor } from "../../../tsight/src/tensor/index.js";
import { parseSaes, UsageError } from "../cli/serve.js";
import { startServer, type RunningServer } from "../server/index.js";

const TOPK = path.join(fixturesDir, "saes", "stdlib-gpt2-res2-topk");
const PROMPT = "    for i in range(";

/** Reads the SAE's latents, clamps feature 7 at the last token, returns both and the logits. */
const clampFeature7 = async (m: any) => {
  const latents = m.transformer.h[2].sae.latents;
  const f = (await latents.output) as Tensor;
  latents.output = f.put([0, -1, 7], 25);
  return { f, logits: (await m.lm_head.output) as Tensor };
};

describe("an SAE served with its model", () => {
  let server: RunningServer;
  let apiKey: string;
  beforeAll(async () => {
    server = await startServer({ port: 0, dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "tsight-sae-")), models: ["stdlib-gpt2"], saes: { "stdlib-gpt2": [{ source: TOPK }] }, log: () => undefined });
    apiKey = server.keys.create("sae").key;
  }, 120_000);
  afterAll(() => server?.close());

  it("is in the client's model (where the SAE's config says), and remote reads and clamps equal the same SAE spliced in process", async () => {
    const remote = await LanguageModel.fromServer("stdlib-gpt2", { backend: server.url, apiKey });
    expect(remote.saes.map((s) => ({ at: s.at, architecture: s.sae.cfg.architecture }))).toEqual([{ at: "transformer.h.2", architecture: "topk" }]);
    const there = await remote.trace(PROMPT, clampFeature7, { backend: server.url, apiKey });
    const local = await LanguageModel.load("stdlib-gpt2");
    local.addSae(await loadSae(TOPK), { useErrorTerm: true });
    const here = await local.trace(PROMPT, clampFeature7);
    expect(there.f.shape).toEqual([1, 6, 2048]);
    expect(maxAbsDiff(there.f, here.f)).toBe(0);
    expect(maxAbsDiff(there.logits, here.logits)).toBe(0);
    // With the error term, the served model's own logits are unchanged by the SAE.
    const plain = await (await LanguageModel.load("stdlib-gpt2")).trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor);
    const served = await remote.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor, { backend: server.url, apiKey });
    expect(maxAbsDiff(served, plain)).toBeLessThan(1e-5);
    // Its SAEs are the server's: splicing or removing one on the client is refused, not quietly left unsent.
    expect(() => remote.addSae(local.saes[0]!.sae, { at: "transformer.h.1" })).toThrow(/^addSae: stdlib-gpt2 is a server's model, whose SAEs are the server's/);
    expect(() => remote.removeSae()).toThrow(/^removeSae: stdlib-gpt2 is a server's model/);
    expect(remote.saes).toHaveLength(1);
  });

  it("a server does not start with an SAE that cannot be read, or for a model it does not serve", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-sae-"));
    await expect(startServer({ port: 0, dataDir, models: ["stdlib-gpt2"], saes: { "stdlib-gpt2": [{ source: dataDir }] }, log: () => undefined })).rejects.toThrow(/cfg\.json is missing/);
    await expect(startServer({ port: 0, dataDir, models: ["stdlib-gpt2"], saes: { "stdlib-llama": [{ source: TOPK }] }, log: () => undefined })).rejects.toThrow(/not a served model/);
  });
});

describe("tsight serve --sae", () => {
  it("reads [MODEL=]SAE[:SUBFOLDER][@MODULE]", () => {
    expect(parseSaes(["/saes/topk", "stdlib-gpt2=me/saes:blocks.2/topk@transformer.h.3"], ["stdlib-gpt2"])).toEqual({
      "stdlib-gpt2": [{ source: "/saes/topk" }, { source: "me/saes", subfolder: "blocks.2/topk", at: "transformer.h.3" }],
    });
    expect(() => parseSaes(["/saes/topk"], ["stdlib-gpt2", "stdlib-llama"])).toThrow(UsageError);
    expect(() => parseSaes(["other=/saes/topk"], ["stdlib-gpt2"])).toThrow(/not a served model/);
    expect(() => parseSaes(["/saes/topk@"], ["stdlib-gpt2"])).toThrow(/expected/);
  });
});
