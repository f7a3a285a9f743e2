/**
 * Optimizer: what SGD, Adam and AdamW share. It owns the list of Parameters, the base learning rate and its
 * schedule, the step count, and each parameter's state (allocated when the optimizer is made, so what it holds is
 * known up front: `stateBytes`). An update reads a parameter's values and gradient as float32 arrays, computes in
 * float64 (JavaScript numbers) element by element, and stores float32, as PyTorch's single-tensor kernels do.
 */
import { MAX_ELEMENTS, Tensor } from "../tensor/index.js";
import { OptimizerError } from "./errors.js";
import { Parameter } from "./parameter.js";
import { checkSchedule, scheduleFactor, type Schedule } from "./schedule.js";

/** Largest learning rate or weight decay taken (anything near it diverges at once; it bounds the arithmetic). */
export const MAX_RATE = 1e6;
/** Most parameters one optimizer trains. */
export const MAX_PARAMETERS = 4096;

export interface OptimizerOptions {
  /** Base learning rate, 0 to MAX_RATE. */
  lr: number;
  /** How the learning rate changes with the step (constant by default). */
  schedule?: Schedule;
}

/** A number in [min, max] (or (min, max] when `open`), else an OptimizerError naming the option. */
export function checkNumber(owner: string, name: string, v: unknown, min: number, max: number, open = false): number {
  if (typeof v !== "number" || !(open ? v > min : v >= min) || !(v <= max)) {
    throw new OptimizerError(`${owner}: ${name} must be a number ${open ? "above" : "from"} ${min} ${open ? "and at most" : "to"} ${max}, got ${String(v)}`);
  }
  return v;
}

/** Options keys `owner` takes; an unknown one (a misspelling) is an error rather than silently ignored. */
export function checkKeys(owner: string, options: unknown, keys: readonly string[]): Record<string, unknown> {
  if (typeof options !== "object" || options === null || Array.isArray(options)) throw new OptimizerError(`${owner}: options must be an object such as { lr: 0.01 }`);
  const extra = Object.keys(options).filter((k) => !keys.includes(k));
  if (extra.length) throw new OptimizerError(`${owner}: unknown option${extra.length > 1 ? "s" : ""} ${extra.join(", ").slice(0, 200)}; it takes ${keys.join(", ")}`);
  return options as Record<string, unknown>;
}

export abstract class Optimizer {
  readonly params: readonly Parameter[];
  readonly schedule: Schedule;
  /** Steps taken so far (the schedule's k for the next step). */
  steps = 0;
  private baseLr: number;

  constructor(
    protected readonly owner: string,
    params: readonly Tensor[],
    options: OptimizerOptions,
  ) {
    if (!Array.isArray(params) || params.length === 0) throw new OptimizerError(`${owner}: give it a non-empty list of parameters, e.g. new ${owner}([parameter(zeros([768]))], { lr: 0.01 })`);
    if (params.length > MAX_PARAMETERS) throw new OptimizerError(`${owner}: at most ${MAX_PARAMETERS} parameters, got ${params.length}`);
    params.forEach((p, i) => {
      if (!(p instanceof Tensor)) throw new OptimizerError(`${owner}: parameter ${i} is not a tensor`);
      if (p.gradNode) throw new OptimizerError(`${owner}: parameter ${i} is computed from other tensors (not a leaf), so no step can change it; train the leaf it comes from, made with parameter(...)`);
      if (!(p instanceof Parameter)) throw new OptimizerError(`${owner}: parameter ${i} is a plain tensor, which never changes; make it trainable with parameter(t) and use that in the computation`);
      if (params.indexOf(p) !== i) throw new OptimizerError(`${owner}: parameter ${i} is listed twice (it is parameter ${params.indexOf(p)})`);
    });
    const total = params.reduce((n, p) => n + p.numel(), 0);
    if (total > MAX_ELEMENTS) throw new OptimizerError(`${owner}: the parameters have ${total} values in all, more than ${MAX_ELEMENTS}`);
    this.params = Object.freeze([...params]) as readonly Parameter[];
    this.baseLr = checkNumber(owner, "lr", options.lr, 0, MAX_RATE);
    this.schedule = checkSchedule(options.schedule);
  }

  /** The base learning rate (the schedule multiplies it). */
  get lr(): number {
    return this.baseLr;
  }
  set lr(v: number) {
    this.setLr(v);
  }
  /** Sets the base learning rate (the form remote code uses: `opt.lr = v` works in process only). */
  setLr(v: number): void {
    this.baseLr = checkNumber(this.owner, "lr", v, 0, MAX_RATE);
  }

  /** The learning rate the next step uses: lr times the schedule's factor at this step. */
  get currentLr(): number {
    return this.baseLr * scheduleFactor(this.schedule, this.steps);
  }

  /** Forgets the parameters' gradients (backward adds to what is there, as in PyTorch). */
  zeroGrad(): void {
    for (const p of this.params) p.grad = null;
  }

  /** Updates every parameter that has a gradient, then advances the schedule. */
  step(): void {
    const lr = this.currentLr;
    this.params.forEach((p, i) => {
      const g = p.grad;
      if (!g) return;
      if (g.dtype !== "float32" || g.numel() !== p.numel()) throw new OptimizerError(`${this.owner}: parameter ${i}'s gradient has shape [${g.shape}] (${g.dtype}), not its own [${p.shape}]`);
      const values = new Float32Array(p.data as Float32Array);
      this.update(i, values, g.data as Float32Array, lr);
      p.assign(values);
    });
    this.steps++;
  }

  /** Bytes of state the optimizer holds (besides the parameters and their gradients). */
  abstract get stateBytes(): number;

  /** Updates `values` (a copy of parameter i's, changed in place) from its gradient `grad` at learning rate `lr`. */
  protected abstract update(i: number, values: Float32Array, grad: Float32Array, lr: number): void;
}
