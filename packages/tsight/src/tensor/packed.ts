/**
 * Packed weights: a linear layer's (or an embedding's) matrix kept in a smaller format than float32 — its stored
 * bfloat16/float16 bits, or block-quantized int8/int4 — and multiplied without ever being widened as a whole.
 *
 * Each packed matrix gets a kernel of its own with the matrix baked in as a graph constant, because ONNX Runtime
 * only prepacks (reorders for its quantized GEMM) constants: the same MatMulNBits with the weight fed at each call
 * is ~100x slower. Quantized matrices run on MatMulNBits (com.microsoft) at accuracy level 4, which quantizes the
 * activations to int8 per block too and uses the CPU's integer dot products; bfloat16/float16 ones are a Cast to
 * float32 and a Gemm, with graph optimization off so the Cast is not folded into a float32 copy of the weight.
 *
 * Layout: the matrix is stored [rows = out features, cols = in features] whatever the module's own layout (GPT-2's
 * Conv1D keeps [in, out]; `transposed` records it), so one kernel form serves both.
 *
 * Quantization (asymmetric, per block of `blockSize` consecutive inputs of one output row, MatMulNBits' layout):
 *   lo = min(0, min block), hi = max(0, max block), scale = float32(f (hi - lo) / (2^bits - 1)),
 *   zero = clamp(round(-f lo / scale), 0, 2^bits - 1), q = clamp(round(w / scale) + zero, 0, 2^bits - 1),
 *   value = float32((q - zero) * scale), round(x) = floor(x + 0.5) in float64; an all-zero block has scale 1 and
 *   zero 2^(bits-1). f is 1 for int8; for int4 it is whichever of 1, 0.95, 0.9, 0.85, 0.8 gives the block the
 *   least squared error (the first on ties): clipping a few extremes buys a finer step for the rest.
 * 0 is exact; a value inside the (shrunk) range is off by at most scale / 2. Rows are padded to whole blocks with
 * q = zero.
 */
import { bfloat16ToFloat32, float16ToFloat32, float32ToBfloat16, float32ToFloat16 } from "./dtype.js";
import { Kernel, threadCount } from "./engine.js";
import { GraphBuilder } from "./onnx.js";

/** What a model's weights can be kept as: float32 (Hugging Face parity), as stored, or block-quantized. */
export type WeightDType = "float32" | "bfloat16" | "float16" | "int8" | "int4";
export const weightDTypes: readonly WeightDType[] = ["float32", "bfloat16", "float16", "int8", "int4"];
export type PackedFormat = Exclude<WeightDType, "float32">;

/** Elements of a bfloat16/float16 matrix widened at once (a 4 MiB float32 band). */
const WIDEN_BAND = 1 << 20;

/** Inputs per quantization block (MatMulNBits' block_size; a power of two, at least 16). */
export const BLOCK_SIZE = 32;

export type PackedData =
  | { format: "bfloat16" | "float16"; bits: Uint16Array }
  | { format: "int8" | "int4"; q: Uint8Array; scales: Float32Array; zeros: Uint8Array; blockSize: number };

/**
 * Where a packed matrix's float32 values can be read again (a checkpoint file): all of them in the module's layout,
 * and, for a matrix stored [rows, cols], a band of rows (an embedding's lookups).
 */
export interface StoredValues {
  all(): Float32Array;
  rows?(from: number, count: number): Float32Array;
}

const registry = typeof FinalizationRegistry === "function" ? new FinalizationRegistry<Kernel>((k) => k.dispose()) : null;

/**
 * A value int8/int4 cannot hold (NaN, an infinity), at `row` (and `column`, where known) of the packed matrix:
 * rows are output features, so a caller holding the weight in another layout says where it is there (see `at`).
 */
export class UnquantizableError extends RangeError {
  override readonly name = "UnquantizableError";
  constructor(
    readonly format: "int8" | "int4",
    readonly what: "NaN" | "an infinite value",
    readonly row: number,
    readonly column: number | null,
  ) {
    super(UnquantizableError.describe(format, what, row, column, false));
  }

