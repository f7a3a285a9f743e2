/**
 * The workbench's recipes without a browser: their module paths exist in every architecture, and each recipe, run
 * through the sandbox exactly as a server runs it (`remote: "local"`), gives what the same computation written
 * plainly with the library gives, on stdlib-llama (the browser tests use stdlib-gpt2). And the printed program
 * carries the function that is sent.
 */
import fs from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { fixtureDir, hfArchitectures, maxAbsDiff } from "../../../../test/fixtures.js";
import { buildModel, supportedModelTypes, type LlamaForCausalLM } from "../../../tsight/src/models/index.js";
import { ModuleList } from "../../../tsight/src/nn/index.js";
import { Tensor } from "../../../tsight/src/tensor/index.js";
import { LanguageModel } from "../../../tsight/src/client/language-model.js";
import { ARCHITECTURE_PATHS, headCount, layerCount, modelPaths } from "../web/recipes/architecture.js";
import { attentionRecipe } from "../web/recipes/attention.js";
import { functionText, literal, programOf } from "../web/recipes/code.js";
import { lensCells, lensRecipe, type LensValue } from "../web/recipes/lens.js";
import { baselines, patchedCell, patchingRecipe, type PatchingValue } from "../web/recipes/patching.js";
import { call } from "../web/recipes/recipe.js";
import { generateRecipe, promptDifference } from "../web/recipes/steering.js";

const PROMPT = "def __init__(self";
const local = { remote: "local" as const };
let lm: LanguageModel<LlamaForCausalLM>;

beforeAll(async () => {
  lm = await LanguageModel.load("stdlib-llama");
});

describe("where the recipes find modules", () => {
  it("every architecture tsight builds has its paths, and they name real modules", () => {
    expect(Object.keys(ARCHITECTURE_PATHS).sort()).toEqual([...supportedModelTypes].sort());
    for (const arch of hfArchitectures) {
      const config = JSON.parse(fs.readFileSync(path.join(fixtureDir(arch), "config.json"), "utf8"));
      const model = buildModel(config);
      const paths = ARCHITECTURE_PATHS[config.model_type]!;
      expect(model.get(paths.layers), arch).toBeInstanceOf(ModuleList);
      expect(model.get(`${paths.layers}.0.${paths.attention}`)?.typeName, arch).toMatch(/Attention$/);
      expect(model.get(paths.norm)?.typeName, arch).toMatch(/Norm$/);
      expect(model.get(paths.head), arch).toBeDefined();
    }
    expect([layerCount(lm), headCount(lm)]).toEqual([4, 4]);
  });
});

