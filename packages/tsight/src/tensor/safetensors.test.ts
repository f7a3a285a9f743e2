import { fixturesDir } from "../../../../test/fixtures.js";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  metaTensors,
  parseSafetensors,
  readModelSafetensors,
  readModelSafetensorsHeader,
  readSafetensors,
  readSafetensorsHeader,
  readShardedSafetensors,
  SafetensorsError,
  writeSafetensors,
  writeSafetensorsFile,
} from "./safetensors.js";
import { Tensor } from "./tensor.js";

const FIXTURES = fixturesDir;

// #region independent decoding of raw files, written without the reader

interface RawEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}
async function rawFile(file: string): Promise<{ bytes: Uint8Array; view: DataView; header: Record<string, RawEntry>; start: number }> {
  const bytes = new Uint8Array(await readFile(file));
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(Buffer.from(bytes.subarray(8, 8 + n)).toString("utf8")) as Record<string, RawEntry>;
  return { bytes, view, header, start: 8 + n };
}
function halfToNumber(h: number): number {
  const sign = h >> 15 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 0) return sign * m * Math.pow(2, -24);
  if (e === 31) return m ? NaN : sign * Infinity;
  return sign * Math.pow(2, e - 15) * (1 + m / 1024);
}
function bf16ToNumber(h: number): number {
  const v = new DataView(new ArrayBuffer(4));
  v.setUint32(0, h << 16);
  return v.getFloat32(0);
}
/** A file from a header object and data bytes, built by hand, to feed the reader odd and broken files. */
function craft(header: unknown, data: Uint8Array = new Uint8Array(0), lengthOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}
const le = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

