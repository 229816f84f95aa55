#!/usr/bin/env bash
# Creates .venv-hf: a small PyTorch venv in which Hugging Face transformers and compressed-tensors load what
# `python -m sparsity export` writes (the tests use it to check an export against MaxText's own forward pass).
# The main .venv needs none of it: export writes safetensors and the sparse-bitmask format with NumPy.
#
# Python 3.11 by default (PYTHON=/path/to/python to choose): MaxText needs >= 3.12, but PyTorch's CPU-only
# wheels are not on the package index for every version, and a CPU build of torch==2.13.0 for 3.11 is what
# the pinned list below was checked with. Idempotent: a second run with the same pins does nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${HF_VENV:-.venv-hf}"

PINS=(
  "torch==2.13.0"
  "transformers==5.23.0"
  "safetensors==0.8.0"
  "compressed-tensors==0.13.0"
  "sentencepiece==0.2.3"
  "numpy<3"
)

source tools/find_python.sh

stamp="$VENV/.setup-stamp"
want="$(printf '%s\n' "${PINS[@]}")"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python "== (3, 11)" "${PYTHON:-}" python3.11 "$HOME"/.pyenv/versions/3.11*/bin/python3 python3 ||
       find_python ">= (3, 10)" "${PYTHON:-}") || { echo "setup_hf_env.sh: no python3.11 found; set PYTHON=/path/to/python3 (3.10+)" >&2; exit 1; }
  echo "setup_hf_env.sh: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PINS[@]}"
"$VENV/bin/python" -c 'import torch, transformers, compressed_tensors, safetensors, sentencepiece'
echo "$want" > "$stamp"
echo "setup_hf_env.sh: $VENV ready"
