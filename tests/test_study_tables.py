"""The study's tables: the dense interpolation of Figure 1's pairs by hand, and the committed results.

`results/study/*.csv` are `collect`'s tables of the committed study (results/study/README.md says how they were
made); `study.write` must turn them, and any part of them, into the report, and the committed `study.md` must be
exactly what it makes of them, with every paired row and verdict as an independent computation finds them.
"""

import os
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sparsity.experiments import paired, study
from sparsity.repo import ROOT


def _run(name, kind, seed, prunable, avg_prunable, loss, target=0.0):
  return {"run_name": name, "kind": kind, "budget": "b1", "seed": seed, "target_sparsity": target,
          "base_emb_dim": prunable, "prunable_params": prunable, "total_params": prunable + 1000,
          "non_prunable_params": 1000, "avg_params": avg_prunable + 1000,
          "loss": loss, "tokens": 1e6}


def test_dense_at_interpolates_between_the_bracketing_widths():
  dense = pd.DataFrame([_run("d1", "dense", 0, 100, 100, 5.0), _run("d2", "dense", 0, 200, 200, 4.0),
                        _run("d3", "dense", 0, 400, 400, 3.0)])
  loss, bracket = study.dense_at(dense, 150)
  assert loss == pytest.approx(4.5) and bracket == {"lower": "d1", "upper": "d2", "weight": 0.5}
  assert study.dense_at(dense, 300)[0] == pytest.approx(3.5)
  assert study.dense_at(dense, 200)[0] == pytest.approx(4.0)
  assert study.dense_at(dense, 50) is None and study.dense_at(dense, 500) is None  # no extrapolation


def test_fig1_pairs_compare_each_seed_with_its_own_dense_family():
  rows = [_run("fig1-d1-0", "dense", 0, 100, 100, 5.0), _run("fig1-d2-0", "dense", 0, 200, 200, 4.0),
          _run("fig1-d1-1", "dense", 1, 100, 100, 5.2), _run("fig1-d2-1", "dense", 1, 200, 200, 4.2),
          _run("fig1-s-0", "sparse", 0, 200, 150, 4.6, 0.5), _run("fig1-s-1", "sparse", 1, 200, 125, 4.8, 0.5)]
  pairs = study.fig1_pairs(pd.DataFrame(rows))
  assert len(pairs) == 1
  row = pairs.iloc[0]
  # seed 0: dense at 150 = 4.5, difference +0.1; seed 1: dense at 125 = 4.95, difference -0.15
  assert row["dense_loss"] == pytest.approx((4.5 + 4.95) / 2)
  assert row["difference"] == pytest.approx((0.1 - 0.15) / 2)
  assert row["sparse_loss"] == pytest.approx(4.7) and row["seeds"] == 2


STUDY = os.path.join(ROOT, "results", "study")
CSVS = ("runs.csv", "stats.csv", "decide.csv")  # the study command's inputs, in its order (results/study/README.md)


@pytest.fixture(scope="module")
def committed():
  """The committed study's runs as `study` reads them (results/study/README.md)."""
  return pd.concat([pd.read_csv(os.path.join(STUDY, name)) for name in CSVS if os.path.exists(os.path.join(STUDY, name))],
                   ignore_index=True)


@pytest.fixture(scope="module")
def trajectories():
  return pd.read_csv(os.path.join(STUDY, "recovery_trajectories.csv"))


@pytest.mark.slow  # fits the five laws with leave-one-out (minutes)
def test_the_committed_study_md_is_what_the_study_command_makes_of_the_committed_csvs(committed, trajectories,
                                                                                      tmp_path):
  study.write(committed, str(tmp_path), trajectories)
  with open(os.path.join(STUDY, "study.md"), encoding="utf-8") as f:
    assert (tmp_path / "study.md").read_text() == f.read()


def _dense_loss(df, run, count, column):
  """Brute force: the same budget and seed's dense runs (fig1/paired/epoch1/width32: one per width) by ``column``,
  np.interp at ``count``; NaN outside their range."""
  dense = df[(df["kind"] == "dense") & (df["budget"] == run["budget"]) & (df["seed"] == run["seed"])
             & df["run_name"].str.match(r"(fig1|paired|epoch1|width32)-")].drop_duplicates("base_emb_dim")
  dense = dense.sort_values(column)
  x, y = dense[column].to_numpy(float), dense["loss"].to_numpy(float)
  return float(np.interp(count, x, y)) if len(x) and x[0] <= count <= x[-1] else float("nan")