// #endregion

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "tsight-st-"));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe("round trips", () => {
  const f32 = new Float32Array([0, 1.5, -2.25, 3.1415927, 1e-3, -65504, 1e30, -0]);
  const tensors = new Map<string, Tensor>([
    ["f", new Tensor("float32", f32, [2, 4])],
    ["i64", new Tensor("int64", new BigInt64Array([1n, -2n, 9007199254740993n, -(2n ** 63n)]), [4])],
    ["i32", new Tensor("int32", new Int32Array([7, -8, 2147483647]), [3, 1])],
    ["b", new Tensor("bool", new Uint8Array([1, 0, 1]), [3])],
    ["scalar", new Tensor("float32", new Float32Array([42]), [])],
    ["empty", new Tensor("float32", new Float32Array(0), [0, 3])],
  ]);

  it("keeps every dtype, shape and value exactly", () => {
    const bytes = writeSafetensors(tensors, { metadata: { format: "pt", note: "héllo" } });
    const { tensors: back, metadata } = parseSafetensors(bytes);
    expect(metadata).toEqual({ format: "pt", note: "héllo" });
    expect([...back.keys()]).toEqual([...tensors.keys()]);
    for (const [name, t] of tensors) {
      const r = back.get(name)!;
      expect(r.dtype, name).toBe(t.dtype);
      expect(r.shape, name).toEqual(t.shape);
      expect(r.data, name).toEqual(t.data);
    }
  });

  it("aligns the data to 8 bytes and stores the dtypes the reference names", async () => {
    const bytes = writeSafetensors(tensors);
    const file = path.join(tmp, "rt.safetensors");
    await writeFile(file, bytes);
    const raw = await rawFile(file);
    expect(raw.start % 8).toBe(0);
    expect(Object.fromEntries(Object.entries(raw.header).map(([k, v]) => [k, v.dtype]))).toEqual({ f: "F32", i64: "I64", i32: "I32", b: "BOOL", scalar: "F32", empty: "F32" });
  });

  it("stores float32 as F16 and BF16, rounding to nearest", () => {
    const exact = new Tensor("float32", new Float32Array([0.5, -2, 1024, 65504, 0.099975586, -0.000061035156]), [6]);
    const noisy = new Tensor("float32", Float32Array.from({ length: 64 }, (_, i) => Math.sin(i) * 10), [8, 8]);
    for (const stored of ["F16", "BF16"] as const) {
      const bytes = writeSafetensors({ exact, noisy }, { dtype: stored });
      const back = parseSafetensors(bytes).tensors;
      if (stored === "F16") expect(back.get("exact")!.data).toEqual(exact.data);
      const tol = stored === "F16" ? 2 ** -11 : 2 ** -8;
      const got = back.get("noisy")!.data as Float32Array;
      (noisy.data as Float32Array).forEach((v, i) => expect(Math.abs(got[i]! - v)).toBeLessThanOrEqual(Math.abs(v) * tol));
      expect(back.get("noisy")!.dtype).toBe("float32");
    }
  });

  it("chooses stored dtypes per tensor and refuses conversions it cannot do", () => {
    const a = new Tensor("float32", new Float32Array([1, 2]), [2]);
    const ids = new Tensor("int64", new BigInt64Array([1n]), [1]);
    const bytes = writeSafetensors({ a, b: a, ids }, { dtype: { b: "BF16" } });
    const header = JSON.parse(Buffer.from(bytes.subarray(8, 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true)))).toString());
    expect([header.a.dtype, header.b.dtype, header.ids.dtype]).toEqual(["F32", "BF16", "I64"]);
    expect(() => writeSafetensors({ ids }, { dtype: () => "F16" })).toThrow(/int64 and cannot be stored as F16/);
    expect(() => writeSafetensors({ m: Tensor.meta("float32", [2]) })).toThrow(SafetensorsError);
  });

  it("widens F64, I8, U8, I16, U16 and U32", () => {
    const parts = [
      ["f64", "F64", le(new Float64Array([1.25, -3]))],
      ["i8", "I8", le(new Int8Array([-128, 127]))],
      ["u8", "U8", le(new Uint8Array([0, 255]))],
      ["i16", "I16", le(new Int16Array([-32768, 5]))],
      ["u16", "U16", le(new Uint16Array([65535, 1]))],
      ["u32", "U32", le(new Uint32Array([4294967295, 3]))],
    ] as const;
    const header: Record<string, RawEntry> = {};
    let off = 0;
    for (const [name, dtype, b] of parts) {
      header[name] = { dtype, shape: [2], data_offsets: [off, off + b.length] };
      off += b.length;
    }
    const data = new Uint8Array(off);
    off = 0;
    for (const [, , b] of parts) (data.set(b, off), (off += b.length));
    const t = parseSafetensors(craft(header, data)).tensors;
    expect(t.get("f64")!.dtype).toBe("float32");
    expect(t.get("f64")!.toArray()).toEqual([1.25, -3]);
    expect(t.get("i8")!.toArray()).toEqual([-128, 127]);
    expect(t.get("u8")!.toArray()).toEqual([0, 255]);
    expect(t.get("i16")!.toArray()).toEqual([-32768, 5]);
    expect(t.get("u16")!.dtype).toBe("int32");
    expect(t.get("u16")!.toArray()).toEqual([65535, 1]);
    expect(t.get("u32")!.dtype).toBe("int64");
    expect(t.get("u32")!.toArray()).toEqual([4294967295, 3]);
  });

  it("writes files atomically and reads a subset by name", async () => {
    const file = path.join(tmp, "sub.safetensors");
    await writeSafetensorsFile(file, tensors, { dtype: "BF16" });
    const { tensors: sub } = await readSafetensors(file, { names: ["i32", "f"] });
    expect([...sub.keys()]).toEqual(["i32", "f"]);
    expect(sub.get("i32")!.toArray()).toEqual([7, -8, 2147483647]);
    await expect(readSafetensors(file, { names: ["nope"] })).rejects.toThrow(/has no tensor named "nope"/);
  });
});

