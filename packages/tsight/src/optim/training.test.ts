/**
 * Training inside interventions, end to end: a steering vector trained on stdlib-gpt2 through a grad trace, a
 * linear probe trained on cached activations, and a learned rotation (distributed alignment search) on a toy
 * model. Each asserts what the training achieves on data it did not train on.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { LanguageModel } from "../client/index.js";
import { cat, eye, Generator, randn, tensor, zeros, type Tensor } from "../tensor/index.js";
import { Adam, AdamW, parameter, SGD, type Parameter } from "./index.js";

describe("a steering vector trained with Adam raises a token's probability on held-out prompts", () => {
  let lm: LanguageModel;
  beforeAll(async () => {
    lm = await LanguageModel.load("stdlib-gpt2");
  });

  const train = ["    for i in range(", "    return", "import os\n", "    if x ==", "        self.name =", "    print(", "x = [", "    while"];
  const heldOut = ["    def step(self,", "    y =", "class A:\n    ", "    with open("];

  it("lowers the held-out loss of 'None' by more than 5 nats while the model's weights stay frozen", async () => {
    const target = lm.tokenizer.encode("None")[0]!;
    const steer = parameter(zeros([256]));
    const opt = new Adam([steer], { lr: 0.1, schedule: { type: "linear", warmupSteps: 3 } });
    const weight = lm.model.get("transformer.h.1.attn.c_attn")!.getParam("weight");
    const weightBefore = weight.toArray();
    // Mean negative log-probability of the target after each prompt, with the vector added to layer 2's output.
    const loss = (prompts: string[], learn: boolean) =>
      lm.trace(
        prompts,
        async (m, tr) => {
          m.transformer.h[2].output = (await m.transformer.h[2].output).add(steer);
          const nll = ((await m.lm_head.output) as Tensor).index(null, -1).logSoftmax(-1).index(null, target).mean().neg();
          if (learn) await tr.backward(nll);
          return nll.item();
        },
        { grad: learn },
      );
    const before = await loss(heldOut, false);
    const trainLosses: number[] = [];
    for (let step = 0; step < 25; step++) {
      opt.zeroGrad();
      trainLosses.push(await loss(train, true));
      opt.step();
    }
    const after = await loss(heldOut, false);
    console.log(`steering: held-out loss ${before.toFixed(2)} -> ${after.toFixed(2)} nats; training loss ${trainLosses[0]!.toFixed(2)} -> ${trainLosses.at(-1)!.toFixed(2)}`);
    expect(before).toBeGreaterThan(8);
    expect(before - after).toBeGreaterThan(5);
    expect(trainLosses.at(-1)!).toBeLessThan(trainLosses[0]! - 5);
    // Only the vector learned: the model's weights hold no gradient, do not require one, and did not change.
    for (const [name, info] of lm.model.namedParameters()) {
      const w = info.module.getParam(info.name);
      expect(w.requiresGrad, name).toBe(false);
      expect(w.grad, name).toBeNull();
    }
    expect(weight.toArray()).toEqual(weightBefore);
    expect(steer.grad).not.toBeNull();
  }, 120_000);
});

/** Short Python snippets: their tokens are the probe's examples; the last five are held out. */
const SNIPPETS = [
  "import os\nimport sys\n\ndef main(argv):\n    path = os.path.join(argv[0], 'data')\n    return len(path)\n",
  "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
  "for i in range(10):\n    if i % 2 == 0:\n        print(i, i * i)\n",
  "def read(name):\n    with open(name) as f:\n        lines = f.readlines()\n    return [l.strip() for l in lines]\n",
  "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n",
  "result = {}\nfor key, item in items.items():\n    result[key] = item + 1\n",
  "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
  "while True:\n    line = input()\n    if not line:\n        break\n",
  "class Stack:\n    def push(self, x):\n        self.items.append(x)\n",
  "data = [x * 2 for x in range(5) if x > 1]\ntotal = sum(data)\n",
  "def area(width, height=1):\n    scale = max(width, height)\n    return width * height / scale\n",
  "names = sorted(set(words), key=len)\nfor name in names:\n    counts[name] = counts.get(name, 0) + 1\n",
  "if __name__ == '__main__':\n    args = parse(sys.argv[1:])\n    run(args.path, verbose=True)\n",
  "class Node:\n    def __init__(self, value, children=None):\n        self.value = value\n        self.children = children or []\n",
  "assert isinstance(value, (int, float))\nresult = math.sqrt(abs(value))\nprint(result)\n",
  "def merge(left, right):\n    out = []\n    while left and right:\n        out.append(min(left[0], right[0]))\n    return out\n",
  "config = {'name': 'test', 'size': 3}\nfor k in config:\n    print(k, config[k])\n",
  "raise ValueError('bad value: %r' % (value,))\n",
  "with open(path, 'w') as f:\n    f.write(json.dumps(data, indent=2))\n",
  "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0.0\n",
];

