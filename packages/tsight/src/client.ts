/**
 * `tsight/client`: what a client of a tsight server needs (meta models from the server, remote jobs, the wire
 * format), without the sandbox or the server.
 */
export * from "./client/index.js";
export { Tensor, tensor, zeros, ones, full, arange, cat, stack, slice, type DType } from "./tensor/index.js";
// The architectures, for typed envoy trees of models a server hosts: fromServer(name, { architecture: MixtralForCausalLM }).
export { type CausalLM, GPT2LMHeadModel, LlamaForCausalLM, GPTNeoXForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM, Olmo2ForCausalLM, MixtralForCausalLM, Qwen3MoeForCausalLM } from "./models/index.js";
