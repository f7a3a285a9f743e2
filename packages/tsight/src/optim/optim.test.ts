import { describe, expect, it } from "vitest";
import { DTypeError, tensor, zeros, type Tensor } from "../tensor/index.js";
import { Adam, AdamW, OptimizerError, parameter, Parameter, scheduleFactor, checkSchedule, SGD, type Optimizer } from "./index.js";

/**
 * Each optimizer trains p on loss = sum(a * (p - c)^2) (gradient 2a(p - c), known exactly) for a few steps; the
 * test repeats the same steps by hand in float64 from the update rules as written in the papers / PyTorch's docs
 * and compares every step.
 */
const a = [0.5, 2, 1.5, 3];
const c = [1, -2, 0.25, 4];
const start = [0.3, -0.7, 1.2, 2.5];

function lossOf(p: Tensor): Tensor {
  return p.sub(tensor(c)).square().mul(tensor(a)).sum();
}
const gradOf = (p: readonly number[]) => p.map((x, i) => 2 * a[i]! * (x - c[i]!));

/** Runs `steps` steps of `opt` on its one parameter; returns the parameter's values after each. */
function train(p: Parameter, opt: Optimizer, steps: number): number[][] {
  const out: number[][] = [];
  for (let k = 0; k < steps; k++) {
    opt.zeroGrad();
    lossOf(p).backward();
    opt.step();
    out.push(p.toArray());
  }
  return out;
}

function expectClose(got: number[][], want: number[][], tol = 2e-6): void {
  expect(got.length).toBe(want.length);
  got.forEach((row, k) => row.forEach((v, i) => expect(Math.abs(v - want[k]![i]!), `step ${k + 1}, value ${i}: ${v} vs ${want[k]![i]}`).toBeLessThan(tol * Math.max(1, Math.abs(want[k]![i]!)))));
}

/** Float64 reference of Adam/AdamW (Loshchilov & Hutter's algorithm 2 with PyTorch's eps placement). */
function adamByHand(steps: number, lr: number, b1: number, b2: number, eps: number, wd: number, decoupled: boolean, lrAt = (_k: number) => lr): number[][] {
  let p = [...start];
  let m = p.map(() => 0);
  let v = p.map(() => 0);
  const out: number[][] = [];
  for (let t = 1; t <= steps; t++) {
    const rate = lrAt(t - 1);
    let g = gradOf(p);
    if (!decoupled) g = g.map((x, i) => x + wd * p[i]!);
    else p = p.map((x) => x - rate * wd * x);
    m = m.map((x, i) => b1 * x + (1 - b1) * g[i]!);
    v = v.map((x, i) => b2 * x + (1 - b2) * g[i]! ** 2);
    const mHat = m.map((x) => x / (1 - b1 ** t));
    const vHat = v.map((x) => x / (1 - b2 ** t));
    p = p.map((x, i) => x - (rate * mHat[i]!) / (Math.sqrt(vHat[i]!) + eps));
    out.push(p);
  }
  return out;
}

function sgdByHand(steps: number, lr: number, mu: number, damp: number, nesterov: boolean, wd: number): number[][] {
  let p = [...start];
  let buf: number[] | null = null;
  const out: number[][] = [];
  for (let t = 1; t <= steps; t++) {
    let g = gradOf(p).map((x, i) => x + wd * p[i]!);
    if (mu > 0) {
      buf = buf === null ? [...g] : buf.map((b, i) => mu * b + (1 - damp) * g[i]!);
      g = nesterov ? g.map((x, i) => x + mu * buf![i]!) : [...buf];
    }
    p = p.map((x, i) => x - lr * g[i]!);
    out.push(p);
  }
  return out;
}

