export * from "./module.js";
export * from "./layers.js";
export * from "./cache.js";
export * from "./attention.js";
