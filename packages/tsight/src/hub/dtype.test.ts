/**
 * Models loaded with weights in another precision: bfloat16/float16 kept as stored (the same logits as float32 on
 * the same values), int8/int4 quantized (interventions and gradients still work), streamed from a sharded
 * checkpoint reading each byte once.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { maxAbsDiff } from "../../../../test/fixtures.js";
import { LanguageModel } from "../intervention/index.js";
import { buildModel, streamWeights, type LoadProgress } from "../models/index.js";
import { DTypeError, openModelWeights, readSafetensors, Tensor, writeSafetensorsFile } from "../tensor/index.js";
import { embeddedModelPath } from "./embedded.js";
import { checkWeightDType } from "./load.js";

const PROMPT = "def __init__(self, name):\n    self.name = name";

async function logits(lm: LanguageModel, prompt = PROMPT): Promise<Tensor> {
  return lm.trace(prompt, async (m) => await (m as any).lm_head.output);
}

/** stdlib-llama's weights as a checkpoint of two bfloat16 shards with an index (the layout big models ship in). */
let sharded: string;
beforeAll(async () => {
  const source = embeddedModelPath("stdlib-llama");
  sharded = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-sharded-"));
  for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]) fs.copyFileSync(path.join(source, file), path.join(sharded, file));
  const { tensors } = await readSafetensors(path.join(source, "model.safetensors"));
  const names = [...tensors.keys()].sort();
  const half = Math.ceil(names.length / 2);
  const shards = [names.slice(0, half), names.slice(half)];
  const weightMap: Record<string, string> = {};
  for (const [i, part] of shards.entries()) {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    await writeSafetensorsFile(path.join(sharded, file), new Map(part.map((n) => [n, tensors.get(n)!])), { dtype: "BF16" });
    for (const n of part) weightMap[n] = file;
  }
  fs.writeFileSync(path.join(sharded, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
});
afterAll(() => fs.rmSync(sharded, { recursive: true, force: true }));

describe("weights kept as stored", () => {
  it("bfloat16 (stdlib-llama's stored format) and float16 (stdlib-gpt2's) give float32's logits within 1e-6 of the largest", async () => {
    for (const [name, dtype] of [["stdlib-llama", "bfloat16"], ["stdlib-gpt2", "float16"]] as const) {
      const full = await LanguageModel.load(name);
      const kept = await LanguageModel.load(name, { dtype });
      expect(kept.dtype).toBe(dtype);
      expect(full.dtype).toBe("float32");
      const weight = (kept.model.get(name === "stdlib-gpt2" ? "transformer.h.0.mlp.c_fc" : "model.layers.0.mlp.up_proj")!.getParam("weight"));
      expect(weight.packed?.format).toBe(dtype);
      // Loaded, the matrix lives in its kernel; values read come back from the file, the same ones.
      expect(weight.packed!.resident).toBe(false);
      // Reading a kept weight gives its values (widened): the same as the float32 model's.
      const plain = full.model.get(name === "stdlib-gpt2" ? "transformer.h.0.mlp.c_fc" : "model.layers.0.mlp.up_proj")!.getParam("weight");
      expect(maxAbsDiff(weight.unpacked(), plain)).toBe(0);
      // Other kernels multiply (the kept weight's own, the float32 one repacked): float32 rounding apart.
      const reference = await logits(full);
      const scale = Math.max(...(reference.abs().data as Float32Array));
      expect(maxAbsDiff(await logits(kept), reference) / scale).toBeLessThan(1e-6);
    }
  });
});

describe("streaming a sharded checkpoint", () => {
  for (const dtype of ["float32", "bfloat16", "int4"] as const) {
    it(`${dtype}: reads every byte of every tensor once, reporting progress, and gives the single file's model`, async () => {
      const config = JSON.parse(fs.readFileSync(path.join(sharded, "config.json"), "utf8"));
      const model = buildModel(config);
      const reader = await openModelWeights(sharded);
      const seen: LoadProgress[] = [];
      try {
        await streamWeights(model, reader, { dtype, onProgress: (p) => seen.push(p) });
      } finally {
        await reader.close();
      }
      const total = [...reader.entries.values()].reduce((n, e) => n + e.byteLength, 0);
      expect(reader.bytesRead).toBe(total);
      expect(seen.at(-1)).toEqual({ tensors: reader.entries.size, totalTensors: reader.entries.size, bytes: total, totalBytes: total });
      expect(seen.every((p, i) => i === 0 || (p.bytes > seen[i - 1]!.bytes && p.tensors === seen[i - 1]!.tensors + 1))).toBe(true);
      const fromFolder = await LanguageModel.load(sharded, { dtype });
      const fromEmbedded = await LanguageModel.load("stdlib-llama", { dtype });
      expect(maxAbsDiff(await logits(fromFolder), await logits(fromEmbedded))).toBe(0);
    });
  }

  it("the files stay readable when deleted after the load; a file changed in place is refused, not read", async () => {
    const copy = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-kept-"));
    for (const file of fs.readdirSync(sharded)) fs.copyFileSync(path.join(sharded, file), path.join(copy, file));
    const lm = await LanguageModel.load(copy, { dtype: "int4" });
    const before = await logits(lm);
    fs.rmSync(copy, { recursive: true });
    // The embedding's rows come from the (deleted, still open) file at each forward.
    expect(maxAbsDiff(await logits(lm), before)).toBe(0);

    const changed = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-kept-"));
    for (const file of fs.readdirSync(sharded)) fs.copyFileSync(path.join(sharded, file), path.join(changed, file));
    const lm2 = await LanguageModel.load(changed, { dtype: "int4" });
    for (const file of fs.readdirSync(changed).filter((f) => f.endsWith(".safetensors"))) fs.appendFileSync(path.join(changed, file), Buffer.from([0]));
    await expect(logits(lm2)).rejects.toThrow(/was changed in place after the model loaded from it.*reload the model/);
    fs.rmSync(changed, { recursive: true });
  });

  it("a meta model loaded with a dtype gets packed weights when it dispatches", async () => {
    const lm = await LanguageModel.load(sharded, { dispatch: false, dtype: "int8" });
    expect(lm.dispatched).toBe(false);
    const out = await logits(lm);
    expect(lm.model.get("model.layers.1.self_attn.q_proj")!.getParam("weight").packed?.format).toBe("int8");
    expect(maxAbsDiff(out, await logits(await LanguageModel.load("stdlib-llama", { dtype: "int8" })))).toBe(0);
  });
});