def _independent_rows(df, prefix):
  """Every (spec, budget, sparsity, matching) of the sparse runs named ``prefix``: mean difference and t-test p."""
  rows = {}
  for _, run in df[(df["kind"] == "sparse") & df["run_name"].str.match(prefix)].iterrows():
    exempt = 0.0 if "exempt_params" not in run or pd.isna(run["exempt_params"]) else float(run["exempt_params"])
    counts = {"prunable": (run["avg_params"] - run["non_prunable_params"] + exempt, "prunable_params"),
              "total": (run["avg_params"], "total_params")}
    for matching, (count, column) in counts.items():
      key = (run["run_name"].split("-")[0], run["budget"], round(100 * run["target_sparsity"]), matching)
      d = run["loss"] - _dense_loss(df, run, count, column)
      rows.setdefault(key, []).extend([] if np.isnan(d) else [d])
  return {k: (np.mean(v), stats.ttest_1samp(v, 0.0).pvalue if len(v) >= 3 else float("nan")) for k, v in rows.items()}


def _independent_schedule(df, prefix):
  out = {}
  runs = df[df["run_name"].str.startswith(prefix) & df["dense_compute_fraction"].notna()]
  ref = df.drop_duplicates("run_name").set_index("run_name")["loss"]
  for (td, ts), g in runs.groupby(["dense_compute_fraction", "pruning_compute_fraction"]):
    if (td, ts) != (0.25, 0.5):
      d = [r["loss"] - ref[f"paired-b1-sparse-w64-s0.8-seed{int(r['seed'])}"] for _, r in g.iterrows()]
      out[(prefix, td, ts)] = (np.mean(d), stats.ttest_1samp(d, 0.0).pvalue if len(d) >= 3 else float("nan"))
  return out


def _holm_rejects(p, alpha=0.05):
  """Holm's sequential procedure: the keys of ``p`` it rejects at ``alpha``."""
  order = sorted((k for k in p if not np.isnan(p[k])), key=lambda k: p[k])
  out = set()
  for i, k in enumerate(order):
    if p[k] > alpha / (len(order) - i):
      break
    out.add(k)
  return out


def test_every_paired_row_and_verdict_of_the_committed_study_md_holds(committed):
  """Each row of study.md's paired tables (Figure 1 and Figure 4) against a brute-force computation from the CSVs:
  the mean difference as printed, and the verdict Holm's procedure at 0.05 gives over all rows of 3 seeds or more
  together (fewer seeds: no test)."""
  figure1 = {**_independent_rows(committed, r"(paired|epoch1|width32|query)-"), **{
      ("fig1",) + k[1:]: v for k, v in _independent_rows(committed, r"fig1-").items()}}
  schedule = {**_independent_schedule(committed, "fig4-"), **_independent_schedule(committed, "fig4t-")}
  everything = {**figure1, **schedule}
  rejected = _holm_rejects({k: p for k, (_, p) in everything.items()})
  with open(os.path.join(STUDY, "study.md"), encoding="utf-8") as f:
    text = f.read()
  assert f"all {sum(not np.isnan(p) for _, p in everything.values())} intervals of this report" in text
  for key, (mean, p) in figure1.items():
    spec, budget, pct, matching = key
    row = re.search(rf"^\| {spec} \| {budget} \| {pct}% \| {matching} \| (\d+) \|.*$", text, re.M)
    assert row, key
    cells = [c.strip() for c in row.group(0).strip("|").split("|")]
    assert cells[8].startswith(f"{mean:+.4f}"), (key, cells[8])
    verdict = ("sparse worse" if mean > 0 else "sparse better") if key in rejected else (
        "no test" if np.isnan(p) else "not detected")
    assert cells[11] == verdict, (key, cells[11], p)
  for (prefix, td, ts), (mean, p) in schedule.items():
    section = text.split("## Figure 4 at fixed tokens")[1 if prefix == "fig4t-" else 0].split("## Figure 4: sch")[-1]
    row = re.search(rf"^\| {td:.0%} \| {ts:.0%} \|.*$", section, re.M)
    cells = [c.strip() for c in row.group(0).strip("|").split("|")]
    assert cells[8].startswith(f"{mean:+.4f}"), (prefix, td, ts, cells[8])
    verdict = (("worse" if mean > 0 else "better") + " than (25, 50)") if (prefix, td, ts) in rejected else (
        "no test" if np.isnan(p) else "not detected")
    assert cells[11] == verdict, (prefix, td, ts)