  /** The message with the position in the weight's own layout (`transposed`: stored as [in, out]). */
  at(transposed: boolean): string {
    return UnquantizableError.describe(this.format, this.what, this.row, this.column, transposed);
  }

  private static describe(format: string, what: string, row: number, column: number | null, transposed: boolean): string {
    const where = column === null ? `${transposed ? "column" : "row"} ${row} holds ${what}` : `the value at ${transposed ? `row ${column}, column ${row}` : `row ${row}, column ${column}`} is ${what}`;
    return `${where}, which ${format} cannot hold`;
  }
}

export class PackedWeight {
  /** The kernel, in a holder that views share: it is freed when neither the weight nor a view is left. */
  private compiled: { kernel: Kernel } | null = null;
  /** The packed values, or null once a kernel holds them and they can be read again from their file. */
  private held: PackedData | null;
  /** The values last packed again from the file, while they are not collected. */
  private repacked: WeakRef<PackedData> | null = null;
  readonly format: PackedFormat;
  readonly byteLength: number;
  /** The layout `source.all()` gives (the weight's own, which a transposed view does not share). */
  private readonly sourceTransposed: boolean;

  constructor(
    readonly rows: number,
    readonly cols: number,
    /** The module's tensor is [cols, rows] (GPT-2's Conv1D), not [rows, cols]. */
    readonly transposed: boolean,
    packed: PackedData,
    /** Where the values can be read again and packed the same way, for a copy let go of. */
    private readonly source: StoredValues | null = null,
  ) {
    this.held = packed;
    this.sourceTransposed = transposed;
    this.format = packed.format;
    // The bits, or the quantized blocks with their scales and zero points.
    this.byteLength = "bits" in packed ? packed.bits.byteLength : packed.q.byteLength + packed.scales.byteLength + packed.zeros.byteLength;
  }

  /** The packed values: the copy held here, or packed again from the file when the kernel alone holds them. */
  get packed(): PackedData {
    if (this.held) return this.held;
    // Packed again from the file, and kept only weakly: reads close together reuse it, and the memory goes back
    // when it is collected (a server's jobs reading every weight must not leave the model holding a second copy).
    let again = this.repacked?.deref();
    if (!again) {
      again = PackedWeight.pack(this.source!.all(), this.rows, this.cols, this.sourceTransposed, this.format);
      this.repacked = new WeakRef(again);
    }
    return again;
  }

  /**
   * The same matrix seen transposed (a view: the same storage and kernel). `h.matmul(W.transpose(0, 1))` for a
   * packed [out, in] W is then the packed product, as a linear layer computes it.
   */
  transposedView(): PackedWeight {
    this.kernel();
    return Object.assign(Object.create(PackedWeight.prototype) as PackedWeight, this, { transposed: !this.transposed });
  }

  /** What JSON shows of it: its description, not its storage or kernel. */
  toJSON(): object {
    return { format: this.format, shape: this.shape, byteLength: this.byteLength };
  }

  /** Whether the values are held here (not only inside the kernel). */
  get resident(): boolean {
    return this.held !== null;
  }

  /**
   * Builds the kernel now. With `release`, and a way to read the values again, the copy here is let go of: ONNX
   * Runtime keeps its own (prepacked) one; reading the weight's values (rare: `.data`, a backward pass) packs them
   * again from the file, and an embedding's lookups pack just their rows (blocks never span rows, so a row packs
   * alone to the same values).
   */
  compile(release: boolean): void {
    this.kernel();
    if (release && this.source && (this.source.rows || this.transposed)) this.held = null;
  }

  /** The module's shape: [rows, cols], or [cols, rows] when transposed. */
  get shape(): [number, number] {
    return this.transposed ? [this.cols, this.rows] : [this.rows, this.cols];
  }

