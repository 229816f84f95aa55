"""Paired statistics of the reproduction study: each sparse run against its own seed's dense models.

The study's design is paired: a seed sets the weights' initialisation and the data order of a sparse run and of
every dense run of its budget alike. So the quantity of interest is, per seed, the difference between the sparse
run's final eval loss and the loss of a dense model with the same average active parameter count (interpolated
linearly between the two dense widths that bracket that count, the paper's footnote 1), and the claim is
carried by the mean of those differences over seeds with a t interval (n - 1 degrees of freedom).

Two matchings, because the count the paper matches on is not stated as a formula: its Figure 1 names the sparse
model by its "138 million prunable parameters in the linear layers" and its Table 1 lists "# Prunable" (embedding
and normalisation parameters are never pruned), so

* ``prunable``: the sparse run's average active prunable count against the dense runs' prunable count; and
* ``total``: the sparse run's average active count of all parameters (``avg_params``, the law's N) against the
  dense runs' total count.

At the paper's sizes the two differ by the embeddings' share (15% of its 162M model); at this study's (25% of the
width-64 model) they differ more, and both are reported.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import stats

MATCHINGS = ("prunable", "total")  # the counts a sparse run is matched on (``sparse_count``, ``dense_column``)
SPARSE_SPECS = ("paired-", "epoch1-")  # the specs whose sparse runs are paired with their seed's dense models
# the specs whose dense runs form the families (the same dense run in fig1.yml and paired.yml; ablations excluded)
DENSE_SPECS = ("fig1-", "paired-", "epoch1-")
LEVEL = 0.95


class Interval(NamedTuple):
  """Mean of ``n`` values with its two-sided t interval at ``level`` (NaN bounds when n < 2)."""

  mean: float
  low: float
  high: float
  sd: float
  n: int

  @property
  def verdict(self) -> str:
    """'sparse worse' / 'sparse better' when the interval excludes zero, else 'not detected'."""
    if math.isnan(self.low) or self.low <= 0.0 <= self.high:
      return "not detected"
    return "sparse worse" if self.low > 0 else "sparse better"


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
  """The mean and its t interval (``scipy.stats.t``, n - 1 degrees of freedom) of ``values``."""
  v = np.asarray(list(values), float)
  n = len(v)
  if n == 0:
    raise ValueError("no values")
  mean = float(v.mean())
  if n < 2:
    return Interval(mean, float("nan"), float("nan"), float("nan"), n)
  sd = float(v.std(ddof=1))
  half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
  return Interval(mean, mean - half, mean + half, sd, n)


def sparse_count(run: pd.Series | dict[str, Any], matching: str) -> float:
  """The sparse run's average active count under ``matching``."""
  if matching == "prunable":
    return float(run["avg_params"]) - float(run["non_prunable_params"])
  if matching == "total":
    return float(run["avg_params"])
  raise ValueError(f"unknown matching {matching!r}; choose one of {MATCHINGS}")


def dense_column(matching: str) -> str:
  if matching not in MATCHINGS:
    raise ValueError(f"unknown matching {matching!r}; choose one of {MATCHINGS}")
  return "prunable_params" if matching == "prunable" else "total_params"


def interpolate(dense: pd.DataFrame, column: str, target: float) -> tuple[float, str, str, float] | None:
  """``(loss, lower run, upper run, weight)``: the loss at ``target`` of ``column``, linear between the two dense runs
  that bracket it; None when none does (never extrapolated)."""
  d = dense.sort_values(column)
  below, above = d[d[column] <= target], d[d[column] >= target]
  if below.empty or above.empty:
    return None
  lo, hi = below.iloc[-1], above.iloc[0]
  span = float(hi[column] - lo[column])
  w = 0.0 if span == 0 else (target - float(lo[column])) / span
  return (1 - w) * float(lo["loss"]) + w * float(hi["loss"]), str(lo["run_name"]), str(hi["run_name"]), w


def dense_family(df: pd.DataFrame, budget: Any, seed: Any) -> pd.DataFrame:
  """The dense runs of ``budget`` and ``seed`` of ``DENSE_SPECS``, one per width (specs that train the same dense
  run, fig1's and paired's, are the same run: the first listed is kept)."""
  d = df[(df["kind"] == "dense") & (df["budget"] == budget) & (df["seed"] == seed)
         & df["run_name"].astype(str).str.startswith(DENSE_SPECS)]
  return d.drop_duplicates(subset=["base_emb_dim"], keep="first")


