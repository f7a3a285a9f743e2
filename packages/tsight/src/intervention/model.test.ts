/**
 * Model: a module tree of one's own (nnsight's NNsight(module)) traced like a language model: typed envoys from
 * its classes, reads and edits checked against the same arithmetic done by hand in float64, invokes batched along
 * the first axis, several arguments, gradients, caches; and the misuses a new user makes, as clear errors.
 */
import { describe, expect, it } from "vitest";
import { Activation, Linear, Module, ModuleCallError, ParameterError } from "../nn/index.js";
import { Generator, randn, Tensor } from "../tensor/index.js";
import { LanguageModel } from "./language-model.js";
import { Model } from "./model.js";
import { OptionsError } from "./options.js";
import { TraceError } from "./errors.js";

class TwoLayerMLP extends Module {
  fc1 = new Linear(4, 8);
  act = new Activation("relu");
  fc2 = new Linear(8, 3);
  override async forward(x: Tensor): Promise<Tensor> {
    return this.fc2.call(await this.act.call(await this.fc1.call(x)));
  }
}

/** Two inputs: h = fc(x) * gate(y) * scale. */
class Gated extends Module {
  fc = new Linear(4, 2, false);
  gate = new Linear(3, 2, false);
  override async forward(x: Tensor, y: Tensor, scale: number): Promise<Tensor> {
    return (await this.fc.call(x)).mul(await this.gate.call(y)).mul(scale);
  }
}

/** A parent that runs its child's forward directly (skipping hooks): the mistake `call` guards against. */
class Careless extends Module {
  fc = new Linear(4, 4);
  override async forward(x: Tensor): Promise<Tensor> {
    return this.fc.forward(x);
  }
}

function mlp(seed = 1): TwoLayerMLP {
  const g = new Generator(seed);
  const m = new TwoLayerMLP();
  m.loadParameters({ "fc1.weight": randn([8, 4], g), "fc1.bias": randn([8], g), "fc2.weight": randn([3, 8], g), "fc2.bias": randn([3], g) });
  return m;
}

/** y = x W^T + b for one row, in float64. */
function linear64(x: number[], w: Tensor, b: Tensor | null): number[] {
  const [out, inp] = w.shape as [number, number];
  const W = w.toArray() as number[];
  const B = b?.toArray() as number[] | undefined;
  return Array.from({ length: out }, (_, o) => {
    let s = B ? B[o]! : 0;
    for (let i = 0; i < inp; i++) s += x[i]! * W[o * inp + i]!;
    return s;
  });
}

const rows = (t: Tensor) => t.tolist() as number[][];
const close = (a: number[][], b: number[][], tol = 1e-5) => expect(Math.max(...a.flatMap((r, i) => r.map((v, j) => Math.abs(v - b[i]![j]!))))).toBeLessThan(tol);

