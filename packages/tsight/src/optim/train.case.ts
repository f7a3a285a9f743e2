/**
 * Training inside a session, as a suite that runs in process and through the remote paths (the parity harness
 * runs this same file): parameters, backward and optimizers in the job's code, and only the trained parameters
 * coming back. Every remote run is compared with the same training in process.
 *
 * Remote code calls the optimizers and `parameter` as the sandbox's globals. They are bound to plain constants
 * here (not used as imports) so that the test compiler leaves their names alone in the functions' source.
 */
import { expect } from "vitest";
import { maxAbsDiff } from "../../../../test/fixtures.js";
import type { TraceCase } from "../intervention/trace.case.js";
import * as optim from "./index.js";
import * as tensors from "../tensor/index.js";
import type { Tensor } from "../tensor/index.js";

const { parameter, Adam, SGD } = optim;
const { zeros } = tensors;

export const trainCases: TraceCase[] = [
  {
    name: "a steering vector trained with Adam in a session: only the trained vector comes back, as trained in process",
    async run(b) {
      const target = b.gpt2.tokenizer.encode("None")[0]!;
      const session = async (s: any) => {
        const steer = parameter(zeros([256]));
        const opt = new Adam([steer], { lr: 0.1, schedule: { type: "linear", warmupSteps: 3 } });
        const losses: number[] = [];
        for (let step = 0; step < 6; step++) {
          opt.zeroGrad();
          const loss = await s.trace(
            ["    return", "x = [", "    while"],
            async (m: any, tr: any) => {
              m.transformer.h[2].output = ((await m.transformer.h[2].output) as Tensor).add(steer);
              const nll = ((await m.lm_head.output) as Tensor).index(null, -1).logSoftmax(-1).index(null, s.vars.target).mean().neg();
              await tr.backward(nll);
              return nll.item();
            },
            { grad: true },
          );
          losses.push(loss);
          opt.step();
        }
        return { steer, losses, lr: opt.currentLr, steps: opt.steps, grad: steer.grad!.shape, requiresGrad: steer.requiresGrad };
      };
      const here = await b.gpt2.session(session, { vars: { target } });
      const out = await b.gpt2.session(session, b.options({ vars: { target } }) as never);
      expect(out.steer.shape).toEqual([256]);
      expect(maxAbsDiff(out.steer, here.steer)).toBeLessThan(1e-5);
      out.losses.forEach((l: number, i: number) => expect(l).toBeCloseTo(here.losses[i]!, 4));
      expect(out.losses.at(-1)).toBeLessThan(out.losses[0]! - 3);
      expect({ lr: out.lr, steps: out.steps, grad: out.grad, requiresGrad: out.requiresGrad }).toEqual({ lr: 0.1, steps: 6, grad: [256], requiresGrad: true });
    },
  },
  {
    name: "a probe trained on a session's cached activations with loss.backward() and SGD with Nesterov momentum",
    async run(b) {
      const session = async (s: any) => {
        const h = ((await s.trace("for i in range(10):\n    print(i, i * i)\n", async (m: any) => await m.transformer.h[2].output)) as Tensor).index(0);
        // Standardised features (scaled by 1/sqrt(256)); the target is a fixed direction of them, which a linear
        // probe can fit exactly.
        const x = h.sub(h.mean(0, true)).div(h.std(0, { keepdim: true }).add(1e-3)).div(16);
        const y = x.narrow(1, 0, 8).sum(1, true).div(8);
        const w = parameter(zeros([256, 1]));
        const opt = new SGD([w], { lr: 0.2, momentum: 0.9, nesterov: true, schedule: { type: "step", stepSize: 20, gamma: 0.5 } });
        const losses: number[] = [];
        for (let k = 0; k < 40; k++) {
          opt.zeroGrad();
          const loss = x.matmul(w).sub(y).square().mean();
          loss.backward();
          losses.push(loss.item());
          opt.step();
        }
        return { w, losses, grad: w.grad!.shape, cached: h.requiresGrad, lr: opt.currentLr };
      };
      const here = await b.gpt2.session(session);
      const out = await b.gpt2.session(session, b.options() as never);
      expect(maxAbsDiff(out.w, here.w)).toBeLessThan(1e-5);
      expect(out.losses.at(-1)).toBeLessThan(out.losses[0]! / 10);
      expect(out.losses.at(-1)).toBeCloseTo(here.losses.at(-1)!, 5);
      expect({ grad: out.grad, cached: out.cached, lr: out.lr }).toEqual({ grad: [256, 1], cached: false, lr: 0.05 });
    },
  },
  {
    name: "bad optimizer settings and parameters are OptimizerErrors, remotely too",
    async run(b) {
      const failing = [
        [async () => new Adam([parameter(zeros([2]))], { lr: -1 }), /lr must be a number from 0/],
        [async () => new SGD([zeros([2])], { lr: 0.1 }), /plain tensor/],
        [async () => new Adam([parameter(zeros([2]))], { lr: 0.1, schedule: { type: "cosine" } as never }), /totalSteps/],
        [async () => new Adam([parameter(zeros([2])).mul(2)], { lr: 0.1 }), /not a leaf/],
      ] as const;
      for (const [fn, message] of failing) {
        const e = (await b.gpt2.session(fn as () => Promise<unknown>, b.options() as never).catch((x: Error) => x)) as Error;
        expect(e).toBeInstanceOf(optim.OptimizerError);
        expect(e.message).toMatch(message);
      }
      const int = await b.gpt2.session(async () => parameter(zeros([2], "int64")), b.options() as never).catch((x) => x);
      expect(int).toBeInstanceOf(tensors.DTypeError);
    },
  },
];
