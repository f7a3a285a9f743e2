/** Configs that cannot build a model fail early with the field's name. */
import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { fixtureDir, hfFixtures, type HfFixtureName } from "../../../../test/fixtures.js";
import { RotaryEmbedding, type RopeSpec } from "../nn/index.js";
import { Tensor } from "../tensor/index.js";
import { buildModel, ConfigError, supportedModelTypes } from "./index.js";

const config = (name: HfFixtureName) => JSON.parse(fs.readFileSync(path.join(fixtureDir(name), "config.json"), "utf8")) as Record<string, unknown>;
/** The rope table(s) a config gives (every rotary architecture keeps them as `config.rope`). */
const ropeOf = (raw: Record<string, unknown>) => (buildModel(raw).config as unknown as { rope: RopeSpec | Record<string, RopeSpec> }).rope;

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
    for (const name of hfFixtures) expect(buildModel(config(name)).config.modelType).toBe(config(name).model_type);
    expect([...supportedModelTypes].sort()).toEqual([...new Set(hfFixtures.map((n) => config(n).model_type as string))].sort());
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
    ["gemma2", "intermediate_size"],
    ["gemma3_text", "hidden_size"],
    ["phi3", "num_attention_heads"],
    ["olmo2", "vocab_size"],
    ["mixtral", "intermediate_size"],
    ["qwen3_moe", "moe_intermediate_size"],
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

  it("rejects wrong values of the newer fields with the field and what would work", () => {
    expect(configError({ ...config("gemma2"), layer_types: ["sliding_attention"] }).field).toBe("layer_types");
    expect(configError({ ...config("gemma2"), layer_types: ["chunked_attention", "full_attention"] }).message).toMatch(/"chunked_attention".*supported: full_attention, sliding_attention/);
    expect(configError({ ...config("gemma2"), sliding_window: null }).field).toBe("sliding_window");
    expect((buildModel({ ...config("gemma2"), sliding_window: undefined }).config as { slidingWindow?: number }).slidingWindow).toBe(4096); // transformers' default
    expect(configError({ ...config("gemma3_text"), use_bidirectional_attention: true }).field).toBe("use_bidirectional_attention");
    expect(configError({ ...config("qwen3_moe"), num_experts_per_tok: 5 }).field).toBe("num_experts_per_tok");
    expect(configError({ ...config("mixtral"), num_local_experts: 0 }).field).toBe("num_local_experts");
    const llama3 = config("llama3").rope_parameters as Record<string, unknown>;
    expect(configError({ ...config("llama3"), rope_parameters: { ...llama3, low_freq_factor: undefined } }).field).toBe("rope_parameters.low_freq_factor");
    const longrope = config("phi3_longrope").rope_parameters as Record<string, unknown>;
    const e = configError({ ...config("phi3_longrope"), rope_parameters: { ...longrope, short_factor: [1, 2] } });
    expect(e.field).toBe("rope_parameters.short_factor");
    expect(e.message).toContain("a list of 8 positive numbers");
    expect(configError({ ...config("llama_linear"), rope_scaling: { type: "linear" }, rope_parameters: undefined }).field).toBe("rope_scaling.factor");
  });

  it("reads rope settings from transformers 5's rope_parameters and from the older rope_scaling + rope_theta alike", () => {
    for (const name of ["llama3", "llama_linear", "qwen2_yarn", "phi3_longrope"] as const) {
      const raw = config(name);
      const { rope_theta, ...scaling } = raw.rope_parameters as Record<string, unknown>;
      // Older files: `type` for the rope type (before rope_type), rope_theta at the top level.
      const older = { ...raw, rope_parameters: undefined, rope_theta, rope_scaling: { ...scaling, type: scaling.rope_type, rope_type: undefined } };
      expect(ropeOf(older), name).toEqual(ropeOf(raw));
      expect((ropeOf(raw) as RopeSpec).scaling.type).toBe(scaling.rope_type);
    }
    // Gemma 3's older form: rope_theta for full layers, rope_local_base_freq for sliding ones, rope_scaling (e.g.
    // linear 8 in Gemma 3 4B+) applied to the full layers only.
    const gemma3 = config("gemma3_text");
    const older = { ...gemma3, rope_parameters: undefined, rope_theta: 1_000_000, rope_local_base_freq: 10_000 };
    expect(ropeOf(older)).toEqual(ropeOf(gemma3));
    const scaled = ropeOf({ ...older, rope_scaling: { rope_type: "linear", factor: 8 } }) as Record<string, RopeSpec>;
    expect(scaled.full_attention!.scaling).toEqual({ type: "linear", factor: 8 });
    expect(scaled.sliding_attention).toEqual((ropeOf(gemma3) as Record<string, RopeSpec>).sliding_attention);
    expect(scaled.full_attention!.theta).toBe(1_000_000);
    expect(scaled.sliding_attention!.theta).toBe(10_000);
    // Phi-3 reads the older rope type name "su" as LongRoPE, and its top-level original_max_position_embeddings.
    const phi3 = config("phi3_longrope");
    expect(ropeOf({ ...phi3, rope_parameters: { ...(phi3.rope_parameters as object), rope_type: "su" } })).toEqual(ropeOf(phi3));
    const longrope = (ropeOf(phi3) as RopeSpec).scaling;
    expect(longrope.type === "longrope" && longrope.originalMaxPositions).toBe(4);
  });

  it("dynamic NTK rope: the default table within max_position_embeddings, past it the lowest frequency interpolated by the length ratio", async () => {
    const dim = 16;
    const dynamic = new RotaryEmbedding({ dim, theta: 10000, scaling: { type: "dynamic", factor: 2, maxPositions: 8 } });
    const plain = new RotaryEmbedding({ dim, theta: 10000, scaling: { type: "default" } });
    const positions = (n: number) => new Tensor("int64", BigInt64Array.from({ length: n }, (_, i) => BigInt(i)), [1, n]);
    const x = Tensor.zeros([1, 1, 4]);
    const [cosShort] = await dynamic.forward(x, positions(8));
    expect(cosShort.sub((await plain.forward(x, positions(8)))[0]).abs().max().item()).toBe(0);
    // 16 positions: s = factor * 16 / 8 - (factor - 1) = 3; NTK-aware scaling divides the lowest frequency by s and
    // keeps the highest. The angles (asin of the sin table, where it is below pi / 2) give the frequencies.
    const [, sinLong] = await dynamic.forward(x, positions(16));
    const [, sinPlain] = await plain.forward(x, positions(16));
    const angle = (sin: Tensor, position: number, j: number) => Math.asin(sin.index(0, position, j).item());
    expect(angle(sinLong, 1, 0)).toBeCloseTo(angle(sinPlain, 1, 0), 6);
    expect(angle(sinLong, 15, dim / 2 - 1) / angle(sinPlain, 15, dim / 2 - 1)).toBeCloseTo(1 / 3, 4);
  });
});
