/**
 * The order of gradient requests in `tr.backward`: asking for an earlier value first is "already gone by", even when
 * the earlier value is a leaf of the graph (the first value read, reached last) and the later one is made by the
 * walk's oldest node; a value the loss does not depend on is "does not depend", whenever it is asked for.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { maxAbsDiff } from "../../../../test/fixtures.js";
import { tensor, type Tensor } from "../tensor/index.js";
import { TraceError } from "./errors.js";
import { LanguageModel } from "./language-model.js";

const PROMPT = "    for i in range(";

/** Picks a module (or operation point) to read from the model's envoy. */
type Pick = (m: any) => { output: Promise<unknown> };

/** Pairs of values in forward order (the second is made by the op right after the first), and the second's name. */
const pairs: [string, Pick, Pick, string][] = [
  ["scores then pattern", (m) => m.transformer.h[1].attn.source.scores, (m) => m.transformer.h[1].attn.source.pattern, "transformer.h.1.attn.source.pattern.output"],
  ["pre then post", (m) => m.transformer.h[1].mlp.source.pre, (m) => m.transformer.h[1].mlp.source.post, "transformer.h.1.mlp.source.post.output"],
  ["pattern then z", (m) => m.transformer.h[1].attn.source.pattern, (m) => m.transformer.h[1].attn.source.z, "transformer.h.1.attn.source.z.output"],
  ["h[0].output then h[1].ln_1.output", (m) => m.transformer.h[0], (m) => m.transformer.h[1].ln_1, "transformer.h.1.ln_1.output"],
];

