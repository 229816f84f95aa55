"""A sweep's report from its results table (``sparsity.experiments.collect``): the paper's figures and a markdown table.

Figures (PNG, matplotlib Agg), written to the output directory:

* ``active_params.png`` (paper Fig. 1 left): active parameters over training tokens for each sparse run
  (solid) and its dense partner (dashed, same colour: the dense run with the same tokens whose parameter
  count is closest to the sparse run's N_avg), N_avg as a dotted line. Curves are rebuilt from what each run
  trained: its ``steps_trained`` and the events before them, with the counts they kept (``kept_after_events``,
  the run's own rounding: global or per tensor, or a fine-tuning run's fixed mask), by
  ``sparsity.core.accounting`` (exact: their mean equals the summary's ``avg_active_params``). A table without
  these columns (older ``collect`` CSVs) falls back to ``steps`` and the schedule's global rounding.
* ``loss_vs_avg_params.png`` (Fig. 1 right): final loss against N_avg, sparse and dense runs.
* ``schedule_sweep.png`` (Fig. 4): loss per (dense fraction, pruning fraction) tuple, in percent of
  training compute, one line per target sparsity (and schedule, when several), one panel per model size
  and token budget.
  Needs ``dense_fraction`` / ``pruning_fraction`` (``collect`` derives them from the schedule keys).
* ``predicted_vs_actual.png`` (Fig. 3): loss predicted by a scaling law against the actual loss. The law
  comes from ``law_file``, or is fitted here (``avg_param``, written to ``law.json``) when there are more
  runs than the law has parameters; otherwise the figure is skipped with a message. Only completed runs are fitted
  (a table from ``collect --include-incomplete`` also lists the others; they are drawn and listed, marked by their
  ``end_status``, but not fitted).

``report.md`` lists every run (``TABLE_COLUMNS``) and links the figures; figures that could not be drawn
are listed with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sparsity.experiments import collect, results
from sparsity.experiments import markdown as md
from sparsity.experiments.results import missing
from sparsity.science import plots, scaling_laws
from sparsity.core import timeline

FIGURES = {"active_params": "active_params.png", "loss_vs_avg_params": "loss_vs_avg_params.png",
           "schedule_sweep": "schedule_sweep.png", "predicted_vs_actual": "predicted_vs_actual.png"}
TABLE_FILE = "report.md"
LAW_FILE = "law.json"
DEFAULT_LAW = "avg_param"
MAX_LEGEND = 12
# (column, header, format) of the markdown table.
TABLE_COLUMNS = (
    ("run_name", "run", "{}"),
    ("target_sparsity", "target sparsity", "{:g}"),
    ("sparsity_schedule", "schedule", "{}"),
    ("dense_fraction", "dense fraction", "{:g}"),
    ("pruning_fraction", "pruning fraction", "{:g}"),
    ("steps", "steps", "{:,.0f}"),
    ("tokens", "tokens", "{:,.0f}"),
    ("params", "params", "{:,.0f}"),
    ("avg_params", "N_avg", "{:,.0f}"),
    ("nonzero_params", "final params", "{:,.0f}"),
    ("final_train_loss", "final train loss", "{:.4f}"),
    ("final_eval_loss", "final eval loss", "{:.4f}"),
    ("loss", "loss", "{:.4f}"),
)


@dataclasses.dataclass
class Report:
  """What ``write_report`` produced.

  Attributes:
    figures: figure key -> PNG path, for the figures drawn.
    shown: figure key -> run names drawn in it.
    skipped: figure key -> why it was not drawn.
    table: path of ``report.md``.
    law: the law used for predictions (``FitResult``) or ``None``.
  """

  figures: dict[str, str] = dataclasses.field(default_factory=dict)
  shown: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  table: str = ""
  law: Any = None


def schedule_of(row: Any) -> timeline.Schedule:
  """The run's schedule rebuilt from its row (``sparsity.experiments.collect.schedule_from_summary``)."""
  return collect.schedule_from_summary(row)


def _listed(v: Any) -> list[int] | None:
  """A list column (a list, or its JSON as ``collect`` writes it); None if missing."""
  if isinstance(v, str):
    v = json.loads(v)
  if v is None or (not isinstance(v, (list, tuple)) and missing(v)):
    return None
  return [int(x) for x in v]


