export * from "./sae.js";
export * from "./load.js";
export * from "./splice.js";
