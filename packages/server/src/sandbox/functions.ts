/**
 * The global tensor functions of the sandbox (tsight/protocol's TENSOR_FUNCTIONS), on the host. Arguments arrive
 * checked against the table; every size is charged to the job's budget before anything is allocated.
 */
import { Adam, AdamW, arange, cat, einsum, empty, eye, full, Generator, linspace, logspace, ones, parameter, rand, randint, randn, randperm, SGD, sizeOf, stack, tensor, where, zeros, type DType, type Optimizer, type Tensor } from "tsight";
import type { TensorFunction } from "tsight/protocol";

const ITEM_BYTES: Record<DType, number> = { float32: 4, int64: 8, int32: 4, bool: 1 };

/**
 * What a function needs from the job: a check that `bytes` more fit, a charge for what it keeps that no tensor
 * handle stands for (an optimizer's state), and a generator when none is given.
 */
export interface FunctionContext {
  fits(bytes: number): void;
  charge(bytes: number): void;
  generator(): Generator;
}

type Impl = (args: any[], ctx: FunctionContext) => unknown;

const sized =
  (make: (shape: number[], dtype: DType) => Tensor, dtypeAt = 1): Impl =>
  (args, ctx) => {
    const dtype: DType = args[dtypeAt] ?? "float32";
    ctx.fits(sizeOf(args[0]) * ITEM_BYTES[dtype]);
    return make(args[0], dtype);
  };

/**
 * An optimizer, charged to the job for as long as the job runs: its state (`arrays` per value: moments, a
 * momentum buffer) and one gradient per parameter, which backward passes keep on the parameters. Checked against
 * the budget before the state is allocated, charged once made.
 */
const optimizer =
  (make: (params: Tensor[], options: never) => Optimizer, arrays: (options: Record<string, unknown>) => number): Impl =>
  ([params, options], ctx) => {
    const values = (params as Tensor[]).reduce((n, p) => n + p.numel(), 0);
    ctx.fits(values * 4 * (1 + arrays(options)));
    const opt = make(params, options as never);
    ctx.charge(opt.stateBytes + values * 4);
    return opt;
  };

export const FUNCTIONS = {
  tensor: ([values, dtype, shape]) => tensor(values, dtype ?? undefined, shape ?? undefined),
  zeros: sized(zeros),
  ones: sized(ones),
  empty: sized(empty),
  full: ([shape, value, dtype], ctx) => {
    ctx.fits(sizeOf(shape) * ITEM_BYTES[(dtype as DType) ?? "float32"]);
    return full(shape, value, dtype ?? "float32");
  },
  arange: ([a, b, step]) => arange(a, b ?? undefined, step ?? 1),
  linspace: ([start, end, steps], ctx) => {
    ctx.fits(Math.max(0, steps) * 4);
    return linspace(start, end, steps);
  },
  logspace: ([start, end, steps, base], ctx) => {
    ctx.fits(Math.max(0, steps) * 8);
    return logspace(start, end, steps, base ?? 10);
  },
  eye: ([n, dtype], ctx) => {
    if (n < 0) throw new RangeError(`eye: n must be 0 or more, got ${n}`);
    ctx.fits(n * n * ITEM_BYTES[(dtype as DType) ?? "float32"]);
    return eye(n, dtype ?? "float32");
  },
  randn: ([shape, gen], ctx) => {
    ctx.fits(sizeOf(shape) * 4);
    return randn(shape, gen ?? ctx.generator());
  },
  rand: ([shape, gen], ctx) => {
    ctx.fits(sizeOf(shape) * 4);
    return rand(shape, gen ?? ctx.generator());
  },
  randint: ([low, high, shape, gen], ctx) => {
    ctx.fits(sizeOf(shape) * 8);
    return randint(low, high, shape, gen ?? ctx.generator());
  },
  randperm: ([n, gen], ctx) => {
    if (n < 0) throw new RangeError(`randperm: n must be 0 or more, got ${n}`);
    ctx.fits(n * 16);
    return randperm(n, gen ?? ctx.generator());
  },
  cat: ([tensors, dim]) => cat(tensors, dim ?? 0),
  stack: ([tensors, dim]) => stack(tensors, dim ?? 0),
  where: ([condition, a, b]) => where(condition, a, b),
  // Each of its kernels' outputs is checked by the job's allocation guard (einsum contracts two operands at a time).
  einsum: ([equation, ...operands]) => einsum(equation, ...operands),
  Generator: ([seed]) => new Generator(seed ?? 0),
  parameter: ([t], ctx) => {
    ctx.fits((t as Tensor).numel() * 4);
    return parameter(t);
  },
  SGD: optimizer(
    (params, options) => new SGD(params, options),
    (o) => (o.momentum ? 1 : 0),
  ),
  Adam: optimizer(
    (params, options) => new Adam(params, options),
    () => 2,
  ),
  AdamW: optimizer(
    (params, options) => new AdamW(params, options),
    () => 2,
  ),
} satisfies Record<TensorFunction, Impl>;