@pytest.mark.slow  # fits the five laws with leave-one-out (minutes)
def test_the_committed_study_makes_every_section(committed, tmp_path):
  files = study.write(committed, str(tmp_path))
  text = (tmp_path / "study.md").read_text()
  for section in ("## The regime", "## Figure 1", "## The dense family", "## Figure 3", "## Figure 4", "## Ablations"):
    assert section in text
  # the paired statistics: every sparse run of paired.yml bracketed by its own seed's dense runs, both matchings
  table = paired.summary(paired.differences(committed))
  assert set(table["matching"]) == {"prunable", "total"} and not table["unbracketed"].map(len).any()
  assert (table[table["spec"] == "paired"]["seeds"] >= 3).all()
  assert set(files) >= {"fig1_pairs", "laws", "study"}
  pairs = study.fig1_pairs(committed)
  assert set(pairs["budget"]) == {"b1", "b2"} and (pairs["seeds"] == 2).all()
  assert pairs["difference"].notna().all()  # every sparse run has its dense bracket, at both budgets
  # the laws' table: the paper's law on all parameters and on the prunable ones, each fitted on the 44 fig1 runs
  assert re.search(r"^\| average active parameters \(the paper's law\) \| 44 \|", text, re.M)
  assert re.search(r"^\| average active prunable parameters .* \| 44 \|", text, re.M)


def test_any_part_of_the_study_makes_its_own_sections(committed, tmp_path, monkeypatch):
  monkeypatch.setattr(study, "law_fits", lambda df: ([], ["laws: not fitted in this test"]))
  fig1_only = committed[committed["run_name"].str.startswith("fig1-")].dropna(axis=1, how="all")
  assert "ablation" not in fig1_only  # the ablation spec's labels are absent, as when only fig1.yml was run
  assert "dense_compute_fraction" not in fig1_only  # nor fig4's
  study.write(fig1_only, str(tmp_path))
  text = (tmp_path / "study.md").read_text()
  assert "## Figure 1" in text and "## Ablations" not in text and "## Figure 4" not in text


def _traj(name, n0, rho, l0, after, losses, structure="unstructured"):
  return [{"run_name": name, "N0": n0, "rho": rho, "L0": l0, "loss_after_pruning": after, "structure": structure,
           "D": 100 * (i + 1), "loss": loss} for i, loss in enumerate(losses)]


def test_recovery_runs_are_read_against_their_unpruned_control():
  traj = pd.DataFrame(_traj("w32-r0.5", 1000, 0.5, 4.0, 6.0, [4.6, 4.2]) + _traj("w64-r0.5", 2000, 0.5, 3.5, 5.0,
                                                                                  [4.0, 3.7])
                      + _traj("w32-2of4", 1000, 0.5, 4.0, 7.0, [4.9, 4.4], "2:4"))
  control = pd.DataFrame(_traj("w32-r0", 1000, 0.0, 4.0, 4.0, [3.95, 3.9]))
  rec = study.recovery_table(traj, control).set_index("run_name")
  # the control of N0=1000 ended at 3.9 after the same 200 tokens: its gain -0.1, the pruned runs' gaps to it
  assert rec.loc["w32-r0.5", "control"] == 3.9 and rec.loc["w32-r0.5", "gap"] == pytest.approx(0.3)
  assert rec.loc["w32-2of4", "gap"] == pytest.approx(0.5) and rec.loc["w32-2of4", "gain"] == pytest.approx(-0.1)
  assert pd.isna(rec.loc["w64-r0.5", "control"]) and pd.isna(rec.loc["w64-r0.5", "gap"])  # no control of N0=2000
  assert "control" not in study.recovery_table(traj)
  short = control[control["D"] == 100]
  with pytest.raises(ValueError, match="different tokens"):
    study.recovery_table(traj, short)
