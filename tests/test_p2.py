"""The P2 law (loss after recovery training of a pruned model): form, fit, quality metrics, recovery tokens, CLI."""

import json
import math
import os
import types

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pytest

from conftest import cli
from sparsity.experiments import collect
from sparsity.maxtext import loop
from sparsity.science import scaling_laws as sl

P2 = {"gamma": -0.8, "delta": 0.3, "N_C": 20.0, "alpha": 0.2, "D_C": 300.0, "beta": 0.35, "E": 0.5}


def trajectories(sizes=(1e5, 3e5, 1e6, 3e6, 1e7), rates=(0.15, 0.3, 0.5, 0.75), points=12, noise=3e-4, seed=0):
  rows = []
  for n0 in sizes:
    for rho in rates:
      l0 = 5.0 - 0.2 * np.log10(n0)
      for d in np.geomspace(1e5, 1e8, points):
        rows.append({"run_name": f"n{n0:g}-r{rho}", "N0": n0, "rho": rho, "L0": l0, "D": d})
  df = pd.DataFrame(rows)
  df["loss"] = sl.predict("p2", P2, df) * np.exp(np.random.default_rng(seed).normal(0.0, noise, len(df)))
  return df


def test_p2_form_against_hand_computed_values():
  row = {"N0": [1e6], "rho": [0.5], "L0": [3.0], "D": [1e7]}
  p = P2
  k = 2.0 ** p["gamma"] * 1e-6 ** p["delta"]
  want = 3.0 + k * (p["N_C"] / 1e6 ** p["alpha"] + p["D_C"] / 1e7 ** p["beta"] + p["E"])
  assert sl.predict("p2", P2, row)[0] == pytest.approx(want, rel=1e-12)
  # by hand: 2^-0.8 = 0.574349; 1e6^-0.3 = 0.015849; 20 / 1e6^0.2 = 1.261915; 300 / 1e7^0.35 = 1.063458
  assert want == pytest.approx(3.0 + 0.574349 * 0.015849 * (1.261915 + 1.063458 + 0.5), abs=1e-5)
  # more pruning (larger rho) with gamma < 0: a larger excess over L0
  more = sl.predict("p2", P2, {**row, "rho": [0.75]})[0]
  assert more > want


@pytest.mark.slow  # full grids of fit starts
def test_recovers_known_coefficients_from_noisy_trajectories():
  df = trajectories()
  res = sl.fit("p2", df, groups=df["run_name"])
  for k in ("gamma", "delta", "beta"):
    assert res.params[k] == pytest.approx(P2[k], rel=0.1), k
  assert res.mae < 3e-3 and sl.r_squared(df["loss"], res.predictions) > 0.99
  assert res.loo_mae < 5e-3  # leave one run out: each run predicted from the others
  assert sl.average_slope_difference(df["loss"], res.predictions, df["D"], df["run_name"]) < 5e-3
  # fitted on the four smaller sizes, the largest is predicted within a few thousandths
  small = df[df["N0"] < 1e7]
  big = df[df["N0"] == 1e7]
  ext = sl.fit("p2", small, loo=False)
  assert np.mean(np.abs(ext.predict(big) - big["loss"])) < 0.01


def test_quality_metrics_on_hand_cases():
  assert sl.r_squared([1, 2, 3], [1, 2, 3]) == 1.0 and sl.r_squared([1, 2, 3], [2, 2, 2]) == 0.0
  d = [1.0, math.e, math.e ** 2]
  # actual slopes per ln D: -1, -1; predicted: -1.5, -0.5 -> |diffs| 0.5, 0.5
  assert sl.average_slope_difference([3, 2, 1], [3, 1.5, 1], d, ["a"] * 3) == pytest.approx(0.5)
  assert sl.average_slope_difference([3, 2, 5, 4], [3, 2, 5, 4], [1, 2, 1, 2], ["a", "a", "b", "b"]) == 0.0


def test_recovery_tokens_invert_the_law():
  n0, rho, l0 = 1e6, 0.5, 3.0
  floor = sl.p2_floor(P2, n0, rho, l0)
  target = floor + 0.02
  d = sl.recovery_tokens(P2, n0, rho, l0, target)
  assert sl.predict("p2", P2, {"N0": [n0], "rho": [rho], "L0": [l0], "D": [d]})[0] == pytest.approx(target, rel=1e-12)
  assert sl.recovery_tokens(P2, n0, rho, l0, floor - 1e-3) == math.inf
  with pytest.raises(ValueError, match=r"rho .* must be in \(0, 1\)"):
    sl.recovery_tokens(P2, n0, 1.5, l0, target)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.drop(columns="L0"), "missing column 'L0'"),
    (lambda d: d.drop(columns="D"), "missing column 'D'"),
    (lambda d: d.assign(rho=1.0), r"'rho' \(the fraction of prunable weights removed\) must be in \(0, 1\)"),
    (lambda d: d.assign(rho=0.0), r"must be in \(0, 1\).*unpruned control"),
    (lambda d: d.assign(L0=-1.0), "'L0' must be positive"),
])
def test_bad_trajectory_data_is_a_clear_error(mutate, match):
  with pytest.raises(ValueError, match=match):
    sl.fit("p2", mutate(trajectories(sizes=(1e5, 1e6), rates=(0.3,), points=6)), loo=False,
           starts=sl.LAWS["p2"].grid[:1])


