"""Collecting a sweep's results: one row per run, from its ``sparsity_summary.json`` and the sweep manifest.

``collect(directory)`` starts from ``sparsity.experiments.results.load_runs`` (the scaling-law columns ``loss``, ``tokens``,
``params``, ``avg_params``, ``nonzero_params``, ``sparsity``, plus ``run_name`` and ``source``) and adds:

* from each summary: ``SUMMARY_EXTRAS`` (``prune_steps`` as a JSON list string);
* the schedule keys ``SCHEDULE_KEYS`` and ``learning_rate``: from the summary when it has them, else from
  the run's entry in a sweep ``manifest.json`` (any found under ``directory``, plus those given), else from
  the run's config file as the manifest records it (its YAML chain with the run's overrides applied);
* the manifest's ``columns`` (the sweep's axis, derived and label keys, e.g. ``budget``) when the summary
  lacks them;
* ``dense_fraction`` / ``pruning_fraction`` (the paper's Figure 4 tuple: shares of the density-weighted
  training compute) when no manifest label gives them: measured from the summary's pruning events with
  ``sparsity.core.compute.measured_fractions``, rounded to ``FRACTION_DIGITS`` decimals (sparse runs only).

Rows are sorted by ``run_name``; a run missing from every manifest keeps NaN in the joined columns.

Only runs that completed their schedule are results (``end_status``, ``sparsity.maxtext.status``): the others (data
exhausted, ``target_eval_loss``, preempted, failed) are left out, or kept with ``include_incomplete`` and then
marked by the ``end_status`` column (every row has it) and ``error``. ``collect`` raises if nothing is left; the
table's ``attrs["incomplete"]`` maps every incomplete run (left out or not) to its end status.
"""

from __future__ import annotations

import functools
import json
import os
import types
from typing import Any, Iterable

import pandas as pd

from sparsity.core import compute, timeline
from sparsity.core.config import SPARSITY_KEYS, SparsityKeys
from sparsity.maxtext import overrides, status, yaml_chain
from sparsity.experiments import results
from sparsity.experiments.results import missing
from sparsity.experiments.sweep import MANIFEST_FILE

SUMMARY_EXTRAS = ("final_train_loss", "final_eval_loss", "final_eval_step", "target_sparsity", "final_sparsity",
                  "sparsity_schedule", "steps", "steps_trained", "stopped_early", "error", "tokens_per_step",
                  "prune_steps", "kept_after_events", "prunable_params", "non_prunable_params", "total_params",
                  "final_active_params", "avg_active_params", "effective_flops", "dense_flops", "schedule_split")
LIST_EXTRAS = ("prune_steps", "kept_after_events")  # kept as JSON list strings
SCHEDULE_KEYS = ("prune_start_fraction", "prune_end_fraction", "pruning_interval", "sparsity_schedule",
                 "target_sparsity")
JOINED_KEYS = SCHEDULE_KEYS + ("learning_rate",)
FRACTION_DIGITS = 2
LEADING = ("run_name", "end_status", "loss", "tokens", "params", "avg_params", "nonzero_params", "sparsity", "final_train_loss",
           "final_eval_loss", "target_sparsity", "sparsity_schedule", "prune_start_fraction", "prune_end_fraction",
           "pruning_interval", "dense_fraction", "pruning_fraction", "learning_rate", "steps", "tokens_per_step")


def schedule_from_summary(s: Any) -> timeline.Schedule:
  """A run's schedule rebuilt from its summary (or a results row): ``steps``, ``prune_steps`` (a list or its
  JSON), ``target_sparsity`` and ``sparsity_schedule``."""
  steps = int(s["steps"])
  prune_steps = s["prune_steps"]
  if isinstance(prune_steps, str):
    prune_steps = json.loads(prune_steps)
  prune_steps = [] if missing(prune_steps) else [int(x) for x in prune_steps]
  target = float(s["target_sparsity"])
  if not prune_steps or target == 0.0:
    return timeline.Schedule(steps, (), ())
  dens = timeline.event_densities(len(prune_steps), target, str(s["sparsity_schedule"]))
  return timeline.Schedule(steps, tuple(prune_steps), dens)


