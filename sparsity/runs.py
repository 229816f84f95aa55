"""Loading run results for scaling-law fits: a CSV table or a directory of ``sparsity_summary.json`` files.

The trainer writes one ``sparsity_summary.json`` per run. ``load_runs`` maps its keys to the columns the
laws in ``sparsity.scaling_laws`` read:

* ``final_eval_loss`` (else ``final_train_loss``) -> ``loss``
* ``tokens`` -> ``tokens``
* ``total_params`` -> ``params``
* ``avg_active_params`` -> ``avg_params``
* ``final_active_params`` -> ``nonzero_params``
* ``final_sparsity`` -> ``sparsity``
* ``run_name`` (else the run directory's name) -> ``run_name``

plus ``source`` (the file's path). Missing keys become NaN, which the fit rejects naming the column.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pandas as pd

SUMMARY_FILE = "sparsity_summary.json"
SUMMARY_COLUMNS = {"tokens": "tokens", "total_params": "params", "avg_active_params": "avg_params",
                   "final_active_params": "nonzero_params", "final_sparsity": "sparsity"}


def summary_to_row(summary: dict[str, Any], source: str = "") -> dict[str, Any]:
  """One table row from a parsed ``sparsity_summary.json`` (see the module docstring)."""
  loss = summary.get("final_eval_loss")
  if loss is None or (isinstance(loss, float) and math.isnan(loss)):
    loss = summary.get("final_train_loss")
  row: dict[str, Any] = {"run_name": summary.get("run_name") or os.path.basename(os.path.dirname(source)),
                         "loss": float("nan") if loss is None else loss}
  for key, col in SUMMARY_COLUMNS.items():
    v = summary.get(key)
    row[col] = float("nan") if v is None else v
  row["source"] = source
  return row


def load_runs(path: str) -> pd.DataFrame:
  """Runs as a DataFrame: ``path`` is a CSV file, or a directory searched recursively for summaries.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: a directory holds no ``sparsity_summary.json``, or one is not valid JSON.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  if not os.path.isdir(path):
    return pd.read_csv(path)
  rows = []
  for root, dirs, files in os.walk(path):
    dirs.sort()
    if SUMMARY_FILE in files:
      f = os.path.join(root, SUMMARY_FILE)
      try:
        with open(f) as fh:
          rows.append(summary_to_row(json.load(fh), f))
      except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
  if not rows:
    raise ValueError(f"no {SUMMARY_FILE} found under {path}")
  return pd.DataFrame(rows)


__all__ = ["SUMMARY_FILE", "SUMMARY_COLUMNS", "summary_to_row", "load_runs"]
