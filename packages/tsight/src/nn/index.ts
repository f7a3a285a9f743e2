export * from "./module.js";
export * from "./layers.js";
export * from "./cache.js";
export * from "./rotary.js";
export * from "./attention.js";
export * from "./points.js";