describe("a linear probe trained on cached layer-2 residuals", () => {
  it("tells whether a token is inside brackets above 90% on held-out snippets (AdamW, cosine schedule); token embeddings alone cannot", async () => {
    const lm = await LanguageModel.load("stdlib-gpt2");
    // Cache: the token embeddings and layer 2's output for every token of every snippet, and whether the token
    // sits inside (), [] or {} (a property of the context, not of the token).
    const examples = await Promise.all(
      SNIPPETS.map(async (text) => {
        const ids = lm.tokenizer.encode(text);
        const [emb, h2] = (await lm.trace(ids, async (m) => [await m.transformer.wte.output, await m.transformer.h[2].output])) as Tensor[];
        let depth = 0;
        const labels = ids.map((id) => {
          for (const ch of lm.tokenizer.decode([id])) depth += "([{".includes(ch) ? 1 : ")]}".includes(ch) ? -1 : 0;
          return depth > 0 ? 1 : 0;
        });
        return { emb: emb!.index(0), h2: h2!.index(0), y: tensor(labels) };
      }),
    );
    const split = SNIPPETS.length - 5;
    const y = cat(examples.slice(0, split).map((e) => e.y));
    const yTest = cat(examples.slice(split).map((e) => e.y));

    /** Trains a logistic-regression probe on features `which`; returns its accuracies. */
    const probe = (which: "emb" | "h2") => {
      const x = cat(examples.slice(0, split).map((e) => e[which]));
      const xTest = cat(examples.slice(split).map((e) => e[which]));
      // Standardised with the training set's statistics (residuals have a few huge dimensions).
      const mu = x.mean(0, true);
      const sd = x.std(0, { keepdim: true }).add(1e-3);
      const w = parameter(zeros([256, 1]));
      const b = parameter(zeros([1]));
      const steps = 150;
      const opt = new AdamW([w, b], { lr: 0.05, weightDecay: 0.01, schedule: { type: "cosine", totalSteps: steps, warmupSteps: 10 } });
      const logits = (v: Tensor) => v.sub(mu).div(sd).matmul(w).reshape([-1]).add(b);
      const accuracy = (v: Tensor, labels: Tensor) => logits(v).gt(0).long().eq(labels).float().mean().item();
      // Binary cross-entropy from logits: softplus(z) - y z.
      const bce = (z: Tensor, labels: Tensor) => z.exp().add(1).log().sub(z.mul(labels.float())).mean();
      const untrained = accuracy(xTest, yTest);
      for (let k = 0; k < steps; k++) {
        opt.zeroGrad();
        bce(logits(x), y).backward();
        opt.step();
      }
      return { train: accuracy(x, y), test: accuracy(xTest, yTest), untrained, tokens: [x.shape[0], xTest.shape[0]] };
    };
    const h2 = probe("h2");
    const emb = probe("emb");
    const majority = Math.max(yTest.float().mean().item(), 1 - yTest.float().mean().item());
    console.log(`probe: ${h2.tokens[0]} training tokens, ${h2.tokens[1]} held out; layer 2 accuracy ${h2.train.toFixed(3)} train, ${h2.test.toFixed(3)} held out (untrained ${h2.untrained.toFixed(3)}, majority class ${majority.toFixed(3)}); token embeddings ${emb.test.toFixed(3)} held out`);
    expect(h2.test).toBeGreaterThan(0.9);
    expect(h2.test).toBeGreaterThan(majority + 0.3);
    expect(h2.test).toBeGreaterThan(emb.test + 0.08);
  }, 120_000);
});

/**
 * Distributed alignment search (Geiger et al. 2023, pyvene's RotatedSpaceIntervention) on a toy model. The model
 * computes y = [a == b] for a, b in {-1, +1}: its hidden state is h = Q z with z = (a, b, four distractors) and Q
 * a fixed random rotation, so the variable `a` lives along one direction of h that is no coordinate. DAS learns a
 * rotation R (R = exp(A - A^T), an orthogonal matrix from a free parameter) such that replacing the first row of
 * R h in a base run by that of a source run makes the model output the counterfactual [a_source == b_base].
 */
