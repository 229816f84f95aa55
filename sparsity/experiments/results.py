"""Run results as the table the scaling laws read: a CSV, or a directory of run summaries.

The trainer writes one summary per run (``sparsity.maxtext.layout.SUMMARY_FILE``). ``load_runs`` maps its keys
to the columns the laws in ``sparsity.science.scaling_laws`` read:

* ``final_eval_loss`` (else, for a run configured without evaluation, ``final_train_loss``) -> ``loss``
* ``tokens`` -> ``tokens`` (tokens actually trained)
* ``total_params`` -> ``params``
* ``avg_active_params`` -> ``avg_params``
* ``final_active_params`` -> ``nonzero_params``
* ``final_sparsity`` -> ``sparsity``
* ``run_name`` (else the run directory's name) -> ``run_name``

plus ``source`` (the file's path) and ``end_status`` (how the run ended, ``sparsity.maxtext.status``; derived for
summaries written before the key existed). Missing keys become NaN, which the fit rejects naming the column.

A completed run's summary whose evaluation came before its last trained step (``final_eval_step < steps_trained -
1``) is refused with an error naming the run: its eval loss is not the trained model's. A run that did not complete
its schedule is never a result: ``require_completed`` refuses it naming it (``fit``), ``collect`` leaves it out.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pandas as pd

from sparsity.maxtext import status
from sparsity.maxtext.layout import SUMMARY_FILE

SUMMARY_COLUMNS = {"tokens": "tokens", "total_params": "params", "avg_active_params": "avg_params",
                   "final_active_params": "nonzero_params", "final_sparsity": "sparsity"}


def missing(v: Any) -> bool:
  """Whether a table value is missing: None or NaN (what pandas reads from an empty CSV cell)."""
  return v is None or (isinstance(v, float) and math.isnan(v))


def run_loss(summary: dict[str, Any], source: str = "") -> float:
  """The run's final loss: its eval loss of the final weights, else its final train loss (see the docstring)."""
  loss = summary.get("final_eval_loss")
  if missing(loss):
    loss = summary.get("final_train_loss")
    return float("nan") if loss is None else float(loss)
  trained = summary.get("steps_trained", summary.get("steps"))
  step = summary.get("final_eval_step")
  if trained is not None and (step is None or int(step) < int(trained) - 1):
    raise ValueError(
        f"{source or summary.get('run_name')}: its final_eval_loss comes from step {step}, before the end of "
        f"training (last step {int(trained) - 1}); rerun it with an evaluation at the end (eval_interval > 0 "
        "evaluates the final weights), or remove final_eval_loss to use the training loss"
    )
  return float(loss)


def summary_to_row(summary: dict[str, Any], source: str = "") -> dict[str, Any]:
  """One table row from a parsed run summary (see the module docstring)."""
  end = status.of_summary(summary)
  try:
    loss = run_loss(summary, source)
  except ValueError:
    if end == status.COMPLETED:
      raise
    loss = float("nan")  # not a result anyway (require_completed refuses it)
  row: dict[str, Any] = {"run_name": summary.get("run_name") or os.path.basename(os.path.dirname(source)),
                         "loss": loss}
  for key, col in SUMMARY_COLUMNS.items():
    v = summary.get(key)
    row[col] = float("nan") if v is None else v
  row["source"] = source
  row["end_status"] = end
  return row


def incomplete(df: pd.DataFrame) -> pd.Series:
  """Boolean per row: the run did not complete its schedule (``end_status`` other than completed; in a table
  without ``end_status``, ``stopped_early`` true). All False for a table that has neither column."""
  if "end_status" in df:
    return df["end_status"].fillna(status.COMPLETED).astype(str) != status.COMPLETED
  if "stopped_early" in df:
    return df["stopped_early"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))
  return pd.Series(False, index=df.index)


def require_completed(df: pd.DataFrame, source: str = "") -> None:
  """A ValueError naming the runs of ``df`` that did not complete their schedule (see the module docstring)."""
  bad = df[incomplete(df)]
  if bad.empty:
    return
  names = bad["run_name"] if "run_name" in bad else pd.Series(bad.index.astype(str), index=bad.index)
  ends = bad["end_status"] if "end_status" in bad else pd.Series("stopped early", index=bad.index)
  listed = ", ".join(f"{n} ({e})" for n, e in list(zip(names, ends))[:10]) + (" ..." if len(bad) > 10 else "")
  raise ValueError(f"{source + ': ' if source else ''}{len(bad)} of {len(df)} runs did not complete their schedule "
                   f"and are not results: {listed}. Rerun them (sweep --launcher local resumes them) or leave them "
                   "out (collect without --include-incomplete)")


def find_files(directory: str, name: str) -> list[str]:
  """Every file called ``name`` under ``directory`` (sorted walk)."""
  found = []
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    if name in files:
      found.append(os.path.join(root, name))
  return found


def summary_files(path: str) -> list[str]:
  """Every run summary under directory ``path`` (sorted walk)."""
  return find_files(path, SUMMARY_FILE)


def read_json(path: str) -> Any:
  """A JSON file; ``ValueError`` naming the file if it is not valid JSON."""
  try:
    with open(path, encoding="utf-8") as fh:
      return json.load(fh)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_runs(path: str) -> pd.DataFrame:
  """Runs as a DataFrame: ``path`` is a CSV file, or a directory searched recursively for summaries.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: a directory holds no summary, one is not valid JSON, or one's eval loss predates its end.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  if not os.path.isdir(path):
    return pd.read_csv(path)
  rows = [summary_to_row(read_json(f), f) for f in summary_files(path)]
  if not rows:
    raise ValueError(f"no {SUMMARY_FILE} found under {path}")
  return pd.DataFrame(rows)


__all__ = ["SUMMARY_COLUMNS", "missing", "run_loss", "summary_to_row", "find_files", "summary_files", "read_json", "load_runs",
           "incomplete", "require_completed"]
