"""PyTorch reference for `npm run bench`: the same GPT-2-small-sized model (random weights), prefill and decode.

Prints one JSON line: {"torch": version, "threads": n, "prefill_ms": median, "decode_tok_s": rate}.
Plain PyTorch modules (no transformers dependency), eager, float32, KV cache, no_grad.
"""
import json, math, os, statistics, sys, time

import torch

V, D, L, H, P = 50257, 768, 12, 12, 1024
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
prompt_len = int(os.environ.get("PREFILL_TOKENS", "128"))
decode_tokens = int(os.environ.get("DECODE_TOKENS", "32"))
torch.set_num_threads(threads)
torch.manual_seed(0)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(D), torch.nn.LayerNorm(D)
        self.c_attn, self.c_proj = torch.nn.Linear(D, 3 * D), torch.nn.Linear(D, D)
        self.c_fc, self.mlp_proj = torch.nn.Linear(D, 4 * D), torch.nn.Linear(4 * D, D)

    def forward(self, x, cache):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, 2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        cache["k"], cache["v"] = k, v
        S = k.shape[2]
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T), float("-inf")).softmax(-1)
        x = x + self.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(torch.nn.functional.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(V, D), torch.nn.Embedding(P, D)
        self.h = torch.nn.ModuleList([Block() for _ in range(L)])
        self.ln_f = torch.nn.LayerNorm(D)

    def forward(self, ids, caches, past=0):
        x = self.wte(ids) + self.wpe(torch.arange(past, past + ids.shape[1]))
        for block, cache in zip(self.h, caches):
            x = block(x, cache)
        return self.ln_f(x) @ self.wte.weight.T


model = GPT().eval()
ids = torch.randint(0, V, (1, prompt_len))
with torch.no_grad():
    for _ in range(2):
        model(ids, [{} for _ in range(L)])
    times = []
    for _ in range(5):
        t = time.perf_counter()
        model(ids, [{} for _ in range(L)])
        times.append((time.perf_counter() - t) * 1000)
    caches = [{} for _ in range(L)]
    logits = model(ids[:, :8], caches)
    past, nxt = 8, logits[:, -1].argmax(-1, keepdim=True)
    t = time.perf_counter()
    for _ in range(decode_tokens):
        nxt = model(nxt, caches, past)[:, -1].argmax(-1, keepdim=True)
        past += 1
    rate = decode_tokens / (time.perf_counter() - t)
print(json.dumps({"torch": torch.__version__, "threads": threads, "prefill_ms": statistics.median(times), "decode_tok_s": rate}))
