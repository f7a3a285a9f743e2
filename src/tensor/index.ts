export * from "./tensor.js";
export * from "./dtype.js";
export * from "./errors.js";
export * from "./random.js";
export { noGrad, isGradEnabled, runBackwardAsync, GradNode, type GradHook } from "./autograd.js";
export { engineStats, threadCount } from "./engine.js";
export { sizeOf, broadcastShapes, type Shape } from "./shape.js";
export * as functional from "./functional.js";
export * from "./safetensors.js";