def _recovery_summary(run_dir, name, n0, rho, l0, losses, tokens_per_step=1000):
  loop.write_summary(str(run_dir / name), {
      "run_name": name, "total_params": n0, "final_sparsity": rho, "prunable_params": int(0.8 * n0),
      "final_active_params": int(n0 - 0.8 * n0 * rho), "tokens_per_step": tokens_per_step, "pruning_structure":
      "unstructured", "pruning_scope": "global", "pruning_score": "magnitude",
      "recovery": {"loaded_from": "x", "loss_before_pruning": l0, "loss_after_pruning": l0 + 1.0},
      "eval_history": [{"step": s, "tokens": (s + 1) * tokens_per_step, "loss": l} for s, l in losses]})


@pytest.mark.slow  # full grids of fit starts
def test_collect_trajectories_fit_and_plan_from_the_command_line(tmp_path):
  df = trajectories(sizes=(1e5, 3e5, 1e6, 3e6), rates=(0.25, 0.5, 0.75), points=8)
  runs = tmp_path / "runs"
  for name, run in df.groupby("run_name"):
    steps = (run["D"] / 1000 - 1).round().astype(int)
    _recovery_summary(runs, name, run["N0"].iloc[0], run["rho"].iloc[0], run["L0"].iloc[0],
                      list(zip(steps, run["loss"])))
  loop.write_summary(str(runs / "plain"), {"run_name": "plain", "eval_history": []})  # not a recovery run: skipped
  table = collect.trajectories(str(runs))
  assert table["run_name"].nunique() == 12 and len(table) == len(df)
  assert list(table.columns[:6]) == ["run_name", "N0", "rho", "D", "L0", "loss"]
  code, out, err = cli(["collect", runs, "--trajectories", "--out", tmp_path / "traj.csv"])
  assert code == 0 and "12 runs" in out, err
  code, out, err = cli(["fit", "--law", "p2", "--data", tmp_path / "traj.csv", "--out", tmp_path / "p2.json",
                            "--plot", tmp_path / "p2.png"])
  assert code == 0, err
  assert "R^2" in out and "ASD" in out and "leave one run out" in out
  law = json.loads((tmp_path / "p2.json").read_text())
  assert law["law"] == "p2" and law["quality"]["r2"] > 0.99 and (tmp_path / "p2.png").stat().st_size > 1000
  code, out, err = cli(["recovery", "--law-file", tmp_path / "p2.json", "--n0", "1e6", "--rho", "0.5",
                            "--l0", "3.8", "--margin", "0.2", "--json"])
  assert code == 0, err
  r = json.loads(out)
  assert r["reachable"] and r["recovery_tokens"] > 0 and r["loss_floor"] < 4.0
  code, _, err = cli(["recovery", "--law-file", tmp_path / "p2.json", "--n0", "1e6", "--rho", "0.5",
                          "--l0", "3.8", "--margin", "0.0001"])
  assert code == 0
  code, _, err = cli(["fit", "--law", "p2", "--data", runs / "plain", "--out", tmp_path / "x.json"])
  assert code == 1 and "no prune-and-recover run" in err


def test_p2_quality_of_predictions_and_of_a_fit():
  data = pd.DataFrame({"run_name": ["a"] * 3, "loss": [3.0, 2.0, 1.0], "D": [1.0, math.e, math.e ** 2]})
  q = sl.p2_quality(data, [3.0, 1.5, 1.0])
  assert list(q) == ["r2", "asd", "mae"]
  assert q["r2"] == pytest.approx(1 - 0.25 / 2) and q["asd"] == pytest.approx(0.5)
  assert q["mae"] == pytest.approx(0.5 / 3)
  fit = types.SimpleNamespace(objective=0.125, loo_mae=0.25)
  assert sl.p2_quality(data, [3.0, 1.5, 1.0], fit) == {**q, "huber": 0.125, "leave_one_run_out_mae": 0.25}
  assert list(sl.p2_quality(data, [3.0, 1.5, 1.0], fit)) == ["r2", "huber", "asd", "mae", "leave_one_run_out_mae"]
