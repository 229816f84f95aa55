#!/usr/bin/env bash
# Creates .venv-xpk with the pinned xpk (the GKE/TPU job submitter that `python -m sparsity sweep --launcher xpk`
# drives). It lives apart from .venv because every xpk release pins pyyaml, packaging and google-api-core at
# versions that conflict with MaxText's. Idempotent: a second run with the same pin does nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${XPK_VENV:-.venv-xpk}"
# The pin is sparsity/experiments/xpk.py's XPK_REQUIREMENT (one place).
PIN=$(sed -n 's/^XPK_REQUIREMENT = "\(.*\)"$/\1/p' sparsity/experiments/xpk.py)
[ -n "$PIN" ] || { echo "setup_xpk_env.sh: XPK_REQUIREMENT not found in sparsity/experiments/xpk.py" >&2; exit 1; }
source tools/find_python.sh

stamp="$VENV/.setup-stamp"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PIN" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python ">= (3, 10)" "${PYTHON:-}" .venv/bin/python python3.12 python3.13 python3) ||
    { echo "setup_xpk_env.sh: no Python >= 3.10 found" >&2; exit 1; }
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$PIN"
echo "$PIN" > "$stamp"
echo "setup_xpk_env.sh: $VENV ready ($PIN)"
