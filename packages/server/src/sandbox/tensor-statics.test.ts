/**
 * Tensor's static constructors in the sandbox (Tensor.zeros, Tensor.full, ...), as in process: the same job code
 * gives the same values both ways, and the sizes it asks for are bounded exactly as the globals' are.
 */
import { describe, expect, it } from "vitest";
import { sandboxJobs } from "../../../../test/server/sandbox-jobs.js";
import { TENSOR_METHODS } from "../../../tsight/src/protocol/index.js";
import { einsum, full, Generator, NOT_A_PAIR, randint, randn, Tensor, zeros } from "../../../tsight/src/tensor/index.js";

const jobs = sandboxJobs();

/** Runs an invoke's source in the sandbox. */
const remote = (source: string, input: string, vars: Record<string, unknown> = {}): Promise<unknown> => jobs.run({ source, input, vars });

/** Runs the same source in process, where Tensor, zeros and full are tsight's own. */
function inProcess(source: string, input: string, vars: Record<string, unknown> = {}): Promise<unknown> {
  const fn = new Function("Tensor", "zeros", "full", `"use strict"; return (${source});`)(Tensor, zeros, full);
  return jobs.lm.trace(input, fn, { vars });
}

/** The error a promise rejects with. */
const failure = (p: Promise<unknown>): Promise<Error & { code?: string }> =>
  p.then(
    () => expect.unreachable("the job should have failed"),
    (e: Error & { code?: string }) => e,
  );