def differences(df: pd.DataFrame, specs: Sequence[str] = SPARSE_SPECS) -> pd.DataFrame:
  """One row per sparse run of ``specs`` (run-name prefixes) and matching: its loss, its seed's dense loss at its
  average count, and the difference (sparse minus dense; NaN when its seed's dense runs do not bracket it)."""
  sparse = df[(df["kind"] == "sparse") & df["run_name"].str.startswith(tuple(specs))]
  rows = []
  for _, run in sparse.iterrows():
    family = dense_family(df, run["budget"], run["seed"])
    for matching in MATCHINGS:
      target = sparse_count(run, matching)
      found = interpolate(family, dense_column(matching), target)
      dense_loss, lower, upper, weight = found if found else (float("nan"), "", "", float("nan"))
      rows.append({"spec": str(run["run_name"]).split("-", 1)[0], "budget": run["budget"],
                   "target_sparsity": float(run["target_sparsity"]), "seed": int(run["seed"]), "matching": matching,
                   "run_name": run["run_name"], "count": target, "tokens": float(run["tokens"]),
                   "sparse_loss": float(run["loss"]), "dense_loss": dense_loss,
                   "difference": float(run["loss"]) - dense_loss, "lower": lower, "upper": upper, "weight": weight})
  return pd.DataFrame(rows)


def summary(diffs: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
  """Per (spec, budget, target, matching): the paired mean difference over seeds with its t interval, and the
  seeds whose dense runs did not bracket the sparse run (left out, listed)."""
  rows = []
  keys = ["spec", "budget", "target_sparsity", "matching"]
  for key, g in diffs.groupby(keys, sort=False):
    ok = g[g["difference"].notna()]
    iv = t_interval(ok["difference"], level) if len(ok) else Interval(*(float("nan"),) * 4, 0)
    rows.append({**dict(zip(keys, key)), "seeds": iv.n, "unbracketed": sorted(g[g["difference"].isna()]["seed"]),
                 "count": float(g["count"].mean()), "tokens": float(g["tokens"].iloc[0]),
                 "sparse_loss": float(ok["sparse_loss"].mean()) if len(ok) else float("nan"),
                 "dense_loss": float(ok["dense_loss"].mean()) if len(ok) else float("nan"),
                 "difference": iv.mean, "low": iv.low, "high": iv.high, "sd": iv.sd, "verdict": iv.verdict})
  return pd.DataFrame(rows)


def fixed_compute_schedule(df: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
  """Figure 4 at fixed effective compute (``configs/study/fig4.yml``): per split of compute, the steps, the measured
  compute fractions, the effective FLOPs relative to the paper's split's run, and the loss over seeds (mean, t
  interval); sorted by mean loss."""
  if "dense_compute_fraction" not in df:
    return pd.DataFrame()
  runs = df[df["run_name"].str.startswith("fig4-") & df["dense_compute_fraction"].notna()]
  if runs.empty:
    return pd.DataFrame()
  ref = runs[(runs["dense_compute_fraction"] == 0.25) & (runs["pruning_compute_fraction"] == 0.5)]
  ref_flops = float(ref["effective_flops"].mean()) if not ref.empty else float("nan")
  rows = []
  for (td, ts), g in runs.groupby(["dense_compute_fraction", "pruning_compute_fraction"]):
    iv = t_interval(g["loss"], level)
    rows.append({"dense": float(td), "pruning": float(ts), "steps": int(g["steps"].iloc[0]), "seeds": iv.n,
                 "measured_dense": float(g["dense_fraction"].iloc[0]),
                 "measured_pruning": float(g["pruning_fraction"].iloc[0]),
                 "flops_ratio": float(g["effective_flops"].mean()) / ref_flops, "loss": iv.mean, "low": iv.low,
                 "high": iv.high, "seed0_loss": float(g[g["seed"] == 0]["loss"].mean())})
  return pd.DataFrame(rows).sort_values(["seed0_loss"]).reset_index(drop=True)


__all__ = ["MATCHINGS", "SPARSE_SPECS", "DENSE_SPECS", "LEVEL", "Interval", "t_interval", "sparse_count", "dense_column",
           "interpolate", "dense_family", "differences", "summary", "fixed_compute_schedule"]
