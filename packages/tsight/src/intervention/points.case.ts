/**
 * Operation points inside attention and MLPs (`attn.source.q` ... `mlp.source.post`), as a suite that runs in
 * process, in the sandbox and through a server (like trace.case.ts). What they must show: each point is the value
 * its name says (pattern = softmax(scores), z = pattern @ v, the merged z is what the output projection gets),
 * reading them changes nothing (the fused and the step-by-step attention agree), and an edit of a point flows on
 * exactly as the same edit computed independently, in float64, from the checkpoint's weights.
 */
import { expect } from "vitest";
import { fixture, fixtureWeights, hfFixtures, maxAbsDiff, ref, type HfFixtureName } from "../../../../test/fixtures.js";
import { tensor, Tensor } from "../tensor/index.js";
import { OutOfOrderError } from "./errors.js";
import type { TraceCase } from "./trace.case.js";
import type { LanguageModel } from "./language-model.js";

const PROMPT = "def __init__(self";

/** Layer `i`'s attention module and its output projection, per architecture. */
function attentionOf(arch: HfFixtureName, i: number): { path: string; proj: string } {
  if (arch === "gpt2") return { path: `transformer.h.${i}.attn`, proj: "c_proj" };
  if (arch === "gpt_neox") return { path: `gpt_neox.layers.${i}.attention`, proj: "dense" };
  return { path: `model.layers.${i}.self_attn`, proj: "o_proj" };
}

/** k or v [B, KV, S, D] with each key/value head repeated for the query heads it serves, [B, H, S, D]. */
function repeatHeads(x: Tensor, H: number): Tensor {
  const [B, KV, S, D] = x.shape as [number, number, number, number];
  return KV === H ? x : x.unsqueeze(2).expand(B, KV, H / KV, S, D).reshape(B, H, S, D);
}

// #region float64 reference attention (plain loops over the checkpoint's weights)

type Matrix = Float64Array[];

/** y = x W^T + b for a Linear weight [out, in], or x W + b for a Conv1D weight [in, out]. */
function project(x: Matrix, w: Tensor, b: Tensor | undefined, conv1d: boolean): Matrix {
  const [r, c] = w.shape as [number, number];
  const W = w.toArray() as number[];
  const bias = b?.toArray() as number[] | undefined;
  const out = conv1d ? c : r;
  const inner = conv1d ? r : c;
  return x.map((row) => {
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = bias ? bias[o]! : 0;
      for (let i = 0; i < inner; i++) s += row[i]! * W[conv1d ? i * c + o : o * c + i]!;
      y[o] = s;
    }
    return y;
  });
}

/** Rotates one head's vector at `pos` (Hugging Face's rotate_half convention, default rope). */
function rotate(x: Float64Array, pos: number, theta: number): Float64Array {
  const D = x.length;
  const half = D / 2;
  const y = new Float64Array(D);
  for (let i = 0; i < half; i++) {
    const angle = pos * Math.pow(theta, (-2 * i) / D);
    const [c, s] = [Math.cos(angle), Math.sin(angle)];
    y[i] = x[i]! * c - x[i + half]! * s;
    y[i + half] = x[i + half]! * c + x[i]! * s;
  }
  return y;
}

/**
 * One attention layer of one sequence in float64: x [T, C] in, the output projection's output [T, C] out, with
 * head `head`'s pattern row `row` replaced by attention to position 0 alone.
 */
