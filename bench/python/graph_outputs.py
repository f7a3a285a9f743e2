"""The graphs of bench/graph-outputs.ts (40 Adds, 1, 5 or 20 outputs, one thread) in Python's onnxruntime, for
comparison: what one more output costs without onnxruntime-node's copy of each output into a new buffer.

    .venv-bench/bin/python bench/python/graph_outputs.py
"""
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def chain(outputs: int, size: int) -> ort.InferenceSession:
    nodes, extra, x = [], [], "x"
    for i in range(40):
        y = f"t{i}"
        nodes.append(helper.make_node("Add", [x, x], [y]))
        x = y
        if i % 2 == 0 and len(extra) < outputs - 1:
            extra.append(y)
    outs = extra + [x]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])], [helper.make_tensor_value_info(o, TensorProto.FLOAT, [size]) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


for size in (5 * 256, 5 * 2304):
    x = np.zeros(size, np.float32)
    sessions = [chain(n, size) for n in (1, 5, 20)]
    for s in sessions:
        for _ in range(300):
            s.run(None, {"x": x})
    times = [[] for _ in sessions]
    for _ in range(40):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            for _ in range(100):
                s.run(None, {"x": x})
            times[i].append((time.perf_counter() - t) / 100 * 1e6)
    one, five, twenty = (statistics.median(t) for t in times)
    print(f"{size * 4 // 1024:3d} KB values: 1 output {one:.1f} µs, 5 outputs {five:.1f} µs, 20 outputs {twenty:.1f} µs: {(twenty - one) / 19:.1f} µs an output")