describe("optimizer steps equal hand-computed updates", () => {
  it("Adam", () => {
    const p = parameter(start);
    expectClose(train(p, new Adam([p], { lr: 0.1 }), 6), adamByHand(6, 0.1, 0.9, 0.999, 1e-8, 0, false));
  });
  it("Adam with L2 weight decay and other betas", () => {
    const p = parameter(start);
    expectClose(train(p, new Adam([p], { lr: 0.05, betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0.1 }), 6), adamByHand(6, 0.05, 0.8, 0.99, 1e-6, 0.1, false));
  });
  it("AdamW decays the weights apart from the gradient", () => {
    const p = parameter(start);
    const got = train(p, new AdamW([p], { lr: 0.1, weightDecay: 0.2 }), 6);
    expectClose(got, adamByHand(6, 0.1, 0.9, 0.999, 1e-8, 0.2, true));
    // and it is not Adam's L2 penalty
    const coupled = adamByHand(6, 0.1, 0.9, 0.999, 1e-8, 0.2, false);
    expect(Math.abs(got[5]![0]! - coupled[5]![0]!)).toBeGreaterThan(1e-3);
  });
  it("AdamW's default weight decay is 0.01", () => {
    const p = parameter(start);
    expect(new AdamW([p], { lr: 0.1 }).weightDecay).toBe(0.01);
    expectClose(train(p, new AdamW([p], { lr: 0.1 }), 3), adamByHand(3, 0.1, 0.9, 0.999, 1e-8, 0.01, true));
  });
  it("SGD, plain, with momentum, with dampening and weight decay, and Nesterov", () => {
    const settings: [number, number, boolean, number][] = [
      [0, 0, false, 0],
      [0.9, 0, false, 0],
      [0.8, 0.3, false, 0.05],
      [0.9, 0, true, 0.01],
    ];
    for (const [momentum, dampening, nesterov, weightDecay] of settings) {
      const p = parameter(start);
      expectClose(train(p, new SGD([p], { lr: 0.02, momentum, dampening, nesterov, weightDecay }), 5), sgdByHand(5, 0.02, momentum, dampening, nesterov, weightDecay));
    }
  });
  it("a schedule sets each step's learning rate", () => {
    const p = parameter(start);
    const schedule = { type: "cosine", totalSteps: 6, warmupSteps: 2, minFactor: 0.1 } as const;
    const opt = new Adam([p], { lr: 0.1, schedule });
    const byHand = (k: number) => (k < 2 ? (0.1 * (k + 1)) / 2 : 0.1 * (0.1 + 0.9 * 0.5 * (1 + Math.cos((Math.PI * (k - 2)) / 4))));
    expectClose(train(p, opt, 6), adamByHand(6, 0.1, 0.9, 0.999, 1e-8, 0, false, byHand));
    expect(opt.steps).toBe(6);
  });
  it("two parameters, one without a gradient: it is left alone and its Adam step count does not advance", () => {
    const p = parameter(start);
    const q = parameter([1, 2]);
    const opt = new Adam([p, q], { lr: 0.1 });
    train(p, opt, 2);
    expect(q.toArray()).toEqual([1, 2]);
    opt.zeroGrad();
    q.sum().backward();
    opt.step();
    // q's first step: m = 0.1 g, v = 0.001 g^2, bias-corrected to g and g^2, so it moves by lr (1 - tiny eps effect)
    expect(q.toArray().map((x, i) => [1, 2][i]! - x)).toEqual([expect.closeTo(0.1, 6), expect.closeTo(0.1, 6)]);
  });
});

describe("schedules", () => {
  it("factors at each step", () => {
    const at = (s: unknown, ks: number[]) => ks.map((k) => scheduleFactor(checkSchedule(s), k));
    expect(at({ type: "constant" }, [0, 5, 1000])).toEqual([1, 1, 1]);
    expect(at({ type: "linear", warmupSteps: 4 }, [0, 1, 3, 4, 100])).toEqual([0.25, 0.5, 1, 1, 1]);
    expect(at({ type: "linear", warmupSteps: 2, totalSteps: 6 }, [0, 1, 2, 4, 6, 9])).toEqual([0.5, 1, 1, 0.5, 0, 0]);
    expect(at({ type: "step", stepSize: 3, gamma: 0.5 }, [0, 2, 3, 6, 7])).toEqual([1, 1, 0.5, 0.25, 0.25]);
    const cos = at({ type: "cosine", totalSteps: 10 }, [0, 5, 10, 20]);
    expect(cos[0]).toBe(1);
    expect(cos[1]).toBeCloseTo(0.5, 12);
    expect(cos[2]).toBeCloseTo(0, 12);
    expect(cos[3]).toBeCloseTo(0, 12);
  });
  it("bad schedules are OptimizerErrors naming the field", () => {
    const bad: [unknown, RegExp][] = [
      [{ type: "cosine" }, /totalSteps/],
      [{ type: "exponential" }, /type must be one of/],
      [{ type: "step", stepSize: 0 }, /stepSize/],
      [{ type: "step", stepSize: 2, gamma: 2 }, /gamma/],
      [{ type: "linear", warmupSteps: 5, totalSteps: 3 }, /less than warmupSteps/],
      [{ type: "cosine", totalSteps: 1e12 }, /totalSteps/],
      [{ type: "cosine", totalSteps: 10, minFactor: NaN }, /minFactor/],
      [{ type: "constant", warmupSteps: 3 }, /not warmupSteps/],
    ];
    for (const [s, message] of bad) expect(() => checkSchedule(s)).toThrow(OptimizerError), expect(() => checkSchedule(s)).toThrow(message);
  });
});