describe("the recipes, as a server runs them, give the library's numbers (stdlib-llama)", () => {
  it("logit lens", async () => {
    const cells = lensCells((await call(lm, lensRecipe(PROMPT, modelPaths(lm), 3), local)) as LensValue);
    const probs = await lm.trace(PROMPT, async (m) => {
      const out: Tensor[] = [];
      for (const layer of m.model.layers) out.push((await m.lm_head.call(await m.model.norm.call(await layer.output))).index(0).softmax(-1));
      return out;
    });
    expect(cells).toHaveLength(4);
    cells.forEach((row, layer) =>
      row.forEach((cell, position) => {
        const top = probs[layer]!.index(position).topk(3);
        expect(cell.ids).toEqual(top.indices.toArray());
        cell.probs.forEach((p, i) => expect(p).toBeCloseTo(top.values.index(i).item(), 5));
      }),
    );
  });

  it("attention pattern", async () => {
    const pattern = (await call(lm, attentionRecipe(PROMPT, modelPaths(lm), 2), local)) as Tensor;
    const expected = await lm.trace(PROMPT, async (m) => (await m.model.layers[2].self_attn.output)[1] as Tensor);
    expect(pattern.shape).toEqual(expected.shape.slice(1));
    expect(maxAbsDiff(pattern, expected.index(0))).toBeLessThan(1e-6);
  });

  it("activation patching in one session, logging each cell as it goes", async () => {
    const [clean, corrupted] = ["def __init__(self", "def __init__(cls"];
    expect(lm.tokenizer.encode(clean)).toHaveLength(lm.tokenizer.encode(corrupted).length);
    const [answer, distractor] = [lm.tokenizer.encode(")", { addSpecialTokens: false })[0]!, lm.tokenizer.encode(",", { addSpecialTokens: false })[0]!];
    const logged: string[] = [];
    const recipe = patchingRecipe({ clean, corrupted, answer, distractor }, modelPaths(lm));
    const value = (await lm.session(recipe.fn as never, { remote: "local", vars: recipe.vars, print: { write: (t: string) => void logged.push(t) } as never })) as PatchingValue;
    const diff = (logits: Tensor) => logits.index(0, -1, answer).item() - logits.index(0, -1, distractor).item();
    const T = lm.tokenizer.encode(clean).length;
    for (let layer = 0; layer < 4; layer++) {
      for (let position = 0; position < T; position++) {
        const logits = await lm.trace(async (tr) => {
          let source: Tensor;
          tr.invoke(clean, async (m) => {
            source = await m.model.layers[layer].output;
          });
          return tr.invoke(corrupted, async (m) => {
            const h = await m.model.layers[layer].output;
            m.model.layers[layer].output = h.put([null, position], source.index(null, position));
            return await m.lm_head.output;
          });
        });
        expect(value.grid[layer]![position]).toBeCloseTo(diff(logits), 4);
      }
    }
    expect(value.clean).toBeCloseTo(diff(await lm.trace(clean, async (m) => await m.lm_head.output)), 4);
    expect(value.corrupted).toBeCloseTo(diff(await lm.trace(corrupted, async (m) => await m.lm_head.output)), 4);
    // One log line per cell, in order, which the page reads back.
    const cells = logged.flatMap((t) => t.split("\n")).map(patchedCell).filter((c) => c !== undefined);
    expect(cells.map((c) => [c.layer, c.position])).toEqual(value.grid.flatMap((row, l) => row.map((_, p) => [l, p])));
    expect(cells.map((c) => c.diff)).toEqual(value.grid.flat());
    expect(patchedCell("patched {oops")).toBeUndefined();
    // The unpatched runs' differences are logged first, before any cell.
    const lines = logged.flatMap((t) => t.split("\n")).filter((t) => t.startsWith("baseline ") || t.startsWith("patched "));
    expect(baselines(lines[0]!)).toEqual({ clean: value.clean, corrupted: value.corrupted });
    expect(baselines("baseline {oops")).toBeUndefined();
    // A part of the grid (how the page asks for a long prompt's): those cells alone, the same numbers, null elsewhere.
    const from = T + 2, to = 2 * T + 3;
    const part = patchingRecipe({ clean, corrupted, answer, distractor }, modelPaths(lm), { from, to });
    const partial = (await lm.session(part.fn as never, { remote: "local", vars: part.vars, print: null })) as PatchingValue;
    expect([partial.clean, partial.corrupted]).toEqual([value.clean, value.corrupted]);
    partial.grid.flat().forEach((d, cell) => expect(d, `cell ${cell}`).toBe(cell >= from && cell < to ? value.grid.flat()[cell] : null));
  });

  it("a steering direction from two prompts, and the generation it steers", async () => {
    const source = promptDifference("def __init__(cls", "def __init__(self", 1);
    const direction = (await call(lm, source.recipe(modelPaths(lm)), local)) as Tensor;
    const [a, b] = await lm.trace(async (tr) => {
      const read = async (m: any) => ((await m.model.layers[1].output) as Tensor).index(0, -1);
      const x = tr.invoke("def __init__(cls", read), y = tr.invoke("def __init__(self", read);
      return [await x, await y];
    });
    expect(maxAbsDiff(direction, a.sub(b))).toBeLessThan(1e-6);

    const settings = { maxNewTokens: 6 };
    const steered = (await call(lm, generateRecipe("def f(", settings, modelPaths(lm), { direction, layer: 1, scale: 3 }), local)) as { text: string[] };
    const expected = await lm.generate("def f(", settings, async (m, tr) => {
      for await (const _ of tr.all()) m.model.layers[1].output = (h) => h.add(tr.vars.d.mul(3));
    }, { vars: { d: direction } });
    expect(steered.text[0]).toBe(expected.text[0]);
    const plain = (await call(lm, generateRecipe("def f(", settings, modelPaths(lm)), local)) as { text: string[] };
    expect(plain.text[0]).toBe((await lm.generate("def f(", settings)).text[0]);
  });
});

describe("the printed program", () => {
  it("holds the function that is sent, its vars as literals and tensors by name", () => {
    const direction = Tensor.full([256], 1);
    const program = programOf([promptDifference("a", "b", 1).recipe(modelPaths(lm)), generateRecipe("x", { maxNewTokens: 4, temperature: 0.5, seed: 2 }, modelPaths(lm), { direction, layer: 1, scale: 2 })], { model: "stdlib-llama", origin: "http://127.0.0.1:8787" });
    expect(program).toContain('const lm = await LanguageModel.fromServer("stdlib-llama");');
    expect(program).toContain("TSIGHT_HOST=http://127.0.0.1:8787");
    expect(program).toContain('}, { remote: true, vars: { layers: "model.layers", layer: 1, toward: "a", away: "b" } });');
    expect(program).toContain('const generation = await lm.generate("x", { maxNewTokens: 4, temperature: 0.5, seed: 2 }, async (m, tr) => {');
    expect(program).toContain("direction: direction, scale: 2 }");
    const lens = lensRecipe("x", modelPaths(lm));
    expect(programOf([lens], { model: "m", origin: "o" })).toContain(functionText(lens.fn));
    expect(functionText(lens.fn).split("\n").at(-1)).toBe("}");
  });

  it("prints literals, and refuses a value it cannot print", () => {
    expect(literal({ a: [1, "two", null], "b-c": { d: true } })).toBe('{ a: [1, "two", null], "b-c": { d: true } }');
    expect(() => literal(Tensor.full([2], 1))).toThrow(/varCode/);
  });
});
