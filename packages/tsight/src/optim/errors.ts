/** Errors the optim layer throws. Messages name the setting or parameter and say what would work. */

/**
 * An optimizer or schedule setting out of range (a negative lr, betas outside [0, 1)), or a parameter an optimizer
 * cannot train (a tensor that is not a Parameter, one computed from others, the same one twice).
 */
export class OptimizerError extends RangeError {
  override readonly name = "OptimizerError";
}