def trained_steps(row: Any) -> int:
  """The steps the run trained: ``steps_trained``, else (older tables) ``steps``."""
  v = row.get("steps_trained")
  return int(row["steps"]) if missing(v) else int(v)


def accounting_of(row: Any):
  """The run's ``sparsity.core.accounting.Accounting`` as trained (see the module docstring): its events and the
  counts they kept."""
  from sparsity.core import accounting  # pylint: disable=import-outside-toplevel  (JAX: only when drawing curves)

  prunable, non_prunable = int(row["prunable_params"]), int(row["non_prunable_params"])
  steps, kept = _listed(row.get("prune_steps")), _listed(row.get("kept_after_events"))
  if steps is None or kept is None:  # an older table: the planned schedule with one global rounding
    sched = schedule_of(row)
    steps, kept = list(sched.prune_steps), list(sched.keep_counts(prunable))
  return accounting.Accounting(steps=int(row["steps"]), prune_steps=tuple(steps), kept=tuple(kept), prunable=prunable,
                               non_prunable=non_prunable, tokens_per_step=int(row["tokens_per_step"]))


def active_curve(row: Any) -> tuple[np.ndarray, np.ndarray]:
  """``(edges, active)``: active parameters are ``active[i]`` from token ``edges[i]`` to ``edges[i + 1]``, up to the
  tokens the run trained."""
  acc, trained = accounting_of(row), trained_steps(row)
  starts = [0] + [s for s in acc.prune_steps if 0 < s < trained]
  edges = np.array(starts + [trained], float) * float(acc.tokens_per_step)
  active = np.array([acc.active_at(s) for s in starts], float)
  return edges, active


def dense_partners(df: pd.DataFrame) -> dict[str, str | None]:
  """Sparse run -> the dense run (``target_sparsity == 0``) with the same tokens whose ``params`` is closest
  to the sparse run's ``avg_params`` in log scale (``None`` if there is none)."""
  sparse = df[df["target_sparsity"] > 0]
  dense = df[df["target_sparsity"] == 0]
  out: dict[str, str | None] = {}
  for _, s in sparse.iterrows():
    cands = dense[dense["tokens"] == s["tokens"]]
    if cands.empty:
      out[s["run_name"]] = None
      continue
    gap = np.abs(np.log(cands["params"].astype(float) / float(s["avg_params"])))
    out[s["run_name"]] = str(cands.iloc[int(np.argmin(gap.to_numpy()))]["run_name"])
  return out


def plot_active_params(df: pd.DataFrame, path: str) -> list[str]:
  """Figure 1 left (see the module docstring); returns the run names drawn (runs without counts, e.g. one that
  failed before its train state could be read, are not)."""
  fig = Figure(figsize=(9.5, 4.5))
  ax = fig.add_subplot()
  df = df[df[["prunable_params", "non_prunable_params", "tokens_per_step", "avg_params"]].notna().all(axis=1)]
  partners = dense_partners(df)
  rows = {r["run_name"]: r for _, r in df.iterrows()}
  colors = [f"C{i % 10}" for i in range(len(partners))]
  drawn: list[str] = []
  many = len(partners) > MAX_LEGEND
  for color, (name, partner) in zip(colors, sorted(partners.items())):
    r = rows[name]
    edges, active = active_curve(r)
    ax.stairs(active, edges, baseline=None, color=color, lw=1.5, label=None if many else f"{name} (sparse)")
    ax.hlines(float(r["avg_params"]), edges[0], edges[-1], colors=color, linestyles=":", lw=1)
    drawn.append(name)
    if partner is not None and partner not in drawn:
      e2, a2 = active_curve(rows[partner])
      ax.stairs(a2, e2, baseline=None, color=color, lw=1.5, ls="--", label=None if many else f"{partner} (dense)")
      drawn.append(partner)
  for name in sorted(set(rows) - set(drawn)):  # dense runs without a sparse partner
    e2, a2 = active_curve(rows[name])
    ax.stairs(a2, e2, baseline=None, color="grey", lw=1, ls="--", label=None if many else f"{name} (dense)")
    drawn.append(name)
  ax.set_xlabel("training tokens")
  ax.set_ylabel("active parameters")
  ax.set_title("active parameters over training (dotted: N_avg)")
  if not many:
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  plots.save(fig, path)
  return drawn


