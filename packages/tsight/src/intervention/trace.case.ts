/**
 * The behaviours of tracing, as a suite that runs against any way of executing a trace: in process, or through
 * a server (the remote parity harness runs this same file). Intervention functions here are self-contained:
 * they use only their parameters and `tr.vars`, as remote code must.
 */
import { expect } from "vitest";
import { fixture, fixtureDir, fixtureWeights, hfFixtures, maxAbsDiff, ref, type HfFixtureName } from "../../../../test/fixtures.js";
import type { GPT2LMHeadModel, LlamaForCausalLM } from "../models/index.js";
import { ModuleCallError } from "../nn/index.js";
import { Tensor } from "../tensor/index.js";
import { MissedProviderError, OutOfOrderError, SwapError, TraceError } from "./errors.js";
import { LanguageModel, type TraceOptions } from "./language-model.js";
import type { Cache } from "./cache.js";

export interface TraceBackend {
  /** Options added to every trace (e.g. where to run it). */
  options(extra?: TraceOptions): TraceOptions;
  gpt2: LanguageModel<GPT2LMHeadModel>;
  llama: LanguageModel<LlamaForCausalLM>;
  /** A model per Hugging Face fixture (tiny random weights), loaded from a folder. */
  arch(name: HfFixtureName): Promise<LanguageModel>;
  /** stdlib-gpt2 loaded with these rename aliases. */
  renamed(rename: Record<string, string | string[]>): Promise<LanguageModel<GPT2LMHeadModel>>;
}

export interface TraceCase {
  name: string;
  run(b: TraceBackend): Promise<void>;
}

const PROMPT = "def __init__(self";
const layerPath = (arch: string, i: number) => (arch === "gpt2" ? `transformer.h.${i}` : arch === "gpt_neox" ? `gpt_neox.layers.${i}` : `model.layers.${i}`);

