#!/usr/bin/env bash
# Creates .venv with Python >= 3.12 and installs requirements.txt (exact pins). Idempotent: a second run with
# the same requirements and DEVICE does nothing. DEVICE=cpu (default) | tpu | gpu picks the JAX build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
DEVICE="${DEVICE:-cpu}"
VENV="${VENV:-.venv}"

case "$DEVICE" in cpu|tpu|gpu) ;; *) echo "setup.sh: DEVICE must be cpu, tpu or gpu (got '$DEVICE')" >&2; exit 2;; esac

source tools/find_python.sh

stamp="$VENV/.setup-stamp"
want="$(cat requirements.txt; echo "DEVICE=$DEVICE")"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python ">= (3, 12)" "${PYTHON:-}" python3.13 python3.12 python3 \
        "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9] \
        /opt/python*/bin/python3 /opt/conda/bin/python3) || { echo "setup.sh: no Python >= 3.12 found (MaxText needs it). Install python3.12 or set PYTHON=/path/to/python3.12" >&2; exit 1; }
  echo "setup.sh: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
JAXV=$(sed -n 's/^jax==//p' requirements.txt)
case "$DEVICE" in
  tpu) "$VENV/bin/python" -m pip install -q "jax[tpu]==$JAXV" ;;
  gpu) "$VENV/bin/python" -m pip install -q "jax[cuda12]==$JAXV" ;;
esac
echo "$want" > "$stamp"
echo "setup.sh: $VENV ready (DEVICE=$DEVICE)"
