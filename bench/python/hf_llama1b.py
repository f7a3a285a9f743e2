"""Hugging Face transformers on the Llama-3.2-1B-shaped model (make_llama1b.py writes it): load, memory, speed.

Usage: .venv-bench/bin/python bench/python/hf_llama1b.py float32|bfloat16 [threads=2] [folder]
Run one dtype per process (memory is part of what is measured). CPU, torch.inference_mode, default attention.

Prints one JSON line:
  load_s          wall time of LlamaForCausalLM.from_pretrained(folder, dtype=...)
  rss_base_mb     resident memory (psutil) before loading; rss_load_mb right after loading, rss_end_mb at the
                  end (weights loaded in their stored dtype stay memory-mapped and are paged in by the first forward)
  peak_rss_mb     the process's peak resident memory (getrusage) by the end; peak_rss_load_mb by the end of load
  prefill_ms      median forward of 128 token ids (1 warmup, then PREFILL_RUNS=3 timed)
  decode_tok_s    greedy decode, manual KV-cache loop: 16 steps after an 8-token prompt (median of DECODE_RUNS=2,
                  after a short warmup)
"""
import json, os, resource, statistics, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
import psutil
import torch
import transformers
from transformers import LlamaForCausalLM

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

load_before = os.getloadavg()[0]  # other work on the machine when we started (noise indicator)
dtype_name = sys.argv[1] if len(sys.argv) > 1 else "float32"
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
root = next((p for p in Path(__file__).resolve().parents if (p / ".git").exists()), Path(__file__).parents[2])
folder = Path(sys.argv[3]) if len(sys.argv) > 3 else root / ".bench-models" / "llama-1b"
if dtype_name not in ("float32", "bfloat16"):
    raise SystemExit("dtype must be float32 or bfloat16")
if not (folder / "config.json").exists():
    raise SystemExit(f"no model in {folder}: run bench/python/make_llama1b.py first")
PREFILL, PROMPT, DECODE = 128, 8, 16
prefill_runs = int(os.environ.get("PREFILL_RUNS", "3"))
decode_runs = int(os.environ.get("DECODE_RUNS", "2"))
torch.set_num_threads(threads)
proc = psutil.Process()
mb = lambda b: round(b / 2**20, 1)
peak_mb = lambda: round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def decode_rate(model, prompt, steps):
    out = model(prompt, use_cache=True)
    cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    t = time.perf_counter()
    for _ in range(steps):
        out = model(nxt, past_key_values=cache, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    return steps / (time.perf_counter() - t)


rss_base = proc.memory_info().rss
t = time.perf_counter()
model = LlamaForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype_name)).eval()
load_s = time.perf_counter() - t
rss_load, peak_load = proc.memory_info().rss, peak_mb()
assert model.dtype == getattr(torch, dtype_name), model.dtype

ids = torch.tensor([[(i * 7919) % model.config.vocab_size for i in range(PREFILL)]])
with torch.inference_mode():
    model(ids)
    times = []
    for _ in range(prefill_runs):
        t = time.perf_counter()
        model(ids)
        times.append((time.perf_counter() - t) * 1000)
    decode_rate(model, ids[:, :PROMPT], 2)
    rates = [decode_rate(model, ids[:, :PROMPT], DECODE) for _ in range(decode_runs)]

print(json.dumps({
    "model": "llama-1b-shaped", "dtype": dtype_name, "torch": torch.__version__,
    "transformers": transformers.__version__, "threads": threads, "loadavg_1m": load_before,
    "attn": model.config._attn_implementation,
    "load_s": round(load_s, 3), "rss_base_mb": mb(rss_base), "rss_load_mb": mb(rss_load),
    "peak_rss_load_mb": peak_load, "rss_end_mb": mb(proc.memory_info().rss), "peak_rss_mb": peak_mb(),
    "prefill_ms": round(statistics.median(times), 1), "decode_tok_s": round(statistics.median(rates), 3),
}))
