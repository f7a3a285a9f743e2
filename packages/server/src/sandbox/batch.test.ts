/**
 * Jobs of different users in one forward pass: each in its own isolate, each seeing only its rows, each with the
 * numbers it gets alone, and one job's failure, timeout or cancel leaving the others untouched.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { maxAbsDiff } from "../../../../test/fixtures.js";
import { LanguageModel } from "../../../tsight/src/intervention/index.js";
import { decodeJob, type ExecutionContext } from "../../../tsight/src/protocol/executor.js";
import { toModelKey } from "../../../tsight/src/protocol/model-key.js";
import type { JobEvent, JobRequest } from "../../../tsight/src/protocol/wire.js";
import { Tensor } from "../../../tsight/src/tensor/index.js";
import { batchable, SandboxExecutor } from "./index.js";

const GPT2 = toModelKey("LanguageModel", "stdlib-gpt2", null);
let lm: LanguageModel;
const executor = new SandboxExecutor();

const job = (source: string, input: unknown, extra: Partial<JobRequest> = {}) => decodeJob({ model: GPT2, kind: "trace", form: "invoke", source, input, ...extra } as JobRequest);
function context(overrides: Partial<ExecutionContext> = {}, events: JobEvent[] = []): ExecutionContext {
  return { emit: (e) => void events.push(e), signal: new AbortController().signal, deadline: Date.now() + 10_000, memoryLimitBytes: 2 ** 28, ...overrides };
}

beforeAll(async () => {
  lm = await LanguageModel.load("stdlib-gpt2");
});

describe("jobs with padding in their input", () => {
  it("run in a pass as alone: a left-padded job keeps its padding beside a right-padded one (which is stripped), not sharing its pass", async () => {
    const ids = new Tensor("int64", BigInt64Array.of(50n, 51n, 52n, 53n), [1, 4]);
    const mask = (...m: bigint[]) => new Tensor("int64", BigInt64Array.from(m), [1, 4]);
    const read = "async (m) => { const l = await m.lm_head.output; return [l.shape, l.index(0, -1).argmax().item()]; }";
    // Tensors as the wire decodes them (decodeJob takes their wire form).
    const withInput = (input: unknown) => Object.assign(job(read, [1]), { input });
    const left = withInput({ input_ids: ids, attention_mask: mask(0n, 1n, 1n, 1n) });
    const right = withInput({ input_ids: ids, attention_mask: mask(1n, 1n, 1n, 0n) });
    const alone = await executor.execute(left, lm, context());
    const [a, b] = await Promise.all(executor.executeBatch([{ job: left, ctx: context() }, { job: right, ctx: context() }], lm));
    expect(a).toEqual({ status: "fulfilled", value: alone });
    expect((alone as unknown[])[0]).toEqual([1, 4, 4096]);
    expect(b).toEqual({ status: "fulfilled", value: await executor.execute(right, lm, context()) });
  });
});

describe("batched jobs", () => {
  // Five tokens each, so they share one pass.
  const prompts = [
    [324, 615, 638, 636, 284],
    [531, 221, 324, 615, 638],
    [791, 1077, 199, 791, 1396],
    [387, 345, 309, 14, 8],
    [259, 360, 276, 294, 1270],
  ];
  const jobs = [
    job("async (m) => await m.lm_head.output", prompts[0]),
    job("async (m, tr) => { m.transformer.h[1].output = (h) => h.mul(tr.vars.k); return await m.lm_head.output; }", prompts[1], { vars: { k: 0.5 } }),
    job("async (m) => { const h = await m.transformer.h[0].output; return { rows: h.shape, logits: await m.lm_head.output }; }", prompts[2]),
    job("async (m) => { m.transformer.h[2].mlp.skip(zeros([1, 5, 256])); return await m.lm_head.output; }", prompts[3]),
  ];
  /** Counts forward passes of the model: calls of the model (a small one may run as one graph, its forward not called). */
  function passes(): () => number {
    const model = lm.model as unknown as { call: (...a: unknown[]) => Promise<unknown> };
    const original = model.call;
    let n = 0;
    model.call = function (this: unknown, ...a: unknown[]) {
      n++;
      return original.apply(this, a);
    };
    return () => (delete (model as { call?: unknown }).call, n);
  }

  it("give each job exactly what it gets alone (jobs of equal length share a pass)", async () => {
    const count = passes();
    const batched = await Promise.all(executor.executeBatch(jobs.map((j) => ({ job: j, ctx: context() })), lm));
    expect(count()).toBe(1);
    expect(batched.every((r) => r.status === "fulfilled")).toBe(true);
    for (let i = 0; i < jobs.length; i++) {
      const alone = await executor.execute(jobs[i]!, lm, context());
      const together = (batched[i] as PromiseFulfilledResult<unknown>).value;
      const [a, t] = i === 2 ? [(alone as { logits: Tensor }).logits, (together as { logits: Tensor }).logits] : [alone as Tensor, together as Tensor];
      expect(t.shape, `job ${i}`).toEqual(a.shape);
      expect(maxAbsDiff(t, a), `job ${i}`).toBe(0);
    }
    // Each job saw only its own rows.
    expect(((batched[2] as PromiseFulfilledResult<unknown>).value as { rows: number[] }).rows).toEqual([1, 5, 256]);
    // Inputs of other lengths run in passes of their own.
    const count2 = passes();
    const mixed = await Promise.all(executor.executeBatch([{ job: jobs[0]!, ctx: context() }, { job: job("async (m) => await m.lm_head.output", "class "), ctx: context() }, { job: jobs[1]!, ctx: context() }], lm));
    expect(count2()).toBe(2);
    expect(mixed.map((r) => r.status)).toEqual(["fulfilled", "fulfilled", "fulfilled"]);
  });

  it("one job's error, endless loop or cancellation ends only that job", async () => {
    const cancelled = new AbortController();
    const items = [
      { job: jobs[0]!, ctx: context() },
      { job: job("async (m) => { await m.transformer.h[1].output; throw new RangeError('job 1 gave up'); }", prompts[2]), ctx: context() },
      { job: job("async (m) => { await m.transformer.h[0].output; while (true) {} }", prompts[3]), ctx: context({ deadline: Date.now() + 800 }) },
      { job: job("async (m) => { await m.transformer.h[0].output; return await m.lm_head.output; }", prompts[4]), ctx: context({ stopRequested: () => true, signal: cancelled.signal }) },
      { job: jobs[1]!, ctx: context() },
    ];
    const count = passes();
    const out = await Promise.all(executor.executeBatch(items, lm));
    expect(count()).toBe(1);
    expect(out.map((r) => r.status)).toEqual(["fulfilled", "rejected", "rejected", "rejected", "fulfilled"]);
    const reason = (i: number) => (out[i] as PromiseRejectedResult).reason as Error & { code?: string };
    expect(reason(1)).toMatchObject({ name: "RangeError", message: "job 1 gave up" });
    expect(reason(2).code).toBe("TIMEOUT");
    expect(reason(3).code).toBe("CANCELLED");
    for (const i of [0, 4]) {
      const alone = (await executor.execute(items[i]!.job, lm, context())) as Tensor;
      expect(maxAbsDiff((out[i] as PromiseFulfilledResult<Tensor>).value, alone)).toBe(0);
    }
  });

  it("a replacement that does not fit, assigned by code that then returns, fails its job in a pass as alone (the job ended before the pass applied it)", async () => {
    const misfit = job("async (m) => { m.transformer.h[0].output = Tensor.ones([2, 6, 256]); return 1; }", prompts[2]);
    const alone = await Promise.allSettled([executor.execute(misfit, lm, context())]);
    expect(alone[0]!.status).toBe("rejected");
    const count = passes();
    const out = await Promise.all(executor.executeBatch([{ job: jobs[0]!, ctx: context() }, { job: misfit, ctx: context() }], lm));
    expect(count()).toBe(1);
    expect(out.map((r) => r.status)).toEqual(["fulfilled", "rejected"]);
    expect(((out[1] as PromiseRejectedResult).reason as Error).name).toBe(((alone[0] as PromiseRejectedResult).reason as Error).name);
  });

  it("a replacement that fails the shared forward itself (token ids out of range) fails its job only: the others run again, alone", async () => {
    const attacks = [
      "async (m) => { m.transformer.wpe.inputs = [zeros([1, 5], 'int64').add(100000)]; return await m.lm_head.output; }",
      "async (m) => { m.transformer.wte.inputs = [zeros([1, 5], 'int64').add(-999999)]; return 1; }",
    ];
    for (const source of attacks) {
      const attack = job(source, prompts[2]);
      const alone = await Promise.allSettled([executor.execute(attack, lm, context())]);
      expect(alone[0]!.status, source).toBe("rejected");
      const events: JobEvent[] = [];
      const count = passes();
      const out = await Promise.all(executor.executeBatch([{ job: jobs[0]!, ctx: context({}, events) }, { job: attack, ctx: context() }, { job: jobs[1]!, ctx: context() }], lm));
      expect(out.map((r) => r.status), source).toEqual(["fulfilled", "rejected", "fulfilled"]);
      expect(count(), source).toBeGreaterThanOrEqual(3); // the shared pass, then the jobs alone
      expect(String((out[1] as PromiseRejectedResult).reason), source).toBe(String((alone[0] as PromiseRejectedResult).reason));
      for (const [i, victim] of [[0, jobs[0]!], [2, jobs[1]!]] as const) expect(maxAbsDiff((out[i] as PromiseFulfilledResult<Tensor>).value, (await executor.execute(victim, lm, context())) as Tensor), source).toBe(0);
      expect(events.map((e) => (e.type === "log" ? e.text : "")).join("\n"), source).toMatch(/a forward pass shared with other jobs failed .*; it runs again, alone/);
    }
  });

  it("after a pass that failed as a whole, the jobs whose code took least run again first", async () => {
    // Spins 300 ms (under the stall limit), then fails the shared forward: it runs again after the victim.
    const spinner = job("async (m) => { const t = Date.now(); while (Date.now() - t < 300) {} m.transformer.wpe.inputs = [zeros([1, 5], 'int64').add(-1)]; return await m.lm_head.output; }", prompts[2]);
    const order: number[] = [];
    const outcomes = executor.executeBatch([{ job: spinner, ctx: context() }, { job: jobs[0]!, ctx: context() }], lm, { stallMs: 1000 });
    outcomes.forEach((p, i) => void p.then(() => order.push(i)));
    const out = await Promise.all(outcomes);
    expect(out.map((r) => r.status)).toEqual(["rejected", "fulfilled"]);
    expect(order).toEqual([1, 0]);
  });

  it("a job whose short holds of the pass add up past the stall limit leaves it (each hold alone is under it)", async () => {
    const spin = "const t = Date.now(); while (Date.now() - t < 150) {}";
    const holder = job(`async (m) => { for (const i of [0, 1, 2, 3]) { ${spin}; await m.transformer.h[i].output; } return await m.lm_head.output; }`, prompts[2]);
    const events: JobEvent[] = [];
    const out = await Promise.all(executor.executeBatch([{ job: jobs[0]!, ctx: context() }, { job: holder, ctx: context({}, events) }], lm, { stallMs: 400 }));
    expect(out.map((r) => r.status)).toEqual(["fulfilled", "fulfilled"]);
    expect(events.map((e) => (e.type === "log" ? e.text : "")).join("\n")).toMatch(/left a forward pass shared with other jobs \(invoke 1 kept a forward pass it shares with other jobs waiting \d+ ms in all, so it left that pass\); it runs again, alone/);
    expect(maxAbsDiff((out[0] as PromiseFulfilledResult<Tensor>).value, (await executor.execute(jobs[0]!, lm, context())) as Tensor)).toBe(0);
    expect(maxAbsDiff((out[1] as PromiseFulfilledResult<Tensor>).value, (await executor.execute(holder, lm, context())) as Tensor)).toBe(0);
  });

  it("only plain traces are batched", () => {
    expect(batchable(jobs[0]!)).toBe(true);
    expect(batchable(decodeJob({ model: GPT2, kind: "generate", form: "invoke", source: "async () => 1", input: "x", generate: { maxNewTokens: 2 } }))).toBe(false);
    expect(batchable(decodeJob({ model: GPT2, kind: "trace", form: "tracer", source: "async (tr) => 1" }))).toBe(false);
    expect(batchable(job("async () => 1", "x", { edits: ["async (m) => undefined"] }))).toBe(false);
  });
});