function referenceKnockout(x: Matrix, w: Map<string, Tensor>, prefix: string, arch: "gpt2" | "llama", cfg: { H: number; KV: number; D: number; theta: number }, head: number, row: number): Matrix {
  const { H, KV, D } = cfg;
  const T = x.length;
  let q: Matrix, k: Matrix, v: Matrix;
  if (arch === "gpt2") {
    const qkv = project(x, w.get(`${prefix}.c_attn.weight`)!, w.get(`${prefix}.c_attn.bias`), true);
    const C = H * D;
    [q, k, v] = [0, 1, 2].map((j) => qkv.map((r) => r.slice(j * C, (j + 1) * C)));
  } else {
    q = project(x, w.get(`${prefix}.q_proj.weight`)!, undefined, false);
    k = project(x, w.get(`${prefix}.k_proj.weight`)!, undefined, false);
    v = project(x, w.get(`${prefix}.v_proj.weight`)!, undefined, false);
  }
  const headOf = (m: Matrix, t: number, h: number) => {
    const vec = m[t]!.slice(h * D, (h + 1) * D);
    return arch === "llama" && m !== v ? rotate(vec, t, cfg.theta) : vec;
  };
  const z: Matrix = Array.from({ length: T }, () => new Float64Array(H * D));
  for (let h = 0; h < H; h++) {
    const kvHead = Math.floor(h / (H / KV));
    for (let t = 0; t < T; t++) {
      const qt = headOf(q, t, h);
      const scores = Array.from({ length: t + 1 }, (_, s) => {
        const ks = headOf(k, s, kvHead);
        let dot = 0;
        for (let d = 0; d < D; d++) dot += qt[d]! * ks[d]!;
        return dot / Math.sqrt(D);
      });
      const max = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - max));
      const sum = e.reduce((a, b) => a + b, 0);
      const p = h === head && t === row ? scores.map((_, s) => (s === 0 ? 1 : 0)) : e.map((x) => x / sum);
      for (let s = 0; s <= t; s++) {
        const vs = headOf(v, s, kvHead);
        for (let d = 0; d < D; d++) z[t]![h * D + d]! += p[s]! * vs[d]!;
      }
    }
  }
  const out = arch === "gpt2" ? `${prefix}.c_proj` : `${prefix}.o_proj`;
  return project(z, w.get(`${out}.weight`)!, w.get(`${out}.bias`), arch === "gpt2");
}

// #endregion

