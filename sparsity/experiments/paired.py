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

Multiple comparisons: every interval is a two-sided one-sample t test of "no difference" (``p``, from the same t
statistic as the interval), and the verdicts come from Holm's step-down correction of those p-values over the whole
family of intervals a report shows (``holm``, ``corrected``): "not detected" unless the Holm-adjusted p is below
``1 - LEVEL``. ``summary`` corrects over its own rows; a report of several tables corrects over all of them.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import stats

MATCHINGS = ("prunable", "total")  # the counts a sparse run is matched on (``sparse_count``, ``dense_column``)
# the specs whose sparse runs are paired with their seed's dense models
SPARSE_SPECS = ("paired-", "epoch1-", "width32-", "query-")
# the specs whose dense runs form the families (the same dense run in fig1.yml and paired.yml; ablations excluded)
DENSE_SPECS = ("fig1-", "paired-", "epoch1-", "width32-")
# Figure 4's reference: the paper's (25, 50) split at b1's 600 steps, the trainer's default split (paired.yml's run;
# fig4.yml's (25, 50) run of seed 0 is the same run, bit for bit)
SCHEDULE_REFERENCE = "paired-b1-sparse-w64-s0.8-seed{seed}"
LEVEL = 0.95


class Interval(NamedTuple):
  """Mean of ``n`` values with its two-sided t interval at ``level`` and the two-sided p-value of mean zero from the
  same t statistic (NaN bounds and p when n < 2)."""

  mean: float
  low: float
  high: float
  sd: float
  n: int
  p: float = float("nan")


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
  """The mean, its t interval (``scipy.stats.t``, n - 1 degrees of freedom) and p-value of mean zero of ``values``."""
  v = np.asarray(list(values), float)
  n = len(v)
  if n == 0:
    raise ValueError("no values")
  mean = float(v.mean())
  if n < 2:
    return Interval(mean, float("nan"), float("nan"), float("nan"), n)
  sd = float(v.std(ddof=1))
  se = sd / math.sqrt(n)
  half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
  p = float(2 * stats.t.sf(abs(mean) / se, n - 1)) if se > 0 else (1.0 if mean == 0 else 0.0)
  return Interval(mean, mean - half, mean + half, sd, n, p)


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count in the family): the i-th smallest of
  m p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``."""
  p = np.asarray(list(pvalues), float)
  out = np.full(p.shape, np.nan)
  ok = np.flatnonzero(~np.isnan(p))
  order = ok[np.argsort(p[ok], kind="stable")]
  m = len(order)
  out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
  return out


def verdict(mean: float, p_adjusted: float, worse: str = "sparse worse", better: str = "sparse better",
            level: float = LEVEL) -> str:
  """``worse`` / ``better`` (by the sign of ``mean``) when the corrected p-value is below ``1 - level``, else
  'not detected'; 'no test' when there is no p-value (too few seeds)."""
  if math.isnan(p_adjusted):
    return "no test"
  if p_adjusted >= 1 - level:
    return "not detected"
  return worse if mean > 0 else better


def corrected(tables: Sequence[pd.DataFrame], level: float = LEVEL) -> list[pd.DataFrame]:
  """``tables`` (each with columns ``difference`` and ``p``, and optionally ``worse``/``better`` labels) with
  ``p_holm`` (Holm over the rows of all tables together: one family) and ``verdict`` from it."""
  sizes = [len(t) for t in tables]
  adjusted = holm(np.concatenate([t["p"].to_numpy(float) for t in tables])) if sum(sizes) else np.array([])
  out, start = [], 0
  for t, k in zip(tables, sizes):
    t = t.copy()
    t["p_holm"] = adjusted[start:start + k]
    worse = t["worse"] if "worse" in t else ["sparse worse"] * k
    better = t["better"] if "better" in t else ["sparse better"] * k
    t["verdict"] = [verdict(m, q, w, b, level) for m, q, w, b in zip(t["difference"], t["p_holm"], worse, better)]
    out.append(t)
    start += k
  return out


def avg_prunable(runs: pd.DataFrame) -> pd.Series:
  """Average active linear-layer weights of each run: ``avg_params`` minus the never-pruned parameters, plus the
  linear weights a run kept outside the ranking (``exempt_params``, e.g. ``configs/study/query.yml``'s dense
  queries: never pruned, yet linear-layer weights, as the paper's "# Prunable" counts them)."""
  exempt = runs["exempt_params"].fillna(0.0) if "exempt_params" in runs else 0.0
  return runs["avg_params"].astype(float) - runs["non_prunable_params"].astype(float) + exempt


def sparse_count(run: pd.Series | dict[str, Any], matching: str) -> float:
  """The sparse run's average active count under ``matching``."""
  if matching == "prunable":
    return float(avg_prunable(pd.DataFrame([dict(run)])).iloc[0])
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
  """Per (spec, budget, target, matching): the paired mean difference over seeds with its t interval and p-value, the
  Holm-adjusted p over this table's rows (``p_holm``) and the verdict from it, and the seeds whose dense runs did
  not bracket the sparse run (left out, listed)."""
  rows = []
  keys = ["spec", "budget", "target_sparsity", "matching"]
  for key, g in diffs.groupby(keys, sort=False):
    ok = g[g["difference"].notna()]
    iv = t_interval(ok["difference"], level) if len(ok) else Interval(*(float("nan"),) * 4, 0)
    rows.append({**dict(zip(keys, key)), "seeds": iv.n, "unbracketed": sorted(g[g["difference"].isna()]["seed"]),
                 "count": float(g["count"].mean()), "tokens": float(g["tokens"].iloc[0]),
                 "sparse_loss": float(ok["sparse_loss"].mean()) if len(ok) else float("nan"),
                 "dense_loss": float(ok["dense_loss"].mean()) if len(ok) else float("nan"),
                 "difference": iv.mean, "low": iv.low, "high": iv.high, "sd": iv.sd, "p": iv.p})
  return corrected([pd.DataFrame(rows)], level)[0] if rows else pd.DataFrame(rows)


def schedule_table(df: pd.DataFrame, prefix: str = "fig4-", level: float = LEVEL) -> pd.DataFrame:
  """Figure 4: per split of compute of the runs named ``prefix...`` (``fig4.yml``: fixed effective compute,
  ``fig4tokens.yml``: fixed tokens), the steps, the measured compute fractions, the effective FLOPs relative to the
  paper's split's run (``SCHEDULE_REFERENCE``), the mean loss, and the paired difference from that run of the same
  seed (mean, t interval, p); sorted by mean loss. The reference split's own row (when ``prefix`` trains it) is the
  reference, with no difference."""
  if "dense_compute_fraction" not in df:
    return pd.DataFrame()
  runs = df[df["run_name"].astype(str).str.startswith(prefix) & df["dense_compute_fraction"].notna()]
  if runs.empty:
    return pd.DataFrame()
  by_name = df.drop_duplicates("run_name").set_index("run_name")
  ref_rows = [SCHEDULE_REFERENCE.format(seed=int(s)) for s in sorted(runs["seed"].unique())]
  ref_flops = float(by_name.loc[[r for r in ref_rows if r in by_name.index], "effective_flops"].mean())
  rows = []
  for (td, ts), g in runs.groupby(["dense_compute_fraction", "pruning_compute_fraction"]):
    reference = (float(td), float(ts)) == (0.25, 0.5)
    diffs = [float(r["loss"]) - float(by_name.loc[name, "loss"]) for _, r in g.iterrows()
             if (name := SCHEDULE_REFERENCE.format(seed=int(r["seed"]))) in by_name.index]
    iv = t_interval(diffs, level) if diffs and not reference else Interval(*(float("nan"),) * 4, 0)
    rows.append({"dense": float(td), "pruning": float(ts), "steps": int(g["steps"].iloc[0]), "seeds": len(g),
                 "measured_dense": float(g["dense_fraction"].iloc[0]),
                 "measured_pruning": float(g["pruning_fraction"].iloc[0]),
                 "flops_ratio": float(g["effective_flops"].mean()) / ref_flops, "loss": float(g["loss"].mean()),
                 "paired": iv.n, "difference": iv.mean, "low": iv.low, "high": iv.high, "p": iv.p,
                 "worse": "worse than (25, 50)", "better": "better than (25, 50)"})
  return pd.DataFrame(rows).sort_values(["loss"]).reset_index(drop=True)


__all__ = ["MATCHINGS", "SPARSE_SPECS", "DENSE_SPECS", "SCHEDULE_REFERENCE", "LEVEL", "Interval", "t_interval", "holm",
           "verdict", "corrected", "avg_prunable", "sparse_count", "dense_column", "interpolate", "dense_family",
           "differences", "summary", "schedule_table"]