export const traceCases: TraceCase[] = [
  {
    name: "returns module outputs and logits equal to Hugging Face's",
    async run(b) {
      const f = await fixture("stdlib-gpt2");
      const out = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const attn = await m.transformer.h[1].attn.output;
          const h1 = await m.transformer.h[1].output;
          return { h1, attnOut: attn[0], attnWeights: attn[1], logits: (await m.lm_head.output) as Tensor };
        },
        b.options(),
      );
      expect(maxAbsDiff(out.h1, ref(f, "single/transformer.h.1:output"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(out.attnOut, ref(f, "single/transformer.h.1.attn:output"))).toBeLessThan(1e-4);
      expect(out.attnWeights.shape).toEqual([1, 4, 5, 5]);
      // Each attention row is a distribution over earlier positions.
      expect(out.attnWeights.sum(-1).sub(1).abs().max().item()).toBeLessThan(1e-5);
      expect(out.attnWeights.index(0, 0, 0, 1).item()).toBe(0);
      expect(maxAbsDiff(out.logits, ref(f, "single/logits"))).toBeLessThan(1e-4);
      expect(out.logits.requiresGrad).toBe(false);
    },
  },
  {
    name: "reads inputs (first argument and all arguments) and the same value twice",
    async run(b) {
      const f = await fixture("stdlib-gpt2");
      const out = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const first = await m.transformer.h[2].input;
          const all = await m.transformer.h[2].inputs;
          const o1 = await m.transformer.h[2].output;
          const o2 = await m.transformer.h[2].output;
          return { first, allFirst: all[0], count: all.length, same: o1.sub(o2).abs().max().item() };
        },
        b.options(),
      );
      expect(maxAbsDiff(out.first, ref(f, "single/transformer.h.2:input"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(out.allFirst, out.first)).toBe(0);
      expect(out.count).toBe(2);
      expect(out.same).toBe(0);
    },
  },
  {
    name: "a replaced output is what later modules and the logits see",
    async run(b) {
      const out = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const h = await m.transformer.h[1].output;
          m.transformer.h[1].output = h.mul(0.5);
          const next = await m.transformer.h[2].ln_1.input;
          return { h, next, logits: (await m.lm_head.output) as Tensor };
        },
        b.options(),
      );
      expect(maxAbsDiff(out.next, out.h.mul(0.5))).toBe(0);
      const plain = await b.gpt2.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor, b.options());
      expect(maxAbsDiff(out.logits, plain)).toBeGreaterThan(0.1);
    },
  },
  {
    name: "a replacement can be a function of the current value, and an input can be replaced",
    async run(b) {
      const a = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          m.transformer.h[1].output = (h: Tensor) => h.mul(0.5);
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      const c = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const h = await m.transformer.h[2].input;
          m.transformer.h[2].input = h;
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      const halved = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          m.transformer.h[2].input = (h: Tensor) => h.mul(0.5);
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      const plain = await b.gpt2.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor, b.options());
      expect(maxAbsDiff(c, plain)).toBe(0);
      expect(maxAbsDiff(a, halved)).toBe(0);
    },
  },
  {
    name: "zeroing layer 1's MLP, steering and patching give Hugging Face's logits for every architecture",
    async run(b) {
      for (const arch of hfFixtures) {
        const lm = await b.arch(arch);
        const f = await fixture(arch);
        const l0 = layerPath(arch, 0);
        const l1 = layerPath(arch, 1);
        const zeroed = await lm.trace(
          ref(f, "input_ids"),
          async (m, tr) => {
            const mlp = (tr.vars.l1 + ".mlp").split(".").reduce((e: any, k: string) => e[k], m);
            mlp.output = ((await mlp.output) as Tensor).mul(0);
            return (await m.output).logits as Tensor; // the model's logits (Gemma 2 soft-caps lm_head's output)
          },
          b.options({ vars: { l1 } }),
        );
        expect(maxAbsDiff(zeroed, ref(f, "intervention/zero_mlp_l1/logits")), `${arch} zero_mlp_l1`).toBeLessThan(1e-4);
        const steered = await lm.trace(
          ref(f, "input_ids"),
          async (m, tr) => {
            const layer = tr.vars.l0.split(".").reduce((e: any, k: string) => e[k], m);
            layer.output = ((await layer.output) as Tensor).add(tr.vars.vector.mul(4));
            return (await m.output).logits as Tensor; // the model's logits (Gemma 2 soft-caps lm_head's output)
          },
          b.options({ vars: { l0, vector: ref(f, "intervention/steer_l0/vector") } }),
        );
        expect(maxAbsDiff(steered, ref(f, "intervention/steer_l0/logits")), `${arch} steer_l0`).toBeLessThan(1e-4);
        const patched = await lm.trace(
          async (tr) => {
            let source: Tensor | undefined;
            tr.invoke(tr.vars.source, async (m) => {
              source = (await tr.vars.l0.split(".").reduce((e: any, k: string) => e[k], m).output) as Tensor;
            });
            const target = tr.invoke(tr.vars.target, async (m) => {
              const layer = tr.vars.l0.split(".").reduce((e: any, k: string) => e[k], m);
              const h = (await layer.output) as Tensor;
              layer.output = h.put([null, -1], source!.index(null, -1));
              return (await m.output).logits as Tensor; // the model's logits (Gemma 2 soft-caps lm_head's output)
            });
            return target;
          },
          b.options({ vars: { l0, source: ref(f, "source_ids"), target: ref(f, "input_ids") } }),
        );
        expect(maxAbsDiff(patched, ref(f, "intervention/patch_l0_last/logits")), `${arch} patch_l0_last`).toBeLessThan(1e-4);
      }
    },
  },
  {
    name: "a mixture of experts' router output is read and replaced: forcing expert 2 runs exactly expert 2 from the checkpoint",
    async run(b) {
      for (const [arch, expert2] of [
        ["mixtral", (w: string) => `model.layers.0.block_sparse_moe.experts.2.${{ gate: "w1", up: "w3", down: "w2" }[w]}.weight`],
        ["qwen3_moe", (w: string) => `model.layers.0.mlp.experts.2.${w}_proj.weight`],
      ] as const) {
        const lm = await b.arch(arch);
        const f = await fixture(arch);
        const T = ref(f, "input_ids").shape[1]!;
        const out = await lm.trace(
          ref(f, "input_ids"),
          async (m, tr) => {
            const mlp = m.model.layers[0].mlp;
            const x = (await mlp.input) as Tensor; // (1, T, D)
            const [logits, weights, experts] = (await mlp.gate.output) as [Tensor, Tensor, Tensor]; // (T, E), (T, k), (T, k)
            mlp.gate.output = [logits, tr.vars.weights, tr.vars.experts];
            const [, seenExperts, seenWeights] = (await mlp.experts.inputs) as [Tensor, Tensor, Tensor];
            return { x, logits, weights, experts, seenExperts, seenWeights, y: (await mlp.output) as Tensor, final: (await m.lm_head.output) as Tensor };
          },
          // Every token to expert 2, in both of its k = 2 slots, half the weight each.
          b.options({ vars: { experts: Tensor.full([T, 2], 2, "int64"), weights: Tensor.full([T, 2], 0.5) } }),
        );
        // What the router computed is Hugging Face's (mlp.gate's first output), with k = 2 renormalised weights.
        expect(maxAbsDiff(out.logits, ref(f, "single/model.layers.0.mlp.gate:output")), arch).toBeLessThan(1e-4);
        expect(out.experts.dtype).toBe("int64");
        expect(out.weights.sum(-1).sub(1).abs().max().item()).toBeLessThan(1e-6);
        expect(out.seenExperts.tolist()).toEqual(Array.from({ length: T }, () => [2, 2]));
        expect(out.seenWeights.toArray()).toEqual(new Array(2 * T).fill(0.5));
        // Independently, from the checkpoint's own tensors for expert 2: down(silu(gate x) * up x).
        const w = await fixtureWeights(arch);
        const tokens = out.x.reshape(T, -1);
        const lin = (t: Tensor, key: string) => t.matmul(w.get(key)!.transpose(0, 1));
        const expected = lin(lin(tokens, expert2("gate")).silu().mul(lin(tokens, expert2("up"))), expert2("down"));
        expect(maxAbsDiff(out.y.reshape(T, -1), expected), arch).toBeLessThan(1e-5);
        // The edit reaches the logits: the router chose other experts for some tokens.
        expect(out.experts.eq(2).logicalNot().toArray().some(Boolean)).toBe(true);
        expect(maxAbsDiff(out.final, ref(f, "single/logits"))).toBeGreaterThan(1e-3);
      }
    },
  },
  {
    name: "an invoke's edits leave the other invokes' rows untouched",
    async run(b) {
      const both = await b.gpt2.trace(
        async (tr) => {
          const first = tr.invoke("import os", async (m) => {
            m.transformer.h[0].output = ((await m.transformer.h[0].output) as Tensor).mul(0);
            return (await m.lm_head.output) as Tensor;
          });
          const second = tr.invoke("class Foo:", async (m) => (await m.lm_head.output) as Tensor);
          return { first: await first, second: await second };
        },
        b.options(),
      );
      const alone = await b.gpt2.trace("class Foo:", async (m) => (await m.lm_head.output) as Tensor, b.options());
      const T = alone.shape[1]!;
      expect(maxAbsDiff(both.second.narrow(1, -T, T), alone)).toBeLessThan(1e-4);
      const plainFirst = await b.gpt2.trace("import os", async (m) => (await m.lm_head.output) as Tensor, b.options());
      const T1 = plainFirst.shape[1]!;
      expect(maxAbsDiff(both.first.narrow(1, -T1, T1), plainFirst)).toBeGreaterThan(0.1);
    },
  },
  {
    name: "invokes batch exactly like a list of prompts, with left padding",
    async run(b) {
      const prompts = ["import os\nimport sys\n\n", "class "];
      const listed = await b.llama.trace(prompts, async (m) => (await m.lm_head.output) as Tensor, b.options());
      const invoked = await b.llama.trace(
        async (tr) => {
          const a = tr.invoke(tr.vars.prompts[0], async (m) => (await m.lm_head.output) as Tensor);
          const c = tr.invoke(tr.vars.prompts[1], async (m) => (await m.lm_head.output) as Tensor);
          return { a: await a, c: await c };
        },
        b.options({ vars: { prompts } }),
      );
      expect(listed.shape).toEqual([2, 6, 4096]);
      expect(invoked.a.shape).toEqual([1, 6, 4096]);
      expect(maxAbsDiff(invoked.a, listed.narrow(0, 0, 1))).toBe(0);
      expect(maxAbsDiff(invoked.c, listed.narrow(0, 1, 1))).toBe(0);
      // The short prompt is left-padded; its real positions equal running it alone.
      const alone = await b.llama.trace("class ", async (m) => (await m.lm_head.output) as Tensor, b.options());
      expect(maxAbsDiff(invoked.c.narrow(1, 4, 2), alone)).toBeLessThan(1e-4);
    },
  },
  {
    name: "inputs may be strings, lists, token ids or tensors",
    async run(b) {
      const f = await fixture("stdlib-gpt2");
      const ids = f.manifest.probes![0]!.ids;
      const results = [];
      for (const input of [PROMPT, [PROMPT], ids, [ids], ref(f, "probe0/input_ids")]) {
        results.push(await b.gpt2.trace(input, async (m) => (await m.lm_head.output) as Tensor, b.options()));
      }
      for (const r of results) expect(maxAbsDiff(r, ref(f, "single/logits"))).toBeLessThan(1e-4);
    },
  },
  {
    name: "an empty invoke sees and may change the whole batch",
    async run(b) {
      const out = await b.gpt2.trace(
        async (tr) => {
          const first = tr.invoke("import os", async (m) => (await m.transformer.h[0].output) as Tensor);
          tr.invoke("class Foo:", async () => undefined);
          const all = tr.invoke(async (m) => {
            const h = (await m.transformer.h[0].output) as Tensor;
            m.transformer.h[0].output = h.mul(0);
            return { shape: h.shape, logits: (await m.lm_head.output) as Tensor };
          });
          return { first: await first, all: await all };
        },
        b.options(),
      );
      const T = out.first.shape[1]!;
      expect(out.all.shape).toEqual([2, T, 256]);
      expect(out.first.abs().max().item()).toBeGreaterThan(0);
      // All rows were zeroed after layer 0, so both rows' logits depend only on positions.
      expect(out.all.logits.shape).toEqual([2, T, 4096]);
    },
  },
  {
    name: "asking for a module out of order is an OutOfOrderError at the user's line",
    async run(b) {
      const e = await b.gpt2
        .trace(
          PROMPT,
          async (m) => {
            await m.transformer.h[2].output;
            await m.transformer.h[1].output;
          },
          b.options(),
        )
        .catch((x) => x);
      expect(e).toBeInstanceOf(OutOfOrderError);
      expect(e.message).toContain("transformer.h.1.output");
      expect(e.message).toMatch(/trace\.case\.ts:\d+:\d+/);
      // The model still works.
      const f = await fixture("stdlib-gpt2");
      expect(maxAbsDiff(await b.gpt2.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor, b.options()), ref(f, "single/logits"))).toBeLessThan(1e-4);
    },
  },
  {
    name: "a value that never comes is a MissedProviderError naming the module",
    async run(b) {
      const e = await b.gpt2.trace(PROMPT, async (m) => await m.transformer.h[0].attn.attn_dropout.output, b.options()).catch((x) => x);
      expect(e).toBeInstanceOf(MissedProviderError);
      expect(e.message).toContain("transformer.h.0.attn.attn_dropout.output");
      expect(e.message).toMatch(/trace\.case\.ts:\d+:\d+/);
      const w = await b.gpt2
        .trace(
          PROMPT,
          async (m) => {
            m.transformer.h[0].attn.attn_dropout.output = (x: Tensor) => x;
          },
          b.options(),
        )
        .catch((x) => x);
      expect(w).toBeInstanceOf(MissedProviderError);
    },
  },
  {
    name: "errors in intervention code reach the caller with their type and message; the model stays usable",
    async run(b) {
      const e = await b.gpt2
        .trace(
          PROMPT,
          async (m) => {
            const h = (await m.transformer.h[0].output) as Tensor;
            if (h.shape[0] === 1) throw new RangeError("my own mistake");
          },
          b.options(),
        )
        .catch((x) => x);
      expect(e).toBeInstanceOf(RangeError);
      expect(e.message).toBe("my own mistake");
      const shape = await b.gpt2
        .trace(
          PROMPT,
          async (m) => {
            const h = (await m.transformer.h[0].output) as Tensor;
            return h.matmul(h);
          },
          b.options(),
        )
        .catch((x) => x);
      expect(shape.name).toBe("ShapeError");
      const swap = await b.gpt2
        .trace(
          PROMPT,
          async (m) => {
            m.transformer.h[0].output = ((await m.transformer.h[0].output) as Tensor).index(null, slice01());
            function slice01() {
              return { start: 0, stop: 1 };
            }
          },
          b.options(),
        )
        .catch((x) => x);
      // A replacement of another shape is taken; the op that cannot use it fails naming the assignment and both shapes.
      expect(swap).toBeInstanceOf(SwapError);
      expect(swap.message).toMatch(/transformer\.h\.0\.output was replaced with shape \[1, 1, 256\] where the model gives \[1, 5, 256\]/);
      expect(swap.message.split("\n")[0]).toMatch(/shape|fit/i); // the failing op's own message comes first
      // z replaced merged ([B, T, H*D], as TransformerLens users may think of it): the layout it must have comes first.
      const merged = await b.gpt2
        .trace(PROMPT, async (m, tr) => void (m.transformer.h[1].attn.source.z.output = tr.vars.z as Tensor), b.options({ vars: { z: Tensor.zeros([1, 5, 256]) } }))
        .catch((x) => x);
      expect(merged).toBeInstanceOf(SwapError);
      expect(merged.message.split("\n")[0]).toBe("attention: the per-head outputs z must be [batch, heads, tokens, head_dim], got [1, 5, 256]");
      expect(merged.message).toMatch(/source\.z\.output was replaced with shape \[1, 5, 256\] where the model gives \[1, 4, 5, 64\]/);
      // With another invoke in the batch, a replacement that is no tensor is compared with this invoke's rows.
      const notTensor = await b.gpt2
        .trace(async (tr) => {
          tr.invoke(tr.vars.prompt, async (m) => void (await m.lm_head.output));
          return tr.invoke(tr.vars.prompt, async (m) => {
            m.transformer.h[0].output = (() => 3) as never;
            await m.lm_head.output;
          });
        }, b.options({ vars: { prompt: PROMPT } }))
        .catch((x) => x);
      expect(notTensor).toBeInstanceOf(SwapError);
      expect(notTensor.message).toMatch(/cannot replace transformer\.h\.0\.output: transformer\.h\.0\.output is a tensor of shape \[1, 5, 256\] for this invoke's rows; the replacement is a number/);
      // Integers where activations were (an argmax) are refused, not cast; integer ids may be given as int32.
      const ints = await b.gpt2
        .trace(
          PROMPT,
          async (m) => {
            const h = (await m.transformer.h[0].output) as Tensor;
            m.transformer.h[0].output = h.argmax(-1).unsqueeze(-1).expand(h.shape);
          },
          b.options(),
        )
        .catch((x) => x);
      expect(ints).toBeInstanceOf(SwapError);
      expect(ints.message).toMatch(/transformer\.h\.0\.output is float32; the replacement is int64 \(convert it with \.to\("float32"\) if that is meant\)/);
      const int32Ids = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          m.transformer.wte.input = ((await m.transformer.wte.input) as Tensor).to("int32");
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      const f = await fixture("stdlib-gpt2");
      expect(maxAbsDiff(int32Ids, ref(f, "single/logits"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(await b.gpt2.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor, b.options()), ref(f, "single/logits"))).toBeLessThan(1e-4);
    },
  },
  {
    name: "a replacement of another shape flows on as in PyTorch: broadcast into the residual sum, and scan shows it",
    async run(b) {
      const out = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const mlp = (await m.transformer.h[0].mlp.output) as Tensor;
          m.transformer.h[0].mlp.output = mlp.mean(1, true); // [1, 1, 256], added to the [1, 5, 256] residual
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      const expanded = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const mlp = (await m.transformer.h[0].mlp.output) as Tensor;
          m.transformer.h[0].mlp.output = mlp.mean(1, true).expand([1, 5, 256]);
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      expect(maxAbsDiff(out, expanded)).toBe(0);
      // scan (shapes only) shows the new shape, and what it becomes further on.
      const shapes = await b.gpt2.scan(
        PROMPT,
        async (m, tr) => {
          m.transformer.h[1].mlp.output = tr.vars.z;
          const mlp = (await m.transformer.h[1].mlp.output) as Tensor;
          return { mlp: mlp.shape, block: ((await m.transformer.h[1].output) as Tensor).shape };
        },
        b.options({ vars: { z: Tensor.full([1, 1, 256], 0) } }),
      );
      expect(shapes).toEqual({ mlp: [1, 1, 256], block: [1, 5, 256] });
    },
  },
  {
    name: "helper functions travel in vars: they may call each other, serve as replacements, and are checked for free variables",
    async run(b) {
      function double(h: Tensor): Tensor {
        return h.mul(2);
      }
      function quadruple(h: Tensor): Tensor {
        return double(double(h));
      }
      const out = await b.gpt2.trace(
        PROMPT,
        async (m, tr) => {
          const h0 = (await m.transformer.h[0].output) as Tensor;
          m.transformer.h[1].output = tr.vars.quadruple;
          return { doubled: tr.vars.double(h0), h0, logits: (await m.lm_head.output) as Tensor };
        },
        b.options({ vars: { double, quadruple } }),
      );
      expect(maxAbsDiff(out.doubled, out.h0.mul(2))).toBe(0);
      const manual = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          m.transformer.h[1].output = ((await m.transformer.h[1].output) as Tensor).mul(4);
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      expect(maxAbsDiff(out.logits, manual)).toBe(0);
      const k = 3;
      const scaled = (h: Tensor) => h.mul(k);
      const e = await b.gpt2.trace(PROMPT, async (m, tr) => tr.vars.scaled(await m.transformer.h[0].output), b.options({ vars: { scaled } })).catch((x) => x);
      const opts = b.options() as Record<string, unknown>;
      if ("backend" in opts || "remote" in opts) {
        // Remotely a helper must be self-contained, as an intervention must: refused before anything is sent.
        expect(e.name).toBe("FreeVariableError");
        expect(e.message).toMatch(/^vars\.scaled: [\s\S]*\bk\b/);
      } else expect(e).toBeInstanceOf(Tensor);
    },
  },
  {
    name: "skip: a skipped module does not run and its value is used; its children cannot be read",
    async run(b) {
      const skipped = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const h0 = (await m.transformer.h[0].output) as Tensor;
          m.transformer.h[1].skip(h0);
          return { h1: (await m.transformer.h[1].output) as Tensor, h0, logits: (await m.lm_head.output) as Tensor };
        },
        b.options(),
      );
      expect(maxAbsDiff(skipped.h1, skipped.h0)).toBe(0);
      const replaced = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const h0 = (await m.transformer.h[0].output) as Tensor;
          await m.transformer.h[1].output;
          m.transformer.h[1].output = h0;
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      expect(maxAbsDiff(skipped.logits, replaced)).toBe(0);
      const e = await b.gpt2
        .trace(
          PROMPT,
          async (m) => {
            const h0 = (await m.transformer.h[0].output) as Tensor;
            m.transformer.h[1].skip(h0);
            return await m.transformer.h[1].mlp.output;
          },
          b.options(),
        )
        .catch((x) => x);
      expect(e).toBeInstanceOf(MissedProviderError);
      expect(e.message).toMatch(/transformer\.h\.1\.mlp\.output is inside transformer\.h\.1, which this invoke skips/);
      // Attention returns [output, weights]: a skip with that structure is what the model takes (the same as
      // replacing its output); a bare tensor fails in the block's code, and the error names the skip.
      const attn = (value: "tuple" | "tensor") =>
        b.gpt2.trace(
          PROMPT,
          async (m, tr) => {
            const out = (await m.transformer.h[0].attn.output) as [Tensor, Tensor];
            if (tr.vars.value === "tuple") m.transformer.h[1].attn.skip([out[0], out[1]]);
            // Untyped code (plain JavaScript): TypeScript refuses this.
            else (m.transformer.h[1].attn as any).skip(out[0]);
            return (await m.lm_head.output) as Tensor;
          },
          b.options({ vars: { value } }),
        );
      const tuple = await attn("tuple");
      const asOutput = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const out = (await m.transformer.h[0].attn.output) as [Tensor, Tensor];
          await m.transformer.h[1].attn.output;
          m.transformer.h[1].attn.output = [out[0], out[1]];
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      expect(maxAbsDiff(tuple, asOutput)).toBe(0);
      const bare = await attn("tensor").catch((x) => x);
      expect(bare).toBeInstanceOf(SwapError);
      expect(bare.message).toMatch(/after transformer\.h\.1\.attn was skipped with a tensor of shape \[1, 5, 256\] as its output: a skip value must have the structure of what the module returns/);
    },
  },
  {
    name: "stop ends the forward early and returns what was computed",
    async run(b) {
      const out = (await b.gpt2.trace(
        PROMPT,
        async (m, tr) => {
          const cache = tr.cache();
          const h0 = (await m.transformer.h[0].output) as Tensor;
          tr.stop({ h0, cache });
          throw new Error("the code after tr.stop() runs");
        },
        b.options(),
      )) as unknown as { h0: Tensor; cache: Cache };
      expect(out.h0.shape).toEqual([1, 5, 256]);
      const seen = out.cache.keys();
      expect(seen).toContain("transformer.h.0");
      expect(seen).not.toContain("transformer.h.1");
      expect(seen).not.toContain("lm_head");
    },
  },
  {
    name: "a barrier lets one invoke hand its embeddings to another at the same module",
    async run(b) {
      const out = await b.gpt2.trace(
        async (tr) => {
          const barrier = tr.barrier(2);
          let emb: Tensor | undefined;
          // Two prompts of five tokens each, so rows line up position by position.
          const source = tr.invoke([324, 615, 638, 636, 284], async (m) => {
            emb = (await m.transformer.wte.output) as Tensor;
            await barrier();
            return (await m.lm_head.output) as Tensor;
          });
          const target = tr.invoke([531, 221, 324, 615, 638], async (m) => {
            await barrier();
            m.transformer.wte.output = emb!;
            return (await m.lm_head.output) as Tensor;
          });
          return { source: await source, target: await target };
        },
        b.options(),
      );
      expect(maxAbsDiff(out.source, out.target)).toBe(0);
      const e = await b.gpt2
        .trace(
          async (tr) => {
            const barrier = tr.barrier(2);
            tr.invoke(tr.vars.prompt, async (m) => {
              await m.transformer.wte.output;
              await barrier();
            });
          },
          b.options({ vars: { prompt: PROMPT } }),
        )
        .catch((x) => x);
      expect(e).toBeInstanceOf(TraceError);
      expect(e.message).toMatch(/barrier for 2 invokes was reached by only 1/);
      // nnsight's way, without the barrier: the value is not read yet when the second invoke assigns it. The error
      // says so, and assigning a function of it instead works.
      const patch = (late: boolean) =>
        b.gpt2.trace(
          async (tr) => {
            let emb: Tensor | undefined;
            tr.invoke([324, 615, 638, 636, 284], async (m) => void (emb = (await m.transformer.wte.output) as Tensor));
            return tr.invoke([531, 221, 324, 615, 638], async (m) => {
              m.transformer.wte.output = tr.vars.late ? () => emb! : emb!;
              return (await m.lm_head.output) as Tensor;
            });
          },
          b.options({ vars: { late } }),
        );
      const early = await patch(false).catch((x) => x);
      expect(early).toBeInstanceOf(TraceError);
      expect(early.message).toMatch(/assigning undefined to transformer\.wte\.output.*another invoke reads, it is not read yet when this line runs: assign a function that returns it/);
      expect(maxAbsDiff((await patch(true)) as Tensor, out.source)).toBe(0);
    },
  },
  {
    name: "cache records every module's value after interventions",
    async run(b) {
      const f = await fixture("stdlib-gpt2");
      const out = await b.gpt2.trace(
        PROMPT,
        async (m, tr) => {
          const cache = tr.cache();
          const some = tr.cache({ modules: ["transformer.h.1"], inputs: true });
          m.transformer.h[2].output = ((await m.transformer.h[2].output) as Tensor).mul(0);
          await m.lm_head.output;
          return { all: cache.toObject(), h1: some.get("transformer.h.1")!, keys: some.keys() };
        },
        b.options(),
      );
      expect(maxAbsDiff(out.all["transformer.h.1"] as Tensor, ref(f, "single/transformer.h.1:output"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(out.all["transformer.h.0.mlp.c_fc"] as Tensor, ref(f, "single/transformer.h.0.mlp.c_fc:output"))).toBeLessThan(1e-4);
      expect((out.all["transformer.h.2"] as Tensor).abs().max().item()).toBe(0);
      expect(maxAbsDiff(out.h1.inputs![0] as Tensor, ref(f, "single/transformer.h.1:input"))).toBeLessThan(1e-4);
      expect(out.keys).toEqual(["transformer.h.1"]);
    },
  },
  {
    name: "cache records exactly the modules named (paths or envoys) and reads like the model, in the code and after",
    async run(b) {
      const f = await fixture("stdlib-gpt2");
      const out = await b.gpt2.trace(
        PROMPT,
        async (m, tr) => {
          const layers = tr.cache({ modules: [...m.transformer.h] });
          const attns = tr.cache({ modules: m.transformer.h.map((l: any) => l.attn) });
          const one = tr.cache({ modules: ["transformer.h.0"], inputs: true });
          await m.lm_head.output;
          // Inside the intervention: by path, by index (negative too).
          const inside = [layers.transformer.h[1].output, layers.transformer.h[-1].output, one.transformer.h[0].input];
          return { layers, attnKeys: attns.keys(), oneKeys: one.keys(), inside };
        },
        b.options(),
      );
      expect(out.layers.keys()).toEqual(["transformer.h.0", "transformer.h.1", "transformer.h.2", "transformer.h.3"]);
      expect(out.attnKeys).toEqual(["transformer.h.0.attn", "transformer.h.1.attn", "transformer.h.2.attn", "transformer.h.3.attn"]);
      expect(out.oneKeys).toEqual(["transformer.h.0"]);
      expect(maxAbsDiff(out.inside[0], ref(f, "single/transformer.h.1:output"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(out.inside[1], ref(f, "single/transformer.h.3:output"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(out.inside[2], ref(f, "single/transformer.h.0:input"))).toBeLessThan(1e-4);
      // The returned cache navigates the same way.
      expect(maxAbsDiff((out.layers as any).transformer.h[2].output, ref(f, "single/transformer.h.2:output"))).toBeLessThan(1e-4);
      expect(maxAbsDiff((out.layers as any).transformer.h[-2].output, ref(f, "single/transformer.h.2:output"))).toBeLessThan(1e-4);
      expect(() => (out.layers as any).transformer.h[1].mlp.output).toThrow(/transformer\.h\.1\.mlp was not recorded/);
      // Inputs are recorded only when asked for: reading them otherwise says so, in the code and after.
      const noInputs = "cache: transformer.h.1's inputs were not recorded: a cache records them when made with tr.cache({ inputs: true })";
      expect(() => (out.layers as any).transformer.h[1].input).toThrow(noInputs);
      expect(() => (out.layers as any).transformer.h[1].inputsByCall).toThrow(noInputs);
      const inside = await b.gpt2
        .trace(
          PROMPT,
          async (m, tr) => {
            const c = tr.cache({ modules: ["transformer.h.1"] });
            await m.lm_head.output;
            return c.transformer.h[1].input;
          },
          b.options(),
        )
        .catch((e) => e);
      expect(inside).toBeInstanceOf(TraceError);
      expect(inside.message).toContain(noInputs);
      // A cache of layers other than the first navigates by index too, from either end (a server sends the lists'
      // lengths with it).
      const sparse = (await b.gpt2.trace(
        PROMPT,
        async (m, tr) => {
          const c = tr.cache({ modules: ["transformer.h.2.attn.source.pattern", "transformer.h.1"] });
          await m.lm_head.output;
          return c;
        },
        b.options(),
      )) as any;
      expect(sparse.transformer.h[2].attn.source.pattern.output.shape).toEqual([1, 4, 5, 5]);
      expect(maxAbsDiff(sparse.transformer.h[-3].output, ref(f, "single/transformer.h.1:output"))).toBeLessThan(1e-4);
      expect(() => sparse.transformer.h[4]).toThrow(/transformer\.h\[4\] is out of range: it has 4 modules/);
      // A module that is none is a TraceError, quoted at most 200 characters long; naming one many times records it once.
      const bad = await b.gpt2.trace(PROMPT, async (_m, tr) => void tr.cache({ modules: ["nope.".repeat(100_000)] }), b.options()).catch((e) => e);
      expect(bad).toBeInstanceOf(TraceError);
      expect(bad.message).toMatch(/cache: the model has no module "(nope\.){40}\.\.\." \(500000 characters\)/);
      const many = await b.gpt2.trace(
        PROMPT,
        async (m, tr) => {
          const c = tr.cache({ modules: Array.from({ length: 1000 }, () => "transformer.h.0") });
          await m.lm_head.output;
          return c.keys();
        },
        b.options(),
      );
      expect(many).toEqual(["transformer.h.0"]);
    },
  },
  {
    name: "a cache in generation keeps every step's value; rename aliases navigate it",
    async run(b) {
      const lm = await b.renamed({ "transformer.h": "layers", mlp: "ffn" });
      const out = await lm.generate(
        PROMPT,
        { maxNewTokens: 3, eosTokenId: null },
        async (m, tr) => {
          const c = tr.cache({ modules: [(m as any).layers[1].ffn] });
          for await (const _ of tr.all()) await m.lm_head.output;
          return { steps: c.layers[1].ffn.outputs.map((t: any) => t.shape), first: c.layers[1].ffn.output, c };
        },
        b.options(),
      );
      expect(out.value.steps).toEqual([[1, 5, 256], [1, 1, 256], [1, 1, 256]]);
      const f = await fixture("stdlib-gpt2");
      expect(maxAbsDiff(out.value.first, ref(f, "single/transformer.h.1.mlp:output"))).toBeLessThan(1e-4);
      expect((out.value.c as Cache).keys()).toEqual(["transformer.h.1.mlp"]);
    },
  },
  {
    name: "calling a module directly gives the logit lens",
    async run(b) {
      const out = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const before = (await m.transformer.h[3].input) as Tensor;
          const last = (await m.transformer.h[3].output) as Tensor;
          const lens = (await m.lm_head.call(await m.transformer.ln_f.call(last))) as Tensor;
          const early = (await m.lm_head.call(await m.transformer.ln_f.call(before))) as Tensor;
          return { lens, early, logits: (await m.lm_head.output) as Tensor };
        },
        b.options(),
      );
      expect(maxAbsDiff(out.lens, out.logits)).toBeLessThan(1e-5);
      expect(maxAbsDiff(out.early, out.logits)).toBeGreaterThan(0.01);
      // A decoder layer takes what the stack passes it besides the hidden state: with all its inputs it gives its
      // output; with the hidden state alone, a ModuleCallError saying so (GPT-2: the mask; Llama: the rotary tables).
      const again = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const args = await m.transformer.h[1].inputs;
          return { called: (await m.transformer.h[1].call(...args)) as Tensor, output: (await m.transformer.h[1].output) as Tensor };
        },
        b.options(),
      );
      expect(maxAbsDiff(again.called, again.output)).toBeLessThan(1e-6);
      // A module called directly is not a call of the model's pass: its operation points are still the model's to read.
      const side = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const mlp = m.transformer.h[2].mlp;
          const called = (await mlp.call(((await m.transformer.h[2].ln_2.output) as Tensor).mul(2))) as Tensor;
          return { called, post: (await mlp.source.post.output) as Tensor, output: (await mlp.output) as Tensor };
        },
        b.options(),
      );
      const post = await b.gpt2.trace(PROMPT, async (m) => (await m.transformer.h[2].mlp.source.post.output) as Tensor, b.options());
      expect(maxAbsDiff(side.post, post)).toBe(0);
      expect(maxAbsDiff(side.called, side.output)).toBeGreaterThan(0.01);
      const alone = await b.gpt2.trace(PROMPT, async (m) => await (m.transformer.h[1] as any).call(await m.transformer.h[1].input), b.options()).catch((x) => x);
      expect(alone).toBeInstanceOf(ModuleCallError);
      expect(alone.message).toMatch(/^transformer\.h\.1\.attn was called without its attention context \(mask, positions, KV cache\): call a decoder layer or its attention with every argument the stack passes it, `layer\.call\(\.\.\.\(await layer\.inputs\)\)`/);
      const rotary = await b.llama.trace(PROMPT, async (m) => await (m.model.layers[1] as any).call(await m.model.layers[1]!.input), b.options()).catch((x) => x);
      expect(rotary).toBeInstanceOf(ModuleCallError);
      expect(rotary.message).toMatch(/^model\.layers\.1\.self_attn was called without the rotary tables \(cos, sin\) the stack makes/);
    },
  },
  {
    name: "unknown module names fail with the names that exist",
    async run(b) {
      const e = await b.gpt2.trace(PROMPT, async (m) => await (m as any).transformer.layers[0].output, b.options()).catch((x) => x);
      expect(e).toBeInstanceOf(TraceError);
      expect(e.message).toMatch(/transformer \(GPT2Model\) has no module "layers"; its modules are: wte, wpe, drop, h, ln_f/);
      expect(String(e.stack).split("\n")[0]).toMatch(/^TraceError: /);
      // TransformerLens's names for the operation points get tsight's.
      const lens = await b.gpt2.trace(PROMPT, async (m) => await (m as any).transformer.h[1].attn.source.hook_pattern.output, b.options()).catch((x) => x);
      expect(lens).toBeInstanceOf(TraceError);
      expect(lens.message).toMatch(/source \(AttentionPoints\) has no module "hook_pattern" \(TransformerLens's hook_pattern is pattern here\); its modules are: q, k, v, scores, pattern, z/);
      // Asked of the attention itself (as TransformerLens's attn.hook_pattern), the hint goes through its source.
      const attn = await b.gpt2.trace(PROMPT, async (m) => await (m as any).transformer.h[1].attn.hook_pattern.output, b.options()).catch((x) => x);
      expect(attn).toBeInstanceOf(TraceError);
      expect(attn.message).toMatch(/attn \(GPT2Attention\) has no module "hook_pattern" \(TransformerLens's hook_pattern is source\.pattern here\)/);
      // q and k are after rotary: TransformerLens's hook_rot_q on a rotary model, its hook_q only on one without.
      const rot = await b.llama.trace(PROMPT, async (m) => await (m as any).model.layers[1].self_attn.source.hook_rot_q.output, b.options()).catch((x) => x);
      expect(rot.message).toMatch(/has no module "hook_rot_q" \(TransformerLens's hook_rot_q is q here\)/);
      const hookQ = await b.llama.trace(PROMPT, async (m) => await (m as any).model.layers[1].self_attn.source.hook_q.output, b.options()).catch((x) => x);
      expect(hookQ.message).toMatch(/has no module "hook_q" \(TransformerLens's hook_q is q here, on a model without rotary; on a rotary one q is after rotary, TransformerLens's hook_rot_q\)/);
      // A module without points asked for its source says which have them.
      const noSource = await b.gpt2.trace(PROMPT, async (m) => await (m as any).transformer.h[1].ln_1.source.q.output, b.options()).catch((x) => x);
      expect(noSource).toBeInstanceOf(TraceError);
      expect(noSource.message).toMatch(/ln_1 \(LayerNorm\) has no module "source" \(operation points are in attention modules and dense MLPs: `attn\.source`, `mlp\.source`\); its modules are: none/);
      // The holder of the points has no value of its own: asking it for one fails at once, naming its points.
      const holder = /transformer\.h\.1\.(attn|mlp)\.source holds operation points \((q, k, v, scores, pattern, z|pre, post)\) and is never called itself: read or edit one of them, e\.g\. transformer\.h\.1\.(attn\.source\.pattern|mlp\.source\.pre)\.output/;
      const read = await b.gpt2.trace(PROMPT, async (m) => await (m as any).transformer.h[1].attn.source.output, b.options()).catch((x) => x);
      expect(read).toBeInstanceOf(TraceError);
      expect(read.message).toMatch(holder);
      const write = await b.gpt2
        .trace(
          PROMPT,
          async (m) => {
            (m as any).transformer.h[1].mlp.source.output = await m.transformer.h[1].mlp.output;
          },
          b.options(),
        )
        .catch((x) => x);
      expect(write).toBeInstanceOf(TraceError);
      expect(write.message).toMatch(holder);
      // A point is a value, not a computation: skipping or calling it fails at once (a skip was a replacement,
      // a call the identity), saying what to do instead.
      const skip = await b.gpt2.trace(PROMPT, async (m) => (m as any).transformer.h[1].attn.source.pattern.skip(null), b.options()).catch((x) => x);
      expect(skip).toBeInstanceOf(TraceError);
      expect(skip.message).toMatch(/transformer\.h\.1\.attn\.source\.pattern is an operation point, a value inside its module's forward, not a computation: it cannot be skipped; to replace its value, assign it: transformer\.h\.1\.attn\.source\.pattern\.output = value/);
      const call = await b.gpt2.trace(PROMPT, async (m) => await (m as any).transformer.h[1].mlp.source.pre.call(1), b.options()).catch((x) => x);
      expect(call).toBeInstanceOf(TraceError);
      expect(call.message).toMatch(/transformer\.h\.1\.mlp\.source\.pre is an operation point, .* it cannot be called; read it as transformer\.h\.1\.mlp\.source\.pre\.output/);
      const holderCall = await b.gpt2.trace(PROMPT, async (m) => await (m as any).transformer.h[1].attn.source.call(1), b.options()).catch((x) => x);
      expect(holderCall).toBeInstanceOf(TraceError);
      expect(holderCall.message).toMatch(holder);
    },
  },
  {
    name: "edit: a persistent intervention in a copy, in place, and cleared",
    async run(b) {
      const f = await fixture("gpt2");
      const lm = await b.arch("gpt2");
      const zeroMlp = async (m: any) => {
        m.transformer.h[1].mlp.output = ((await m.transformer.h[1].mlp.output) as Tensor).mul(0);
      };
      const logits = (model: LanguageModel) => model.trace(ref(f, "input_ids"), async (m) => (await m.lm_head.output) as Tensor, b.options());
      const edited = lm.edit(zeroMlp);
      expect(maxAbsDiff(await logits(edited), ref(f, "intervention/zero_mlp_l1/logits"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(await logits(lm), ref(f, "single/logits"))).toBeLessThan(1e-4);
      // The edit runs before the invokes: they read the edited value.
      const seen = await edited.trace(ref(f, "input_ids"), async (m) => ((await m.transformer.h[1].mlp.output) as Tensor).abs().max().item(), b.options());
      expect(seen).toBe(0);
      lm.edit(zeroMlp, { inplace: true });
      expect(maxAbsDiff(await logits(lm), ref(f, "intervention/zero_mlp_l1/logits"))).toBeLessThan(1e-4);
      lm.clearEdits();
      expect(maxAbsDiff(await logits(lm), ref(f, "single/logits"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(await logits(edited), ref(f, "intervention/zero_mlp_l1/logits"))).toBeLessThan(1e-4);
    },
  },
  {
    name: "scan gives every module's shapes without weights (meta model)",
    async run(b) {
      // The backend's own class (the remote-capable one in the remote suites), so its options take effect.
      const Model = b.llama.constructor as typeof LanguageModel;
      const meta = await Model.load("stdlib-llama", { dispatch: false });
      const shapes = await meta.scan(
        "def f(x):",
        async (m) => {
          const q = await m.model.layers[0].self_attn.q_proj.output;
          const attn = await m.model.layers[0].self_attn.output;
          m.model.layers[1].output = ((await m.model.layers[1].output) as Tensor).mul(2);
          const logits = (await m.lm_head.output) as Tensor;
          return { attn: attn[0].shape, weights: attn[1].shape, q: q.shape, logits: logits.shape, meta: logits.isMeta };
        },
        b.options(),
      );
      expect(shapes).toEqual({ attn: [1, 5, 256], weights: [1, 4, 5, 5], q: [1, 5, 256], logits: [1, 5, 4096], meta: true });
      // On a model with weights, scan still computes nothing.
      const onReal = await b.gpt2.scan(PROMPT, async (m) => ((await m.lm_head.output) as Tensor).isMeta, b.options());
      expect(onReal).toBe(true);
    },
  },
  {
    name: "a model loaded with dispatch: false loads its weights at its first trace (a scan never needs them, nor does a remote run)",
    async run(b) {
      const Model = b.gpt2.constructor as typeof LanguageModel;
      const base = await b.arch("gpt2");
      const f = await fixture("gpt2");
      const ids = ref(f, "input_ids");
      const lazy = await Model.load(base.name, { dispatch: false });
      // A server runs it on its own weights; in process and in the local sandbox (remote: "local") they load here.
      const isRemote = "backend" in b.options();
      expect(lazy.dispatched).toBe(false);
      expect(await lazy.scan(ids, async (m: any) => ((await m.lm_head.output) as Tensor).isMeta, b.options())).toBe(true);
      expect(lazy.dispatched).toBe(false);
      const edited = lazy.edit(async (m: any) => void (m.transformer.h[1].mlp.output = ((await m.transformer.h[1].mlp.output) as Tensor).mul(0)));
      const logits = (model: LanguageModel) => model.trace(ids, async (m: any) => (await m.lm_head.output) as Tensor, b.options());
      const [plain, zeroed] = await Promise.all([logits(lazy), logits(edited)]);
      expect(maxAbsDiff(plain, ref(f, "single/logits"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(zeroed, ref(f, "intervention/zero_mlp_l1/logits"))).toBeLessThan(1e-4);
      // Loaded now, once, for the model and its edited copy; never for a server's run.
      expect([lazy.dispatched, edited.dispatched]).toEqual([!isRemote, !isRemote]);
      const settings = { maxNewTokens: 4, eosTokenId: null, padTokenId: 0 };
      const generated = await lazy.generate(ids, settings, async () => undefined, b.options());
      expect(generated.sequences.tolist()).toEqual((await base.generate(ids, settings)).sequences.tolist());
    },
  },
  {
    name: "scan gives every architecture's module shapes, on the model and on its meta model, as Hugging Face records them",
    async run(b) {
      for (const arch of hfFixtures) {
        const lm = await b.arch(arch);
        const f = await fixture(arch);
        const l0 = layerPath(arch, 0);
        const moe = arch === "mixtral" || arch === "qwen3_moe";
        // In forward order: the router and the experts' activation inside layer 0's MLP, the MLP, the layer, the head.
        const keys = [...(moe ? [`${l0}.mlp.gate`, `${l0}.mlp.experts.act_fn`] : []), `${l0}.mlp`, l0, "lm_head"];
        const scan = async (model: LanguageModel, options?: TraceOptions) =>
          model.scan(
            ref(f, "input_ids"),
            async (m, tr) => {
              const shapes: Record<string, number[]> = {};
              for (const key of tr.vars.keys as string[]) {
                const value = await key.split(".").reduce((e: any, k: string) => e[k], m).output;
                const first = (Array.isArray(value) ? value[0] : value) as Tensor;
                shapes[key] = [...first.shape, first.isMeta ? 1 : 0];
              }
              return shapes;
            },
            { ...options, vars: { keys } },
          );
        const expected = Object.fromEntries(keys.map((k) => [k, [...ref(f, `single/${k}:output`).shape, 1]]));
        expect(await scan(lm, b.options()), arch).toEqual(expected);
        const meta = await LanguageModel.load(lm.name, { dispatch: false });
        expect(await scan(meta), `${arch} meta`).toEqual(expected);
      }
    },
  },
  {
    name: "module lists take negative indices (from the end); an index past either end, or a dtype tensors cannot have, names what is valid",
    async run(b) {
      const out = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const last = (await m.transformer.h[-1].output) as Tensor;
          return { path: m.transformer.h[-4].path, same: last.sub((await m.transformer.h[3].output) as Tensor).abs().max().item() };
        },
        b.options(),
      );
      expect(out).toEqual({ path: "transformer.h.0", same: 0 });
      for (const index of [4, -5]) {
        const e = await b.gpt2.trace(PROMPT, async (m, tr) => (await m.transformer.h[tr.vars.index].output) as Tensor, b.options({ vars: { index } })).catch((x) => x);
        expect(e).toBeInstanceOf(TraceError);
        expect(e.message).toContain(`transformer.h[${index}] is out of range: transformer.h has 4 modules (indices 0..3, or -4..-1 from the end)`);
      }
      const dtype = await b.gpt2.trace(PROMPT, async (m) => ((await m.lm_head.output) as Tensor).to("float16" as never), b.options()).catch((x) => x);
      expect(dtype.name).toBe("DTypeError");
      expect(dtype.message).toContain('to: "float16" is not a dtype tsight tensors can have: tsight computes in float32 (F16 weights are widened to float32 when a model loads); the dtypes are "float32", "int64", "int32", "bool"');
    },
  },
  {
    name: "a session carries values from one trace to the next",
    async run(b) {
      const out = await b.gpt2.session(async (s) => {
        const clean = await s.trace("def __init__(self", async (m) => (await m.transformer.h[1].output) as Tensor, b.options());
        const patched = await s.trace(
          "def __init__(self",
          async (m, tr) => {
            m.transformer.h[1].output = ((await m.transformer.h[1].output) as Tensor).mul(0).add(tr.vars.clean);
            return (await m.lm_head.output) as Tensor;
          },
          b.options({ vars: { clean } }),
        );
        const plain = await s.trace("def __init__(self", async (m) => (await m.lm_head.output) as Tensor, b.options());
        return { patched, plain };
      });
      expect(maxAbsDiff(out.patched, out.plain)).toBeLessThan(1e-5);
    },
  },
  {
    name: "rename gives modules extra names",
    async run() {
      const lm = await LanguageModel.load("stdlib-gpt2", { rename: { "transformer.h": "layers", attn: "attention" } });
      const out = await lm.trace(PROMPT, async (m: any) => {
        const a = (await m.layers[1].attention.output)[0] as Tensor;
        const h = (await m.transformer.h[1].output) as Tensor;
        return { a, h, same: m.layers[2].path };
      });
      const f = await fixture("stdlib-gpt2");
      expect(maxAbsDiff(out.a, ref(f, "single/transformer.h.1.attn:output"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(out.h, ref(f, "single/transformer.h.1:output"))).toBeLessThan(1e-4);
      expect(out.same).toBe("transformer.h.2");
      await expect(LanguageModel.load("stdlib-gpt2", { rename: { "transformer.nope": "x" } })).rejects.toThrow(/no module "transformer.nope"/);
    },
  },
  {
    name: "rename takes nnsight's forms: a leading dot, several aliases, relative paths, patterns",
    async run(b) {
      const lm = await b.renamed({ ".transformer": ["model", "mdl"], ".transformer.h": "layers", "attn.c_proj": "out", "transformer.h.*.mlp": "ffn" });
      const out = await lm.trace(
        PROMPT,
        async (m: any) => {
          const viaModel = (await m.model.h[1].output) as Tensor;
          const proj = (await m.layers[2].out.output) as Tensor;
          const viaMdl = (await m.mdl.h[2].output) as Tensor;
          const ffn = (await m.layers[3].ffn.output) as Tensor;
          return { viaModel, viaMdl, proj, ffn, paths: [m.layers[0].ffn.path, m.transformer.h[1].out.path, m.model.h[-1].ffn.path] };
        },
        b.options(),
      );
      const f = await fixture("stdlib-gpt2");
      expect(maxAbsDiff(out.viaModel, ref(f, "single/transformer.h.1:output"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(out.viaMdl, ref(f, "single/transformer.h.2:output"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(out.proj, ref(f, "single/transformer.h.2.attn.c_proj:output"))).toBeLessThan(1e-4);
      expect(maxAbsDiff(out.ffn, ref(f, "single/transformer.h.3.mlp:output"))).toBeLessThan(1e-4);
      expect(out.paths).toEqual(["transformer.h.0.mlp", "transformer.h.1.attn.c_proj", "transformer.h.3.mlp"]);
      await expect(b.renamed({ "transformer.h.*.nope": "x" })).rejects.toThrow(/no module "transformer\.h\.\*\.nope" \(no path matches the pattern\)/);
      await expect(b.renamed({ h: "not valid" })).rejects.toThrow(/"not valid" is not a valid name/);
    },
  },
];

export { fixtureDir };