  /** The values as float32 in the module's layout (a new array each call: the packed form is what is kept). */
  toFloat32(): Float32Array {
    const stored = this.widen(this.packed, 0, this.rows);
    return this.transposed ? transpose(stored, this.rows, this.cols) : stored;
  }

  /** Stored rows [from, from + count) as float32, [count, cols] (an embedding's lookups read only these). */
  rowsFloat32(from: number, count: number): Float32Array {
    if (!this.held && this.source?.rows && !this.sourceTransposed) return this.widen(PackedWeight.pack(this.source.rows(from, count), count, this.cols, false, this.format), 0, count);
    return this.widen(this.packed, from, count);
  }

  /** Rows [from, from + count) of packed values `p`, widened. */
  private widen(p: PackedData, from: number, count: number): Float32Array {
    const n = this.cols;
    if ("bits" in p) {
      const part = p.bits.subarray(from * n, (from + count) * n);
      return p.format === "bfloat16" ? bfloat16ToFloat32(part) : float16ToFloat32(part);
    }
    const bits = p.format === "int8" ? 8 : 4;
    const blocks = Math.ceil(n / p.blockSize);
    const blob = (p.blockSize * bits) / 8;
    const zeroBytes = Math.ceil((blocks * bits) / 8);
    const out = new Float32Array(count * n);
    for (let r = 0; r < count; r++) {
      const row = from + r;
      for (let b = 0; b < blocks; b++) {
        const scale = p.scales[row * blocks + b]!;
        const zero = bits === 8 ? p.zeros[row * zeroBytes + b]! : (p.zeros[row * zeroBytes + (b >> 1)]! >> ((b & 1) * 4)) & 15;
        const base = (row * blocks + b) * blob;
        const end = Math.min(p.blockSize, n - b * p.blockSize);
        for (let i = 0; i < end; i++) {
          const q = bits === 8 ? p.q[base + i]! : (p.q[base + (i >> 1)]! >> ((i & 1) * 4)) & 15;
          out[r * n + b * p.blockSize + i] = Math.fround((q - zero) * scale);
        }
      }
    }
    return out;
  }

  /** x [m, cols] times the matrix: [m, rows]. */
  matmul(x: Float32Array, m: number): Float32Array {
    const [y] = this.kernel().run([{ dtype: "float32", shape: [m, this.cols], data: x }]);
    return y!.data as Float32Array;
  }

  /** This matrix's kernel, built on first use (ONNX Runtime prepacks the constant then) and freed with it. */
  kernel(): Kernel {
    if (this.compiled) return this.compiled.kernel;
    const g = new GraphBuilder();
    const x = g.input("float32");
    const p = this.packed;
    if ("bits" in p) {
      // Bands of rows, each widened and multiplied on its own: the float32 copy in flight is one band, and bands
      // run side by side (ONNX Runtime's Cast uses one thread).
      const band = Math.max(1, Math.floor(WIDEN_BAND / this.cols));
      const parts: string[] = [];
      for (let first = 0; first < this.rows; first += band) {
        const count = Math.min(band, this.rows - first);
        const w = g.constant(p.format, [count, this.cols], p.bits.subarray(first * this.cols, (first + count) * this.cols));
        parts.push(g.op("Gemm", [x, g.op("Cast", [w], { to: 1 })], { transB: 1 }));
      }
      g.output(parts.length === 1 ? parts[0]! : g.op("Concat", parts, { axis: 1 }), "float32");
    } else {
      const bits = p.format === "int8" ? 8 : 4;
      const blocks = Math.ceil(this.cols / p.blockSize);
      const q = g.constant("uint8", [this.rows, blocks, (p.blockSize * bits) / 8], p.q);
      const scales = g.constant("float32", [this.rows * blocks], p.scales);
      const zeros = g.constant("uint8", [p.zeros.length], p.zeros);
      const attrs = { K: this.cols, N: this.rows, bits, block_size: p.blockSize, accuracy_level: 4 };
      g.output(g.op("MatMulNBits", [x, q, scales, zeros], attrs, "com.microsoft"), "float32");
    }
    const widened = "bits" in p;
    const kernel = new Kernel(`linear:${this.format}[${this.rows},${this.cols}]`, g.build(), { threads: widened ? 1 : threadCount(), optimize: !widened, parallelBranches: widened ? threadCount() : undefined });
    this.compiled = { kernel };
    registry?.register(this.compiled, kernel);
    return kernel;
  }

