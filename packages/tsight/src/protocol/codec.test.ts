/**
 * The value codec: values round-trip with their structure, identical tensors are stored once however they are
 * repeated (the same object, views of the same values, equal values), and a result is sized before it is made.
 */
import { describe, expect, it } from "vitest";
import { ones, tensor, Tensor, zeros } from "../tensor/index.js";
import { InputError, OptionsError } from "../intervention/index.js";
import { errorFromInfo, RemoteError, infoFromError } from "./errors.js";
import { checkJsonText, CodecError, decodeEnvelope, decodeValue, encodeEnvelope, MAX_BIGINT_CHARS, MAX_JSON_DEPTH, MAX_JSON_VALUES, packValue, ResultTooLargeError, unpackValue } from "./codec.js";

const MiB = 1024 * 1024;

describe("packValue", () => {
  it("round-trips nested values with tensors of every dtype", () => {
    const value = { a: [tensor([[1, 2], [3, 4]]), "x", 3, null], b: { c: tensor([1, 2, 3], "int64"), d: tensor([true, false], "bool"), $odd: 1 } };
    const back = unpackValue(packValue(value)) as typeof value;
    expect((back.a[0] as Tensor).shape).toEqual([2, 2]);
    expect((back.a[0] as Tensor).toArray()).toEqual([1, 2, 3, 4]);
    expect(back.a.slice(1)).toEqual(["x", 3, null]);
    expect(back.b.c.dtype).toBe("int64");
    expect([back.b.d.dtype, ...back.b.d.toArray()]).toEqual(["bool", 1, 0]);
    expect(back.b.$odd).toBe(1);
  });

  it("stores a tensor repeated sixty times once, whether as one object, as detached views, or as equal copies", () => {
    const t = ones([256, 1024]); // 1 MiB
    const one = packValue([t]).byteLength;
    expect(packValue(new Array(60).fill(t)).byteLength).toBeLessThan(one + 4096);
    expect(packValue(Array.from({ length: 60 }, () => t.detach())).byteLength).toBeLessThan(one + 4096);
    expect(packValue(Array.from({ length: 60 }, () => ones([256, 1024]))).byteLength).toBeLessThan(one + 4096);
    // Same values but another shape or dtype are different tensors.
    const back = unpackValue(packValue([t, t.reshape([1024, 256]), t.detach()])) as Tensor[];
    expect(back.map((x) => x.shape)).toEqual([[256, 1024], [1024, 256], [256, 1024]]);
  });

  it("keeps tensors that differ in one value apart", () => {
    const a = zeros([1000]);
    const b = tensor(Array.from({ length: 1000 }, (_, i) => (i === 999 ? 1 : 0)));
    const [x, y] = unpackValue(packValue([a, b])) as Tensor[];
    expect((x!.toArray() as number[]).at(-1)).toBe(0);
    expect((y!.toArray() as number[]).at(-1)).toBe(1);
  });

  it("tensors made to share a hash are each compared with a few, not all: 20,000 of them pack in linear time, kept apart", () => {
    // FNV-style hashing word by word: flipping the top bit of two neighbouring words leaves the hash as it was, so
    // 15 pairs give 2^15 tensors of one hash (a job returned 20,000 and held its model's thread past its deadline).
    const n = 20_000;
    const made = Array.from({ length: n }, (_, i) => {
      const words = new Int32Array(30).fill(7);
      for (let pair = 0; pair < 15; pair++) if ((i >> pair) & 1) (words[2 * pair] = 7 ^ 0x80000000), (words[2 * pair + 1] = 7 ^ 0x80000000);
      return new Tensor("int32", words, [30]);
    });
    const back = unpackValue(packValue(made)) as Tensor[];
    expect(back.length).toBe(n);
    for (const i of [0, 1, 2, 3, 9, 1234, n - 1]) expect(back[i]!.toArray()).toEqual(made[i]!.toArray());
    // Equal ones are still stored once.
    expect(packValue([...made.slice(0, 5), ...made.slice(0, 5)]).byteLength).toBeLessThan(packValue(made.slice(0, 5)).byteLength + 256);
  });

  it("refuses values nested deeper than MAX_DEPTH both ways, and malformed markers, with a CodecError", () => {
    let deep: unknown = 1;
    for (let i = 0; i < 6000; i++) deep = [deep];
    expect(() => packValue(deep)).toThrow(CodecError);
    expect(() => packValue({ a: deep })).toThrow(/value\.a\[0\]\[0\].* nests arrays or objects more than 256 deep/);
    let shallow: unknown = 1;
    for (let i = 0; i < 200; i++) shallow = [shallow];
    expect(unpackValue(packValue(shallow))).toEqual(shallow);
    expect(() => decodeValue(deep, new Map())).toThrow(/nests arrays or objects more than 256 deep/);
    for (const bad of [{ $cache: null }, { $error: null }, { $error: { type: "X" } }, { $obj: 3 }]) expect(() => decodeValue(bad, new Map())).toThrow(CodecError);
  });

  it("refuses a meta tensor whose shape no tensor could have, naming it (not the op that first makes values of it)", () => {
    expect(decodeValue({ $meta: { dtype: "float32", shape: [2, 3] } }, new Map())).toMatchObject({ shape: [2, 3], isMeta: true });
    expect(() => decodeValue({ $meta: { dtype: "float32", shape: [1e6, 1e6] } }, new Map())).toThrow(/bad \$meta tensor description: shape \[1000000, 1000000\] has 1000000000000 elements, more than a tensor can hold/);
    expect(() => decodeValue({ $meta: { dtype: "float32", shape: Array(40).fill(1) } }, new Map())).toThrow(/40 dimensions, more than 32/);
    expect(() => decodeValue({ $meta: { dtype: "float32", shape: [2 ** 60] } }, new Map())).toThrow(CodecError);
  });

  it("refuses a result over the limit before encoding it", () => {
    const t = ones([512, 1024]); // 2 MiB
    expect(() => packValue([t, t.mul(2)], 3 * MiB)).toThrow(ResultTooLargeError);
    expect(packValue([t, t], 3 * MiB).byteLength).toBeLessThan(3 * MiB);
  });

  it("a cache's list lengths cross with it, and bad ones are a CodecError", () => {
    const entry = { outputsByCall: [{ $t: "t0" }], inputsByCall: [], output: { $t: "t0" } };
    const tensors = new Map([["t0", tensor([1, 2])]]);
    const cache = decodeValue({ $cache: { "h.2.mlp": entry, $lists: { h: 6 } } }, tensors) as any;
    expect(cache.keys()).toEqual(["h.2.mlp"]);
    expect(cache.h[-4].mlp.output.toArray()).toEqual([1, 2]);
    expect(() => cache.h[6]).toThrow(/h\[6\] is out of range: it has 6 modules/);
    for (const lists of ["6", [6], { h: -1 }, { h: 1.5 }, { h: 2e6 }, { h: "6" }, null]) {
      expect(() => decodeValue({ $cache: { "h.2.mlp": entry, $lists: lists } }, tensors)).toThrow(CodecError);
    }
  });
});

