/** Training inside interventions: parameters, optimizers, learning-rate schedules. */
export { Parameter, parameter } from "./parameter.js";
export { Optimizer, MAX_RATE, MAX_PARAMETERS, type OptimizerOptions } from "./optimizer.js";
export { SGD, type SGDOptions } from "./sgd.js";
export { Adam, AdamW, type AdamOptions } from "./adam.js";
export { checkSchedule, scheduleFactor, MAX_SCHEDULE_STEPS, type Schedule } from "./schedule.js";
export { OptimizerError } from "./errors.js";