  // #region packing

  /**
   * Packs a float32 matrix given in the module's layout (`transposed`: [cols, rows]). bfloat16/float16 round to
   * nearest even; exact for values the format holds.
   */
  static fromFloat32(values: Float32Array, rows: number, cols: number, transposed: boolean, format: PackedFormat, blockSize = BLOCK_SIZE): PackedWeight {
    return new PackedWeight(rows, cols, transposed, PackedWeight.pack(values, rows, cols, transposed, format, blockSize));
  }

  /** The packed values of a float32 matrix given in the module's layout (what `fromFloat32` keeps). */
  static pack(values: Float32Array, rows: number, cols: number, transposed: boolean, format: PackedFormat, blockSize = BLOCK_SIZE): PackedData {
    const stored = transposed ? transpose(values, cols, rows) : values;
    if (format === "bfloat16" || format === "float16") return { format, bits: toHalfBits(stored, format) };
    return quantizeRows(stored, rows, cols, format === "int8" ? 8 : 4, blockSize, format);
  }

  // #endregion
}

function transpose(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c]!;
  return out;
}

function toHalfBits(values: Float32Array, format: "bfloat16" | "float16"): Uint16Array {
  return format === "bfloat16" ? float32ToBfloat16(values) : float32ToFloat16(values);
}

/**
 * Quantizes a [rows, cols] float32 matrix into MatMulNBits blocks (see the file comment for the rule). Callers
 * streaming a big matrix quantize it a band of rows at a time into `into` (a packing made for the whole matrix).
 */
export function quantizeRows(
  values: Float32Array,
  rows: number,
  cols: number,
  bits: 4 | 8,
  blockSize: number,
  format: "int8" | "int4",
  into?: { q: Uint8Array; scales: Float32Array; zeros: Uint8Array; firstRow: number },
): { format: "int8" | "int4"; q: Uint8Array; scales: Float32Array; zeros: Uint8Array; blockSize: number } {
  const blocks = Math.ceil(cols / blockSize);
  const blob = (blockSize * bits) / 8;
  const zeroBytes = Math.ceil((blocks * bits) / 8);
  const qmax = (1 << bits) - 1;
  const q = into?.q ?? new Uint8Array(rows * blocks * blob);
  const scales = into?.scales ?? new Float32Array(rows * blocks);
  const zeros = into?.zeros ?? new Uint8Array(rows * zeroBytes);
  const first = into?.firstRow ?? 0;
  for (let r = 0; r < rows; r++) {
    const row = first + r;
    for (let b = 0; b < blocks; b++) {
      const start = r * cols + b * blockSize;
      const count = Math.min(blockSize, cols - b * blockSize);
      let lo = 0;
      let hi = 0;
      for (let i = start; i < start + count; i++) {
        const v = values[i]!;
        if (v < lo) lo = v;
        else if (v > hi) hi = v;
        else if (v !== v) throw new UnquantizableError(format, "NaN", row, i - r * cols);
      }
      if (!Number.isFinite(lo) || !Number.isFinite(hi)) throw new UnquantizableError(format, "an infinite value", row, null);
      let scale = Math.fround((hi - lo) / qmax);
      let zero: number;
      if (scale === 0 || !Number.isFinite(scale)) {
        scale = 1;
        zero = 1 << (bits - 1);
      } else {
        zero = Math.min(qmax, Math.max(0, Math.floor(-lo / scale + 0.5)));
        if (bits === 4) {
          const f = bestShrink(values, start, count, lo, hi, qmax);
          scale = Math.fround(((hi - lo) * f) / qmax);
          zero = Math.min(qmax, Math.max(0, Math.floor((-lo * f) / scale + 0.5)));
        }
      }
      scales[row * blocks + b] = scale;
      const base = (row * blocks + b) * blob;
      // Hot loops, one per width; a partial last block is padded with the zero point.
      if (bits === 8) {
        zeros[row * zeroBytes + b] = zero;
        for (let i = 0; i < count; i++) q[base + i] = quantize(values[start + i]!, scale, zero, qmax);
        for (let i = count; i < blockSize; i++) q[base + i] = zero;
      } else {
        zeros[row * zeroBytes + (b >> 1)]! |= zero << ((b & 1) * 4);
        for (let i = 0; i < blockSize; i += 2) {
          const lowNibble = i < count ? quantize(values[start + i]!, scale, zero, qmax) : zero;
          const highNibble = i + 1 < count ? quantize(values[start + i + 1]!, scale, zero, qmax) : zero;
          q[base + (i >> 1)] = lowNibble | (highNibble << 4);
        }
      }
    }
  }
  return { format, q, scales, zeros, blockSize };
}

