"""Hugging Face transformers reference for tsight's GPT-2 benchmarks (CPU, float32, torch.inference_mode).

Usage: .venv-bench/bin/python bench/python/hf_gpt2.py [threads=2]

Prints one JSON line:
  prefill_ms      median forward of 128 token ids through a GPT-2-small-sized GPT2LMHeadModel
                  (12 layers, d=768, 12 heads, vocab 50257, random weights, seed 0), attention as HF picks it
                  by default ("attn", sdpa); "eager" holds the same numbers with attn_implementation="eager".
  decode_tok_s    greedy decode rate: 32 steps after an 8-token prompt, manual loop over
                  model(next, past_key_values=cache, use_cache=True); median of several runs.
  decode_long_tok_s  the same after a 512-token prompt (the cache's cost per step shows).
  generate_tok_s  model.generate(max_new_tokens=32, min_new_tokens=32, do_sample=False) from the same
                  8-token prompt: 32 new tokens / wall time of the call (which includes the prompt's pass).
  small5_ms       the embedded stdlib-gpt2 (from_pretrained(..., dtype=float32): its config says float16; found
                  under models/ or packages/tsight/models/, or $STDLIB_GPT2): median forward of 5 token ids.
  grad_ms         attribution patching's backward: a forward of 128 token ids through the GPT-2-small-sized model
                  reading every block's output (forward hooks), then the gradient of a logit difference at the last
                  position with respect to each of them (parameters frozen, as tsight's are), median ms.
  hook_read_us    stdlib-gpt2 at 5 tokens: median over interleaved rounds of (forward with a forward hook on
                  transformer.h[1] that stores its output, registered and removed around the call) minus
                  (bare forward), in microseconds.
Forwards are plain model(ids) calls (HF defaults, so use_cache=True), as a researcher would write them.
"""
import json, os, statistics, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

load_before = os.getloadavg()[0]  # other work on the machine when we started (noise indicator)
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
PREFILL, PROMPT, DECODE, LONG_PROMPT = 128, 8, 32, 512
SMALL_IDS = [324, 615, 638, 636, 284]


def timed_ms(fn):
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def median_ms(fn, warmup=2, runs=9):
    for _ in range(warmup):
        fn()
    return statistics.median(timed_ms(fn) for _ in range(runs))


def stdlib_gpt2_dir():
    """The embedded model's folder: $STDLIB_GPT2, else models/stdlib-gpt2 wherever the repository keeps it."""
    if os.environ.get("STDLIB_GPT2"):
        return Path(os.environ["STDLIB_GPT2"])
    root = next((p for p in Path(__file__).resolve().parents if (p / ".git").exists()), Path(__file__).parents[2])
    for candidate in (root / "models/stdlib-gpt2", root / "packages/tsight/models/stdlib-gpt2"):
        if (candidate / "config.json").exists():
            return candidate
    raise SystemExit(f"stdlib-gpt2 not found under {root} (set STDLIB_GPT2)")


def decode_rate(model, prompt, runs=5):
    """Greedy decode tokens/s of DECODE cached steps after the prompt (median of runs, after one warmup)."""
    rates = []
    for i in range(runs + 1):
        out = model(prompt, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(DECODE):
            out = model(nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        if i:
            rates.append(DECODE / (time.perf_counter() - t))
    return statistics.median(rates)


def generate_rate(model, prompt, runs=5):
    call = lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=DECODE,
                                  min_new_tokens=DECODE, do_sample=False, pad_token_id=model.config.eos_token_id)
    assert call().shape[1] == PROMPT + DECODE
    return DECODE / (median_ms(call, warmup=0, runs=runs) / 1000)


def gpt2_small_numbers(model):
    ids = torch.tensor([[(i * 7919) % 50257 for i in range(LONG_PROMPT)]])
    prompt = ids[:, :PROMPT]
    return {"prefill_ms": median_ms(lambda: model(ids[:, :PREFILL])), "decode_tok_s": decode_rate(model, prompt),
            "decode_long_tok_s": decode_rate(model, ids, runs=3), "generate_tok_s": generate_rate(model, prompt)}


def hook_read_us(model, ids, rounds=1000):
    saved = {}
    block = model.transformer.h[1]

    def store(_module, _inputs, output):
        saved["h1"] = output

    def hooked():
        handle = block.register_forward_hook(store)
        model(ids)
        handle.remove()

    for _ in range(20):
        model(ids), hooked()
    diffs = []
    for r in range(rounds):  # alternate the order so neither variant always runs second
        if r % 2:
            bare, hook = timed_ms(lambda: model(ids)), timed_ms(hooked)
        else:
            hook, bare = timed_ms(hooked), timed_ms(lambda: model(ids))
        diffs.append(hook - bare)
    assert saved["h1"].shape == (1, len(SMALL_IDS), model.config.n_embd)
    return statistics.median(diffs) * 1000


with torch.inference_mode():
    torch.manual_seed(0)
    big = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)).eval()
    default_attn = big.config._attn_implementation
    main = gpt2_small_numbers(big)
    big.set_attn_implementation("eager")
    eager = gpt2_small_numbers(big)
    del big

    small = GPT2LMHeadModel.from_pretrained(stdlib_gpt2_dir(), dtype=torch.float32).eval()
    small_ids = torch.tensor([SMALL_IDS])
    small5 = median_ms(lambda: small(small_ids), warmup=10, runs=101)
    hook_us = hook_read_us(small, small_ids)


def grad_ms(model, ids):
    """Forward reading every block's output, then d(logit 5 - logit 7 at the last position) / d(each of them)."""
    for p in model.parameters():
        p.requires_grad_(False)

    def run():
        acts = []

        def keep(_module, _inputs, output):
            t = output[0] if isinstance(output, tuple) else output
            if not t.requires_grad:  # the first block's output: a leaf (nothing before it records)
                t.requires_grad_()
            else:
                t.retain_grad()
            acts.append(t)

        handles = [block.register_forward_hook(keep) for block in model.transformer.h]
        logits = model(ids, use_cache=False).logits
        (logits[0, -1, 5] - logits[0, -1, 7]).backward()
        grads = [a.grad for a in acts]
        for h in handles:
            h.remove()
        assert len(grads) == len(model.transformer.h) and all(g is not None for g in grads)

    return median_ms(run, warmup=1, runs=5)


torch.manual_seed(0)
grad_model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)).eval()
grad = grad_ms(grad_model, torch.tensor([[(i * 7919) % 50257 for i in range(PREFILL)]]))
del grad_model

print(json.dumps({
    "torch": torch.__version__, "transformers": transformers.__version__, "threads": threads,
    "loadavg_1m": load_before, "attn": default_attn, **{k: round(v, 3) for k, v in main.items()},
    "eager": {k: round(v, 3) for k, v in eager.items()},
    "small5_ms": round(small5, 4), "hook_read_us": round(hook_us, 1), "grad_ms": round(grad, 3),
}))
