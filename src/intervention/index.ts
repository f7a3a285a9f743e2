export * from "./inputs.js";
export * from "./language-model.js";