export const pointCases: TraceCase[] = [
  {
    name: "attention points of every architecture: pattern is softmax(scores), z is pattern @ v, the merged z is what the output projection gets; reading them changes no logit",
    async run(b) {
      for (const arch of hfFixtures) {
        const lm = await b.arch(arch);
        const f = await fixture(arch);
        const ids = ref(f, "input_ids");
        const T = ids.shape[1]!;
        const { path, proj } = attentionOf(arch, 0);
        const plain = await lm.trace(ids, async (m) => (await m.output).logits as Tensor, b.options());
        const got = await lm.trace(
          ids,
          async (m, tr) => {
            const attn = tr.vars.path.split(".").reduce((e: any, k: string) => e[k], m);
            const src = attn.source;
            const [q, k, v, scores, pattern, z] = [await src.q.output, await src.k.output, await src.v.output, await src.scores.output, await src.pattern.output, await src.z.output] as Tensor[];
            const projected = (await attn[tr.vars.proj].input) as Tensor;
            const weights = ((await attn.output) as Tensor[])[1]!;
            return { q: q!, k: k!, v: v!, scores: scores!, pattern: pattern!, z: z!, projected, weights, logits: (await m.output).logits as Tensor };
          },
          b.options({ vars: { path, proj } }),
        );
        const [, H, , D] = got.q.shape as [number, number, number, number];
        const KV = got.k.shape[1]!;
        expect(got.q.shape, arch).toEqual([1, H, T, D]);
        expect(got.k.shape, arch).toEqual([1, KV, T, D]);
        expect(got.v.shape, arch).toEqual([1, KV, T, D]);
        expect(got.scores.shape, arch).toEqual([1, H, T, T]);
        expect(got.z.shape, arch).toEqual([1, H, T, D]);
        // The causal mask is in the scores (a later key gets float32's minimum), not yet in a probability.
        expect(got.scores.index(0, 0, 0, 1).item(), arch).toBeLessThan(-1e38);
        expect(maxAbsDiff(got.pattern, got.scores.softmax(-1)), arch).toBeLessThan(1e-6);
        expect(maxAbsDiff(got.pattern, got.weights), arch).toBe(0);
        expect(maxAbsDiff(got.z, got.pattern.matmul(repeatHeads(got.v, H))), arch).toBeLessThan(1e-6);
        expect(maxAbsDiff(got.projected, got.z.transpose(1, 2).reshape(1, T, H * D)), arch).toBe(0);
        // Step by step (the points are watched) and fused (nobody watches): the same logits.
        expect(maxAbsDiff(got.logits, plain), `${arch} step by step vs fused`).toBeLessThan(1e-6);
        expect(maxAbsDiff(plain, ref(f, "single/logits")), arch).toBeLessThan(1e-4);
      }
    },
  },
  {
    name: "a head's pattern row knocked out (all attention to position 0) gives the output computed in float64 from the checkpoint's weights",
    async run(b) {
      for (const arch of ["gpt2", "llama"] as const) {
        const lm = await b.arch(arch);
        const f = await fixture(arch);
        const ids = ref(f, "input_ids");
        const T = ids.shape[1]!;
        const { path } = attentionOf(arch, 1);
        const H = Number(f.config.num_attention_heads ?? f.config.n_head);
        const [head, row] = [1, T - 1];
        // keep: 1 everywhere but the knocked-out row; onto0: 1 at (head, row, 0).
        const keep = Tensor.full([1, H, T, T], 1);
        const onto0 = Tensor.zeros([1, H, T, T]);
        (keep.data as Float32Array).fill(0, (head * T + row) * T, (head * T + row + 1) * T);
        (onto0.data as Float32Array)[(head * T + row) * T] = 1;
        const run = (knock: boolean) =>
          lm.trace(
            ids,
            async (m, tr) => {
              const attn = tr.vars.path.split(".").reduce((e: any, k: string) => e[k], m);
              const x = (await attn.input) as Tensor;
              if (tr.vars.knock) attn.source.pattern.output = ((await attn.source.pattern.output) as Tensor).mul(tr.vars.keep).add(tr.vars.onto0);
              return { x, out: ((await attn.output) as Tensor[])[0]! };
            },
            b.options({ vars: { path, keep, onto0, knock } }),
          );
        const [clean, knocked] = [await run(false), await run(true)];
        const x = Array.from({ length: T }, (_, t) => Float64Array.from(clean.x.index(0, t).toArray() as number[]));
        const D = Number(f.config.head_dim ?? Number(f.config.n_embd) / H);
        const KV = Number(f.config.num_key_value_heads ?? H);
        const theta = Number((f.config.rope_parameters as { rope_theta?: number } | undefined)?.rope_theta ?? 10000);
        const want = referenceKnockout(x, await fixtureWeights(arch), path, arch, { H, KV, D, theta }, head, row);
        const wantTensor = new Tensor("float32", Float32Array.from(want.flatMap((r) => [...r])), [1, T, want[0]!.length]);
        expect(maxAbsDiff(knocked.out, wantTensor), arch).toBeLessThan(1e-5);
        // The knockout moved the last position (so the comparison above could fail), and nothing before it.
        expect(maxAbsDiff(knocked.out.narrow(1, T - 1, 1), clean.out.narrow(1, T - 1, 1)), arch).toBeGreaterThan(1e-3);
        expect(maxAbsDiff(knocked.out.narrow(1, 0, T - 1), clean.out.narrow(1, 0, T - 1)), arch).toBeLessThan(1e-6);
      }
    },
  },
  {
    name: "editing a head's z is editing its slice of the output projection's input; its gradient is that slice's gradient",
    async run(b) {
      const edit = (where: "z" | "proj") =>
        b.gpt2.trace(
          "def __init__(self",
          async (m, tr) => {
            const attn = m.transformer.h[1].attn;
            if (tr.vars.where === "z") attn.source.z.output = ((await attn.source.z.output) as Tensor).mul(tr.vars.headMask);
            else attn.c_proj.input = ((await attn.c_proj.input) as Tensor).mul(tr.vars.columnMask);
            return (await m.lm_head.output) as Tensor;
          },
          // Head 2 of 4 (64 dimensions each) silenced.
          b.options({ vars: { where, headMask: tensor([1, 1, 0, 1]).reshape(1, 4, 1, 1), columnMask: tensor(Array.from({ length: 256 }, (_, i) => (i >= 128 && i < 192 ? 0 : 1))) } }),
        );
      const [viaZ, viaProj] = [await edit("z"), await edit("proj")];
      expect(maxAbsDiff(viaZ, viaProj)).toBe(0);
      const grads = await b.gpt2.trace(
        "def __init__(self",
        async (m, tr) => {
          const attn = m.transformer.h[1].attn;
          const z = (await attn.source.z.output) as Tensor;
          const x = (await attn.c_proj.input) as Tensor;
          const loss = ((await m.lm_head.output) as Tensor).index(0, -1).logSoftmax(-1).index(11);
          let gz: Tensor | undefined, gx: Tensor | undefined;
          await tr.backward(loss, async (g) => {
            gx = await g.grad(x);
            gz = await g.grad(z);
          });
          return { gz: gz!, gx: gx! };
        },
        b.options({ grad: true }),
      );
      expect(grads.gz.shape).toEqual([1, 4, 5, 64]);
      expect(grads.gx.abs().max().item()).toBeGreaterThan(0);
      expect(maxAbsDiff(grads.gz.transpose(1, 2).reshape(1, 5, 256), grads.gx)).toBeLessThan(1e-6);
    },
  },
  {
    name: "z edited to one position: GPT-2 broadcasts it over the tokens (Hugging Face merges z by its own shape), Llama refuses it (Hugging Face reshapes z to the call's [batch, tokens]) with a SwapError naming the replacement",
    async run(b) {
      const gpt2 = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const z = (await m.transformer.h[1].attn.source.z.output) as Tensor;
          m.transformer.h[1].attn.source.z.output = z.narrow(2, z.shape[2]! - 1, 1);
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      const viaProj = await b.gpt2.trace(
        PROMPT,
        async (m) => {
          const x = (await m.transformer.h[1].attn.c_proj.input) as Tensor;
          m.transformer.h[1].attn.c_proj.input = x.narrow(1, x.shape[1]! - 1, 1).expand(x.shape[0]!, x.shape[1]!, x.shape[2]!);
          return (await m.lm_head.output) as Tensor;
        },
        b.options(),
      );
      expect(gpt2.shape).toEqual(viaProj.shape);
      expect(maxAbsDiff(gpt2, viaProj)).toBeLessThan(1e-5);
      const e = await b.llama
        .trace(
          PROMPT,
          async (m) => {
            const z = (await m.model.layers[1].self_attn.source.z.output) as Tensor;
            m.model.layers[1].self_attn.source.z.output = z.narrow(2, z.shape[2]! - 1, 1);
            return (await m.lm_head.output) as Tensor;
          },
          b.options(),
        )
        .catch((x: Error) => x);
      expect(e).toBeInstanceOf(Error);
      expect((e as Error).name).toBe("SwapError");
      expect((e as Error).message).toMatch(/the per-head outputs z \[1, 4, 1, 64\] cannot be merged into the call's 1 x \d+ tokens[^]*after model\.layers\.1\.self_attn\.source\.z\.output was replaced with shape \[1, 4, 1, 64\]/);
    },
  },
  {
    name: "MLP points: post is act(pre) (times up_proj for gated MLPs); zeroing post zeroes a Llama MLP as Hugging Face's zero_mlp_l1",
    async run(b) {
      const g = await b.gpt2.trace(
        "def __init__(self",
        async (m) => {
          const mlp = m.transformer.h[0].mlp;
          return { fc: (await mlp.c_fc.output) as Tensor, pre: (await mlp.source.pre.output) as Tensor, act: (await mlp.act.output) as Tensor, post: (await mlp.source.post.output) as Tensor };
        },
        b.options(),
      );
      expect(maxAbsDiff(g.pre, g.fc)).toBe(0);
      expect(maxAbsDiff(g.post, g.act)).toBe(0);
      const lm = await b.arch("llama");
      const f = await fixture("llama");
      const l = await lm.trace(
        ref(f, "input_ids"),
        async (m) => {
          const mlp = m.model.layers[1].mlp;
          const gate = (await mlp.gate_proj.output) as Tensor;
          const pre = (await mlp.source.pre.output) as Tensor;
          const act = (await mlp.act_fn.output) as Tensor;
          const up = (await mlp.up_proj.output) as Tensor;
          const post = (await mlp.source.post.output) as Tensor;
          mlp.source.post.output = post.mul(0);
          return { pre, gate, act, up, post, logits: (await m.output).logits as Tensor };
        },
        b.options(),
      );
      expect(maxAbsDiff(l.pre, l.gate)).toBe(0);
      expect(maxAbsDiff(l.post, l.act.mul(l.up))).toBe(0);
      expect(maxAbsDiff(l.logits, ref(f, "intervention/zero_mlp_l1/logits"))).toBeLessThan(1e-4);
    },
  },
  {
    name: "MoE experts' points (Mixtral, Qwen3-MoE): pre is Hugging Face's act_fn input, one row per (token, slot) grouped by expert; post is act(pre) times the up halves; zeroing post zeroes the sparse MLP as Hugging Face's zero_mlp_l1",
    async run(b) {
      for (const arch of ["mixtral", "qwen3_moe"] as const) {
        const lm = await b.arch(arch);
        const f = await fixture(arch);
        const got = await lm.trace(
          ref(f, "input_ids"),
          async (m) => {
            const experts = m.model.layers[0].mlp.experts;
            const pre = (await experts.source.pre.output) as Tensor;
            const act = (await experts.act_fn.output) as Tensor;
            const post = (await experts.source.post.output) as Tensor;
            const experts1 = m.model.layers[1].mlp.experts;
            const post1 = (await experts1.source.post.output) as Tensor;
            experts1.source.post.output = post1.mul(0);
            return { pre, act, post, logits: (await m.output).logits as Tensor };
          },
          b.options(),
        );
        const hfPre = ref(f, "single/model.layers.0.mlp.experts.act_fn:input");
        expect(got.pre.shape, arch).toEqual(hfPre.shape);
        expect(maxAbsDiff(got.pre, hfPre), arch).toBeLessThan(1e-5);
        expect(maxAbsDiff(got.act, ref(f, "single/model.layers.0.mlp.experts.act_fn:output")), arch).toBeLessThan(1e-5);
        // The up halves: post where act_fn's output is replaced by ones. post is act times them, to the bit.
        const up = await lm.trace(
          ref(f, "input_ids"),
          async (m) => {
            const experts = m.model.layers[0].mlp.experts;
            experts.act_fn.output = (a: Tensor) => a.mul(0).add(1);
            return (await experts.source.post.output) as Tensor;
          },
          b.options(),
        );
        expect(maxAbsDiff(got.post, got.act.mul(up)), arch).toBe(0);
        expect(maxAbsDiff(got.logits, ref(f, "intervention/zero_mlp_l1/logits")), arch).toBeLessThan(1e-4);
      }
    },
  },
  {
    name: "attention points in every generation step: the pattern of step k covers the prompt and k generated tokens; a knockout on every step changes the text as the same edit of the projection's input does",
    async run(b) {
      const out = await b.gpt2.generate(
        "def __init__(self",
        { maxNewTokens: 4 },
        async (m, tr) => {
          const shapes: number[][] = [];
          for await (const _ of tr.all()) {
            const src = m.transformer.h[0].attn.source;
            shapes.push(((await src.pattern.output) as Tensor).shape as number[]);
            src.z.output = ((await src.z.output) as Tensor).mul(tr.vars.headMask);
          }
          return shapes;
        },
        b.options({ vars: { headMask: tensor([0, 1, 1, 1]).reshape(1, 4, 1, 1) } }),
      );
      expect(out.value).toEqual([
        [1, 4, 5, 5],
        [1, 4, 1, 6],
        [1, 4, 1, 7],
        [1, 4, 1, 8],
      ]);
      const viaProj = await b.gpt2.generate(
        "def __init__(self",
        { maxNewTokens: 4 },
        async (m, tr) => {
          for await (const _ of tr.all()) {
            const attn = m.transformer.h[0].attn;
            attn.c_proj.input = ((await attn.c_proj.input) as Tensor).mul(tr.vars.columnMask);
          }
        },
        b.options({ vars: { columnMask: tensor(Array.from({ length: 256 }, (_, i) => (i < 64 ? 0 : 1))) } }),
      );
      expect(out.generated.tolist()).toEqual(viaProj.generated.tolist());
    },
  },
  {
    name: "reading scores and pattern at every generation step changes no logit to the bit: attention step by step computes as the fused kernel does, one query row included",
    async run(b) {
      for (const lm of [b.gpt2, b.llama as unknown as typeof b.gpt2]) {
        const steps = (watch: boolean) =>
          lm.generate(
            "def __init__(self",
            { maxNewTokens: 5 },
            async (m: any, tr) => {
              const attn = (i: number) => (tr.vars.gpt ? m.transformer.h[i].attn : m.model.layers[i].self_attn);
              const logits: Tensor[] = [];
              for await (const _ of tr.all()) {
                if (tr.vars.watch) await attn(0).source.scores.output, await attn(1).source.pattern.output;
                logits.push((await m.lm_head.output) as Tensor);
              }
              return logits;
            },
            b.options({ vars: { gpt: lm === b.gpt2 ? 1 : 0, watch: watch ? 1 : 0 } }),
          );
        const [plain, watched] = [(await steps(false)).value, (await steps(true)).value];
        expect(watched.length).toBe(5);
        watched.forEach((t, i) => expect(maxAbsDiff(t, plain[i]!)).toBe(0));
      }
    },
  },
  {
    name: "a point asked for after a later one of its layer is out of order (q after pattern, v after z), whether the model ran as one graph or op by op",
    async run(b) {
      for (const [first, then] of [["pattern", "q"], ["z", "v"]] as const) {
        for (let run = 0; run < 2; run++) {
          const e = await b.gpt2
            .trace(
              PROMPT,
              async (m: any, tr) => {
                await m.transformer.h[1].attn.source[tr.vars.first].output;
                await m.transformer.h[1].attn.source[tr.vars.then].output;
              },
              b.options({ vars: { first, then } }),
            )
            .catch((x) => x);
          expect(e).toBeInstanceOf(OutOfOrderError);
          expect(e.message).toContain(`transformer.h.1.attn.source.${then}.output was already provided`);
        }
      }
      // In order, both are given.
      const [q, pattern] = await b.gpt2.trace(PROMPT, async (m) => [await m.transformer.h[1].attn.source.q.output, await m.transformer.h[1].attn.source.pattern.output], b.options());
      expect([(q as Tensor).shape, (pattern as Tensor).shape]).toEqual([[1, 4, 5, 64], [1, 4, 5, 5]]);
    },
  },
  {
    name: "a point's .input is its .output: read in either order, or as .inputs (a list of one), it is one value; an edit of .input or .inputs is that edit of .output",
    async run(b) {
      const read = await b.gpt2.trace(
        PROMPT,
        async (m: any) => {
          const q = m.transformer.h[1].attn.source.q;
          const out = await q.output;
          const [input, inputs] = [await q.input, await q.inputs];
          const pattern = m.transformer.h[1].attn.source.pattern;
          return { out, input, inputs, patternIn: await pattern.input, patternOut: await pattern.output };
        },
        b.options(),
      );
      expect(maxAbsDiff(read.input as Tensor, read.out as Tensor)).toBe(0);
      expect((read.inputs as Tensor[]).length).toBe(1);
      expect(maxAbsDiff((read.inputs as Tensor[])[0]!, read.out as Tensor)).toBe(0);
      expect(maxAbsDiff(read.patternIn as Tensor, read.patternOut as Tensor)).toBe(0);
      // The same knockout of head 0's pattern written four ways: the logits agree to the bit.
      const logits: Tensor[] = [];
      for (const how of ["output", "input", "inputs", "inputs-fn"]) {
        const out = await b.gpt2.trace(
          PROMPT,
          async (m: any, tr) => {
            const pattern = m.transformer.h[1].attn.source.pattern;
            const keep = tr.vars.keep as Tensor;
            if (tr.vars.how === "output") pattern.output = (p: Tensor) => p.mul(keep);
            else if (tr.vars.how === "input") pattern.input = (p: Tensor) => p.mul(keep);
            else if (tr.vars.how === "inputs") pattern.inputs = [(await pattern.output).mul(keep)];
            else pattern.inputs = ([p]: Tensor[]) => [p!.mul(keep)];
            return (await m.lm_head.output) as Tensor;
          },
          b.options({ vars: { how, keep: tensor([0, 1, 1, 1]).reshape([1, 4, 1, 1]) } }),
        );
        logits.push(out as Tensor);
      }
      const plain = (await b.gpt2.trace(PROMPT, async (m) => (await m.lm_head.output) as Tensor, b.options())) as Tensor;
      expect(maxAbsDiff(logits[0]!, plain)).toBeGreaterThan(1e-3);
      for (const l of logits.slice(1)) expect(maxAbsDiff(l, logits[0]!)).toBe(0);
      // A list of another length is refused at the assignment.
      const e = await b.gpt2.trace(PROMPT, async (m: any) => void (m.transformer.h[1].attn.source.pattern.inputs = [1, 2]), b.options()).catch((x) => x);
      expect(e.message).toMatch(/transformer\.h\.1\.attn\.source\.pattern\.inputs is a list of one value .*got a list of 2/);
    },
  },
  {
    name: "gradients of the first values read (the graph's leaves, reached last: q, k, v and scores here) come in any order among themselves; after an earlier read, in reverse forward order; the same in each",
    async run(b) {
      const grads = (order: string[], earlier = false) =>
        b.gpt2.trace(
          PROMPT,
          async (m: any, tr) => {
            if (tr.vars.earlier) await m.transformer.h[0].output;
            const src = m.transformer.h[1].attn.source;
            const vals: Record<string, Tensor> = { q: await src.q.output, k: await src.k.output, v: await src.v.output };
            vals.scores = (await src.scores.output) as Tensor;
            const loss = ((await m.lm_head.output) as Tensor).index(0, -1).logSoftmax(-1).index(7);
            const out: Record<string, Tensor> = {};
            await tr.backward(loss, async (g) => {
              for (const name of tr.vars.order as string[]) out[name] = await g.grad(vals[name]!);
            });
            return out;
          },
          b.options({ grad: true, vars: { order, earlier: earlier ? 1 : 0 } }),
        );
      const forward = await grads(["scores", "q", "k", "v"]);
      for (const order of [["scores", "v", "k", "q"], ["scores", "k", "v", "q"]]) {
        const got = await grads(order);
        for (const name of order) expect(maxAbsDiff(got[name]!, forward[name]!)).toBe(0);
      }
      expect(forward.q!.abs().max().item()).toBeGreaterThan(0);
      // After an earlier read they are no leaves: reverse forward order (scores, then v, k, q) gives the same.
      const interior = await grads(["scores", "v", "k", "q"], true);
      for (const name of ["scores", "v", "k", "q"]) expect(maxAbsDiff(interior[name]!, forward[name]!)).toBe(0);
    },
  },
  {
    name: "the gradient of attention's output[1] is its pattern's, as in PyTorch, after a value before it is read (it was refused); read first, the refusal says how to get it",
    async run(b) {
      for (const lm of [b.gpt2, b.llama] as LanguageModel[]) {
        const layer = lm === (b.gpt2 as LanguageModel) ? "transformer.h.1.attn" : "model.layers.1.self_attn";
        const grad = (via: string, earlier: number) =>
          lm.trace(
            PROMPT,
            async (m: any, tr) => {
              const at = (path: string) => path.split(".").reduce((x: any, k) => x[k], m);
              if (tr.vars.earlier) await at(tr.vars.layer.replace(/\.(attn|self_attn)$/, "")).input;
              const w = tr.vars.via === "output" ? ((await at(tr.vars.layer).output) as Tensor[])[1]! : ((await at(tr.vars.layer).source.pattern.output) as Tensor);
              const loss = ((await m.lm_head.output) as Tensor).index(0, -1).logSoftmax(-1).index(7);
              let g: Tensor | undefined;
              await tr.backward(loss, async (s) => void (g = await s.grad(w)));
              return g!;
            },
            b.options({ grad: true, vars: { via, layer, earlier } }),
          );
        const pattern = await grad("pattern", 0);
        expect(pattern.abs().max().item()).toBeGreaterThan(1e-4);
        expect(maxAbsDiff(await grad("output", 1), pattern), layer).toBeLessThan(1e-6);
        const first = await grad("output", 0).catch((e: Error) => e);
        expect(first).toBeInstanceOf(Error);
        expect((first as Error).message).toMatch(/no gradient reached this value.*attention's output\[1\], read something before that module first.*attn\.source\.pattern/);
      }
    },
  },
  {
    name: "tr.cache leaves operation points out unless named, as nnsight's cache leaves out .source; named, a point is recorded exactly",
    async run(b) {
      const out = await b.gpt2.trace(
        "def __init__(self",
        async (m, tr) => {
          const all = tr.cache();
          const named = tr.cache({ modules: [m.transformer.h[2].attn.source.pattern, "transformer.h.2.mlp.source.post"] });
          const pattern = (await m.transformer.h[2].attn.source.pattern.output) as Tensor;
          await m.lm_head.output;
          let unnamed = "";
          try {
            void all.transformer.h[2].attn.source.pattern.output;
          } catch (e) {
            unnamed = (e as Error).message;
          }
          return { all: all.keys(), named: named.keys(), cached: named.transformer.h[2].attn.source.pattern.output as Tensor, post: named.transformer.h[2].mlp.source.post.output as Tensor, pattern, unnamed, returned: all };
        },
        b.options(),
      );
      expect(out.all.filter((k: string) => k.includes("source"))).toEqual([]);
      // Read from a cache that did not name it, a point says points are recorded only when named (in the code, and
      // from the cache returned, which a server sends without the model's points).
      const says = /cache: transformer\.h\.2\.attn\.source\.pattern was not recorded: operation points are recorded only when named \(tr\.cache\(\{ modules: \["transformer\.h\.2\.attn\.source\.pattern"\] \}\), or its holder "transformer\.h\.2\.attn\.source"/;
      expect(out.unnamed).toMatch(says);
      expect(() => (out.returned as any).transformer.h[2].attn.source.pattern.output).toThrow(says);
      expect(out.all).toContain("transformer.h.2.attn");
      expect(out.named).toEqual(["transformer.h.2.attn.source.pattern", "transformer.h.2.mlp.source.post"]);
      expect(maxAbsDiff(out.cached, out.pattern)).toBe(0);
      expect(out.post.shape).toEqual([1, 5, 1024]);
      // Naming the module holding the points records every point in it; a path through rename aliases is the module's.
      const lm = await b.renamed({ "transformer.h": "layers", "transformer.h.*.attn": "self_attn" });
      const more = await lm.trace(
        "def __init__(self",
        async (m: any, tr) => {
          const source = tr.cache({ modules: [m.layers[1].self_attn.source] });
          const aliased = tr.cache({ modules: ["layers.1.self_attn", "layers.1.self_attn.source.pattern"] });
          const pattern = (await m.layers[1].self_attn.source.pattern.output) as Tensor;
          await m.lm_head.output;
          return { source: source.keys(), aliased: aliased.keys(), pattern, cached: aliased.layers[1].self_attn.source.pattern.output as Tensor };
        },
        b.options(),
      );
      expect(more.source).toEqual(["q", "k", "v", "scores", "pattern", "z"].map((p) => `transformer.h.1.attn.source.${p}`));
      expect([...more.aliased].sort()).toEqual(["transformer.h.1.attn", "transformer.h.1.attn.source.pattern"]);
      expect(maxAbsDiff(more.cached, more.pattern)).toBe(0);
    },
  },
];
