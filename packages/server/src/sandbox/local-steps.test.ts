/**
 * Hybrid steps (tr.local) in the sandbox, as a server's worker runs them: each step is an event sent to the job's
 * client, so the job's event limit bounds them, whether or not its code awaits their promises.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { LanguageModel } from "../../../tsight/src/intervention/index.js";
import { decodeJob, type ExecutionContext } from "../../../tsight/src/protocol/executor.js";
import type { JobEvent, JobRequest } from "../../../tsight/src/protocol/wire.js";
import { GPT2 } from "../../../../test/server/harness.js";
import { SandboxError } from "./errors.js";
import { SandboxExecutor } from "./index.js";

const executor = new SandboxExecutor();
let lm: LanguageModel;
beforeAll(async () => {
  lm = await LanguageModel.load("stdlib-gpt2");
});

/** Runs `source` as a trace job whose client answers every step at once with `answer`, its events limited to `maxEvents`. */
async function runWithSteps(source: string, maxEvents: number, answer: unknown = 0): Promise<{ outcome: PromiseSettledResult<unknown>; steps: number }> {
  let events = 0;
  let steps = 0;
  const ctx: ExecutionContext = {
    emit: (event: JobEvent) => {
      if (++events > maxEvents) throw new SandboxError("MEMORY", `the job sent more than ${maxEvents} events`);
      if (event.type === "local") steps++;
    },
    signal: new AbortController().signal,
    deadline: Date.now() + 20_000,
    memoryLimitBytes: 2 ** 28,
    awaitLocal: async () => answer,
  };
  const job = decodeJob({ model: GPT2, kind: "trace", form: "invoke", input: "def f(", source } as JobRequest);
  const [outcome] = await Promise.allSettled([executor.execute(job, lm, ctx)]);
  return { outcome: outcome!, steps };
}

describe("hybrid steps in the sandbox", () => {
  it("run and answer within the event limit", async () => {
    const { outcome, steps } = await runWithSteps("async (m, tr) => { let s = 0; for (let i = 0; i < 20; i++) s += await tr.local(async (v) => v, i); await m.lm_head.output; return s; }", 50, 2);
    expect(outcome).toEqual({ status: "fulfilled", value: 40 });
    expect(steps).toBe(20);
  });

  it("past the event limit end the job, also when its code never awaits them", async () => {
    for (const source of [
      "async (m, tr) => { for (let i = 0; i < 200; i++) tr.local(async (v) => v, i); await m.lm_head.output; return 1; }",
      "async (m, tr) => { for (let i = 0; i < 200; i++) tr.local(async (v) => v, i).catch(() => 0); await m.lm_head.output; return 1; }",
      "async (m, tr) => { for (let i = 0; i < 2000; i++) await tr.local(async (v) => v, i).catch(() => 0); return 1; }",
    ]) {
      const { outcome, steps } = await runWithSteps(source, 50);
      expect(outcome.status, source).toBe("rejected");
      expect((outcome as PromiseRejectedResult).reason, source).toMatchObject({ code: "MEMORY" });
      expect(steps, source).toBe(50);
    }
  });

  it("more than 256 asked for and not ended, or one that cannot run, end the job", async () => {
    const many = await runWithSteps("async (m, tr) => { for (let i = 0; i < 2000; i++) tr.local(async (v) => v, i).catch(() => 0); await m.lm_head.output; return 1; }", 10_000);
    expect((many.outcome as PromiseRejectedResult).reason).toMatchObject({ code: "MEMORY", message: expect.stringMatching(/more than 256 hybrid steps \(tr.local\) that had not ended yet; they run one at a time/) });
    expect(many.steps).toBeLessThanOrEqual(256);
    // A function not written at the call cannot run on the client: refused, and the job ends even if it drops the refusal.
    const unknown = await runWithSteps("async (m, tr) => { const f = async (v) => v * 2; for (let i = 0; i < 100; i++) { tr.local(f, i).catch(() => 0); tr.local(async (v) => v, i).catch(() => 0); } await m.lm_head.output; return 1; }", 10_000);
    expect((unknown.outcome as PromiseRejectedResult).reason).toMatchObject({ code: "NOT_ALLOWED", message: expect.stringMatching(/written at the call/) });
  });
});
