/** Configs that cannot build a model fail early with the field's name. */
import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { fixtureDir, hfArchitectures } from "../../../../test/fixtures.js";
import { buildModel, ConfigError, supportedModelTypes } from "./index.js";

const config = (arch: (typeof hfArchitectures)[number]) => JSON.parse(fs.readFileSync(path.join(fixtureDir(arch), "config.json"), "utf8")) as Record<string, unknown>;

function configError(raw: Record<string, unknown>): ConfigError {
  try {
    buildModel(raw);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error("expected a ConfigError");
}

describe("model configs", () => {
  it("builds every supported architecture from its Hugging Face config", () => {
    for (const arch of hfArchitectures) expect(buildModel(config(arch)).config.modelType).toBe(arch);
    expect(supportedModelTypes.sort()).toEqual([...hfArchitectures].sort());
  });

  it("refuses an unsupported model_type, listing the supported ones", () => {
    const e = configError({ ...config("llama"), model_type: "mamba" });
    expect(e.field).toBe("model_type");
    expect(e.message).toContain('"mamba"');
    for (const t of supportedModelTypes) expect(e.message).toContain(t);
    expect(configError({ hidden_size: 64 }).field).toBe("model_type");
  });

  it.each([
    ["gpt2", "n_embd"],
    ["llama", "hidden_size"],
    ["qwen3", "num_attention_heads"],
    ["gemma", "intermediate_size"],
    ["gpt_neox", "vocab_size"],
    ["mistral", "num_hidden_layers"],
  ] as const)("%s without %s names the field", (arch, field) => {
    const raw = config(arch);
    delete raw[field];
    if (field === "n_embd") delete raw.hidden_size;
    const e = configError(raw);
    expect(e.field).toBe(field);
    expect(e.message).toContain(field);
  });

  it("rejects wrong values with the field and what would work", () => {
    expect(configError({ ...config("llama"), num_key_value_heads: 3 }).field).toBe("num_key_value_heads");
    expect(configError({ ...config("llama"), hidden_size: 2.5 }).field).toBe("hidden_size");
    expect(configError({ ...config("llama"), hidden_act: "swiglu9" }).message).toMatch(/hidden_act.*supported: .*silu/);
    expect(configError({ ...config("llama"), rope_parameters: { rope_type: "yarn", rope_theta: 1e4 } }).field).toBe("rope_parameters.factor");
    expect(configError({ ...config("llama"), rope_parameters: { rope_type: "mrope", rope_theta: 1e4 } }).message).toMatch(/"mrope".*supported: default, linear, dynamic, llama3, yarn, longrope/);
    expect(configError({ ...config("gpt2"), n_head: 5 }).field).toBe("n_head");
  });
});
