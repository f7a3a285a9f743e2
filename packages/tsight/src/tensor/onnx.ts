/**
 * A minimal ONNX model writer: just enough protobuf to describe the small graphs our kernels run.
 *
 * ONNX models are protobuf messages; we only ever write them (ONNX Runtime parses them), so a hand-written
 * encoder of the few fields we use is smaller than a protobuf dependency plus onnx.proto. Field numbers are from
 * onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto, TypeProto).
 */
import { onnxCode, type DType, type StorageArray, type StorageDType } from "./dtype.js";

/** ONNX opset the kernels are written against (ONNX Runtime 1.30 implements it on CPU). */
export const OPSET = 21;

type Bytes = number[];
const utf8 = new TextEncoder();

function varint(value: number | bigint): Bytes {
  let n = BigInt(value);
  if (n < 0n) n += 1n << 64n;
  const out: Bytes = [];
  while (n >= 0x80n) {
    out.push(Number(n & 0x7fn) | 0x80);
    n >>= 7n;
  }
  out.push(Number(n));
  return out;
}
const key = (field: number, wire: number): Bytes => varint((field << 3) | wire);
const int = (field: number, v: number | bigint): Bytes => [...key(field, 0), ...varint(v)];
const float = (field: number, v: number): Bytes => {
  const b = new Uint8Array(new Float32Array([v]).buffer);
  return [...key(field, 5), ...b];
};
function bytes(field: number, payload: Bytes | Uint8Array): Bytes {
  const out = [...key(field, 2), ...varint(payload.length)];
  for (let i = 0; i < payload.length; i++) out.push(payload[i]!);
  return out;
}
const str = (field: number, s: string): Bytes => bytes(field, utf8.encode(s));

/** An attribute value; arrays must be homogeneous. */
export type AttrValue = number | string | number[] | { float: number } | { floats: number[] } | TensorConst;
export interface TensorConst {
  dtype: StorageDType;
  dims: number[];
  data: StorageArray;
}

function attribute(name: string, value: AttrValue): Bytes {
  const head = str(1, name);
  // AttributeProto.type: FLOAT=1 INT=2 STRING=3 TENSOR=4 FLOATS=6 INTS=7
  if (typeof value === "number") {
    return Number.isInteger(value) ? [...head, ...int(3, value), ...int(20, 2)] : [...head, ...float(2, value), ...int(20, 1)];
  }
  if (typeof value === "string") return [...head, ...str(4, value), ...int(20, 3)];
  if (Array.isArray(value)) return [...head, ...value.flatMap((v) => int(8, v)), ...int(20, 7)];
  if ("float" in value) return [...head, ...float(2, value.float), ...int(20, 1)];
  if ("floats" in value) return [...head, ...value.floats.flatMap((v) => float(7, v)), ...int(20, 6)];
  return [...head, ...bytes(5, tensorProto("", value)), ...int(20, 4)];
}

function tensorProto(name: string, t: TensorConst): Bytes {
  return [...tensorHead(name, t), ...bytes(9, rawBytes(t.data))];
}
const rawBytes = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
function tensorHead(name: string, t: TensorConst): Bytes {
  return [...t.dims.flatMap((d) => int(1, d)), ...int(2, onnxCode[t.dtype]), ...(name ? str(8, name) : [])];
}

/** Constants above this size stay typed arrays until the model is written (a weight as a number[] would be huge). */
const LARGE_CONSTANT = 1 << 16;

/** ValueInfoProto with an element type and, deliberately, no shape: one session serves every shape. */
function valueInfo(name: string, dtype: StorageDType): Bytes {
  const tensorType = int(1, onnxCode[dtype]);
  return [...str(1, name), ...bytes(2, bytes(1, tensorType))];
}

/**
 * Builds one graph. `input` declares a graph input, `node` adds an operator and returns its output names,
 * `constant` adds an initializer, `output` marks graph outputs. Names are generated, so builders compose.
 */
export class GraphBuilder {
  /** Nodes with the names they read and make (see build: only those an output needs are written). */
  private readonly nodes: { ins: string[]; outs: string[]; proto: Bytes }[] = [];
  private readonly inputs: Bytes[] = [];
  private readonly outputs: Bytes[] = [];
  private readonly outputNames: string[] = [];
  private readonly initializers: { name: string; proto: Bytes }[] = [];
  /** Initializers too big for number[]: everything before the raw data field, and the data. */
  private readonly largeInitializers: { name: string; head: Bytes; raw: Uint8Array }[] = [];
  private counter = 0;
  /** Values made by nodes not yet marked as outputs: one can be a graph output as it is, with no copy. */
  private readonly nodeOutputs = new Set<string>();

  input(dtype: StorageDType): string {
    const name = `in${this.inputs.length}`;
    this.inputs.push(valueInfo(name, dtype));
    return name;
  }