/**
 * clamp(round(w / scale) + zero, 0, qmax), the quantization rule, for the hot loops. round(x) is floor(x + 0.5)
 * (V8's Math.round is a call, 3x slower here).
 */
function quantize(w: number, scale: number, zero: number, qmax: number): number {
  const v = Math.floor(w / scale + 0.5) + zero;
  return v < 0 ? 0 : v > qmax ? qmax : v;
}

/**
 * Which of 1, 0.95, 0.9, 0.85, 0.8 of [lo, hi] gives the block the least squared error (the first on ties), in
 * float64, of the values the rule gives. 16 levels are few: clipping a block's extreme values often buys a finer
 * step for the rest. The five candidates run in one pass (independent divisions overlap: 1.4x faster than five).
 */
function bestShrink(values: Float32Array, start: number, count: number, lo: number, hi: number, qmax: number): number {
  const range = hi - lo;
  const s0 = Math.fround(range / qmax);
  const s1 = Math.fround((range * 0.95) / qmax);
  const s2 = Math.fround((range * 0.9) / qmax);
  const s3 = Math.fround((range * 0.85) / qmax);
  const s4 = Math.fround((range * 0.8) / qmax);
  const zero = (f: number, s: number) => Math.min(qmax, Math.max(0, Math.floor((-lo * f) / s + 0.5)));
  const z0 = zero(1, s0);
  const z1 = zero(0.95, s1);
  const z2 = zero(0.9, s2);
  const z3 = zero(0.85, s3);
  const z4 = zero(0.8, s4);
  let e0 = 0;
  let e1 = 0;
  let e2 = 0;
  let e3 = 0;
  let e4 = 0;
  for (let i = start; i < start + count; i++) {
    const w = values[i]!;
    let d = w - (quantize(w, s0, z0, qmax) - z0) * s0;
    e0 += d * d;
    d = w - (quantize(w, s1, z1, qmax) - z1) * s1;
    e1 += d * d;
    d = w - (quantize(w, s2, z2, qmax) - z2) * s2;
    e2 += d * d;
    d = w - (quantize(w, s3, z3, qmax) - z3) * s3;
    e3 += d * d;
    d = w - (quantize(w, s4, z4, qmax) - z4) * s4;
    e4 += d * d;
  }
  let best = e0;
  let chosen = 1;
  if (e1 < best) [best, chosen] = [e1, 0.95];
  if (e2 < best) [best, chosen] = [e2, 0.9];
  if (e3 < best) [best, chosen] = [e3, 0.85];
  if (e4 < best) chosen = 0.8;
  return chosen;
}
