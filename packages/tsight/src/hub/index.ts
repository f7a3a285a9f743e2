export * from "./errors.js";
export * from "./embedded.js";
export * from "./huggingface.js";
export * from "./source.js";
export * from "./tokenizer.js";
export * from "./load.js";