describe("Tensor's static constructors in the sandbox", () => {
  it("are those of tsight's Tensor", async () => {
    const source = 'async () => Object.getOwnPropertyNames(Tensor).filter((name) => typeof Tensor[name] === "function").sort()';
    const local = (await inProcess(source, "x")) as string[];
    expect(local).toEqual(expect.arrayContaining(["zeros", "ones", "full", "scalar", "cat", "stack", "where"]));
    expect(await remote(source, "x")).toEqual(local);
  });

  it("make what they make in process", async () => {
    const source = `async () => {
      const z = Tensor.zeros([2, 3]);
      const f = Tensor.full([2, 3], 1.5);
      const made = {
        zeros: z,
        zerosInt: Tensor.zeros([4], "int32"),
        ones: Tensor.ones([2, 2]),
        onesInt: Tensor.ones([3], "int64"),
        full: f,
        fullInt: Tensor.full([2], 7, "int64"),
        fullBool: Tensor.full([3], true, "bool"),
        scalar: Tensor.scalar(5),
        scalarInt: Tensor.scalar(3, "int64"),
        scalarBool: Tensor.scalar(true),
        cat: Tensor.cat([z, f], 1),
        stack: Tensor.stack([z, f]),
        where: Tensor.where(f.gt(1), 2, z),
      };
      return Object.fromEntries(Object.entries(made).map(([k, t]) => [k, { dtype: t.dtype, shape: t.shape, values: t.tolist() }]));
    }`;
    const local = await inProcess(source, "x");
    expect(Object.keys(local as object)).toHaveLength(13);
    expect(await remote(source, "x")).toEqual(local);
  });

  it("tensor methods the sandbox lists are tsight's, log1p and softplus (with their options) included", async () => {
    for (const name of Object.keys(TENSOR_METHODS)) expect(typeof (Tensor.prototype as unknown as Record<string, unknown>)[name], name).toBe("function");
    const source = "async (m) => { const h = (await m.transformer.h[0].output).index(0, -1).narrow(0, 0, 8); return [h.log1p().tolist(), h.softplus().tolist(), h.softplus(2, 0.5).tolist()]; }";
    const local = await inProcess(source, "x");
    expect(await remote(source, "x")).toEqual(local);
  });

  it("hand the job's code a tensor's values as numbers up to a bound, refused past it before any list is made", async () => {
    expect(await remote("async () => { const l = ones([3, 1000]).tolist(); return [l.length, l[2].length, ones([5000]).toArray().length]; }", "x")).toEqual([3, 1000, 5000]);
    for (const method of ["tolist", "toArray"]) {
      const e = await failure(remote(`async () => ones([2 ** 21]).${method}()`, "x"));
      expect([e.code, e.message]).toEqual(["MEMORY", expect.stringMatching(new RegExp(`${method}\\(\\) of 2097152 values: a job's code may get at most 1048576 numbers and arrays`))]);
    }
    // Rows count too: 2^20 values in rows of one are 2^21 numbers and arrays (a flat toArray of them is fine).
    const rows = await failure(remote("async () => ones([2 ** 20, 1]).tolist()", "x"));
    expect(rows.message).toMatch(/tolist\(\) of 1048576 values in 1048576 arrays: a job's code may get at most 1048576/);
    expect(await remote("async () => ones([2 ** 19, 2]).toArray().length", "x")).toBe(2 ** 20);
  });

  it("run the README's knockout as in process", async () => {
    const source = `async (m, tr) => {
      const onlyFirst = Tensor.cat([Tensor.full([1], 1), Tensor.zeros([5])]);
      const pattern = m.transformer.h[1].attn.source.pattern;
      pattern.output = (await pattern.output).put([0, 2, -1], onlyFirst);
      return (await m.lm_head.output).index(0, -1).softmax(-1).index(tr.vars.len).item();
    }`;
    const vars = { len: jobs.lm.tokenizer.encode("len")[0]! };
    const local = (await inProcess(source, "    for i in range(", vars)) as number;
    const plain = (await inProcess("async (m, tr) => (await m.lm_head.output).index(0, -1).softmax(-1).index(tr.vars.len).item()", "    for i in range(", vars)) as number;
    expect(local).not.toBeCloseTo(plain, 3);
    expect(await remote(source, "    for i in range(", vars)).toBeCloseTo(local, 6);
  });

  it("refuse a size the job may not take with the globals' error, before allocating", async () => {
    const pairs = [
      ["Tensor.zeros([100000, 100000])", "zeros([100000, 100000])"],
      ['Tensor.zeros([300000, 300000], "int64")', 'zeros([300000, 300000], "int64")'],
      ["Tensor.full([100000, 100000], 1)", "full([100000, 100000], 1)"],
      ["Tensor.zeros([-1])", "zeros([-1])"],
      ["Tensor.full([2], [1])", "full([2], [1])"],
    ];
    for (const [statik, global] of pairs) {
      const [a, b] = await Promise.all([failure(remote(`async () => ${statik}`, "x")), failure(remote(`async () => ${global}`, "x"))]);
      expect({ name: a.name, code: a.code, message: a.message }, statik).toEqual({ name: b.name, code: b.code, message: b.message });
    }
    expect((await failure(remote("async () => Tensor.zeros([100000, 100000])", "x"))).code).toBe("MEMORY");
  });

  it("say that meta and packed tensors are not made in remote code", async () => {
    for (const call of ['Tensor.meta("float32", [2])', "Tensor.fromPacked({})"]) {
      const e = await failure(remote(`async () => ${call}`, "x"));
      expect(e.code, call).toBe("NOT_ALLOWED");
      expect(e.message).toMatch(/^Tensor\.(meta|fromPacked) is not available in remote code/);
    }
  });

  it("take a Generator as in process: the same draws from the same seed, and again after manualSeed", async () => {
    const source = `async () => {
      const g = new Generator(5);
      const a = randn([4], g).tolist();
      const b = randn([4], g).tolist();
      const again = randint(0, 100, [3], g.manualSeed(5)).tolist();
      return { a, b, again, fresh: randint(0, 100, [3], new Generator(5)).tolist() };
    }`;
    const fn = new Function("randn", "randint", "Generator", `"use strict"; return (${source});`)(randn, randint, Generator);
    const local = (await jobs.lm.trace("x", fn)) as { a: number[]; b: number[]; again: number[]; fresh: number[] };
    expect(local.a).not.toEqual(local.b);
    expect(local.again).toEqual(local.fresh);
    expect(await remote(source, "x")).toEqual(local);
  });

  it("index a list of integers as in process (x[0, [2, 0]]), sort, and refuse a list of other things", async () => {
    const source = "async () => Tensor.cat([Tensor.full([1, 3], 1), Tensor.full([1, 3], 2), Tensor.full([1, 3], 3)], 0).index([2, 0], -1).tolist()";
    expect(await inProcess(source, "x")).toEqual([3, 1]);
    expect(await remote(source, "x")).toEqual([3, 1]);
    const sorted = "async () => { const t = Tensor.cat([Tensor.full([1], 3), Tensor.full([1], 1), Tensor.full([1], 2)], 0); const s = t.sort(); return [s.values.tolist(), s.indices.tolist(), t.argsort(0, true).tolist(), t.gt(1).logicalAnd(1).tolist()]; }";
    expect(await inProcess(sorted, "x")).toEqual([[1, 2, 3], [1, 2, 0], [0, 2, 1], [1, 0, 1]]);
    expect(await remote(sorted, "x")).toEqual(await inProcess(sorted, "x"));
    const e = await failure(remote("async () => Tensor.zeros([2, 3]).index(0, [1.5])", "x"));
    expect(e.code).toBe("USER_CODE");
    expect(e.message).toMatch(/index entry is an integer, null, slice\(start, stop, step\), a list of integers/);
  });

  it("einsum as in process, three operands two at a time, and its errors as USER_CODE", async () => {
    const source = "async (m) => { const h = await m.transformer.h[0].output; const w = Tensor.full([256, 3], 0.5); return [einsum('bpd,dk->bpk', h, w).tolist(), einsum('bpd,dk,k->bp', [h, w, Tensor.full([3], 2)]).tolist(), h.matmul(w).tolist()]; }";
    const local = (await jobs.lm.trace("def f(x", new Function("Tensor", "einsum", `"use strict"; return (${source});`)(Tensor, einsum))) as number[][][][];
    expect(await remote(source, "def f(x")).toEqual(local);
    const [viaEinsum, three, viaMatmul] = local;
    viaEinsum!.flat(2).forEach((v, i) => expect(v).toBeCloseTo(viaMatmul!.flat(2)[i]!, 4));
    three!.flat().forEach((v, i) => expect(v).toBeCloseTo(2 * (viaMatmul!.flat()[i] as number[]).reduce((a, b) => a + b, 0), 3));
    const e = await failure(remote("async () => einsum('ii->i', Tensor.zeros([2, 3]))", "x"));
    expect(e.code).toBe("USER_CODE");
    expect(e.message).toMatch(/names "i" twice/);
  });

  it("an integer matmul or a sort whose work would end past the deadline is refused before it starts (their estimates were float32 rates, or none)", async () => {
    // int64 [1200, 1200] @ itself: ~0.7 s here, estimated 2.8 s; a sort of 2^22 floats: ~0.75 s, estimated 1.9 s.
    for (const source of ["async () => Tensor.ones([1200, 1200], 'int64').matmul(Tensor.ones([1200, 1200], 'int64')).shape", "async () => randn([2 ** 22]).sort().values.shape"]) {
      const e = await failure(jobs.run({ source, input: "x" }, { deadlineMs: 1200 }));
      expect(e.code, source).toBe("TIMEOUT");
      expect(e.message, source).toMatch(/floating-point operations, more than fits in the \d+ ms the job has left/);
    }
    // A tensor holding NaN is ranked in JavaScript, whole rows whatever k: its top 10 of 2^21 floats (~1.5 s here) is
    // estimated as a sort of them in JavaScript (2.3 s), not as a top 10 (0.2 s).
    const nan = await failure(jobs.run({ source: "async () => randn([2 ** 21]).sqrt().topk(10).values.shape", input: "x" }, { deadlineMs: 1500 }));
    expect(nan.code).toBe("TIMEOUT");
    expect(nan.message).toMatch(/floating-point operations, more than fits/);
    // With time enough they run.
    expect(await remote("async () => Tensor.ones([64, 64], 'int64').matmul(Tensor.ones([64, 64], 'int64')).index(0, 0).item()", "x")).toBe(64);
  });

  it("a tensor read as torch's (values, indices) pair says where they are, as in process", async () => {
    const e = await failure(remote("async () => Tensor.zeros([2, 3]).max(1).indices", "x"));
    expect(e.code).toBe("USER_CODE");
    expect(e.message).toContain(NOT_A_PAIR("indices"));
    expect(await remote("async () => { const { values, indices } = Tensor.zeros([2, 3]).topk(1, 1); return [values.shape, indices.shape]; }", "x")).toEqual([[2, 1], [2, 1]]);
  });

  it("an einsum whose permute of a high rank would end past the deadline is refused before it starts", async () => {
    // 2^24 floats as 24 dims of 2, reversed: ~0.9 s of ONNX Runtime on one core here, estimated at ~3.6 s (the
    // operand's permute and the result's); with 1 s left the op is refused by its estimate (before, it was estimated
    // as 2 operations an element: a rank-26 one ran 7.5 s past a deadline).
    const letters = "abcdefghijklmnopqrstuvwx";
    const source = `async () => einsum('${letters}->${[...letters].reverse().join("")}', Tensor.zeros(Array(24).fill(2))).shape`;
    const e = await failure(jobs.run({ source, input: "x" }, { deadlineMs: 1000 }));
    expect(e.code).toBe("TIMEOUT");
    expect(e.message).toMatch(/this op computes 1\.8e\+11 floating-point operations, more than fits in the \d+ ms the job has left/);
    // A permute of an ordinary size and rank is not held up by its estimate.
    expect(await remote("async (m) => (await m.transformer.h[0].output).reshape([4, 4, 4, 16]).permute(3, 2, 1, 0).shape", "def f(x")).toEqual([16, 4, 4, 4]);
  });
});