describe("quantized models", () => {
  it("int8 and int4 stay close to float32 (top-1 agreement on a prompt)", async () => {
    const ref = await logits(await LanguageModel.load("stdlib-gpt2"));
    const top = (t: Tensor) => t.argmax(-1).data as BigInt64Array;
    for (const [dtype, agree] of [["int8", 0.95], ["int4", 0.85]] as const) {
      const q = await logits(await LanguageModel.load("stdlib-gpt2", { dtype }));
      const same = top(q).filter((v, i) => v === top(ref)[i]).length / top(ref).length;
      expect(same).toBeGreaterThanOrEqual(agree);
      expect(maxAbsDiff(q, ref)).toBeGreaterThan(0); // it is quantized
    }
  });

  it("interventions: zeroing an MLP and patching between prompts act on the int4 model", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2", { dtype: "int4" });
    const clean = await logits(lm);
    const zeroed = await lm.trace(PROMPT, async (m) => {
      m.transformer.h[1]!.mlp.output = (await m.transformer.h[1]!.mlp.output).mul(0);
      return { mlp: await m.transformer.h[1]!.mlp.output, out: await m.lm_head.output };
    });
    expect(Math.max(...Array.from(zeroed.mlp.data as Float32Array, Math.abs))).toBe(0);
    expect(maxAbsDiff(zeroed.out, clean)).toBeGreaterThan(1e-3);
    // Patching every layer-0 output from one prompt into the other makes the second's logits the first's.
    const other = "def __init__(self, value):\n    self.name = name";
    const source = await lm.trace(other, async (m) => await m.transformer.h[0]!.output);
    const patched = await lm.trace(PROMPT, async (m) => {
      m.transformer.h[0]!.output = source;
      return await m.lm_head.output;
    });
    expect(maxAbsDiff(patched, await logits(lm, other))).toBe(0);
  });

  it("gradients with respect to activations flow through quantized linears (as through their widened weights)", async () => {
    const q = await LanguageModel.load("stdlib-gpt2", { dtype: "int8" });
    const widened = await LanguageModel.load("stdlib-gpt2");
    for (const [name, t] of q.model.parameters()) if (t.packed) widened.model.setParameter(name, t.unpacked());
    const grad = (lm: LanguageModel<any>) =>
      lm.trace(PROMPT, async (m, tr) => {
        const act = await m.transformer.h[0].output;
        let g: Tensor | null = null;
        await tr.backward((await m.lm_head.output).index(0, -1).logSoftmax(-1).index(42), async (b) => void (g = await b.grad(act)));
        return g! as Tensor;
      }, { grad: true });
    const [a, b] = [await grad(q), await grad(widened)];
    const scale = Math.max(...Array.from(b.data as Float32Array, Math.abs));
    expect(scale).toBeGreaterThan(0);
    // The forward differs only by the int8 rounding of activations inside the products.
    expect(maxAbsDiff(a, b) / scale).toBeLessThan(0.05);
  });

  it("a logit lens by the packed head's transpose is the head's own product; reading the head does not keep a copy", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2", { dtype: "int8" });
    const head = lm.model.get("lm_head")!.getParam("weight");
    const view = head.transpose(0, 1);
    expect(view.packed?.format).toBe("int8");
    expect(view.shape).toEqual([head.shape[1], head.shape[0]]);
    const { lens, out } = await lm.trace(PROMPT, async (m) => {
      const h = await m.transformer.ln_f.output;
      return { lens: h.matmul(view), out: await m.lm_head.output };
    });
    expect(maxAbsDiff(lens, out)).toBe(0);
    expect(head.packed!.resident).toBe(false);
    // Values read come from the file, packed again the same way (the test above compares them with float32's).
    const values = head.data as Float32Array;
    expect(head.packed!.resident).toBe(false); // not held: a second copy would stay with the model
    expect(Array.from((head.data as Float32Array).subarray(0, 64))).toEqual(Array.from(values.subarray(0, 64)));
    // The view's values are the transpose of the weight's, read back from the file too.
    expect(maxAbsDiff(view.unpacked(), head.unpacked().transpose(0, 1))).toBe(0);
    const conv = lm.model.get("transformer.h.0.mlp.c_fc")!.getParam("weight"); // Conv1D: [in, out]
    expect(maxAbsDiff(conv.transpose(0, 1).unpacked(), conv.unpacked().transpose(0, 1))).toBe(0);
  });

  it("int8/int4 refuse weights they cannot hold (NaN, infinities), naming the tensor", async () => {
    const broken = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-nan-"));
    const source = embeddedModelPath("stdlib-llama");
    for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(source, file), path.join(broken, file));
    const { tensors } = await readSafetensors(path.join(source, "model.safetensors"));
    const up = tensors.get("model.layers.1.mlp.up_proj.weight")!;
    const values = Float32Array.from(up.data as Float32Array);
    values[5] = NaN;
    tensors.set("model.layers.1.mlp.up_proj.weight", new Tensor("float32", values, up.shape));
    await writeSafetensorsFile(path.join(broken, "model.safetensors"), tensors, { dtype: "BF16" });
    for (const dtype of ["int8", "int4"] as const) {
      await expect(LanguageModel.load(broken, { dtype })).rejects.toThrow(new RegExp(`weight "model.layers.1.mlp.up_proj.weight" cannot be kept as ${dtype}: the value at row 0, column 5 is NaN`));
    }
    // Formats that hold NaN keep it, as float32 does.
    const kept = await LanguageModel.load(broken, { dtype: "bfloat16" });
    expect(Number.isNaN((kept.model.get("model.layers.1.mlp.up_proj")!.getParam("weight").data as Float32Array)[5])).toBe(true);
    fs.rmSync(broken, { recursive: true });
  });

  it("names the place of a value int8/int4 cannot hold in the weight's own layout (GPT-2's Conv1D weights are [in, out])", async () => {
    const broken = fs.mkdtempSync(path.join(os.tmpdir(), "tsight-nan-"));
    const source = embeddedModelPath("stdlib-gpt2");
    for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json"]) if (fs.existsSync(path.join(source, file))) fs.copyFileSync(path.join(source, file), path.join(broken, file));
    const { tensors } = await readSafetensors(path.join(source, "model.safetensors"));
    const name = "transformer.h.1.mlp.c_fc.weight";
    const fc = tensors.get(name)!;
    const [, cols] = fc.shape as [number, number];
    const nan = Float32Array.from(fc.data as Float32Array);
    nan[2 * cols + 100] = NaN; // [2, 100]
    tensors.set(name, new Tensor("float32", nan, fc.shape));
    await writeSafetensorsFile(path.join(broken, "model.safetensors"), tensors, { dtype: "BF16" });
    await expect(LanguageModel.load(broken, { dtype: "int8" })).rejects.toThrow(new RegExp(`weight "${name}" cannot be kept as int8: the value at row 2, column 100 is NaN`));
    const inf = Float32Array.from(fc.data as Float32Array);
    inf[7 * cols + 300] = -Infinity; // in output feature 300's column
    tensors.set(name, new Tensor("float32", inf, fc.shape));
    await writeSafetensorsFile(path.join(broken, "model.safetensors"), tensors, { dtype: "BF16" });
    await expect(LanguageModel.load(broken, { dtype: "int4" })).rejects.toThrow(/cannot be kept as int4: column 300 holds an infinite value/);
    fs.rmSync(broken, { recursive: true });
  });

  it("a dtype weights cannot be kept as is a DTypeError naming the choices", async () => {
    await expect(LanguageModel.load("stdlib-gpt2", { dtype: "int3" as never })).rejects.toThrow(DTypeError);
    expect(() => checkWeightDType("nf4", "load")).toThrow(/dtype "nf4" is not one weights can be kept as; choose "float32", "bfloat16", "float16", "int8", "int4"/);
    expect(() => checkWeightDType(8, "load")).toThrow(/dtype 8 is not one/);
    expect(() => checkWeightDType("INT4", "load")).toThrow(/\(did you mean "int4"\?\)/);
    expect(() => checkWeightDType("torch.bfloat16", "load")).toThrow(/\(did you mean "bfloat16"\?\)/);
    expect(() => checkWeightDType("int3", "load")).toThrow(/\(did you mean "int8" or "int4"\?\)/);
    expect(() => checkWeightDType("bfloat61", "load")).not.toThrow(/did you mean/);
    expect(() => checkWeightDType({ bits: 4 }, "load")).toThrow(/dtype of type object is not one/);
  });
});