describe("Model: any module tree", () => {
  it("reads and edits values inside a module of one's own, as the same arithmetic done by hand", async () => {
    const module = mlp();
    const model = new Model(module);
    const x = randn([2, 4], new Generator(7));
    const out = await model.trace(x, async (m) => {
      const h = await m.fc1.output; // typed: Promise<Tensor>
      m.act.output = (await m.act.output).put([null, 0], 0); // silence unit 0
      return { h, y: await m.output };
    });
    const want = rows(x).map((r) => {
      const h = linear64(r, module.fc1.weight, module.fc1.bias);
      const a = h.map((v, i) => (i === 0 ? 0 : Math.max(0, v)));
      return { h, y: linear64(a, module.fc2.weight, module.fc2.bias) };
    });
    close(rows(out.h), want.map((w) => w.h));
    close(rows(out.y), want.map((w) => w.y));
    // The edit was this trace's only: the module itself is unchanged.
    const plain = await module.call(x);
    expect(Math.abs(plain.sub(out.y).abs().max().item())).toBeGreaterThan(0);
  });

  it("batches invokes along the first axis: each sees only its rows and gets what it gets alone", async () => {
    const model = new Model(mlp());
    const [a, b] = [randn([2, 4], new Generator(3)), randn([3, 4], new Generator(4))];
    const alone = await Promise.all([a, b].map((x) => model.trace(x, async (m) => m.fc2.output)));
    const together = await model.trace(async (tr) => {
      const ra = tr.invoke(a, async (m) => m.fc2.output);
      const rb = tr.invoke(b, async (m) => {
        m.fc1.output = (await m.fc1.output).mul(2); // only invoke b's rows
        return m.fc2.output;
      });
      return Promise.all([ra, rb]);
    });
    expect(together[0]!.shape).toEqual([2, 3]);
    expect(together[0]!.sub(alone[0]!).abs().max().item()).toBe(0);
    expect(together[1]!.shape).toEqual([3, 3]);
    expect(together[1]!.sub(alone[1]!).abs().max().item()).toBeGreaterThan(1e-3);
  });

  it("takes several arguments (tensors batched, the rest the same in every invoke)", async () => {
    const g = new Generator(5);
    const gated = new Gated();
    gated.loadParameters({ "fc.weight": randn([2, 4], g), "gate.weight": randn([2, 3], g) });
    const model = new Model(gated);
    const [x, y] = [randn([1, 4], g), randn([1, 3], g)];
    const out = await model.trace([x, y, 0.5], async (m) => ({ inputs: await m.gate.inputs, y: await m.output }));
    const fx = linear64(rows(x)[0]!, gated.fc.weight, null);
    const gy = linear64(rows(y)[0]!, gated.gate.weight, null);
    close(rows(out.y), [fx.map((v, i) => v * gy[i]! * 0.5)]);
    expect(out.inputs[0].shape).toEqual([1, 3]);
    await expect(model.trace(async (tr) => {
      tr.invoke([x, y, 0.5], async () => undefined);
      tr.invoke([x, y, 2], async () => undefined);
    })).rejects.toThrow(/argument 2 of invoke 1 differs/);
  });

  it("takes gradients of values inside it, and caches them", async () => {
    const module = mlp();
    const model = new Model(module);
    const x = randn([1, 4], new Generator(9));
    const out = await model.trace(x, async (m, tr) => {
      const cache = tr.cache({ modules: [m.fc1] });
      const h = await m.fc1.output;
      const y = await m.output;
      let gh: Tensor | undefined;
      await tr.backward(y.sum(), async (g) => {
        gh = await g.grad(h);
      });
      return { gh: gh!, cached: cache.fc1.output as Tensor, h };
    }, { grad: true });
    // d(sum y)/dh = relu'(h) * (column sums of W2).
    const h = rows(out.h)[0]!;
    const W2 = rows(module.fc2.weight);
    const want = h.map((v, i) => (v > 0 ? W2.reduce((s, r) => s + r[i]!, 0) : 0));
    close(rows(out.gh), [want]);
    expect(out.cached.sub(out.h).abs().max().item()).toBe(0);
  });

  it("scans: every value's shape and dtype as the trace gives them, with no data, even before parameters are set", async () => {
    const x = new Tensor("float32", Float32Array.from({ length: 8 }, (_, i) => i / 8 - 0.5), [2, 4]);
    const shapes = (m: any) => [m.fc1.output, m.act.output, m.fc2.output, m.fc2.input].map(async (v) => ((t: Tensor) => [t.dtype, t.shape, t.isMeta])(await v));
    const traced = await new Model(mlp()).trace(x, async (m) => Promise.all(shapes(m)));
    const scanned = await new Model(mlp()).scan(x, async (m) => Promise.all(shapes(m)));
    expect(scanned.map(([d, s]) => [d, s])).toEqual(traced.map(([d, s]) => [d, s]));
    expect(scanned.map(([, , meta]) => meta)).toEqual([true, true, true, true]);
    expect(traced[2]).toEqual(["float32", [2, 3], false]);
    // A tree whose parameters were never set scans (a trace refuses it), and a scan with tr.invoke batches too.
    const unset = await new Model(new TwoLayerMLP()).scan(async (tr) => {
      const out: Record<string, readonly number[]> = {};
      tr.invoke(x, async (m) => void (out.first = (await m.fc2.output).shape));
      tr.invoke(x.narrow(0, 0, 1), async (m) => void (out.second = (await m.fc1.output).shape));
      return out;
    });
    expect(unset).toEqual({ first: [2, 3], second: [1, 8] });
  });

  it("is what LanguageModel is: a Model of a causal LM", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    expect(lm).toBeInstanceOf(Model);
  });

  it("a value asked for while two calls of one module run at once (by code its invoke does not await) is the first call's", async () => {
    class Slow extends Module {
      override async forward(x: Tensor, k: number): Promise<Tensor> {
        await new Promise((r) => setTimeout(r, 20 * k));
        return x.mul(k);
      }
    }
    class Both extends Module {
      slow = new Slow();
      override async forward(x: Tensor): Promise<Tensor> {
        const [a, b] = await Promise.all([this.slow.call(x, 1), this.slow.call(x, 2)]);
        return a.add(b);
      }
    }
    const model = new Model(new Both());
    const got = await model.trace(new Tensor("float32", Float32Array.of(1, 1), [1, 2]), async (m: any, tr) => {
      let read: Promise<Tensor> | undefined;
      // Asked while both calls run (nothing was asked when they began: they were only counted).
      setTimeout(() => void (read = m.slow.output), 5);
      await tr.result;
      return (await read!).tolist();
    });
    expect(got).toEqual([[1, 1]]);
  });

  it("misuse is a clear, typed error", async () => {
    const model = new Model(mlp());
    const x = randn([1, 4]);
    await expect(model.trace(x, async () => 1, { remote: true } as never)).rejects.toThrow(OptionsError);
    await expect(model.trace(x, async () => 1, { remote: true } as never)).rejects.toThrow(/a server receives intervention code, never module definitions/);
    await expect(model.trace("text" as never, async () => 1)).rejects.toThrow(TraceError);
    await expect(model.trace(async (tr) => {
      tr.invoke(randn([1, 4]), async () => undefined);
      tr.invoke(randn([1, 5]), async () => undefined);
    })).rejects.toThrow(/cannot be batched/);
    await expect(model.trace(x, async (m) => (m as any).fc3.output)).rejects.toThrow(/has no module "fc3"; its modules are: fc1, act, fc2/);
    expect(() => mlp().setParameter("fc1.weight", randn([4, 8]))).toThrow(ParameterError);
    expect(() => new TwoLayerMLP().loadParameters({ "fc1.weight": randn([8, 4]) })).toThrow(/missing fc1\.bias, fc2\.weight, fc2\.bias/);
    const careless = new Careless().finalize();
    careless.loadParameters({ "fc.weight": randn([4, 4]), "fc.bias": randn([4]) });
    await expect(new Model(careless).trace(x, async (m) => m.fc.output)).rejects.toThrow(ModuleCallError);
    await expect(careless.call(x)).rejects.toThrow(/fc\.forward\(\.\.\.\) was called directly.*call fc\.call/);
    // Parameters never given values: the trace refuses at once, naming them (it would return shapes without values).
    const unset = new Model(new TwoLayerMLP().finalize());
    await expect(unset.trace(x, async (m) => await m.fc2.output)).rejects.toThrow(/^the model's parameters fc1\.weight, fc1\.bias, fc2\.weight, fc2\.bias have no values yet: set them/);
  });
});
