/** Loading models from the embedded set, a folder, or as meta models without weights. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { fixture, fixtureDir, maxAbsDiff, ref } from "../../../../test/fixtures.js";
import { WeightsError } from "../models/index.js";
import { MetaTensorError, SafetensorsError, Tensor } from "../tensor/index.js";
import { loadPretrained } from "./load.js";

function tempFolder(files: Record<string, string | Buffer>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-load-"));
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
  return dir;
}

describe("loadPretrained", () => {
  it("loads the embedded models with their float16/bfloat16 weights widened, reproducing the fixture logits", async () => {
    for (const name of ["stdlib-gpt2", "stdlib-llama"] as const) {
      const loaded = await loadPretrained(name);
      expect(loaded.source.kind).toBe("embedded");
      const f = await fixture(name);
      const { logits } = await loaded.model.call(ref(f, "probe0/input_ids"));
      expect(maxAbsDiff(logits, ref(f, "single/logits"))).toBeLessThan(1e-4);
      expect(loaded.tokenizer.encode(f.manifest.probes![0]!.text)).toEqual(f.manifest.probes![0]!.ids);
    }
  });

  it("loads a Hugging Face folder whose output head is tied (absent from the file)", async () => {
    // hf-fixtures folders have no tokenizer.json: they load for token ids only, and text is refused naming the fix.
    const idsOnly = await loadPretrained(fixtureDir("qwen3"), { dispatch: true });
    expect(idsOnly.tokenizer.hasText).toBe(false);
    expect(() => idsOnly.tokenizer.encode("hello")).toThrow(/has no tokenizer\.json, so this model takes token ids only.*load it with \{ tokenizer \}/);
    const dir = tempFolder({ "tokenizer.json": fs.readFileSync(path.join(fixtureDir("stdlib-gpt2"), "tokenizer.json")) });
    for (const file of ["config.json", "model.safetensors"]) fs.copyFileSync(path.join(fixtureDir("qwen3"), file), path.join(dir, file));
    const lm = await loadPretrained(dir);
    expect(lm.source.kind).toBe("folder");
    expect(lm.model.get("lm_head")!.getParam("weight")).toBe(lm.model.get("model.embed_tokens")!.getParam("weight"));
    const f = await fixture("qwen3");
    expect(maxAbsDiff((await lm.model.call(ref(f, "input_ids"))).logits, ref(f, "single/logits"))).toBeLessThan(1e-4);
  });

  it("loads a meta model: shapes and tokenizer, no weight data, forward infers shapes only", async () => {
    const meta = await loadPretrained("stdlib-llama", { dispatch: false });
    expect(meta.dispatched).toBe(false);
    const params = [...meta.model.namedParameters().values()];
    expect(params.length).toBeGreaterThan(30);
    for (const p of params) expect(p.module.getParam(p.name).isMeta).toBe(true);
    expect(meta.model.get("model.layers.0.self_attn.k_proj")!.getParam("weight").shape).toEqual([128, 256]);
    const ids = new Tensor("int64", BigInt64Array.of(1n, 2n, 3n), [1, 3]);
    const { logits } = await meta.model.call(ids);
    expect(logits.isMeta).toBe(true);
    expect(logits.shape).toEqual([1, 3, 4096]);
    expect(() => logits.data).toThrow(MetaTensorError);
  });

  it("loads a meta model from a folder that has no weights at all", async () => {
    const src = fixtureDir("stdlib-gpt2");
    const dir = tempFolder({});
    for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(src, file), path.join(dir, file));
    const meta = await loadPretrained(dir, { dispatch: false });
    expect(meta.model.get("transformer.h.3.mlp.c_fc")!.getParam("weight").shape).toEqual([256, 1024]);
    await expect(loadPretrained(dir)).rejects.toThrow(SafetensorsError);
  });

  it("refuses weights whose shapes disagree with the config, naming the weight", async () => {
    const src = fixtureDir("stdlib-gpt2");
    const dir = tempFolder({});
    for (const file of ["tokenizer.json", "tokenizer_config.json", "model.safetensors"]) fs.copyFileSync(path.join(src, file), path.join(dir, file));
    const config = JSON.parse(fs.readFileSync(path.join(src, "config.json"), "utf8"));
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...config, n_inner: 512 }));
    for (const dispatch of [true, false]) {
      const e = await loadPretrained(dir, { dispatch }).catch((x) => x);
      expect(e).toBeInstanceOf(WeightsError);
      expect(e.message).toMatch(/transformer\.h\.0\.mlp\.c_fc\.(weight|bias)/);
    }
  });
});