describe("parameters and bad input", () => {
  it("a parameter copies its values, is a float32 leaf that requires grad, and a step leaves earlier snapshots alone", () => {
    const init = tensor([1, 2, 3]);
    const p = parameter(init);
    expect(p).toBeInstanceOf(Parameter);
    expect(p.requiresGrad).toBe(true);
    expect(p.gradNode).toBeNull();
    const before = p.snapshot();
    const viewed = p.reshape([3, 1]);
    const opt = new SGD([p], { lr: 1 });
    p.sum().backward();
    opt.step();
    expect(p.toArray()).toEqual([0, 1, 2]);
    expect(before.toArray()).toEqual([1, 2, 3]);
    expect(viewed.toArray()).toEqual([1, 2, 3]);
    expect(init.toArray()).toEqual([1, 2, 3]);
  });
  it("zeroGrad clears gradients; without it they add up", () => {
    const p = parameter([1, 2]);
    const opt = new SGD([p], { lr: 0.1 });
    p.sum().backward();
    p.sum().backward();
    expect(p.grad!.toArray()).toEqual([2, 2]);
    opt.zeroGrad();
    expect(p.grad).toBeNull();
  });
  it("refuses bad parameters and settings with typed errors", () => {
    const p = parameter([1, 2]);
    const cases: [() => unknown, RegExp][] = [
      [() => new Adam([p], { lr: -0.1 }), /lr must be a number from 0/],
      [() => new Adam([p], { lr: NaN }), /lr/],
      [() => new Adam([p], { lr: 1e9 }), /lr/],
      [() => new SGD([p.mul(2)], { lr: 0.1 }), /not a leaf/],
      [() => new SGD([zeros([2]).requiresGrad_()], { lr: 0.1 }), /plain tensor.*parameter\(t\)/],
      [() => new SGD([p, p], { lr: 0.1 }), /listed twice/],
      [() => new SGD([], { lr: 0.1 }), /non-empty list/],
      [() => new Adam([p], { lr: 0.1, betas: [0.9, 1] }), /betas\[1\]/],
      [() => new Adam([p], { lr: 0.1, betas: [0.9] as never }), /two numbers/],
      [() => new Adam([p], { lr: 0.1, eps: 0 }), /eps must be a number above 0/],
      [() => new AdamW([p], { lr: 0.1, weightDecay: -1 }), /weightDecay/],
      [() => new SGD([p], { lr: 0.1, momentum: 1.5 }), /momentum/],
      [() => new SGD([p], { lr: 0.1, nesterov: true }), /nesterov momentum needs momentum/],
      [() => new SGD([p], { lr: 0.1, momentun: 0.9 } as never), /unknown option momentun/],
      [() => new Adam([p], { lr: 0.1, schedule: { type: "cosine" } as never }), /totalSteps/],
    ];
    for (const [make, message] of cases) {
      expect(make).toThrow(OptimizerError);
      expect(make).toThrow(message);
    }
    expect(() => parameter(tensor([1, 2], "int64"))).toThrow(DTypeError);
    const opt = new Adam([p], { lr: 0.1 });
    expect(() => (opt.lr = -1)).toThrow(OptimizerError);
    opt.lr = 0.5;
    expect(opt.currentLr).toBe(0.5);
  });
  it("state is allocated up front and reported", () => {
    const p = parameter(zeros([10, 3]));
    expect(new Adam([p], { lr: 1 }).stateBytes).toBe(2 * 30 * 4);
    expect(new SGD([p], { lr: 1, momentum: 0.9 }).stateBytes).toBe(30 * 4);
    expect(new SGD([p], { lr: 1 }).stateBytes).toBe(0);
  });
});