def find_manifests(directory: str) -> list[str]:
  """Every ``manifest.json`` under ``directory`` (sorted walk)."""
  return results.find_files(directory, MANIFEST_FILE)


def manifest_runs(paths: Iterable[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
  """``{run_name: manifest entry}`` and the union of the ``columns`` of the given manifests (later files win)."""
  entries: dict[str, dict[str, Any]] = {}
  columns: list[str] = []
  for p in paths:
    with open(p, encoding="utf-8") as f:
      m = json.load(f)
    entries.update({name: dict(entry) for name, entry in m.get("runs", {}).items()})
    columns += [c for c in m.get("columns", []) if c not in columns]
  return entries, columns


@functools.lru_cache(maxsize=64)
def _chain(path: str, mtime: float) -> dict[str, Any]:  # pylint: disable=unused-argument
  return yaml_chain.load(path)


def config_values(entry: dict[str, Any]) -> dict[str, Any]:
  """The run's config keys: its manifest ``base`` file's YAML chain with its ``overrides`` applied ({} if the
  file is gone), with the step fractions the trainer uses (``step_fractions_of``)."""
  base = entry.get("base")
  if not base or not os.path.isfile(base):
    return {}
  values = dict(_chain(base, os.path.getmtime(base)))
  for word in entry.get("overrides", []):
    key, _, text = word.partition("=")
    values[key] = overrides.read_value(text)
  return {**values, **step_fractions_of(values)}


def step_fractions_of(values: dict[str, Any]) -> dict[str, Any]:
  """``prune_start_fraction``, ``prune_end_fraction`` and ``schedule_split`` of config ``values`` as the trainer
  resolves them (``sparsity.core.compute.step_split``), or {} if the values do not say (no sparse run in them)."""
  try:
    keys = SparsityKeys(**{k: v for k, v in values.items() if k in SPARSITY_KEYS})
    steps = int(values["steps"])
  except (KeyError, TypeError, ValueError):
    return {}
  if keys.target_sparsity == 0:
    return {}
  return compute.step_split(types.SimpleNamespace(**dict(keys), steps=steps))._asdict()


def _number(v: Any) -> Any:
  """Text that reads as a number (``sparsity.maxtext.overrides.read_value``, the overrides' rule) as that number;
  anything else (``2:4``, ``true``, a name) unchanged."""
  if isinstance(v, str):
    value = overrides.read_value(v)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return value
  return v


def collect(directory: str, manifests: Iterable[str] = (), include_incomplete: bool = False) -> pd.DataFrame:
  """The results table of the runs under ``directory`` (see the module docstring).

  Raises:
    FileNotFoundError / ValueError: from ``load_runs`` (no directory, no summaries, invalid JSON); no completed run
      (without ``include_incomplete``).
  """
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise ValueError(f"{directory} is not a directory of runs")
  base = results.load_runs(directory)
  left = base[results.incomplete(base)]
  if not include_incomplete:
    base = base[~results.incomplete(base)]
    if base.empty:
      raise ValueError(f"none of the {len(left)} runs under {directory} completed its schedule ("
                       + ", ".join(f"{n}: {e}" for n, e in zip(left["run_name"], left["end_status"])) +
                       "); --include-incomplete lists them")
  entries, columns = manifest_runs([*find_manifests(directory), *manifests])
  rows = []
  for row in base.to_dict("records"):
    summary = results.read_json(row["source"])
    for k in SUMMARY_EXTRAS:
      v = summary.get(k)
      row[k] = json.dumps(v) if k in LIST_EXTRAS and v is not None else v
    entry = entries.get(row["run_name"], {})
    values = entry.get("values", {})
    config = None
    for k in list(JOINED_KEYS) + [c for c in columns if c not in row]:
      if missing(row.get(k)):
        v = summary.get(k)
        v = values.get(k) if missing(v) else v
        if missing(v) and entry and k in JOINED_KEYS:
          config = config_values(entry) if config is None else config
          v = config.get(k)
        if missing(v):
          row[k] = float("nan")
        else:
          row[k] = json.dumps(v) if isinstance(v, (list, dict)) else _number(v)
    if (missing(row.get("dense_fraction")) or missing(row.get("pruning_fraction"))) and summary.get("prune_steps") \
        and float(summary.get("target_sparsity") or 0) > 0:
      measured = compute.measured_fractions(schedule_from_summary(summary))
      for k, v in zip(("dense_fraction", "pruning_fraction"), measured):
        if missing(row.get(k)):
          row[k] = round(v, FRACTION_DIGITS)
    rows.append(row)
  df = pd.DataFrame(rows)
  lead = [c for c in LEADING if c in df.columns]
  df = df[lead + [c for c in df.columns if c not in lead]]
  df = df.sort_values("run_name", kind="stable").reset_index(drop=True)
  df.attrs["incomplete"] = dict(zip(left["run_name"], left["end_status"]))  # run name -> end_status
  return df


TRAJECTORY_COLUMNS = ("run_name", "N0", "rho", "D", "L0", "loss", "loss_after_pruning", "step", "structure", "scope",
                      "score", "prunable_params", "final_active_params", "tokens_per_step", "end_status")


def trajectories(directory: str, include_incomplete: bool = False) -> pd.DataFrame:
  """The P2 law's table from the prune-and-recover runs under ``directory``: one row per evaluation after the
  recovery started (``D > 0``), with ``run_name``, ``N0`` (parameters before pruning), ``rho`` (the fraction of
  prunable weights removed), ``D`` (recovery tokens so far), ``L0`` (eval loss before pruning), ``loss`` and the
  run's settings. Runs without a ``recovery`` record (not started from a checkpoint) are skipped, and so are runs that
  did not complete their schedule unless ``include_incomplete`` (then marked by ``end_status``).

  Raises:
    ValueError: no prune-and-recover run under ``directory``.
  """
  rows = []
  for f in results.summary_files(directory):
    s = results.read_json(f)
    rec = s.get("recovery")
    if not rec or rec.get("loss_before_pruning") is None:
      continue
    end = status.of_summary(s)
    if end != status.COMPLETED and not include_incomplete:
      continue
    for e in s.get("eval_history", []):
      if e.get("loss") is None:
        continue
      rows.append({"run_name": s["run_name"], "N0": s["total_params"], "rho": s["final_sparsity"], "D": e["tokens"],
                   "L0": rec["loss_before_pruning"], "loss": e["loss"], "loss_after_pruning": rec["loss_after_pruning"],
                   "step": e["step"], "structure": s.get("pruning_structure", "unstructured"),
                   "scope": s.get("pruning_scope"), "score": s.get("pruning_score"),
                   "prunable_params": s["prunable_params"], "final_active_params": s["final_active_params"],
                   "tokens_per_step": s["tokens_per_step"], "end_status": end})
  if not rows:
    raise ValueError(f"no prune-and-recover run under {directory} (summaries with a 'recovery' record: runs started "
                     "from load_parameters_path with a pruning event at step 0 and eval_interval > 0"
                     + ("" if include_incomplete else ", that completed their schedule") + ")")
  return pd.DataFrame(rows, columns=list(TRAJECTORY_COLUMNS)).sort_values(["run_name", "D"], kind="stable") \
      .reset_index(drop=True)


def missing_schedule_keys(df: pd.DataFrame) -> list[str]:
  """Schedule keys that are missing (NaN) for some sparse run (``target_sparsity > 0``)."""
  sparse = df[pd.to_numeric(df.get("target_sparsity"), errors="coerce").fillna(0) > 0] if "target_sparsity" in df else df
  out = []
  for k in ("prune_start_fraction", "prune_end_fraction", "pruning_interval"):
    if k not in sparse or sparse[k].isna().any():
      out.append(k)
  return out


__all__ = ["SUMMARY_EXTRAS", "LIST_EXTRAS", "SCHEDULE_KEYS", "TRAJECTORY_COLUMNS", "trajectories", "schedule_from_summary", "find_manifests", "manifest_runs", "config_values", "collect",
           "missing_schedule_keys"]
