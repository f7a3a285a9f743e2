/**
 * Learning-rate schedules as data: a schedule gives the factor the optimizer's `lr` is multiplied by at step k
 * (k = 0 for the first step). Being plain objects, they cross to a remote job unchanged.
 *
 *   constant                                  1
 *   linear   { warmupSteps, totalSteps? }     (k+1)/warmupSteps while warming up, then 1, or, with totalSteps,
 *                                             falling linearly to 0 at step totalSteps (HF's linear schedule)
 *   cosine   { totalSteps, warmupSteps?,      linear warmup, then half a cosine from 1 down to minFactor at
 *              minFactor? }                   step totalSteps (and minFactor after it)
 *   step     { stepSize, gamma? }             gamma^floor(k / stepSize) (PyTorch's StepLR; gamma 0.1 by default)
 *
 * Warmup starts at 1/warmupSteps rather than 0 (HF's first step has factor 0 and so does nothing).
 */
import { OptimizerError } from "./errors.js";

export type Schedule =
  | { type: "constant" }
  | { type: "linear"; warmupSteps: number; totalSteps?: number }
  | { type: "cosine"; totalSteps: number; warmupSteps?: number; minFactor?: number }
  | { type: "step"; stepSize: number; gamma?: number };

/** Most steps a schedule may name (a billion: far past any training run a job can do). */
export const MAX_SCHEDULE_STEPS = 1e9;

const KEYS: Record<Schedule["type"], readonly string[]> = {
  constant: ["type"],
  linear: ["type", "warmupSteps", "totalSteps"],
  cosine: ["type", "totalSteps", "warmupSteps", "minFactor"],
  step: ["type", "stepSize", "gamma"],
};

function steps(name: string, v: unknown, min: number, optional: boolean): number | undefined {
  if (v === undefined && optional) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > MAX_SCHEDULE_STEPS) {
    throw new OptimizerError(`schedule: ${name} must be a whole number from ${min} to ${MAX_SCHEDULE_STEPS}, got ${String(v)}`);
  }
  return v;
}

function factorIn(name: string, v: unknown, min: number, max: number, fallback: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !(v >= min && v <= max)) throw new OptimizerError(`schedule: ${name} must be a number from ${min} to ${max}, got ${String(v)}`);
  return v;
}

/** `s` checked: a known type, only its own fields, every number in range. Returns a copy. */
export function checkSchedule(s: unknown): Schedule {
  if (s === undefined || s === null) return { type: "constant" };
  if (typeof s !== "object" || Array.isArray(s)) throw new OptimizerError(`schedule: expected an object like { type: "cosine", totalSteps: 100 }, got ${typeof s}`);
  const o = s as Record<string, unknown>;
  const type = o.type as Schedule["type"];
  if (typeof type !== "string" || !Object.hasOwn(KEYS, type)) throw new OptimizerError(`schedule: type must be one of ${Object.keys(KEYS).join(", ")}; got ${JSON.stringify(String(o.type)).slice(0, 60)}`);
  const extra = Object.keys(o).filter((k) => !KEYS[type].includes(k));
  if (extra.length) throw new OptimizerError(`schedule: a ${type} schedule takes ${KEYS[type].join(", ")}; not ${extra.join(", ").slice(0, 200)}`);
  switch (type) {
    case "constant":
      return { type };
    case "linear": {
      const warmupSteps = steps("warmupSteps", o.warmupSteps, 0, false)!;
      const totalSteps = steps("totalSteps", o.totalSteps, 1, true);
      if (totalSteps !== undefined && totalSteps < warmupSteps) throw new OptimizerError(`schedule: totalSteps (${totalSteps}) must not be less than warmupSteps (${warmupSteps})`);
      return totalSteps === undefined ? { type, warmupSteps } : { type, warmupSteps, totalSteps };
    }
    case "cosine": {
      const totalSteps = steps("totalSteps", o.totalSteps, 1, false)!;
      const warmupSteps = steps("warmupSteps", o.warmupSteps, 0, true) ?? 0;
      if (totalSteps < warmupSteps) throw new OptimizerError(`schedule: totalSteps (${totalSteps}) must not be less than warmupSteps (${warmupSteps})`);
      return { type, totalSteps, warmupSteps, minFactor: factorIn("minFactor", o.minFactor, 0, 1, 0) };
    }
    case "step":
      return { type, stepSize: steps("stepSize", o.stepSize, 1, false)!, gamma: factorIn("gamma", o.gamma, 0, 1, 0.1) };
  }
}

/** The factor on the base learning rate at step `k` (0 for the first step) of a checked schedule. */
export function scheduleFactor(s: Schedule, k: number): number {
  const warm = (w: number) => (w > 0 && k < w ? (k + 1) / w : null);
  switch (s.type) {
    case "constant":
      return 1;
    case "linear": {
      const w = warm(s.warmupSteps);
      if (w !== null) return w;
      if (s.totalSteps === undefined) return 1;
      const span = s.totalSteps - s.warmupSteps;
      return span <= 0 ? 0 : Math.max(0, (s.totalSteps - k) / span);
    }
    case "cosine": {
      const warmup = s.warmupSteps ?? 0;
      const w = warm(warmup);
      if (w !== null) return w;
      const min = s.minFactor ?? 0;
      const progress = Math.min(1, (k - warmup) / Math.max(1, s.totalSteps - warmup));
      return min + (1 - min) * 0.5 * (1 + Math.cos(Math.PI * progress));
    }
    case "step":
      return (s.gamma ?? 0.1) ** Math.floor(k / s.stepSize);
  }
}
