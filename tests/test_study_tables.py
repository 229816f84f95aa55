"""The study's tables (fast): the dense interpolation of Figure 1's pairs by hand, and the committed results.

`results/study/runs.csv` is `collect`'s table of the committed study (results/study/README.md says how it was
made); `study.write` must turn it, and any part of it, into the report.
"""

import os

import pandas as pd
import pytest

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


@pytest.fixture(scope="module")
def committed():
  """The committed study: runs.csv (fig1, ablations, pilot) and stats.csv (paired, epoch1, fig4), as `study` reads
  them (results/study/README.md)."""
  return pd.concat([pd.read_csv(os.path.join(ROOT, "results", "study", name)) for name in ("runs.csv", "stats.csv")],
                   ignore_index=True)


@pytest.mark.slow  # fits the four laws with leave-one-out (minutes)
def test_the_committed_study_makes_every_section(committed, tmp_path):
  files = study.write(committed, str(tmp_path))
  text = (tmp_path / "study.md").read_text()
  for section in ("## Figure 1", "## Figure 3", "## Figure 4", "## Ablations"):
    assert section in text
  # the paired statistics: every sparse run of paired.yml bracketed by its own seed's dense runs, both matchings
  table = paired.summary(paired.differences(committed))
  assert set(table["matching"]) == {"prunable", "total"} and not table["unbracketed"].map(len).any()
  assert (table[table["spec"] == "paired"]["seeds"] >= 3).all()
  assert "| paired | b1 | 80% | total |" in text
  assert set(files) >= {"fig1_pairs", "laws", "study"}
  pairs = study.fig1_pairs(committed)
  assert set(pairs["budget"]) == {"b1", "b2"} and (pairs["seeds"] == 2).all()
  assert pairs["difference"].notna().all()  # every sparse run has its dense bracket, at both budgets
  assert pairs["difference"].to_numpy() == pytest.approx((pairs["sparse_loss"] - pairs["dense_loss"]).to_numpy())


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
