/**
 * What tracing costs on top of the forward pass: an empty trace, and each read or replacement of a module value,
 * measured on stdlib-gpt2 (5 tokens) with rounds interleaved so drift hits every variant alike, each as the median of
 * its differences within rounds.
 */
import { LanguageModel } from "../packages/tsight/dist/intervention/index.js";
import type { GPT2LMHeadModel } from "../packages/tsight/dist/models/index.js";
import { Tensor } from "../packages/tsight/dist/tensor/index.js";
import { Kernel } from "../packages/tsight/dist/tensor/engine.js";
import { median } from "./stats.js";

export interface Overhead {
  forwardUs: number;
  emptyTraceUs: number;
  /** A trace reading one module value, against an empty one (what a forward hook does). */
  oneReadUs: number;
  /** Each read after the first, in a trace reading 20 (the first read's cost spread over them). */
  perReadUs: number;
  perReplaceUs: number;
  /** Reading one layer's attention pattern as module output (fused kernel) and as a point (that layer step by step). */
  weightsReadUs: number;
  patternReadUs: number;
  /**
   * The same costs counting JavaScript alone (each run's time less ONNX Runtime's inside it): what the trace itself
   * adds, without the scatter of the graph runs' times (±100 µs on a 1-2 ms forward here).
   */
  js: { forwardUs: number; emptyTraceUs: number; oneReadUs: number; perReadUs: number };
}

/** ONNX Runtime's time inside kernel runs since the process began, in ms (see timeKernelRuns). */
let kernelMs = 0;
let timingKernels = false;

/** Times every kernel run from now on (a wrapper of Kernel.run: two clock readings a run). */
function timeKernelRuns(): void {
  if (timingKernels) return;
  timingKernels = true;
  const run = Kernel.prototype.run;
  Kernel.prototype.run = function (this: Kernel, inputs) {
    const t = performance.now();
    try {
      return run.call(this, inputs);
    } finally {
      kernelMs += performance.now() - t;
    }
  };
}

/** Runs of a variant in a row per round, untimed then timed (see interventionOverhead). */
const WARM = 5;
const BLOCK = 20;

