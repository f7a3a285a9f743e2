/**
 * Interventions during generation and gradients of intermediate values, as a suite that runs against any way of
 * executing (in process, or through a server).
 */
import { expect } from "vitest";
import { fixture, hfFixtures, maxAbsDiff, ref } from "../../../../test/fixtures.js";
import { generate, type CausalLM } from "../models/index.js";
import type { ModuleHooks } from "../nn/index.js";
import { Generator, randn, Tensor } from "../tensor/index.js";
import { MissedProviderError, OutOfOrderError, TraceError } from "./errors.js";
import type { TraceBackend, TraceCase } from "./trace.case.js";

const PROMPT = "def __init__(self";

/**
 * Greedy generation with `vector` added to `path`'s output at every step (or `vector(k)` at step k), using the model
 * without tracing.
 */
async function steeredReference(model: CausalLM, ids: Tensor, path: string, vector: Tensor | ((step: number) => Tensor), steps: number): Promise<number[]> {
  let step = 0;
  const hooks: ModuleHooks = {
    async call(module, args, forward) {
      const out = await forward(args);
      return module.path === path ? (out as Tensor).add(vector instanceof Tensor ? vector : vector(step++)) : out;
    },
  };
  model.tree.hooks = hooks;
  try {
    return (await generate(model, ids, undefined, { maxNewTokens: steps, eosTokenId: null })).generated.index(0).toArray();
  } finally {
    model.tree.hooks = null;
  }
}

/**
 * Greedy generation with decoder layer `layer` skipped (its input passed on as its output), computed without a KV
 * cache: every step runs the whole sequence again, so no cache can fall behind. The reference for skipping in
 * generation.
 */
async function skippedReference(model: CausalLM, ids: Tensor, path: string, steps: number): Promise<number[]> {
  const hooks: ModuleHooks = {
    async call(module, args, forward) {
      return module.path === path ? (args[0] as Tensor) : forward(args);
    },
  };
  model.tree.hooks = hooks;
  try {
    let seq = ids;
    const out: number[] = [];
    for (let i = 0; i < steps; i++) {
      const { logits } = (await model.call(seq)) as { logits: Tensor };
      const next = logits.index(0, -1).argmax().item() as number;
      out.push(next);
      seq = Tensor.cat([seq, Tensor.full([1, 1], next, "int64")], 1);
    }
    return out;
  } finally {
    model.tree.hooks = null;
  }
}

