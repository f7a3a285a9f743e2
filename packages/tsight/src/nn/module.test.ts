/** A module tree printed as PyTorch prints it (nnsight's print(model)), checked against Hugging Face's own names. */
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { fixture, fixtureDir } from "../../../../test/fixtures.js";
import { LanguageModel } from "../intervention/index.js";

describe("a model printed", () => {
  it("names every Hugging Face module and parameter shape of the fixture, with a list's like items folded", async () => {
    const f = await fixture("mixtral");
    const lm = await LanguageModel.load(fixtureDir("mixtral"));
    const text = String(lm);
    expect(inspect(lm)).toBe(text);
    expect(inspect(lm.model)).toBe(text);
    expect(text.split("\n")[0]).toBe("MixtralForCausalLM(");
    // The two decoder layers are alike: one entry, as PyTorch prints "(0-1): 2 x MixtralDecoderLayer(".
    expect(text).toContain("(layers): ModuleList(\n      (0-1): 2 x MixtralDecoderLayer(");
    // Every module's own name (the last part of its Hugging Face path) is printed, and every parameter's shape.
    for (const path of f.manifest.modules.filter((p) => p && !/^\d+$/.test(p.split(".").at(-1)!))) expect(text, path).toContain(`(${path.split(".").at(-1)}): `);
    for (const [name, shape] of Object.entries(f.manifest.parameters!)) expect(text, name).toContain(`${name.split(".").at(-1)}: [${shape.join(", ")}]`);
    expect(text).toContain("(source): AttentionPoints(q, k, v, scores, pattern, z)");
  });
});
