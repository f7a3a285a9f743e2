/**
 * `tsight/client`: what a client of a tsight server needs (meta models from the server, remote jobs, the wire
 * format), without the sandbox or the server.
 */
export * from "./client/index.js";
export { Tensor, tensor, zeros, ones, full, arange, cat, stack, slice, type DType } from "./tensor/index.js";