export const generateCases: TraceCase[] = [
  {
    name: "an op that fails in a function edit keeps its class, and its message names the value and the step the function was assigned to",
    async run(b) {
      const e = await b.gpt2
        .generate(
          PROMPT,
          { maxNewTokens: 3, eosTokenId: null },
          async (m: any, tr: any) => {
            for await (const _ of tr.iter([1])) m.transformer.h[1].attn.source.z.output = (z: any) => z.mul(tr.vars.wrong);
          },
          b.options({ vars: { wrong: Tensor.full([1, 4, 1, 63], 2) } }),
        )
        .catch((x: Error) => x);
      expect(e).toBeInstanceOf(Error);
      expect((e as Error).name).toBe("ShapeError");
      expect((e as Error).message).toMatch(/^mul: .*cannot be broadcast[^]*\n  in the function assigned to transformer\.h\.1\.attn\.source\.z\.output \(iteration 1\)(\n|$)/);
    },
  },
  {
    name: "tr.iter and tr.all looped without await (a plain for...of, a spread) are a TraceError saying to loop with for await",
    async run(b) {
      for (const how of ["iter", "all", "spread"] as const) {
        const e = await b.gpt2
          .generate(
            PROMPT,
            { maxNewTokens: 2, eosTokenId: null },
            async (m: any, tr: any) => {
              if (tr.vars.how === "spread") return [...tr.iter(0, 2)];
              for (const _ of tr.vars.how === "iter" ? tr.iter(0, 2) : tr.all()) await m.lm_head.output;
            },
            b.options({ vars: { how } }),
          )
          .catch((x: Error) => x);
        expect(e, how).toBeInstanceOf(Error);
        expect((e as Error).name, how).toBe("TraceError");
        expect((e as Error).message, how).toMatch(/^tr\.iter and tr\.all are async: loop with `for await \(const step of tr\.iter\(\.\.\.\)\)`/);
      }
    },
  },
  {
    name: "tr.all() in a plain trace is a TraceError pointing to tr.iter(0, n) (its loop ended after a module's first call, editing one call of several)",
    async run(b) {
      const e = await b.gpt2
        .trace(PROMPT, async (m: any, tr: any) => {
          for await (const _ of tr.all()) m.transformer.h[0].mlp.output = (x: Tensor) => x.mul(0);
        }, b.options())
        .catch((x: Error) => x);
      expect(e).toBeInstanceOf(Error);
      expect((e as Error).name).toBe("TraceError");
      expect((e as Error).message).toMatch(/^tr\.all\(\) steps through a generation's steps; in a trace, step through a module's several calls with tr\.iter\(0, n\)/);
    },
  },
  {
    name: "tr.iter and tr.all iterated without being called (for await over tr.iter, nnsight's tracer.iter[:]) are a TraceError saying to call them",
    async run(b) {
      for (const how of ["iter", "all", "sync"] as const) {
        const e = await b.gpt2
          .generate(
            PROMPT,
            { maxNewTokens: 2, eosTokenId: null },
            async (m: any, tr: any) => {
              if (tr.vars.how === "sync") for (const _ of tr.iter) await m.lm_head.output;
              for await (const _ of tr.vars.how === "iter" ? tr.iter : tr.all) await m.lm_head.output;
            },
            b.options({ vars: { how } }),
          )
          .catch((x: Error) => x);
        expect(e, how).toBeInstanceOf(Error);
        expect((e as Error).name, how).toBe("TraceError");
        expect((e as Error).message, how).toMatch(/^tr\.iter and tr\.all are methods: loop over tr\.iter\(start, end\)/);
      }
    },
  },
  {
    name: "a decoder layer called with the arguments the stack passed it at a generation step gives that step's output (its KV cache passed back, remotely as a reference)",
    async run(b) {
      const again = async (m: any, tr: any) => {
        const diffs: number[] = [];
        for await (const _ of tr.iter([0, 2])) {
          const layer = m.transformer.h[2];
          const args = await layer.inputs;
          const called = (await layer.call(...args)) as Tensor;
          diffs.push(called.sub((await layer.output) as Tensor).abs().max().item() as number, (args[1] as { cache: { length: number } }).cache.length);
        }
        return diffs;
      };
      const out = await b.gpt2.generate(PROMPT, { maxNewTokens: 3, eosTokenId: null }, again, b.options());
      const prompt = out.sequences.shape[1]! - 3;
      // The same output at the prompt's pass and at step 2: the call reads the cache as the layer's own call does, and
      // leaves it as it was (its own call then writes the step's keys once). The cache crosses as itself (its length:
      // the positions layers before this one hold).
      expect(out.value).toEqual([0, prompt, 0, prompt + 2]);
      const plain = await b.gpt2.generate(PROMPT, { maxNewTokens: 3, eosTokenId: null }, async () => undefined, b.options());
      expect(out.sequences.tolist()).toEqual(plain.sequences.tolist());
      // In one invoke of a batch, the call takes that invoke's rows of the cache.
      const batched = await b.gpt2.generate(
        async (tr: any) => {
          tr.invoke("a = 1", async () => undefined);
          return tr.invoke("def __init__(self", async (m: any, it: any) => {
            const diffs: number[] = [];
            for await (const _ of it.iter([0, 2])) {
              const layer = m.transformer.h[2];
              const called = (await layer.call(...(await layer.inputs))) as Tensor;
              diffs.push(called.sub((await layer.output) as Tensor).abs().max().item() as number);
            }
            return diffs;
          });
        },
        { maxNewTokens: 3, eosTokenId: null },
        b.options(),
      );
      // (One row alone against the batch's kernels: float rounding.)
      expect(batched.value).toHaveLength(2);
      for (const d of batched.value as number[]) expect(d).toBeLessThan(1e-6);
    },
  },
  {
    name: "a decoder layer skipped during generation keeps generating, for every architecture: at every step as without a cache, at one step consistently",
    async run(b) {
      for (const arch of hfFixtures) {
        const lm = await b.arch(arch);
        const layers = lm.model.namedModules().filter(([p]: [string, unknown]) => /^(transformer\.h|model\.layers|gpt_neox\.layers)\.1$/.test(p));
        const path = layers[0]![0];
        const ids = ref(await fixture(arch), "input_ids").narrow(0, 0, 1);
        // Skipped at every step: its cache stays empty; the tokens are those of a run without any cache.
        const every = await lm.generate(
          ids,
          { maxNewTokens: 6, eosTokenId: null },
          async (m, tr) => {
            const parts = tr.vars.path.split(".");
            const layer = (i: number) => parts.slice(0, -1).reduce((e: any, k: string) => e[k], m)[i];
            for await (const _ of tr.all()) layer(1).skip(await layer(0).output);
          },
          b.options({ vars: { path } }),
        );
        expect(every.generated.index(0).toArray(), arch).toEqual(await skippedReference(lm.model, ids, path, 6));
        // Skipped at step 1 only: its cache misses that position, later steps attend to the keys it has.
        const once = await lm.generate(
          ids,
          { maxNewTokens: 6, eosTokenId: null },
          async (m, tr) => {
            const parts = tr.vars.path.split(".");
            const layer = (i: number) => parts.slice(0, -1).reduce((e: any, k: string) => e[k], m)[i];
            for await (const _ of tr.iter(1, 2)) layer(1).skip(await layer(0).output);
          },
          b.options({ vars: { path } }),
        );
        expect(once.generated.shape, arch).toEqual([1, 6]);
      }
      // Values inside a layer skipped at step 1 are, at later steps, those steps' own: its pattern has the keys the
      // layer holds then (the prompt's 5, then one more per step it ran).
      const keysAt = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 5, eosTokenId: null },
        async (m, tr) => {
          const keys: number[] = [];
          for await (const step of tr.all()) {
            if (step === 1) m.transformer.h[1].skip(await m.transformer.h[1].input);
            else keys.push(((await m.transformer.h[1].attn.source.pattern.output) as Tensor).shape[3]!);
          }
          return keys;
        },
        b.options(),
      );
      expect(keysAt.value).toEqual([5, 6, 7, 8]);
      // The same asked ahead with next(): a later step's value inside the layer, asked for before the skip, comes.
      const ahead = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 4, eosTokenId: null },
        async (m) => {
          const layer = m.transformer.h[1].next(); // step 1
          layer.skip(await layer.input);
          return ((await m.transformer.h[1].attn.source.pattern.next(2).output) as Tensor).shape[3]; // step 2
        },
        b.options(),
      );
      expect(ahead.value).toBe(6);
      // Every layer, or the whole stack, skipped at a step: the positions are taken all the same, generation goes on.
      for (const what of ["layers", "stack"]) {
        const skipped = await b.gpt2.generate(
          PROMPT,
          { maxNewTokens: 4, eosTokenId: null },
          async (m, tr) => {
            for await (const step of tr.all()) {
              if (step !== 1) continue;
              if (tr.vars.what === "stack") m.transformer.skip({ last_hidden_state: tr.vars.zero });
              else for (const layer of m.transformer.h) layer.skip(await layer.input);
            }
          },
          b.options({ vars: { what, zero: Tensor.zeros([1, 1, 256]) } }),
        );
        expect(skipped.generated.shape, what).toEqual([1, 4]);
      }
      // Skipped in the prompt's pass of a left-padded batch: the layer's keys are at the later positions, so the
      // short row (padding first) gives what it gives alone.
      const long = "def tokenize(self, text):\n    words = text.split()\n    return [w.lower() for w in words]\n";
      const short = "def f(x):\n    return";
      const skipPrompt = async (m: any, tr: any) => {
        const logits: Tensor[] = [];
        for await (const step of tr.all()) {
          if (step === 0) m.transformer.h[1].skip(await m.transformer.h[1].input);
          logits.push(((await m.lm_head.output) as Tensor).index(null, -1));
        }
        return logits;
      };
      const batched = await b.gpt2.generate([long, short], { maxNewTokens: 5, eosTokenId: null }, skipPrompt, b.options());
      const alone = await b.gpt2.generate(short, { maxNewTokens: 5, eosTokenId: null }, skipPrompt, b.options());
      expect(batched.text[1]).toBe(alone.text[0]);
      alone.value.forEach((t: Tensor, step: number) => expect(maxAbsDiff(t.index(0), batched.value[step]!.index(1)), `step ${step}`).toBeLessThan(1e-4));
    },
  },
  {
    name: "values read in a step are that step's: the logits of step k give token k",
    async run(b) {
      const out = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 6 },
        async (m, tr) => {
          const picks: number[] = [];
          const shapes: number[][] = [];
          for await (const step of tr.iter(0, 4)) {
            const h = (await m.transformer.h[0].output) as Tensor;
            const logits = (await m.lm_head.output) as Tensor;
            shapes.push([step, ...h.shape]);
            picks.push(logits.index(0, -1).argmax().item());
          }
          return { picks, shapes, result: (await tr.result).generated as Tensor };
        },
        b.options(),
      );
      const f = await fixture("stdlib-gpt2");
      expect(out.value.picks).toEqual(out.generated.index(0).toArray().slice(0, 4));
      expect(out.value.shapes).toEqual([
        [0, 1, 5, 256],
        [1, 1, 1, 256],
        [2, 1, 1, 256],
        [3, 1, 1, 256],
      ]);
      expect(out.sequences.tolist()).toEqual(ref(f, "probe0/generate").narrow(1, 0, 11).tolist());
      expect(out.value.result.tolist()).toEqual(out.generated.tolist());
    },
  },
  {
    name: "a module called twice a step (Gemma 3's rotary embedding: local, then global tables) has both calls in each step",
    async run(b) {
      const lm = await b.arch("gemma3_text");
      const ids = ref(await fixture("gemma3_text"), "input_ids"); // 6 tokens
      const settings = { maxNewTokens: 5, eosTokenId: null };
      // Each step's two tables (cos), read in every step; next() counts from the step's first call, every step.
      const steps = await lm.generate(
        ids,
        settings,
        async (m: any, tr) => {
          const got: Tensor[][] = [];
          for await (const _ of tr.all()) got.push([(await m.model.rotary_emb.output)[0], (await m.model.rotary_emb.next().output)[0]]);
          return got;
        },
        b.options(),
      );
      // The reference: one forward over the whole sequence, whose tables hold every position.
      const whole = (await lm.trace(steps.sequences, async (m: any) => [(await m.model.rotary_emb.output)[0], (await m.model.rotary_emb.next().output)[0]], b.options())) as Tensor[];
      expect(steps.value).toHaveLength(5);
      steps.value.forEach(([local, global], step) => {
        const [from, length] = step === 0 ? [0, 6] : [5 + step, 1];
        expect(maxAbsDiff(local!, whole[0]!.narrow(1, from, length)), `step ${step} local`).toBe(0);
        expect(maxAbsDiff(global!, whole[1]!.narrow(1, from, length)), `step ${step} global`).toBe(0);
      });
      // Asked ahead (tr.iter([3]) from the start): step 3's local table, not call 3 (step 1's global one).
      const ahead = await lm.generate(ids, settings, async (m: any, tr) => {
        for await (const _ of tr.iter([3])) return ((await m.model.rotary_emb.output) as Tensor[])[0];
      }, b.options());
      expect(maxAbsDiff(ahead.value as Tensor, whole[0]!.narrow(1, 8, 1))).toBe(0);
      // An edit of step 2's tables changes the tokens from step 2 on, and none before.
      const plain = (await lm.generate(ids, settings, async () => undefined, b.options())).generated.index(0).toArray();
      const edited = await lm.generate(
        ids,
        settings,
        async (m: any, tr) => {
          for await (const _ of tr.iter([2])) {
            m.model.rotary_emb.output = ([c, s]: Tensor[]) => [c.mul(0), s.mul(0)];
            m.model.rotary_emb.next().output = ([c, s]: Tensor[]) => [c.mul(0), s.mul(0)];
          }
        },
        b.options(),
      );
      const tokens = edited.generated.index(0).toArray();
      expect(tokens.slice(0, 2)).toEqual(plain.slice(0, 2));
      expect(tokens.slice(2)).not.toEqual(plain.slice(2));
    },
  },
  {
    name: "tr.all covers every step; afterwards module access is an OutOfOrderError; a bounded loop lets code after it run",
    async run(b) {
      const all = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 5 },
        async (m, tr) => {
          const steps: number[] = [];
          for await (const s of tr.all()) {
            steps.push(s);
            await m.transformer.h[1].output;
          }
          const after = await m.lm_head.output.then(
            () => "no error",
            (e: Error) => e,
          );
          return { steps, after };
        },
        b.options(),
      );
      expect(all.value.steps).toEqual([0, 1, 2, 3, 4]);
      expect(all.value.after).toBeInstanceOf(OutOfOrderError);
      expect(String(all.value.after)).toMatch(/lm_head\.output: asked for after tr\.all\(\) ran out: the generation ended after 5 steps/);
      const bounded = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 5 },
        async (m, tr) => {
          const steps: number[] = [];
          for await (const s of tr.iter([1, 3])) steps.push(s, ((await m.lm_head.output) as Tensor).shape[1]!);
          const next = ((await m.transformer.h[0].output) as Tensor).shape;
          return { steps, next, done: true };
        },
        b.options(),
      );
      expect(bounded.value).toEqual({ steps: [1, 1, 3, 1], next: [1, 1, 256], done: true });
      // Steps past the generation's end with no module access still run their body (with a warning), as in nnsight.
      const past = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 2 },
        async (_m, tr) => {
          const steps: number[] = [];
          for await (const s of tr.iter(0, 6)) steps.push(s);
          return steps;
        },
        b.options(),
      );
      expect(past.value).toEqual([0, 1, 2, 3, 4, 5]);
      // A range that ends before it starts is an error, as a list that does not increase is (not a loop run no times).
      const backwards = await b.gpt2
        .generate(
          PROMPT,
          { maxNewTokens: 2 },
          async (_m, tr) => {
            for await (const _ of tr.iter(3, 1)) return "ran";
            return "ran no times";
          },
          b.options(),
        )
        .catch((e) => e);
      expect(backwards).toBeInstanceOf(TraceError);
      expect(backwards.message).toMatch(/^iter: end \(1\) is before start \(3\)/);
      // A value asked for in a step that never came says how many steps the generation had.
      const missed = await b.gpt2
        .generate(
          PROMPT,
          { maxNewTokens: 2 },
          async (m, tr) => {
            for await (const s of tr.iter(1, 4)) if (s === 3) await m.lm_head.output;
          },
          b.options(),
        )
        .catch((e) => e);
      expect(missed).toBeInstanceOf(MissedProviderError);
      expect(missed.message).toMatch(/lm_head\.output \(iteration 3\) was never provided: the module was not called that many times in the generation's 2 steps/);
    },
  },
  {
    name: "tr.stop() at a generation step ends the generation with the tokens of the steps that finished, and the stop's value",
    async run(b) {
      const plain = await b.gpt2.generate(PROMPT, { maxNewTokens: 6, eosTokenId: null }, async () => undefined, b.options());
      const stopped = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 6, eosTokenId: null },
        async (m, tr) => {
          for await (const step of tr.all()) {
            await m.lm_head.output;
            if (step === 2) tr.stop("enough");
          }
          return "not reached";
        },
        b.options(),
      );
      expect(stopped.value).toBe("enough");
      // Step 2's pass ends at the stop (its model call is cut short at the next module boundary): steps 0 and 1's tokens.
      expect(stopped.generated.toArray()).toEqual(plain.generated.narrow(1, 0, 2).toArray());
      expect(stopped.sequences.shape).toEqual([1, 5 + 2]);
      expect(stopped.text[0]).toBe(b.gpt2.tokenizer.decode(plain.generated.index(0).narrow(0, 0, 2).toArray()));
      // Stopped in the prompt's pass (before it, or after reading a value of it): no token, the prompt and the value.
      for (const read of [false, true]) {
        const early = await b.gpt2.generate(
          PROMPT,
          { maxNewTokens: 6 },
          async (m, tr) => {
            const shape = tr.vars.read ? ((await m.transformer.h[0].output) as Tensor).shape : null;
            tr.stop(shape);
          },
          b.options({ vars: { read } }),
        );
        expect(early.value).toEqual(read ? [1, 5, 256] : null);
        expect(early.generated.shape).toEqual([1, 0]);
        expect(early.sequences.toArray()).toEqual(plain.sequences.narrow(1, 0, 5).toArray());
        expect(early.text).toEqual([""]);
      }
    },
  },
  {
    name: "tr.next moves an invoke to the next step",
    async run(b) {
      const out = await b.llama.generate(
        PROMPT,
        { maxNewTokens: 3 },
        async (m, tr) => {
          const a = ((await m.model.layers[0].output) as Tensor).shape;
          tr.next();
          const c = ((await m.model.layers[0].output) as Tensor).shape;
          tr.next();
          const d = ((await m.model.norm.output) as Tensor).shape;
          return [a, c, d];
        },
        b.options(),
      );
      expect(out.value).toEqual([
        [1, 5, 256],
        [1, 1, 256],
        [1, 1, 256],
      ]);
      // next() counts from the invoke's iteration: one made before a loop is forgotten when it starts, and one
      // made from a step long gone (past the steps whose first calls are kept, 64) still names the right step.
      const steps = 70;
      const read = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: steps, eosTokenId: null },
        async (m, tr) => {
          const n = tr.vars.steps as number;
          m.transformer.h[1].next();
          const each: Tensor[] = [];
          for await (const step of tr.iter(0, n)) {
            each.push(((await m.transformer.h[1].output) as Tensor).narrow(1, -1, 1));
            if (step === n - 2) {
              for await (const _ of tr.iter([1])) each.push(((await m.transformer.h[1].next(n - 2).output) as Tensor).narrow(1, -1, 1));
            }
          }
          return each;
        },
        b.options({ vars: { steps } }),
      );
      const whole = (await b.gpt2.trace(read.sequences, async (m) => (await m.transformer.h[1].output) as Tensor, b.options())) as Tensor;
      expect(read.value).toHaveLength(steps + 1);
      // Step k's last position is token 4 + k of the sequence (a 5-token prompt).
      for (let k = 0; k < steps; k++) expect(maxAbsDiff(read.value[k]!, whole.narrow(1, 4 + k, 1)), `step ${k}`).toBeLessThan(1e-4);
      // The value read from step 1, 68 calls on: step 69's.
      expect(maxAbsDiff(read.value[steps]!, whole.narrow(1, 4 + steps - 1, 1))).toBeLessThan(1e-4);
    },
  },
  {
    name: "steering every step changes the text exactly as the same edit made without tsight's tracing",
    async run(b) {
      const vector = randn([256], new Generator(42)).mul(3);
      const out = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 12, eosTokenId: null },
        async (m, tr) => {
          for await (const _ of tr.all()) m.transformer.h[2].output = (h: Tensor) => h.add(tr.vars.vector);
        },
        b.options({ vars: { vector } }),
      );
      const plain = await b.gpt2.generate(PROMPT, { maxNewTokens: 12, eosTokenId: null });
      expect(out.text[0]).not.toBe(plain.text[0]);
      const ids = ref(await fixture("stdlib-gpt2"), "probe0/input_ids");
      expect(out.generated.index(0).toArray()).toEqual(await steeredReference(b.gpt2.model, ids, "transformer.h.2", vector, 12));
    },
  },
  {
    name: "an edit inside a block whose value changes at each step (a step's graph computes it) changes the text exactly as the same edit made without tsight's tracing",
    async run(b) {
      const vector = randn([256], new Generator(7)).mul(2);
      const out = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 10, eosTokenId: null },
        async (m, tr) => {
          let k = 0;
          for await (const _ of tr.all()) {
            const scale = 1 - 0.2 * k++;
            m.transformer.h[1].mlp.output = (h: Tensor) => h.add(tr.vars.vector.mul(scale));
          }
        },
        b.options({ vars: { vector } }),
      );
      const ids = ref(await fixture("stdlib-gpt2"), "probe0/input_ids");
      const reference = await steeredReference(b.gpt2.model, ids, "transformer.h.1.mlp", (k) => vector.mul(1 - 0.2 * k), 10);
      expect(out.generated.index(0).toArray()).toEqual(reference);
      const plain = await b.gpt2.generate(PROMPT, { maxNewTokens: 10, eosTokenId: null });
      expect(out.text[0]).not.toBe(plain.text[0]);
    },
  },
  {
    name: "batched generation with interventions matches generating each prompt alone",
    async run(b) {
      const prompts = ["import os\nimport sys\n\n", "class "];
      const batched = await b.llama.generate(
        async (tr) => {
          const a = tr.invoke(tr.vars.prompts[0], async (m, it) => {
            for await (const _ of it.iter(0, 3)) m.model.layers[1].output = (h: Tensor) => h.mul(1.5);
          });
          const c = tr.invoke(tr.vars.prompts[1], async (m) => ((await m.model.layers[0].output) as Tensor).shape);
          return { a: await a, c: await c };
        },
        { maxNewTokens: 8, eosTokenId: null },
        b.options({ vars: { prompts } }),
      );
      expect(batched.value.c).toEqual([1, 6, 256]);
      const first = await b.llama.generate(
        prompts[0]!,
        { maxNewTokens: 8, eosTokenId: null },
        async (m, tr) => {
          for await (const _ of tr.iter(0, 3)) m.model.layers[1].output = (h: Tensor) => h.mul(1.5);
        },
        b.options(),
      );
      const second = await b.llama.generate(prompts[1]!, { maxNewTokens: 8, eosTokenId: null });
      expect(batched.text).toEqual([first.text[0], second.text[0]]);
    },
  },
  {
    name: "greedy generation gives Hugging Face's tokens for every architecture, alone and in a left-padded batch",
    async run(b) {
      for (const arch of hfFixtures) {
        const lm = await b.arch(arch);
        const f = await fixture(arch);
        const none = async () => undefined;
        const single = await lm.generate(ref(f, "input_ids"), { maxNewTokens: 8, padTokenId: 0 }, none, b.options());
        expect(single.sequences.tolist(), arch).toEqual(ref(f, "generate/single").tolist());
        const batch = await lm.generate({ input_ids: ref(f, "batch_ids"), attention_mask: ref(f, "batch_mask") }, { maxNewTokens: 8, padTokenId: 0 }, none, b.options());
        expect(batch.sequences.tolist(), `${arch} batch`).toEqual(ref(f, "generate/batch").tolist());
      }
    },
  },
  {
    name: "gradients of a log-probability with respect to layer 0 match Hugging Face for every architecture",
    async run(b) {
      for (const arch of hfFixtures) {
        const lm = await b.arch(arch);
        const f = await fixture(arch);
        const out = await lm.trace(
          ref(f, "input_ids"),
          async (m, tr) => {
            const h = (await tr.vars.layer.split(".").reduce((e: any, k: string) => e[k], m).output) as Tensor;
            const lp = ((await m.output).logits as Tensor).index(0, -1).logSoftmax(-1).index(5);
            let grad: Tensor | undefined;
            await tr.backward(lp, async (g) => {
              grad = await g.grad(h);
            });
            return { grad: grad!, value: lp };
          },
          b.options({ grad: true, vars: { layer: lm.model.layerPaths()[0] } }),
        );
        expect(maxAbsDiff(out.grad, ref(f, "intervention/grad_l0/grad")), arch).toBeLessThan(1e-4);
        expect(Math.abs(out.value.item() - ref(f, "intervention/grad_l0/value").item())).toBeLessThan(1e-4);
      }
    },
  },
  {
    name: "gradients at a generation step flow through the attention points and through earlier steps' values, as in a forward over the whole sequence",
    async run(b) {
      // The gradient of step 1's log-probability with respect to layer 1's scores and pattern (the cache is then
      // read in place), and with respect to layer 0's output at step 0 (the cache then records gradients).
      const lossToken = 11;
      const stepped = await b.gpt2.generate(
        PROMPT,
        { maxNewTokens: 2, eosTokenId: null },
        async (m, tr) => {
          let h0: Tensor | undefined;
          let out: Record<string, Tensor> = {};
          for await (const step of tr.all()) {
            if (step === 0) h0 = (await m.transformer.h[0].output) as Tensor;
            if (step !== 1) continue;
            const scores = (await m.transformer.h[1].attn.source.scores.output) as Tensor;
            const pattern = (await m.transformer.h[1].attn.source.pattern.output) as Tensor;
            const loss = ((await m.lm_head.output) as Tensor).index(0, -1).logSoftmax(-1).index(tr.vars.token);
            await tr.backward(loss, async (g) => {
              // In reverse forward order, as gradients come.
              const p = await g.grad(pattern);
              out = { pattern: p, scores: await g.grad(scores), h0: await g.grad(h0!) };
            });
          }
          return out;
        },
        b.options({ grad: true, vars: { token: lossToken } }),
      );
      // The same loss in one forward over the prompt and the first generated token: step 1 is its last row.
      const whole = await b.gpt2.trace(
        stepped.sequences.narrow(1, 0, stepped.sequences.shape[1]! - 1),
        async (m, tr) => {
          const h0 = (await m.transformer.h[0].output) as Tensor;
          const scores = (await m.transformer.h[1].attn.source.scores.output) as Tensor;
          const pattern = (await m.transformer.h[1].attn.source.pattern.output) as Tensor;
          const loss = ((await m.lm_head.output) as Tensor).index(0, -1).logSoftmax(-1).index(tr.vars.token);
          let out: Record<string, Tensor> = {};
          await tr.backward(loss, async (g) => {
            const p = await g.grad(pattern);
            out = { pattern: p, scores: await g.grad(scores), h0: await g.grad(h0) };
          });
          return out;
        },
        b.options({ grad: true, vars: { token: lossToken } }),
      );
      const lastRow = (t: Tensor) => t.narrow(2, t.shape[2]! - 1, 1);
      expect(stepped.value.pattern!.shape).toEqual(lastRow(whole.pattern!).shape);
      expect(maxAbsDiff(stepped.value.pattern!, lastRow(whole.pattern!))).toBeLessThan(1e-5);
      expect(maxAbsDiff(stepped.value.scores!, lastRow(whole.scores!))).toBeLessThan(1e-5);
      expect(whole.pattern!.abs().max().item()).toBeGreaterThan(1e-3);
      // Layer 0's output at step 0 is the prompt's rows of the whole forward's.
      expect(maxAbsDiff(stepped.value.h0!, whole.h0!.narrow(1, 0, stepped.value.h0!.shape[1]!))).toBeLessThan(1e-5);
      expect(stepped.value.h0!.abs().max().item()).toBeGreaterThan(1e-4);
    },
  },
  {
    name: "setGrad changes what flows further back; gradients come in reverse order",
    async run(b) {
      const grads = (scale: number) =>
        b.gpt2.trace(
          PROMPT,
          async (m, tr) => {
            const h0 = (await m.transformer.h[0].output) as Tensor;
            const h1 = (await m.transformer.h[1].output) as Tensor;
            const loss = ((await m.lm_head.output) as Tensor).index(0, -1).logSoftmax(-1).index(11);
            let g0: Tensor | undefined, g1: Tensor | undefined;
            await tr.backward(loss, async (g) => {
              g1 = await g.grad(h1);
              if (tr.vars.scale !== 1) g.setGrad(h1, (x: Tensor) => x.mul(tr.vars.scale));
              g0 = await g.grad(h0);
            });
            return { g0: g0!, g1: g1! };
          },
          b.options({ grad: true, vars: { scale } }),
        );
      const plain = await grads(1);
      const doubled = await grads(2);
      expect(plain.g0.abs().max().item()).toBeGreaterThan(0);
      expect(maxAbsDiff(doubled.g1, plain.g1)).toBe(0);
      expect(maxAbsDiff(doubled.g0, plain.g0.mul(2))).toBeLessThan(1e-6);
      const wrong = await b.gpt2
        .trace(
          PROMPT,
          async (m, tr) => {
            const h0 = (await m.transformer.h[0].output) as Tensor;
            const h1 = (await m.transformer.h[1].output) as Tensor;
            const loss = ((await m.lm_head.output) as Tensor).sum();
            await tr.backward(loss, async (g) => {
              await g.grad(h0);
              await g.grad(h1);
            });
          },
          b.options({ grad: true }),
        )
        .catch((e) => e);
      expect(wrong).toBeInstanceOf(TraceError);
      expect(wrong.message).toMatch(/reverse forward order/);
    },
  },
  {
    name: "gradients do not leak between invokes; backward needs { grad: true } and a scalar loss",
    async run(b) {
      const prompts = [
        [324, 615, 638, 636, 284],
        [531, 221, 324, 615, 638],
      ];
      // Each prompt in its own invoke, each with its own loss: the gradients each invoke sees are its own.
      const perInvoke = async (tr: any) => {
        const lossGrad = async (m: any, it: any) => {
          const h = (await m.transformer.h[1].output) as Tensor;
          const loss = ((await m.lm_head.output) as Tensor).index(0, -1).logSoftmax(-1).index(7);
          let grad: Tensor | undefined;
          await it.backward(loss, async (g: any) => {
            grad = await g.grad(h);
          });
          return grad!;
        };
        const handles = tr.vars.prompts.map((p: number[]) => tr.invoke(p, lossGrad));
        return Promise.all(handles);
      };
      const [, both] = (await b.gpt2.trace(perInvoke, b.options({ grad: true, vars: { prompts } }))) as Tensor[];
      const [alone] = (await b.gpt2.trace(perInvoke, b.options({ grad: true, vars: { prompts: [prompts[1]] } }))) as Tensor[];
      expect(both!.shape).toEqual([1, 5, 256]);
      expect(maxAbsDiff(both!, alone!)).toBeLessThan(1e-6);
      const lossGrad = async (m: any, tr: any) => {
        const loss = ((await m.lm_head.output) as Tensor).index(0, -1).logSoftmax(-1).index(7);
        await tr.backward(loss);
      };
      const noGrad = await b.gpt2.trace(PROMPT, lossGrad, b.options()).catch((e) => e);
      expect(noGrad).toBeInstanceOf(TraceError);
      expect(noGrad.message).toMatch(/grad: true/);
      const notScalar = await b.gpt2
        .trace(
          PROMPT,
          async (m, tr) => {
            const logits = (await m.lm_head.output) as Tensor;
            await tr.backward(logits);
          },
          b.options({ grad: true }),
        )
        .catch((e) => e);
      expect(notScalar.message).toMatch(/single number/);
    },
  },
  {
    name: "a replacement that does not fit, at one generation step, is a SwapError naming that step; backward's grad of an envoy says to pass its value",
    async run(b) {
      const e = await b.gpt2
        .generate(
          "def __init__(self",
          { maxNewTokens: 4 },
          async (m, tr) => {
            for await (const step of tr.all()) if (step === 2) m.transformer.h[1].attn.source.pattern.output = (p: Tensor) => p.narrow(3, 0, 2);
          },
          b.options(),
        )
        .catch((x) => x);
      expect(e.name).toBe("SwapError");
      expect(e.message).toMatch(/after transformer\.h\.1\.attn\.source\.pattern\.output \(iteration 2\) was replaced with shape \[1, 4, 1, 2\] where the model gives \[1, 4, 1, 7\]/);
      const g = await b.gpt2
        .trace(
          "def __init__(self",
          async (m, tr) => {
            const loss = ((await m.lm_head.output) as Tensor).sum();
            await tr.backward(loss, async (scope) => void (await scope.grad(m.transformer.h[0] as never)));
          },
          b.options({ grad: true }),
        )
        .catch((x) => x);
      expect(g.message).toMatch(/transformer\.h\.0's envoy[ :(]+pass the value/);
    },
  },
];

export type { TraceBackend };
