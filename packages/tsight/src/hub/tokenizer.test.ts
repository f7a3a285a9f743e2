import { fixturesDir } from "../../../../test/fixtures.js";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { readSafetensors, Tensor } from "../tensor/index.js";
import { TokenizerError } from "./errors.js";
import { Tokenizer } from "./tokenizer.js";

const FIXTURES = fixturesDir;

interface Manifest {
  probes: { text: string; ids: number[]; greedy: string }[];
  tokenizer_cases: { text: string; ids: number[] }[];
}

describe.each(["stdlib-gpt2", "stdlib-llama"])("%s tokenizer", (name) => {
  const dir = path.join(FIXTURES, name);
  let tok: Tokenizer;
  let manifest: Manifest;
  beforeAll(async () => {
    tok = await Tokenizer.fromFolder(dir);
    manifest = JSON.parse(await readFile(path.join(dir, "manifest.json"), "utf8")) as Manifest;
  });

  it("gives the ids transformers gave for every tokenizer case and probe, and decodes them back", () => {
    const cases = [...manifest.tokenizer_cases, ...manifest.probes];
    expect(cases.length).toBeGreaterThan(5);
    for (const c of cases) {
      expect(tok.encode(c.text), c.text).toEqual(c.ids);
      expect(tok.decode(c.ids), c.text).toBe(c.text);
    }
  });

  it("decodes the reference greedy continuations to the manifest's text", async () => {
    const ref = (await readSafetensors(path.join(dir, "reference.safetensors"))).tensors;
    manifest.probes.forEach((p, i) => {
      const gen = ref.get(`probe${i}/generate`)!.toArray();
      expect(tok.decode(gen.slice(p.ids.length))).toBe(p.greedy);
    });
  });

  it("knows its special tokens and size", () => {
    expect(tok.eosTokenId).toBe(0);
    expect(tok.bosTokenId).toBe(0);
    expect(tok.padTokenId).toBe(0);
    expect(tok.vocabSize).toBe(4096);
    expect(tok.idToToken(0)).toBe("<|endoftext|>");
    expect(tok.tokenToId("<|endoftext|>")).toBe(0);
  });
});

describe("Tokenizer", () => {
  let tok: Tokenizer;
  let json: object;
  let config: Record<string, unknown>;
  let nonAscii: { text: string; ids: number[] };
  beforeAll(async () => {
    const dir = path.join(FIXTURES, "stdlib-gpt2");
    json = JSON.parse(await readFile(path.join(dir, "tokenizer.json"), "utf8")) as object;
    config = JSON.parse(await readFile(path.join(dir, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
    tok = new Tokenizer(json, config);
    const manifest = JSON.parse(await readFile(path.join(dir, "manifest.json"), "utf8")) as Manifest;
    nonAscii = manifest.tokenizer_cases.find((c) => /[^\x00-\x7f]/.test(c.text))!;
  });

  it("pads batches on the left with int64 ids and mask", () => {
    const texts = ["def __init__(self", "class ", ""];
    const { input_ids, attention_mask, ids } = tok.encodeBatch(texts);
    expect(ids).toEqual(texts.map((t) => tok.encode(t)));
    expect(input_ids.dtype).toBe("int64");
    expect(attention_mask.dtype).toBe("int64");
    expect(input_ids.shape).toEqual([3, 5]);
    expect(input_ids.tolist()).toEqual([
      [324, 615, 638, 636, 284],
      [0, 0, 0, 531, 221],
      [0, 0, 0, 0, 0],
    ]);
    expect(attention_mask.tolist()).toEqual([
      [1, 1, 1, 1, 1],
      [0, 0, 0, 1, 1],
      [0, 0, 0, 0, 0],
    ]);
    const right = tok.encodeBatch(["class ", "def __init__(self"], { paddingSide: "right" });
    expect(right.input_ids.tolist()).toEqual([
      [531, 221, 0, 0, 0],
      [324, 615, 638, 636, 284],
    ]);
    expect(tok.encodeBatch([]).input_ids.shape).toEqual([0, 0]);
  });

  it("pads with the config's pad token when it names one", () => {
    const padded = new Tokenizer(json, { ...config, pad_token: { content: tok.idToToken(199)!, special: false } });
    expect(padded.padTokenId).toBe(199);
    expect(padded.encodeBatch(["class ", "a b c d"]).input_ids.toArray().slice(0, 2)).toEqual([199, 199]);
    const bare = new Tokenizer(json, {});
    expect([bare.eosTokenId, bare.bosTokenId, bare.padTokenId]).toEqual([null, null, 0]);
  });

  it("a model without a tokenizer pads with its eos id, or 0 where that id is outside its vocabulary", () => {
    // The hf-fixtures gpt2's config: GPT-2's eos id 50256, a vocabulary cut down to 512, no pad id.
    const cut = Tokenizer.idsOnlyFor({ vocab_size: 512, eos_token_id: 50256 }, "test");
    expect([cut.eosTokenId, cut.padTokenId]).toEqual([50256, 0]);
    expect(Tokenizer.idsOnlyFor({ vocab_size: 512, eos_token_id: 7 }, "test").padTokenId).toBe(7);
    expect(Tokenizer.idsOnlyFor({ vocab_size: 512, eos_token_id: 7, pad_token_id: 3 }, "test").padTokenId).toBe(3);
  });

  it("decodes arrays, bigints and tensors, and skips special tokens on request", () => {
    const ids = [324, 615, 638, 636, 284];
    const text = "def __init__(self";
    expect(tok.decode(ids.map(BigInt))).toBe(text);
    expect(tok.decode(new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, 5]))).toBe(text);
    expect(tok.decode([])).toBe("");
    expect(tok.decode([0, ...ids, 0])).toBe(`<|endoftext|>${text}<|endoftext|>`);
    expect(tok.decode([0, ...ids, 0], { skipSpecialTokens: true })).toBe(text);
    expect(() => tok.decode(Tensor.zeros([2, 3], "int64"))).toThrow(TokenizerError);
  });

  it("streams text token by token without splitting characters", () => {
    const stream = tok.decodeStream();
    const pieces = nonAscii.ids.map((id) => stream.push(id));
    pieces.push(stream.flush());
    expect(pieces.join("")).toBe(nonAscii.text);
    for (const p of pieces) expect(p).not.toContain("\uFFFD");
    // "héllo": h, then the first byte of é (held back), then its second byte
    expect(pieces.slice(0, 3)).toEqual(["h", "", "é"]);
    expect(pieces.filter((p) => p === "").length).toBeGreaterThan(3);
  });

  it("flushes an incomplete character as U+FFFD", () => {
    const stream = tok.decodeStream();
    expect(stream.push(72)).toBe("h");
    expect(stream.push(128)).toBe("");
    expect(stream.flush()).toBe("\uFFFD");
    expect(stream.flush()).toBe("");
    expect(stream.tokens).toEqual([72, 128]);
  });

  it("streams code the same as decoding it at once", () => {
    const text = "    for i in range(len(x)):\n        yield x[i] * 2  # ünïcode ✓\n";
    const ids = tok.encode(text);
    const stream = tok.decodeStream();
    expect(ids.map((id) => stream.push(id)).join("") + stream.flush()).toBe(text);
  });

  it("names a missing or broken tokenizer.json", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "tsight-tok-"));
    try {
      await expect(Tokenizer.fromFolder(dir)).rejects.toThrow(/tokenizer.json: missing/);
      await writeFile(path.join(dir, "tokenizer.json"), "{ broken");
      await expect(Tokenizer.fromFolder(dir)).rejects.toThrow(TokenizerError);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