describe("fixture files", () => {
  it("reads F32 weights (hf-fixtures/gpt2) as the raw bytes say", async () => {
    const file = path.join(FIXTURES, "hf-fixtures/gpt2/model.safetensors");
    const raw = await rawFile(file);
    const { tensors, metadata } = await readSafetensors(file);
    expect(metadata).toEqual({ format: "pt" });
    expect(tensors.size).toBe(Object.keys(raw.header).filter((k) => k !== "__metadata__").length);
    const e = raw.header["transformer.h.0.attn.c_attn.weight"]!;
    const t = tensors.get("transformer.h.0.attn.c_attn.weight")!;
    expect(t.shape).toEqual([64, 192]);
    for (const i of [0, 1, 191, 5000, 64 * 192 - 1]) expect((t.data as Float32Array)[i]).toBe(raw.view.getFloat32(raw.start + e.data_offsets[0] + 4 * i, true));
  });

  it("widens F16 weights (stdlib-gpt2)", async () => {
    const file = path.join(FIXTURES, "stdlib-gpt2/model.safetensors");
    const raw = await rawFile(file);
    const name = "transformer.wte.weight";
    const e = raw.header[name]!;
    expect(e.dtype).toBe("F16");
    const { tensors } = await readSafetensors(file, { names: [name] });
    const t = tensors.get(name)!;
    expect(t.dtype).toBe("float32");
    expect(t.shape).toEqual([4096, 256]);
    for (const i of [0, 7, 256, 123456, 4096 * 256 - 1]) {
      expect((t.data as Float32Array)[i]).toBe(Math.fround(halfToNumber(raw.view.getUint16(raw.start + e.data_offsets[0] + 2 * i, true))));
    }
  });

  it("widens BF16 weights (stdlib-llama)", async () => {
    const file = path.join(FIXTURES, "stdlib-llama/model.safetensors");
    const raw = await rawFile(file);
    const name = "model.layers.0.mlp.down_proj.weight";
    const e = raw.header[name]!;
    expect(e.dtype).toBe("BF16");
    const t = (await readSafetensors(file)).tensors.get(name)!;
    expect(t.shape).toEqual([256, 704]);
    for (const i of [0, 3, 703, 90000, 256 * 704 - 1]) {
      expect((t.data as Float32Array)[i]).toBe(bf16ToNumber(raw.view.getUint16(raw.start + e.data_offsets[0] + 2 * i, true)));
    }
  });

  it("reads I64 token ids (stdlib-gpt2 reference) that match the manifest", async () => {
    const ref = await readSafetensors(path.join(FIXTURES, "stdlib-gpt2/reference.safetensors"), { names: ["probe0/input_ids"] });
    const manifest = JSON.parse(await readFile(path.join(FIXTURES, "stdlib-gpt2/manifest.json"), "utf8")) as { probes: { ids: number[] }[] };
    const ids = ref.tensors.get("probe0/input_ids")!;
    expect(ids.dtype).toBe("int64");
    expect(ids.shape).toEqual([1, manifest.probes[0]!.ids.length]);
    expect(ids.toArray()).toEqual(manifest.probes[0]!.ids);
  });

  it("reads the header alone, with shapes, dtypes and offsets", async () => {
    const file = path.join(FIXTURES, "stdlib-llama/model.safetensors");
    const raw = await rawFile(file);
    const h = await readSafetensorsHeader(file);
    expect(h.dataStart).toBe(raw.start);
    expect(h.byteLength).toBe(raw.bytes.length);
    const e = h.entries.get("lm_head.weight")!;
    expect(e).toMatchObject({ storedDType: "BF16", dtype: "float32", shape: [4096, 256], dataOffsets: raw.header["lm_head.weight"]!.data_offsets, byteOffset: raw.start + raw.header["lm_head.weight"]!.data_offsets[0] });
    const meta = metaTensors(h).get("lm_head.weight")!;
    expect(meta.isMeta).toBe(true);
    expect(meta.shape).toEqual([4096, 256]);
    expect((await readModelSafetensorsHeader(path.join(FIXTURES, "stdlib-llama"))).entries.size).toBe(h.entries.size);
  });
});

