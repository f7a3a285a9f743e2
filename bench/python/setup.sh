#!/usr/bin/env bash
# Creates the Python environment for tsight's reference benchmarks (bench/python/*.py):
# a virtual environment at <repo>/.venv-bench ($VENV_BENCH overrides) with CPU PyTorch, Hugging Face
# transformers, safetensors, psutil, numpy, onnx, onnxscript (torch.onnx.export needs it) and onnxruntime, all
# from this machine's local package index (no network). Idempotent: does nothing when the environment already
# imports them. Prints the environment's python path as its last line (progress goes to stderr).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/../.." && pwd))"
venv="${VENV_BENCH:-$repo/.venv-bench}"
py="$venv/bin/python"
base_python="${PYTHON:-python3}"

# The CPU build of torch (the one on the index by default is the CUDA build, gigabytes of nvidia wheels).
torch_req="torch==2.13.0+cpu"
packages=("$torch_req" "transformers>=5,<6" safetensors psutil numpy onnx onnxscript onnxruntime)
index_args=(--index-url file:///opt/pypi/simple --extra-index-url file:///opt/pypi-more/simple --find-links /opt/wheels)

check='import torch, transformers, safetensors, psutil, numpy, onnx, onnxscript, onnxruntime
assert torch.__version__.endswith("+cpu"), torch.__version__
assert int(transformers.__version__.split(".")[0]) >= 5, transformers.__version__'

if [ -x "$py" ] && "$py" -c "$check" 2>/dev/null; then
  echo "bench env already set up" >&2
else
  [ -x "$py" ] || "$base_python" -m venv "$venv"
  log="$(mktemp)"
  # pip warns about every package an index folder lacks; keep its log quiet unless the install fails.
  if ! "$py" -m pip install --disable-pip-version-check "${index_args[@]}" "${packages[@]}" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  grep -E '^Successfully installed' "$log" >&2 || true
  rm -f "$log"
  "$py" -c "$check"
fi
"$py" -c 'import torch, transformers, onnxruntime; print(f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}")' >&2
echo "$py"