describe("distributed alignment search learns the rotation that isolates a variable", () => {
  const d = 6;
  const gen = new Generator(7);

  /** exp(M) by scaling and squaring a Taylor series (M small after scaling): all matmuls, so differentiable. */
  function expm(m: Tensor): Tensor {
    const s = 4;
    const a = m.div(2 ** s);
    let term = eye(d);
    let sum = eye(d);
    for (let n = 1; n <= 10; n++) {
      term = term.matmul(a).div(n);
      sum = sum.add(term);
    }
    for (let i = 0; i < s; i++) sum = sum.matmul(sum);
    return sum;
  }

  // The toy model: a fixed rotation Q (from a random skew-symmetric matrix), readout logit = 6 a b on z = Q^T h.
  const skew = randn([d, d], gen);
  const q = expm(skew.sub(skew.transpose(0, 1)));
  const hidden = (z: Tensor) => z.matmul(q.transpose(0, 1)); // rows: h = Q z
  const readout = (h: Tensor) => {
    const z = h.matmul(q);
    return z.index(null, 0).mul(z.index(null, 1)).mul(6);
  };

  /** n base/source pairs: z rows, and the counterfactual label [a_source == b_base]. */
  function pairs(n: number) {
    const sign = () => randn([n, 1], gen).gt(0).float().mul(2).sub(1);
    const base = cat([sign(), sign(), randn([n, d - 2], gen)], 1);
    const source = cat([sign(), sign(), randn([n, d - 2], gen)], 1);
    const label = source.index(null, 0).mul(base.index(null, 1)).gt(0).float();
    return { base: hidden(base), source: hidden(source), label };
  }

  /** The interchange intervention through rotation r: row 0 of r h comes from the source run. */
  function interchange(r: Tensor, base: Tensor, source: Tensor): Tensor {
    const rb = base.matmul(r.transpose(0, 1));
    const rs = source.matmul(r.transpose(0, 1));
    const mask = tensor([1, 0, 0, 0, 0, 0]);
    const mixed = rs.mul(mask).add(rb.mul(mask.neg().add(1)));
    return mixed.matmul(r);
  }
  const iia = (r: Tensor, p: ReturnType<typeof pairs>) => readout(interchange(r, p.base, p.source)).gt(0).float().eq(p.label).float().mean().item();

  it("interchange-intervention accuracy: trained above 0.95 on held-out pairs, identity and random rotations far below", () => {
    const trainSet = pairs(256);
    const testSet = pairs(512);
    const a: Parameter = parameter(randn([d, d], gen).mul(0.01));
    const rotation = () => expm(a.sub(a.transpose(0, 1)));
    const untrained = iia(rotation(), testSet);
    const identity = iia(eye(d), testSet);
    const randomSkew = randn([d, d], gen);
    const random = iia(expm(randomSkew.sub(randomSkew.transpose(0, 1))), testSet);
    // lr 0.2: at 0.5 the loss jumped about (2.7 after 0.3 at step 75) and whether it settled in 200 steps turned on
    // the last bits of the gradients (a backward pass summing in another order stalled it at 0.71); at 0.2 it falls
    // to 0.004 by step 50 either way.
    const opt = new SGD([a], { lr: 0.2, momentum: 0.9, schedule: { type: "step", stepSize: 100, gamma: 0.5 } });
    for (let k = 0; k < 200; k++) {
      opt.zeroGrad();
      const z = readout(interchange(rotation(), trainSet.base, trainSet.source));
      z.exp().add(1).log().sub(z.mul(trainSet.label)).mean().backward();
      opt.step();
    }
    const r = rotation();
    const trained = iia(r, testSet);
    // The learned first row is the direction of `a` in h (up to sign): Q's first column.
    const alignment = Math.abs(r.index(0).mul(q.index(null, 0)).sum().item());
    const orthogonality = r.matmul(r.transpose(0, 1)).sub(eye(d)).abs().max().item();
    console.log(`DAS: interchange-intervention accuracy ${trained.toFixed(3)} trained, ${untrained.toFixed(3)} at the start, ${identity.toFixed(3)} identity, ${random.toFixed(3)} random rotation; |cos(learned row, true direction)| ${alignment.toFixed(4)}`);
    expect(trained).toBeGreaterThan(0.95);
    for (const baseline of [untrained, identity, random]) expect(baseline).toBeLessThan(trained - 0.15);
    expect(alignment).toBeGreaterThan(0.95);
    expect(orthogonality).toBeLessThan(1e-4);
  });
});
