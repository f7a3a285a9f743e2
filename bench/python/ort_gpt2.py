"""ONNX Runtime reference: the GPT-2-small-sized model as ONE exported graph, prefill of 128 tokens.

Usage: .venv-bench/bin/python bench/python/ort_gpt2.py [threads=2]

The same model as hf_gpt2.py (GPT2LMHeadModel, 12 layers, d=768, vocab 50257, random weights, seed 0, float32,
eager attention, no KV cache) exported with torch.onnx.export (dynamo exporter, opset 18, dynamic sequence axis)
to a temporary folder, run with onnxruntime's CPU provider (intra-op threads = N, graph optimisations all on).
Prints one JSON line:
  prefill_ms    median of 9 runs (after 2 warmups) on 128 token ids
  max_abs_diff  largest logit difference between onnxruntime and PyTorch (a check of the export)
  export_s      how long torch.onnx.export took
(onnxruntime.transformers' GPT-2 fusion pass does not apply to dynamo-exported graphs, and the TorchScript
exporter cannot export transformers 5's GPT-2 (aten::diff in the mask code), so the graph runs as exported.)
"""
import json, os, statistics, sys, tempfile, time, warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

transformers.logging.set_verbosity_error()
load_before = os.getloadavg()[0]  # other work on the machine when we started (noise indicator)
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
PREFILL = 128


class Logits(torch.nn.Module):
    """input_ids -> logits, nothing else (no cache, no dict output), so the graph has one input and one output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids, use_cache=False).logits


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def median_ms(sess, feed, warmup=2, runs=9):
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)).eval()
model.set_attn_implementation("eager")
wrapped = Logits(model).eval()
ids = torch.tensor([[(i * 7919) % 50257 for i in range(PREFILL)]])
with torch.inference_mode():
    expected = wrapped(ids).numpy()

result = {"onnxruntime": ort.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
          "threads": threads, "opset": 18, "loadavg_1m": load_before}
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "gpt2.onnx")
    t = time.perf_counter()
    torch.onnx.export(wrapped, (ids,), path, input_names=["input_ids"], output_names=["logits"], opset_version=18,
                      dynamo=True, verbose=False, dynamic_shapes={"input_ids": {1: torch.export.Dim("seq", max=1024)}})
    result["export_s"] = round(time.perf_counter() - t, 1)
    del model, wrapped
    feed = {"input_ids": ids.numpy()}
    sess = session(path)
    result["max_abs_diff"] = float(np.abs(sess.run(None, feed)[0] - expected).max())
    result["prefill_ms"] = round(median_ms(sess, feed), 2)

print(json.dumps(result))
