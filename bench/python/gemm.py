"""Matrix-product speed of each engine at the GPT-2-small shapes, for `npm run bench` (the GEMM rows).

Usage: .venv-bench/bin/python bench/python/gemm.py [threads=2]

For each shape M x K x N (activations [M, K] times a weight, plus a bias, float32), in this one process, alternating:
  torch  what Hugging Face's GPT-2 runs: torch.addmm(bias, x, W) with W [K, N] in the blocks (Conv1D), and
         torch.nn.functional.linear(x, W) with W [N, K] for the output layer (N = 50257, the tied embedding)
  ort    onnxruntime's CPU provider on one Gemm node, the weight and bias as initializers (prepacked by MLAS), in
         the layout tsight's kernels use (transB for the output layer); the same MLAS kernels as onnxruntime-node
Prints one JSON line: {"torch": version, "onnxruntime": version, "threads": n,
  "shapes": [{"m", "k", "n", "torch_gflops", "ort_gflops"}]}; each figure is the best of 3 rounds' medians.
"""
import json, statistics, sys, time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
SHAPES = [(128, 768, 2304), (128, 768, 768), (128, 768, 3072), (128, 3072, 768), (128, 768, 50257),
          (1, 768, 2304), (1, 768, 3072), (1, 3072, 768), (1, 768, 50257)]


def ort_session(w: np.ndarray, b: np.ndarray, trans_b: bool) -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=int(trans_b))], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def timed(f, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


rows = []
rng = np.random.default_rng(0)
with torch.inference_mode():
    for m, k, n in SHAPES:
        out_layer = n == 50257
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = (rng.standard_normal((n, k) if out_layer else (k, n), dtype=np.float32) * 0.02).astype(np.float32)
        b = np.zeros(n, dtype=np.float32)
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        session = ort_session(w, b, out_layer)
        flops = 2.0 * m * k * n
        # Enough repetitions for ~50 ms a round at ~50 GFLOP/s.
        reps = max(5, min(200, int(2.5e9 / flops)))
        run_torch = (lambda: torch.nn.functional.linear(tx, tw)) if out_layer else (lambda: torch.addmm(tb, tx, tw))
        run_ort = lambda: session.run(None, {"x": x})
        for f in (run_torch, run_ort):
            f(), f()
        best = {"torch": 0.0, "ort": 0.0}
        for _ in range(3):
            best["torch"] = max(best["torch"], flops / timed(run_torch, reps) / 1e9)
            best["ort"] = max(best["ort"], flops / timed(run_ort, reps) / 1e9)
        rows.append({"m": m, "k": k, "n": n, "torch_gflops": best["torch"], "ort_gflops": best["ort"]})
print(json.dumps({"torch": torch.__version__, "onnxruntime": ort.__version__, "threads": threads, "shapes": rows}))