describe("order of gradient requests", () => {
  let lm: LanguageModel;
  beforeAll(async () => {
    lm = await LanguageModel.load("stdlib-gpt2");
  });

  /**
   * Reads `first` then `second`, and asks for the gradients of the named values, in the order given, of one logit.
   * `side` is computed from `second` but is not part of the loss.
   */
  const grads = (first: Pick, second: Pick, ask: ("first" | "second" | "side")[]) =>
    lm.trace(
      PROMPT,
      async (m: any, tr) => {
        const vals = { first: (await first(m).output) as Tensor, second: (await second(m).output) as Tensor } as Record<string, Tensor>;
        vals.side = vals.second!.mul(2);
        const loss = ((await m.lm_head.output) as Tensor).index(0, -1, 5);
        const out: Record<string, Tensor> = {};
        await tr.backward(loss, async (g) => {
          for (const name of ask) out[name] = await g.grad(vals[name]!);
        });
        return out;
      },
      { grad: true },
    );

  /** The error a trace ends with (it must end with one). */
  const failure = async (run: Promise<unknown>): Promise<TraceError> => {
    const e = await run.then(
      () => expect.unreachable("the trace should have failed"),
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(TraceError);
    return e as TraceError;
  };

  for (const [name, first, second, secondName] of pairs) {
    it(`${name}, earlier value first: already gone by, naming the value, at the user's line`, async () => {
      const e = await failure(grads(first, second, ["first", "second"]));
      // The earlier value's gradient is waited for; the walk goes on past the later one, which is then gone by. The
      // earlier one, read first, is a leaf of the graph (reached after every op), and the error says so.
      expect(e.message).toContain(`the gradient of ${secondName} has already gone by while this code waited for the gradient of `);
      expect(e.message).toContain("a leaf of the graph (it depends on no value read before it), which the backward pass reaches only after every other value: ask for leaves' gradients last");
      expect(e.message).not.toMatch(/does not depend/);
      expect(e.userLine).toMatch(/backward-order\.test\.ts/);
    });

    it(`${name}, later value first: the gradients each gets alone`, async () => {
      const both = await grads(first, second, ["second", "first"]);
      const alone = { first: (await grads(first, second, ["first"])).first!, second: (await grads(first, second, ["second"])).second! };
      for (const v of ["first", "second"] as const) {
        expect(both[v]!.abs().max().item()).toBeGreaterThan(0);
        expect(maxAbsDiff(both[v]!, alone[v])).toBe(0);
      }
    });
  }

  it("the gradient of a leaf matches finite differences of the loss", async () => {
    // Nudging one element of the first value read (a leaf) by ±eps, through a write, and comparing slopes.
    const [at, eps] = [[0, 2, 3, 1] as const, 1e-2];
    const logit = (delta: number) =>
      lm.trace(PROMPT, async (m: any) => {
        m.transformer.h[1].attn.source.scores.output = (s: Tensor) => s.add(oneHot(s, at, delta));
        return ((await m.lm_head.output) as Tensor).index(0, -1, 5).item();
      });
    const slope = ((await logit(eps)) - (await logit(-eps))) / (2 * eps);
    const g = (await grads(pairs[0]![1], pairs[0]![2], ["second", "first"])).first!;
    const exact = g.index(...at).item();
    expect(Math.abs(exact)).toBeGreaterThan(1e-4);
    expect(Math.abs(slope - exact)).toBeLessThan(1e-2 * Math.abs(exact) + 1e-4);
  });

  for (const ask of [["side"], ["second", "side"], ["second", "first", "side"]] as const) {
    it(`a value the loss does not depend on, asked for after [${ask.slice(0, -1)}]: does not depend on it`, async () => {
      const e = await failure(grads(pairs[0]![1], pairs[0]![2], [...ask]));
      expect(e.message).toMatch(/no gradient reached this value: the loss does not depend on it/);
      expect(e.userLine).toMatch(/backward-order\.test\.ts/);
    });
  }
});

/**
 * In a generation, a value read at a later step can be a leaf of the graph (it depends on no value read before it:
 * step 1's `v` in layer 1 is made from that step's new token and layer 0's cache), whose gradient comes after every
 * other value's: asking for it before an earlier step's value (reverse forward order) is refused, and the error says
 * that it was a leaf.
 */
describe("order of gradient requests across generation steps", () => {
  const across = (order: readonly ("z1" | "v1" | "z0")[]) => async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    return lm.generate(
      "def __init__(self",
      { maxNewTokens: 2, eosTokenId: null },
      async (m: any, tr) => {
        const at = m.transformer.h[1].attn.source;
        const vals: Record<string, Tensor> = {};
        // Step 0's v is read first (a leaf), so its z is not one.
        vals.v0 = (await at.v.output) as Tensor;
        vals.z0 = (await at.z.output) as Tensor;
        tr.next();
        vals.v1 = (await at.v.output) as Tensor;
        vals.z1 = (await at.z.output) as Tensor;
        const loss = ((await m.lm_head.output) as Tensor).index(0, -1, 7);
        const got: Record<string, number> = {};
        await tr.backward(loss, async (g) => {
          for (const name of order) got[name] = (await g.grad(vals[name]!)).abs().max().item();
        });
        return got;
      },
      { grad: true },
    );
  };

  it("z1, then z0, then the leaf v1: each gets its gradient", async () => {
    const { value } = await across(["z1", "z0", "v1"])();
    for (const name of ["z1", "z0", "v1"]) expect(value[name]).toBeGreaterThan(0);
  });

  it("z1, then the leaf v1, then z0: refused, the error naming the leaf it waited for", async () => {
    const e = await across(["z1", "v1", "z0"])().then(
      () => expect.unreachable("the generation should have failed"),
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(TraceError);
    const message = (e as TraceError).message;
    expect(message).toContain("the gradient of transformer.h.1.attn.source.z.output has already gone by while this code waited for the gradient of transformer.h.1.attn.source.v.output (iteration 1), a leaf of the graph");
    expect(message).toContain("ask for leaves' gradients last");
    expect((e as TraceError).userLine).toMatch(/backward-order\.test\.ts/);
  });
});

/** A tensor of `like`'s shape, zero but for `value` at `at`. */
function oneHot(like: Tensor, at: readonly number[], value: number): Tensor {
  const data = new Float32Array(like.numel());
  const offset = at.reduce((o, i, d) => o * like.shape[d]! + i, 0);
  data[offset] = value;
  return tensor(data, "float32", like.shape);
}

/**
 * Attention's points are asked for in reverse of the order they are read (z, pattern, scores, v, k, q) on every
 * architecture, though a Llama makes v before it rotates q and k: each point's gradient is reached where the forward
 * called it. Something is read before them, so they are not the graph's leaves (which come in any order).
 */
describe("order of gradient requests at attention's points, GPT-2 and Llama alike", () => {
  const attentionOf: Record<string, (m: any) => any> = { "stdlib-gpt2": (m) => m.transformer.h[1].attn, "stdlib-llama": (m) => m.model.layers[1].self_attn };
  const asking = (name: string, order: readonly string[]) => async () => {
    const lm = await LanguageModel.load(name);
    return lm.trace(
      PROMPT,
      async (m: any, tr) => {
        const attn = attentionOf[name]!(m);
        await attn.input;
        const vals: Record<string, Tensor> = {};
        for (const p of ["q", "k", "v", "scores", "pattern", "z"]) vals[p] = (await attn.source[p].output) as Tensor;
        const loss = ((await m.lm_head.output) as Tensor).index(0, -1, 5);
        const got: Record<string, Tensor> = {};
        await tr.backward(loss, async (g) => {
          for (const p of order) got[p] = await g.grad(vals[p]!);
        });
        return { vals, got };
      },
      { grad: true },
    );
  };
  for (const name of Object.keys(attentionOf)) {
    it(`${name}: z, pattern, scores, v, k, q each get their gradient; z = pattern @ v carries it back to pattern and v`, async () => {
      const { vals, got } = await asking(name, ["z", "pattern", "scores", "v", "k", "q"])();
      for (const p of Object.keys(got)) expect(got[p]!.shape).toEqual(vals[p]!.shape);
      // d/d pattern = dz @ v^T; d/d v = pattern^T @ dz (grouped query heads share a key/value head: summed).
      const groups = vals.z!.shape[1]! / vals.v!.shape[1]!;
      expect(maxAbsDiff(got.pattern!, got.z!.matmul(vals.v!.repeatInterleave(groups, 1).transpose(-1, -2)))).toBeLessThan(1e-6);
      const dv = vals.pattern!.transpose(-1, -2).matmul(got.z!);
      const summed = dv.reshape(dv.shape[0]!, got.v!.shape[1]!, groups, dv.shape[2]!, dv.shape[3]!).sum(2);
      expect(maxAbsDiff(got.v!, summed)).toBeLessThan(1e-6);
    });
    it(`${name}: v asked for after k and q has gone by`, async () => {
      const e = await asking(name, ["z", "k", "q", "v"])().then(
        () => expect.unreachable("the trace should have failed"),
        (err: unknown) => err,
      );
      expect(e).toBeInstanceOf(TraceError);
      expect((e as Error).message).toContain("source.v.output has already gone by");
    });
  }
});

describe("setGrad", () => {
  it("refuses a gradient of another shape than the value's, naming both, at the user's line", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    const e = await lm
      .trace(
        PROMPT,
        async (m: any, tr) => {
          const h = (await m.transformer.h[0].output) as Tensor;
          const loss = ((await m.lm_head.output) as Tensor).index(0, -1, 5);
          await tr.backward(loss, async (g) => g.setGrad(h, tensor(new Float32Array(2 * h.shape[1]! * 256), "float32", [2, h.shape[1]!, 256])));
        },
        { grad: true },
      )
      .then(
        () => expect.unreachable("the trace should have failed"),
        (err: unknown) => err as TraceError,
      );
    expect(e).toBeInstanceOf(TraceError);
    expect(e.message).toMatch(/setGrad: the gradient has shape \[1, \d+, 256\]; the replacement has shape \[2, \d+, 256\]/);
    expect(e.userLine).toMatch(/backward-order\.test\.ts/);
  });
});