describe("JSON from the network, bounded before it is parsed", () => {
  it("counts the nesting and the values of the JSON itself, not brackets or commas inside its strings", () => {
    expect(() => checkJsonText(`${"[".repeat(MAX_JSON_DEPTH)}${"]".repeat(MAX_JSON_DEPTH)}`, "x")).not.toThrow();
    expect(() => checkJsonText(`${"[".repeat(MAX_JSON_DEPTH + 1)}${"]".repeat(MAX_JSON_DEPTH + 1)}`, "the body")).toThrow(/the body nests arrays or objects more than \d+ deep/);
    // Depth comes back down: many shallow arrays in a row are fine.
    expect(() => checkJsonText(`[${"[[1]],".repeat(1000)}0]`, "x")).not.toThrow();
    expect(() => checkJsonText(JSON.stringify({ s: "[".repeat(10_000) + ",".repeat(MAX_JSON_VALUES + 1) + '\\"{' }), "x")).not.toThrow();
    expect(() => checkJsonText(JSON.stringify(new Array(MAX_JSON_VALUES - 2).fill(0)), "x")).not.toThrow();
    expect(() => checkJsonText(`[${"{},".repeat(MAX_JSON_VALUES)}{}]`, "the body")).toThrow(CodecError);
    expect(() => checkJsonText(`[${"{},".repeat(MAX_JSON_VALUES)}{}]`, "the body")).toThrow(/the body holds more than 262144 values; send large data as tensors/);
  });

  it("an envelope's JSON: nesting always, the count of values where asked (a request's)", () => {
    const deep = encodeEnvelope(JSON.parse(`${"[".repeat(MAX_JSON_DEPTH + 1)}${"]".repeat(MAX_JSON_DEPTH + 1)}`), new Map());
    expect(() => decodeEnvelope(deep)).toThrow(/the message's JSON nests/);
    const many = encodeEnvelope(new Array(MAX_JSON_VALUES + 10).fill({}), new Map());
    expect(decodeEnvelope(many).payload).toHaveLength(MAX_JSON_VALUES + 10);
    expect(() => decodeEnvelope(many, MAX_JSON_VALUES)).toThrow(/holds more than/);
    // Keys nobody reads in a tensor's entry of the safetensors header count too.
    const junk = `[${"{},".repeat(MAX_JSON_VALUES)}{}]`;
    const header = new TextEncoder().encode(`{"__metadata__":{"tsight":"{}"},"t0":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"junk":${junk}}}`);
    const bytes = new Uint8Array(8 + header.length);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true);
    bytes.set(header, 8);
    expect(() => decodeEnvelope(bytes, MAX_JSON_VALUES)).toThrow(/the message's header holds more than/);
    expect(() => unpackValue(bytes, MAX_JSON_VALUES)).toThrow(CodecError);
  });

  it("a bigint of more digits than the bound is a CodecError before it is parsed", () => {
    expect(decodeValue({ $big: "9".repeat(MAX_BIGINT_CHARS) }, new Map())).toBe(BigInt("9".repeat(MAX_BIGINT_CHARS)));
    expect(() => decodeValue({ $big: "9".repeat(MAX_BIGINT_CHARS + 1) }, new Map())).toThrow(/bad \$big: a string of at most 1000 digits/);
    expect(() => decodeValue({ $big: 12 }, new Map())).toThrow(CodecError);
  });
});

describe("an own \"__proto__\" key (JSON.parse makes one)", () => {
  it("crosses as a key of the object, both ways, without setting its prototype", () => {
    const value = JSON.parse('{"__proto__": {"x": 1}, "y": 2, "nested": [{"__proto__": 3}]}');
    const back = unpackValue(packValue(value)) as Record<string, unknown>;
    expect(Object.keys(back)).toEqual(["__proto__", "y", "nested"]);
    expect(Object.getPrototypeOf(back)).toBe(Object.prototype);
    expect(JSON.stringify(back)).toBe(JSON.stringify(value));
  });
});

describe("errors as data", () => {
  it("a type or code that names a property of Object.prototype is no class or code of ours", () => {
    for (const type of ["__proto__", "constructor", "toString", "hasOwnProperty"]) {
      const e = decodeValue({ $error: { code: "USER_CODE", type, message: "answered", retryable: false } }, new Map()) as Error;
      expect(e).toBeInstanceOf(RemoteError);
      expect(e.message).toBe("answered");
    }
    const claimed = Object.assign(new Error("x"), { code: "constructor" });
    expect(infoFromError(claimed).code).toBe("USER_CODE");
  });

  it("keeps the class of tsight's errors of their own codes (an InputError, a CodecError: VALIDATION) across the wire", () => {
    for (const e of [new InputError("model input has an empty sequence"), new CodecError("value is a Map"), new OptionsError("trace: no such option")]) {
      const back = errorFromInfo(infoFromError(e));
      expect(back).toBeInstanceOf(e.constructor);
      expect([back.message, (back as { code?: string }).code]).toEqual([e.message, (e as { code?: string }).code]);
    }
    // A server's own code on a class that does not have it stays a RemoteError.
    expect(errorFromInfo({ code: "TIMEOUT", type: "InputError", message: "m", retryable: false })).toBeInstanceOf(RemoteError);
  });
});
