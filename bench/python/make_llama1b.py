"""Writes a Llama-3.2-1B-shaped model with random weights for the benchmarks, once.

Usage: .venv-bench/bin/python bench/python/make_llama1b.py [folder]   (default <repo>/.bench-models/llama-1b)

LlamaForCausalLM: hidden 2048, MLP 8192, 16 layers, 32 query / 8 key-value heads of 64, vocab 128256, tied
embeddings, RoPE theta 500000 with llama3 scaling (factor 32, low/high freq factors 1/4, original context 8192),
131072 positions. bfloat16; every matrix drawn from N(0, 0.02) with seed 0, norm weights 1. Saved with
save_pretrained (config.json as transformers 5 writes it, safetensors); no tokenizer (benchmarks feed token ids).
Does nothing when the folder already holds a model. Prints one JSON line: folder, size in bytes, parameters.
"""
import json, os, shutil, sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

transformers.logging.set_verbosity_error()

root = next((p for p in Path(__file__).resolve().parents if (p / ".git").exists()), Path(__file__).parents[2])
folder = Path(sys.argv[1]) if len(sys.argv) > 1 else root / ".bench-models" / "llama-1b"


def done(path):
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


created = not done(folder)
params = None
if created:
    config = LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    with torch.no_grad():  # our own init, whatever transformers' default is: N(0, 0.02) matrices, unit norms
        for p in model.parameters():  # the tied head shares embed_tokens' tensor, so it is drawn once
            p.normal_(0.0, 0.02) if p.ndim == 2 else p.fill_(1.0)
    params = sum(p.numel() for p in model.parameters())
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # written aside, then renamed: a half-written folder never counts as done
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)

size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
print(json.dumps({"folder": str(folder), "bytes": size, "gib": round(size / 2**30, 3), "params": params,
                  "created": created}))