  constant(dtype: StorageDType, dims: number[], data: StorageArray): string {
    const name = `c${this.counter++}`;
    if (data.byteLength > LARGE_CONSTANT) this.largeInitializers.push({ name, head: tensorHead(name, { dtype, dims, data }), raw: rawBytes(data) });
    else this.initializers.push({ name, proto: tensorProto(name, { dtype, dims, data }) });
    return name;
  }

  /** int64 vector constant, the usual form of axes, shapes and slice bounds. */
  ints(values: number[]): string {
    return this.constant("int64", [values.length], BigInt64Array.from(values.map(BigInt)));
  }

  scalar(dtype: DType, value: number): string {
    const data =
      dtype === "int64" ? BigInt64Array.of(BigInt(value)) : dtype === "float32" ? Float32Array.of(value) : dtype === "int32" ? Int32Array.of(value) : Uint8Array.of(value);
    return this.constant(dtype, [], data);
  }

  node(op: string, inputs: string[], attrs: Record<string, AttrValue | undefined> = {}, outputCount = 1, domain = ""): string[] {
    const outs = Array.from({ length: outputCount }, () => `t${this.counter++}`);
    for (const o of outs) this.nodeOutputs.add(o);
    const attrBytes = Object.entries(attrs)
      .filter((e): e is [string, AttrValue] => e[1] !== undefined)
      .flatMap(([n, v]) => bytes(5, attribute(n, v)));
    this.nodes.push({
      ins: inputs,
      outs,
      proto: [
        ...inputs.flatMap((i) => str(1, i)),
        ...outs.flatMap((o) => str(2, o)),
        ...str(3, `n${this.counter}`),
        ...str(4, op),
        ...attrBytes,
        ...(domain ? str(7, domain) : []),
      ],
    });
    return outs;
  }

  /** One-output shorthand for `node`. */
  op(op: string, inputs: string[], attrs: Record<string, AttrValue | undefined> = {}, domain = ""): string {
    return this.node(op, inputs, attrs, 1, domain)[0]!;
  }

  output(name: string, dtype: DType): void {
    // A value a node makes is an output as it is (also when other nodes use it: no copy, where an Identity would
    // copy it). Otherwise (an input, a constant, a value that is an output already) an Identity makes the output.
    if (this.nodeOutputs.delete(name)) {
      this.outputs.push(valueInfo(name, dtype));
      this.outputNames.push(name);
      return;
    }
    const out = `out${this.outputs.length}`;
    this.nodes.push({ ins: [name], outs: [out], proto: [...str(1, name), ...str(2, out), ...str(3, `id_${out}`), ...str(4, "Identity")] });
    this.outputs.push(valueInfo(out, dtype));
    this.outputNames.push(out);
  }

  get outputCount(): number {
    return this.outputs.length;
  }

  /**
   * Serialized ModelProto, with only the nodes and constants its outputs need: ONNX Runtime computes every node it
   * is given, so a value captured code made and never used (a kernel's second output nobody reads) would cost a run.
   */
  build(): Uint8Array {
    const needed = new Set(this.outputNames);
    const nodes: Bytes[] = [];
    for (let i = this.nodes.length - 1; i >= 0; i--) {
      const n = this.nodes[i]!;
      if (!n.outs.some((o) => needed.has(o))) continue;
      nodes.push(n.proto);
      for (const name of n.ins) needed.add(name);
    }
    nodes.reverse();
    const graph: Bytes = [
      ...nodes.flatMap((n) => bytes(1, n)),
      ...str(2, "tsight"),
      ...this.initializers.filter((t) => needed.has(t.name)).flatMap((t) => bytes(5, t.proto)),
      ...this.inputs.flatMap((i) => bytes(11, i)),
      ...this.outputs.flatMap((o) => bytes(12, o)),
    ];
    const opsets = [bytes(8, [...str(1, ""), ...int(2, OPSET)]), bytes(8, [...str(1, "com.microsoft"), ...int(2, 1)])];
    // Large initializers are written as chunks: field 5 (initializer) around a TensorProto whose field 9 is the data.
    const large: (Bytes | Uint8Array)[] = this.largeInitializers.filter((t) => needed.has(t.name)).flatMap(({ head, raw }) => {
      const dataHead = [...key(9, 2), ...varint(raw.length)];
      return [[...key(5, 2), ...varint(head.length + dataHead.length + raw.length), ...head, ...dataHead], raw];
    });
    const graphLength = graph.length + large.reduce((n, c) => n + c.length, 0);
    const chunks: (Bytes | Uint8Array)[] = [[...int(1, 10), ...opsets.flat(), ...str(2, "tsight"), ...key(7, 2), ...varint(graphLength)], graph, ...large];
    const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}
