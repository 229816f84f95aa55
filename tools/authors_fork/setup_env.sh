#!/usr/bin/env bash
# Creates the authors' fork's own Python environment (default /work/fork/venv; FORK_VENV=... to choose), outside
# the repository's .venv: Python 3.10 with the JAX 0.4.35 / Flax 0.10.0 / optax 0.2.3 / orbax-checkpoint 0.6.4 /
# TensorFlow 2.17 stack the fork's MaxText imports, every package pinned exactly (requirements.txt beside this
# file), from the package index. It installs dependencies only: the fork's code is a checkout you make yourself
#   git clone <the public repository tjingrant/sparse-llm-code> && git -C sparse-llm-code checkout 78688d4
# and run_cell.py / compare_masks.py take its path. Idempotent: a second run with the same pins does nothing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${FORK_VENV:-/work/fork/venv}"
REQ="$HERE/requirements.txt"

source "$HERE/../find_python.sh"

stamp="$VENV/.setup-stamp"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python "== (3, 10)" "${PYTHON:-}" python3.10 "$HOME"/.pyenv/versions/3.10*/bin/python3) ||
    { echo "setup_env.sh: no Python 3.10 found; set PYTHON=/path/to/python3.10" >&2; exit 1; }
  echo "setup_env.sh: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "pip==24.2"
"$VENV/bin/python" -m pip install -q -r "$REQ"
"$VENV/bin/python" -c 'import jax, flax, optax, orbax.checkpoint, tensorflow, tensorflow_datasets, tensorflow_text, sentencepiece, grain.python, aqt, ml_goodput_measurement, pathwaysutils'
echo "$want" > "$stamp"
echo "setup_env.sh: $VENV ready"
