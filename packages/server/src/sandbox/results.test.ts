/**
 * What a job's code hands the host: an object that cannot leave the isolate (a Map, a Set, a Date, a promise not
 * awaited, a class's instance) is refused with its path where it is used, never copied as something else (a Map
 * came back as {}); typed arrays cross as they are.
 */
import { describe, expect, it } from "vitest";
import { sandboxJobs } from "../../../../test/server/sandbox-jobs.js";
import { LanguageModel as ClientLanguageModel } from "../../../tsight/src/client/index.js";
import { CodecError, packValue } from "../../../tsight/src/protocol/codec.js";
import { tensor } from "../../../tsight/src/tensor/index.js";

const jobs = sandboxJobs();
const remote = (source: string): Promise<unknown> => jobs.run({ source, input: "def f(x" });

/** A job's result as the server sends it (worker-main packs it so). */
const sent = (source: string): Promise<Uint8Array> => remote(source).then((v) => packValue(v));

const failure = (p: Promise<unknown>): Promise<Error & { code?: string }> =>
  p.then(
    () => expect.unreachable("the job should have failed"),
    (e: Error & { code?: string }) => e,
  );

describe("a job's values that cannot cross", () => {
  it.each([
    ["a Map", "new Map([['p', h]])", "value is a Map"],
    ["a Set in an object", "{ s: new Set([1]) }", "value.s is a Set"],
    ["a Date in an array", "[1, new Date(0)]", "value[1] is a Date"],
    ["a typed array", "{ f: new Float32Array([1, 2]) }", "value.f is a Float32Array"],
    ["a class's instance", "{ a: new (class Point { x = 1 })() }", "value.a is a Point"],
    ["a value not awaited", "{ p: m.transformer.h[0].attn.source.pattern.output }", "value.p is a Promise (a value not awaited: await it first)"],
  ])("%s in the result is refused with its path", async (_, expr, message) => {
    const e = await failure(sent(`async (m) => { const h = await m.transformer.h[1].output; return ${expr}; }`));
    expect(e).toBeInstanceOf(CodecError);
    expect(e.code).toBe("VALIDATION");
    expect(e.message).toContain(`${message}, which cannot cross`);
  });

  it("one string held in many places is counted wherever it is held, before it is copied out (a 10 MB string 450 times took the host gigabytes)", async () => {
    for (const source of [
      "async () => { const s = 'x'.repeat(1e7); zeros([1]).add(new Array(450).fill(s)); return 1; }",
      "async () => { const s = 'x'.repeat(1e7); return new Array(60).fill(s); }",
      "async (m, tr) => { const s = 'x'.repeat(1e7); return await tr.local(async () => 1, new Array(60).fill(s)); }",
    ]) {
      const e = await failure(remote(source));
      expect(e.message).toMatch(/a value sent out of the job holds more than 16777216 characters and entries \(each string counted wherever it is held\): send large data as tensors/);
    }
    // Below the bound, a long string still crosses.
    expect(((await remote("async () => 'y'.repeat(1e6)")) as string).length).toBe(1e6);
  });

  it("a Map given to an op or as a replacement fails as in process", async () => {
    const op = await failure(remote("async (m) => (await m.transformer.h[1].output).add(new Map())"));
    expect(op.message).toMatch(/tensor\.add: argument 1 must be a tensor or a number, got object/);
    const swap = await failure(remote("async (m) => { m.transformer.h[1].output = new Map(); }"));
    expect(swap.message).toMatch(/cannot replace transformer\.h\.1\.output/);
  });

  it("typed arrays reach tensor() as they are, as in process", async () => {
    const made = (await remote("async () => { const t = tensor(new Float32Array([1.5, 2, 3])); return { shape: t.shape, values: t.tolist(), ints: tensor(new Int32Array([4, 5])).tolist() }; }")) as Record<string, unknown>;
    expect(made).toEqual({ shape: [3], values: tensor(new Float32Array([1.5, 2, 3])).tolist(), ints: [4, 5] });
  });

  it("the code's own objects whose keys look like the sandbox's descriptors cross as data, both ways", async () => {
    const own = { $unsendable: "Map", $h: 3, $envoy: "transformer", $error: { type: "TypeError", message: "fake" }, $plain: 1, nested: [{ $fn: 1 }] };
    expect(await remote(`async () => (${JSON.stringify(own)})`)).toEqual(own);
    // From the host into the job (vars): data too, not a tensor handle or an error.
    const source = "async (m, tr) => { await m.lm_head.output; return [typeof tr.vars.x.$h, tr.vars.x.$h, tr.vars.x.$error instanceof Error, Object.keys(tr.vars.x)]; }";
    expect(await jobs.run({ source, input: "def f(x", vars: { x: { $h: 1, $error: { type: "TypeError", message: "fake" } } } })).toEqual(["number", 1, false, ["$h", "$error"]]);
  });

  it("a hybrid step's answer crosses as over the wire with remote: \"local\" too (what cannot be sent is the step's error)", async () => {
    const client = await ClientLanguageModel.load("stdlib-gpt2");
    const step = (source: string) => client.trace("def f(x", new Function(`return ${source}`)(), { remote: "local" }).catch((e: Error) => e);
    expect(await step("async (m, tr) => { await m.lm_head.output; return await tr.local(async () => ({ n: 7 }), null); }")).toEqual({ n: 7 });
    const map = (await step("async (m, tr) => { await m.lm_head.output; return await tr.local(async () => new Map(), null); }")) as Error;
    expect(map.message).toMatch(/^the local step's answer cannot be sent: value is a Map, which cannot cross/);
  });

  it("plain objects, arrays, bigints and tensors still cross", async () => {
    const got = (await remote("async (m) => { const h = await m.transformer.h[1].output; return { a: [1, { b: 2n }], shape: h.shape, h }; }")) as { a: unknown; shape: number[]; h: { shape: number[] } };
    expect(got.a).toEqual([1, { b: 2n }]);
    expect(got.h.shape).toEqual(got.shape);
  });
});

describe("a \"__proto__\" key (JSON.parse makes one)", () => {
  it("crosses as data both ways, as in process: a key like any other", async () => {
    const value = (await jobs.run({ source: `async (m, tr) => ({ out: JSON.parse('{"__proto__": {"x": 1}, "a": 2}'), vars: Object.keys(tr.vars.v) })`, input: "def f(x", vars: { v: JSON.parse('{"__proto__": 3, "b": 4}') } })) as { out: object; vars: string[] };
    expect(Object.keys(value.out)).toEqual(["__proto__", "a"]);
    expect(Object.getPrototypeOf(value.out)).toBe(Object.prototype);
    expect(value.vars).toEqual(["__proto__", "b"]);
  });
});
