/**
 * Optimizers in a job's sandbox: their state counts toward the job's memory like its tensors, so a job cannot
 * allocate past its limit through them; their settings cross as data and are checked by the optim layer.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { LanguageModel } from "../../../tsight/src/intervention/index.js";
import { decodeJob, type ExecutionContext } from "../../../tsight/src/protocol/executor.js";
import { toModelKey } from "../../../tsight/src/protocol/model-key.js";
import type { JobRequest } from "../../../tsight/src/protocol/wire.js";
import { SandboxExecutor } from "./index.js";

const GPT2 = toModelKey("LanguageModel", "stdlib-gpt2", null);
let lm: LanguageModel;
const executor = new SandboxExecutor();
const MB = 2 ** 20;

const job = (source: string) => decodeJob({ model: GPT2, kind: "trace", form: "invoke", source, input: [324, 615] } as JobRequest);
const context = (memoryLimitBytes: number): ExecutionContext => ({ emit: () => undefined, signal: new AbortController().signal, deadline: Date.now() + 20_000, memoryLimitBytes });
type Outcome = { ok?: unknown; code?: string; message?: string };
const run = (source: string, memoryMb: number): Promise<Outcome> => executor.execute(job(source), lm, context(memoryMb * MB)).then((v) => ({ ok: v }), (e: Error & { code?: string }) => ({ code: e.code, message: e.message }));

beforeAll(async () => {
  lm = await LanguageModel.load("stdlib-gpt2");
});

describe("optimizers in the sandbox", () => {
  // A parameter of 2M values: 8 MB, held twice (the zeros it was made from, and itself).
  const make = (optimizer: string) => `async () => { const p = parameter(zeros([2000000])); const opt = new ${optimizer}([p], { lr: 0.1 }); return opt.steps; }`;

  it("an optimizer's state and gradients are charged: Adam (two moments) over a budget plain SGD fits in", async () => {
    expect(await run(make("SGD"), 30)).toEqual({ ok: 0 });
    const adam = await run(make("Adam"), 30);
    expect(adam.code).toBe("MEMORY");
    expect(adam.message).toMatch(/bytes/);
    expect(await run(make("Adam"), 48)).toEqual({ ok: 0 });
  });

  it("optimizers made in a loop run out of memory rather than filling the host", async () => {
    const loop = await run("async () => { const p = parameter(zeros([100000])); const all = []; for (;;) all.push(new AdamW([p], { lr: 0.1 })); }", 32);
    expect(loop.code).toBe("MEMORY");
  });

  it("a graph grown from a parameter in a loop runs into the job's limit: its tensors stay charged while the graph holds them", async () => {
    const grown = await run("async () => { let t = parameter(zeros([250000])); for (;;) t = t.add(1); }", 32);
    expect(grown.code).toBe("MEMORY");
  });

  it("a training step in a trace: the parameter's values change, its gradient is read, and settings are checked", async () => {
    const out = (await run(
      "async (m) => { const p = parameter(zeros([256])); const opt = new SGD([p], { lr: 1 }); const h = await m.transformer.h[2].output; const loss = h.add(p).sum(); loss.backward(); opt.step(); return { grad: p.grad.sum().item(), p: p.sum().item(), lr: opt.lr, setLr: (opt.setLr(0.5), opt.lr) }; }",
      64,
    )) as { ok: { grad: number; p: number; lr: number; setLr: number } };
    // d(sum(h + p))/dp = 2 positions of ones; one SGD step at lr 1 moves each of 256 values by -2.
    expect(out.ok).toEqual({ grad: 512, p: -512, lr: 1, setLr: 0.5 });
    const noNew = await run("async () => Adam([parameter(zeros([2]))], { lr: 0.1 })", 64);
    expect(noNew.message).toMatch(/made with new Adam/);
    const bad = await run("async () => new Adam([parameter(zeros([2]))], { lr: 0.1, betas: [0.9, 1e9] })", 64);
    expect(bad).toMatchObject({ code: "USER_CODE", message: expect.stringMatching(/betas\[1\]/) });
  });
});