export async function interventionOverhead(rounds = 30): Promise<Overhead> {
  const ids = new Tensor("int64", BigInt64Array.of(324n, 615n, 638n, 636n, 284n), [1, 5]);
  // 20 modules in the order the forward pass produces them.
  const reads = [0, 1, 2, 3].flatMap((i) => ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc"].map((p) => `transformer.h.${i}.${p}`));
  const made: Record<string, (lm: LanguageModel<GPT2LMHeadModel>) => () => Promise<unknown>> = {
    forward: (lm) => () => lm.model.call(ids),
    empty: (lm) => () => lm.trace(ids, async () => undefined),
    one: (lm) => () => lm.trace(ids, async (m) => await m.transformer.h[1].ln_1.output),
    reads: (lm) => () =>
      lm.trace(ids, async (m: any) => {
        for (const p of reads) await p.split(".").reduce((e: any, k: string) => e[k], m).output;
      }),
    replaces: (lm) => () =>
      lm.trace(ids, async (m: any) => {
        for (const p of reads) {
          const e = p.split(".").reduce((x: any, k: string) => x[k], m);
          e.output = await e.output;
        }
      }),
    weights: (lm) => () => lm.trace(ids, async (m) => (await m.transformer.h[1].attn.output)[1]),
    pattern: (lm) => () => lm.trace(ids, async (m) => await m.transformer.h[1].attn.source.pattern.output),
  };
  // Each variant on a model of its own, as a loop of one trace runs: a fused graph gives the values traces read, and
  // stops giving one only after 8 or more runs without it (nn/fusion.ts's noteTapsUsed), so on one shared model the
  // one-read trace paid for the other variants' 20 reads and attention pattern (its cost read 222-262 µs, against
  // 78-89 alone).
  const variants: Record<string, () => Promise<unknown>> = {};
  for (const [name, make] of Object.entries(made)) variants[name] = make((await LanguageModel.load("stdlib-gpt2")) as LanguageModel<GPT2LMHeadModel>);
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
  const jsTimes: Record<string, number[]> = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
  timeKernelRuns();
  for (let i = 0; i < 10; i++) for (const run of Object.values(variants)) await run();
  // Each variant runs its own graph (the bare forward's takes no mask; a trace's graph gives the values it reads),
  // and the first runs after another graph's are slower (why is not pinned down: its weights' copy or buffers out
  // of the CPU's caches, likely): timed one by one, that made the variant after the bare forward look cheaper than
  // nothing. So each round runs a variant WARM times untimed, then takes the median of BLOCK runs in a row, as a
  // loop of the same trace does.
  for (let i = 0; i < rounds; i++) {
    for (const [name, run] of Object.entries(variants)) {
      for (let j = 0; j < WARM; j++) await run();
      const block: number[] = [];
      const js: number[] = [];
      for (let j = 0; j < BLOCK; j++) {
        const [t, k] = [performance.now(), kernelMs];
        await run();
        block.push((performance.now() - t) * 1000);
        js.push(block.at(-1)! - (kernelMs - k) * 1000);
      }
      times[name]!.push(median(block));
      jsTimes[name]!.push(median(js));
    }
  }
  // Each cost is the median of its round-by-round differences (a round runs every variant once, back to back), which
  // drift and a slow round cancel out of; a difference of two medians scattered by ±100 µs on a 2 ms forward.
  const costIn = (of: Record<string, number[]>, a: string, b: string): number => median(of[a]!.map((t, i) => t - of[b]![i]!));
  const costOf = (a: string, b: string): number => costIn(times, a, b);
  return {
    forwardUs: median(times.forward!),
    emptyTraceUs: costOf("empty", "forward"),
    oneReadUs: costOf("one", "empty"),
    perReadUs: costOf("reads", "empty") / reads.length,
    perReplaceUs: costOf("replaces", "reads") / reads.length,
    weightsReadUs: costOf("weights", "empty"),
    patternReadUs: costOf("pattern", "empty"),
    js: { forwardUs: median(jsTimes.forward!), emptyTraceUs: costIn(jsTimes, "empty", "forward"), oneReadUs: costIn(jsTimes, "one", "empty"), perReadUs: costIn(jsTimes, "reads", "empty") / reads.length },
  };
}

/**
 * Decode speed with and without a steering edit on every step (a vector added to a block's output): the medians of
 * interleaved rounds, and the median of each round's ratio (steered over plain, run back to back), which drift
 * cancels out of: on this machine one process's plain stdlib-gpt2 decode ranged 169-444 tokens/s over 20 rounds,
 * and ratios of medians over 5 rounds came out 0.58 to 0.98 in six runs. On stdlib-gpt2 (4 x d256, a step of a few
 * ms, where a step's fixed costs show), or on `lm` (the GPT-2-small-sized model of the decode row) steering `layer`
 * with prompt ids `prompt`. `read`: the edit is a read of the layer's MLP output at every step instead (activations
 * gathered while generating); `ablate`: the edit knocks out head 0 of the layer's attention pattern instead (an edit
 * inside a block, which its step's graph computes).
 */
export async function generationOverhead(options: { lm?: LanguageModel<GPT2LMHeadModel>; layer?: number; prompt?: string | Tensor; rounds?: number; tokens?: number; read?: boolean; ablate?: boolean } = {}): Promise<{ plainTokS: number; steeredTokS: number; ratio: number }> {
  const lm = options.lm ?? ((await LanguageModel.load("stdlib-gpt2")) as LanguageModel<GPT2LMHeadModel>);
  const { layer = 2, prompt = "def __init__(self", rounds = 15, tokens = 48, read = false, ablate = false } = options;
  const { n_embd: width, n_head: heads } = lm.config as { n_embd: number; n_head: number };
  const steer = Tensor.full([width], 0.01);
  const knockout = new Tensor("float32", Float32Array.from({ length: heads }, (_, h) => (h === 0 ? 0 : 1)), [1, heads, 1, 1]);
  const timed = async (run: (onToken: () => void) => Promise<unknown>): Promise<number> => {
    let first = 0;
    await run(() => void (first ||= performance.now()));
    return (tokens - 1) / ((performance.now() - first) / 1000);
  };
  const plain = () => timed((onToken) => lm.generate(prompt, { maxNewTokens: tokens, eosTokenId: null, onToken }));
  const steered = () =>
    timed((onToken) =>
      lm.generate(prompt, { maxNewTokens: tokens, eosTokenId: null, onToken }, async (m, tr) => {
        const kept: unknown[] = [];
        for await (const _ of tr.all()) {
          if (read) kept.push(await m.transformer.h[layer]!.mlp.output);
          else if (ablate) m.transformer.h[layer]!.attn.source.pattern.output = (p: Tensor) => p.mul(tr.vars.knockout as Tensor);
          else m.transformer.h[layer]!.output = (h: Tensor) => h.add(tr.vars.steer as Tensor);
        }
        return kept.length;
      }, { vars: { steer, knockout } }),
    );
  await plain();
  await steered();
  const p: number[] = [],
    s: number[] = [];
  for (let i = 0; i < rounds; i++) {
    p.push(await plain());
    s.push(await steered());
  }
  return { plainTokS: median(p), steeredTokS: median(s), ratio: median(s.map((x, i) => x / p[i]!)) };
}
