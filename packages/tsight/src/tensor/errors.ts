/** Errors the tensor layer throws. Messages name the op and the shapes, and say what would work. */

/** Shapes that do not fit the op (broadcasting, matmul inner dims, out-of-range axes or indices). */
export class ShapeError extends RangeError {
  override readonly name = "ShapeError";
}

/** A dtype the op does not take (e.g. `exp` of an int64 tensor). */
export class DTypeError extends TypeError {
  override readonly name = "DTypeError";
}

/** Reading the data of a meta tensor, which has a shape but no values (a model loaded with `dispatch: false`). */
export class MetaTensorError extends Error {
  override readonly name = "MetaTensorError";
}

/** Backward on something that cannot be differentiated, or gradients asked in an impossible way. */
export class GradError extends Error {
  override readonly name = "GradError";
}