def _tuple_label(dense: float, pruning: float) -> str:
  return f"({100 * dense:g}, {100 * pruning:g})"


def plot_schedule_sweep(df: pd.DataFrame, path: str) -> list[str]:
  """Figure 4 (see the module docstring); returns the run names drawn. ``ValueError`` if nothing to draw."""
  need = ("dense_fraction", "pruning_fraction")
  if any(c not in df for c in need + ("target_sparsity", "sparsity_schedule")):
    raise ValueError("no dense_fraction/pruning_fraction/target_sparsity/sparsity_schedule columns (use collect's "
                     "CSV: it reads them from the summaries and the sweep manifest)")
  sparse = df[(df["target_sparsity"] > 0) & df["dense_fraction"].notna() & df["pruning_fraction"].notna()]
  if sparse.empty:
    raise ValueError("no sparse run with known schedule fractions")
  panels = sorted({(int(p), int(t)) for p, t in zip(sparse["params"], sparse["tokens"])})
  cols = min(3, len(panels))
  nrows = -(-len(panels) // cols)
  n_tuples = sparse[list(need)].drop_duplicates().shape[0]
  fig = Figure(figsize=(cols * max(4.5, 1.0 + 0.6 * n_tuples), 4.2 * nrows))
  several_schedules = sparse["sparsity_schedule"].nunique() > 1
  drawn: list[str] = []
  for i, (params, tokens) in enumerate(panels):
    ax = fig.add_subplot(nrows, cols, i + 1)
    part = sparse[(sparse["params"] == params) & (sparse["tokens"] == tokens)]
    tuples = sorted({(float(d), float(p)) for d, p in zip(part["dense_fraction"], part["pruning_fraction"])})
    pos = {t: j for j, t in enumerate(tuples)}
    keys = ["target_sparsity"] + (["sparsity_schedule"] if several_schedules else [])
    for j, (key, grp) in enumerate(sorted(part.groupby(keys), key=lambda kv: kv[0])):
      key = key if isinstance(key, tuple) else (key,)
      grp = grp.assign(_x=[pos[(float(d), float(p))] for d, p in zip(grp["dense_fraction"], grp["pruning_fraction"])])
      grp = grp.sort_values("_x")
      label = f"sparsity {float(key[0]):g}" + (f" {key[1]}" if several_schedules else "")
      ax.plot(grp["_x"], grp["loss"], "o-", color=f"C{j % 10}", label=label)
      drawn += list(grp["run_name"])
    ax.set_xticks(range(len(tuples)))
    ax.set_xticklabels([_tuple_label(*t) for t in tuples], rotation=45, ha="right", fontsize=8)
    budget = ""
    if "budget" in part and part["budget"].notna().any():
      budget = f"{part['budget'].dropna().iloc[0]}, "
    ax.set_title(f"{params / 1e6:.4g}M params, {budget}{tokens:.4g} tokens", fontsize=9)
    ax.set_xlabel("(dense %, pruning %) of training compute")
    ax.set_ylabel("final loss")
    ax.legend(fontsize=7)
  plots.save(fig, path)
  return drawn


def law_for(df: pd.DataFrame, law_file: str | None, out_dir: str, law: str = DEFAULT_LAW):
  """The law to predict with: read from ``law_file``, else fitted on ``df`` and written to ``law.json``.

  Raises:
    ValueError: no law file and too few runs to fit (needs more runs than the law has parameters), or the
      fit rejects the data (the message says why).
  """
  if law_file:
    with open(law_file, encoding="utf-8") as f:
      return scaling_laws.FitResult.from_json(json.load(f))
  spec = scaling_laws.get_law(law)
  if len(df) <= spec.n_params:
    raise ValueError(f"{len(df)} runs: fitting the {law} law needs more than {spec.n_params} (give --law-file)")
  res = scaling_laws.fit(law, df, loo=False)
  out = res.to_json()
  out["run_names"] = [str(v) for v in df["run_name"]]
  with open(os.path.join(out_dir, LAW_FILE), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
  return res


def markdown_table(df: pd.DataFrame, predicted: Sequence[float] | None = None) -> str:
  """The runs as a markdown table (``TABLE_COLUMNS`` present in ``df``, plus ``predicted loss``; and how each run
  ended, when some did not complete)."""
  cols = [c for c in TABLE_COLUMNS if c[0] in df]
  if "end_status" in df and results.incomplete(df).any():
    cols.insert(1, ("end_status", "end", "{}"))
  headers = [h for _, h, _ in cols] + (["predicted loss"] if predicted is not None else [])
  rows = []
  for i, (_, r) in enumerate(df.iterrows()):
    rows.append([md.cell(f, r[c]) for c, _, f in cols]
                + ([md.cell("{:.4f}", predicted[i])] if predicted is not None else []))
  return md.table(headers, rows)


def write_report(df: pd.DataFrame, out_dir: str, law_file: str | None = None, law: str = DEFAULT_LAW) -> Report:
  """Draws every figure it can and writes ``report.md`` into ``out_dir`` (see the module docstring)."""
  os.makedirs(out_dir, exist_ok=True)
  df = df.sort_values("run_name", kind="stable").reset_index(drop=True)
  rep = Report()

  def path(key: str) -> str:
    return os.path.join(out_dir, FIGURES[key])

  curve_cols = ("steps", "prune_steps", "target_sparsity", "sparsity_schedule", "prunable_params",
                "non_prunable_params", "tokens_per_step")
  absent = [c for c in curve_cols if c not in df]
  if absent:
    rep.skipped["active_params"] = f"columns {absent} missing (use collect's CSV)"
  else:
    rep.shown["active_params"] = plot_active_params(df, path("active_params"))
    rep.figures["active_params"] = path("active_params")
  plots.loss_vs_avg_params(df["avg_params"], df["loss"], df["sparsity"], path("loss_vs_avg_params"), df["tokens"])
  rep.figures["loss_vs_avg_params"] = path("loss_vs_avg_params")
  rep.shown["loss_vs_avg_params"] = list(df["run_name"])
  try:
    rep.shown["schedule_sweep"] = plot_schedule_sweep(df, path("schedule_sweep"))
    rep.figures["schedule_sweep"] = path("schedule_sweep")
  except ValueError as e:
    rep.skipped["schedule_sweep"] = str(e)
  predicted = None
  try:
    # Only completed runs are results: a table with others (collect --include-incomplete) fits on the rest.
    rep.law = law_for(df[~results.incomplete(df)].reset_index(drop=True), law_file, out_dir, law)
    predicted = rep.law.predict(df)
    sparsity = df["sparsity"] if "sparsity" in df else np.zeros(len(df))
    mae = float(np.mean(np.abs(predicted - df["loss"].to_numpy(float))))
    plots.predicted_vs_actual(df["loss"], predicted, sparsity, path("predicted_vs_actual"),
                              f"{rep.law.law}: MAE {mae:.4f}")
    rep.figures["predicted_vs_actual"] = path("predicted_vs_actual")
    rep.shown["predicted_vs_actual"] = list(df["run_name"])
  except (ValueError, RuntimeError) as e:
    rep.skipped["predicted_vs_actual"] = str(e)
  rep.table = os.path.join(out_dir, TABLE_FILE)
  with open(rep.table, "w", encoding="utf-8") as f:
    f.write(markdown(df, rep, predicted))
  return rep


def markdown(df: pd.DataFrame, rep: Report, predicted: Sequence[float] | None) -> str:
  """``report.md``'s text: the table, the law, the figures and the skipped figures with their reasons."""
  parts = [f"# Sweep report ({len(df)} runs)", "", markdown_table(df, predicted), ""]
  if rep.law is not None:
    parts += [f"Law: {rep.law.describe()}", ""]
  for key, p in rep.figures.items():
    parts.append(f"![{key}]({os.path.basename(p)})")
  for key, why in rep.skipped.items():
    parts.append(f"- {key}: not drawn: {why}")
  return "\n".join(parts) + "\n"


__all__ = ["FIGURES", "TABLE_FILE", "TABLE_COLUMNS", "Report", "schedule_of", "accounting_of", "trained_steps",
           "active_curve",
           "dense_partners", "plot_active_params", "plot_schedule_sweep", "law_for", "markdown_table",
           "write_report", "markdown"]