describe("sharded checkpoints", () => {
  const a = new Tensor("float32", new Float32Array([1, 2, 3]), [3]);
  const b = new Tensor("int64", new BigInt64Array([4n, 5n]), [2]);
  const c = new Tensor("float32", new Float32Array([6, 7, 8, 9]), [2, 2]);
  async function shardedFolder(name: string, weightMap: Record<string, string>, skipShard?: string): Promise<string> {
    const dir = path.join(tmp, name);
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir);
    if (skipShard !== "model-00001-of-00002.safetensors") await writeSafetensorsFile(path.join(dir, "model-00001-of-00002.safetensors"), { a, b }, { metadata: { format: "pt" } });
    if (skipShard !== "model-00002-of-00002.safetensors") await writeSafetensorsFile(path.join(dir, "model-00002-of-00002.safetensors"), { c, extra: a }, { dtype: "F16" });
    await writeFile(path.join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: 40 }, weight_map: weightMap }));
    return dir;
  }
  const map = { a: "model-00001-of-00002.safetensors", b: "model-00001-of-00002.safetensors", c: "model-00002-of-00002.safetensors" };

  it("loads every tensor the weight map names, from its shard", async () => {
    const dir = await shardedFolder("ok", map);
    const { tensors, metadata } = await readShardedSafetensors(dir);
    expect([...tensors.keys()].sort()).toEqual(["a", "b", "c"]);
    expect(tensors.get("b")!.toArray()).toEqual([4, 5]);
    expect(tensors.get("c")!.toArray()).toEqual([6, 7, 8, 9]);
    expect(metadata.format).toBe("pt");
    expect((await readShardedSafetensors(dir, { names: ["c"] })).tensors.size).toBe(1);
    expect((await readModelSafetensors(dir)).tensors.size).toBe(3);
    const header = await readModelSafetensorsHeader(dir);
    expect(header.entries.get("c")!.storedDType).toBe("F16");
  });

  it("names a missing shard", async () => {
    const dir = await shardedFolder("noshard", map, "model-00002-of-00002.safetensors");
    await expect(readShardedSafetensors(dir)).rejects.toThrow(/model.safetensors.index.json: points to shard model-00002-of-00002.safetensors, which is missing/);
  });

  it("names a tensor the shard does not hold", async () => {
    const dir = await shardedFolder("notensor", { ...map, ghost: "model-00001-of-00002.safetensors" });
    await expect(readShardedSafetensors(dir)).rejects.toThrow(/lists tensor "ghost" in shard model-00001-of-00002.safetensors/);
    await expect(readShardedSafetensors(dir, { names: ["zzz"] })).rejects.toThrow(/weight_map has no tensor named "zzz"/);
  });

  it("refuses shard names outside the folder and broken index files", async () => {
    const dir = await shardedFolder("escape", { a: "../model-00001-of-00002.safetensors" });
    await expect(readShardedSafetensors(dir)).rejects.toThrow(/not a shard file name/);
    await writeFile(path.join(dir, "model.safetensors.index.json"), "{ nope");
    await expect(readShardedSafetensors(dir)).rejects.toThrow(/index is not valid JSON/);
    await expect(readShardedSafetensors(path.join(tmp, "nowhere"))).rejects.toThrow(SafetensorsError);
    await expect(readModelSafetensors(path.join(tmp, "nowhere"))).rejects.toThrow(/holds neither model.safetensors nor model.safetensors.index.json/);
  });
});

describe("bad files", () => {
  const ok = { x: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  const eight = new Uint8Array(8);
  const cases: [string, Uint8Array, RegExp][] = [
    ["shorter than the length prefix", new Uint8Array(5), /truncated: 5 bytes/],
    ["header length past the end", craft(ok, eight, 1000n), /header length 1000 is larger than the/],
    ["absurd header length", craft(ok, eight, 2n ** 62n), /header length \d+ is larger/],
    ["header not JSON", craft("{not json", eight), /header is not valid JSON/],
    ["header not an object", craft("[1,2]"), /header is not a JSON object/],
    ["unknown dtype", craft({ x: { dtype: "F8_E4M3", shape: [8], data_offsets: [0, 8] } }, eight), /tensor "x": unknown dtype "F8_E4M3"/],
    ["shape and byte size disagree", craft({ x: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, eight), /shape \[3\] of F32 needs 12 bytes, data_offsets \[0, 8\] hold 8/],
    ["offsets out of range (truncated data)", craft(ok, new Uint8Array(4)), /data_offsets \[0, 8\] run past the 4 data bytes/],
    ["offsets reversed", craft({ x: { dtype: "U8", shape: [0], data_offsets: [4, 0] } }, eight), /end before they begin/],
    ["offsets overlap", craft({ x: { dtype: "F32", shape: [2], data_offsets: [0, 8] }, y: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, eight), /"x" \[0, 8\] and "y" \[4, 8\] overlap/],
    ["negative shape", craft({ x: { dtype: "F32", shape: [-2], data_offsets: [0, 8] } }, eight), /shape \[-2\] is not a list/],
    ["metadata not strings", craft({ __metadata__: { n: 1 }, ...ok }, eight), /__metadata__.n is not a string/],
  ];
  it.each(cases)("%s", async (_, bytes, message) => {
    expect(() => parseSafetensors(bytes)).toThrow(SafetensorsError);
    expect(() => parseSafetensors(bytes)).toThrow(message);
    const file = path.join(tmp, "bad.safetensors");
    await writeFile(file, bytes);
    const err = await readSafetensors(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SafetensorsError);
    expect((err as SafetensorsError).file).toBe(file);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).toContain(file);
  });

  it("names a file that cannot be opened", async () => {
    await expect(readSafetensorsHeader(path.join(tmp, "missing.safetensors"))).rejects.toThrow(/missing.safetensors: cannot open \(ENOENT\)/);
  });
});
