/**
 * Tensors a job's code has let go of are given back to its memory budget: a session looping over traces that each
 * read the logits (and keep one number) ran out of memory at a tenth of what it kept, its wrappers never collected.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { LanguageModel } from "../../../tsight/src/intervention/index.js";
import { decodeJob } from "../../../tsight/src/protocol/executor.js";
import type { JobRequest } from "../../../tsight/src/protocol/wire.js";
import { GPT2 } from "../../../../test/server/harness.js";
import { SandboxExecutor } from "./index.js";

let lm: LanguageModel;
beforeAll(async () => {
  lm = await LanguageModel.load("stdlib-gpt2");
});

const LIMIT = 4 * 2 ** 20;

const session = (source: string) =>
  new SandboxExecutor().execute(decodeJob({ model: GPT2, kind: "session", form: "tracer", source } as JobRequest), lm, {
    emit: () => undefined,
    signal: new AbortController().signal,
    deadline: Date.now() + 60_000,
    memoryLimitBytes: LIMIT,
  });

describe("a session's tensors let go of", () => {
  it("are given back: traces reading logits many times over the job's memory complete, and what is kept still counts", async () => {
    const bytes = await lm.trace("def f(x, y):", async (m) => {
      const logits = await m.lm_head.output;
      return logits.numel() * 4;
    });
    const rounds = Math.ceil((6 * LIMIT) / bytes);
    const loop = `async (s) => { let total = 0; for (let i = 0; i < ${rounds}; i++) total += await s.trace("def f(x, y):", async (m) => (await m.lm_head.output).index(0, -1, 5).item()); return total; }`;
    const one = await lm.trace("def f(x, y):", async (m) => (await m.lm_head.output).index(0, -1, 5).item());
    expect(await session(loop)).toBeCloseTo(rounds * one, 1);
    // Kept (pushed to a list), the same logits still run into the limit.
    const keep = `async (s) => { const kept = []; for (let i = 0; i < ${rounds}; i++) kept.push(await s.trace("def f(x, y):", async (m) => await m.lm_head.output)); return kept.length; }`;
    await expect(session(keep)).rejects.toMatchObject({ code: "MEMORY" });
  }, 120_000);

  it("a tensor that crossed twice (t.float() of a float tensor is t) stays usable after one of its wrappers is let go of", async () => {
    const bytes = await lm.trace("def f(x, y):", async (m) => (await m.lm_head.output).numel() * 4);
    const rounds = Math.ceil((3 * LIMIT) / bytes);
    const source = `async (s) => {
      let dropped = Tensor.full([8], 2);
      const kept = dropped.float();
      dropped = null;
      let total = 0;
      for (let i = 0; i < ${rounds}; i++) total += await s.trace("def f(x, y):", async (m) => (await m.lm_head.output).index(0, -1, 5).item());
      return kept.sum().item();
    }`;
    expect(await session(source)).toBe(16);
  }, 120_000);

  it("leaves V8's gc out of the job's reach", async () => {
    expect(await session("async () => [typeof gc, typeof globalThis.__collect, typeof WebAssembly]")).toEqual(["undefined", "undefined", "undefined"]);
  });
});
