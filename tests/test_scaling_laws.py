"""Tests for sparsity.science.scaling_laws, sparsity.experiments.results and the fit/predict CLI."""

import json
import math
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny optimisations: BLAS threads only spin (set before numpy)

import numpy as np
import pandas as pd
import pytest

from conftest import cli
from sparsity.experiments import results as runs
from sparsity.maxtext import layout
from sparsity.science import scaling_laws as sl
CHIN = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}
FRANTAR = {"a_S": 60.0, "b_S": 1.0, "c_S": 20.0, "b_N": 0.3, "a_D": 3e7, "b_D": 0.3, "c": 1.6}


def grid_runs(ns=(3e7, 1e8, 3e8, 1e9), ds=(3e9, 1e10, 3e10, 1e11), ss=(0.0, 0.5, 0.8)) -> pd.DataFrame:
  rows = []
  for n in ns:
    for d in ds:
      for s in ss:
        rows.append({"params": n, "avg_params": n * (1 - 0.45 * s), "nonzero_params": n * (1 - 0.9 * s),
                     "tokens": d, "sparsity": s})
  return pd.DataFrame(rows)


def with_loss(df, law, params, noise, seed=0):
  df = df.copy()
  df["loss"] = sl.predict(law, params, df) * np.exp(np.random.default_rng(seed).normal(0.0, noise, len(df)))
  return df


@pytest.fixture(scope="module")
def avg_fit():
  df = with_loss(grid_runs(), "avg_param", CHIN, 3e-4)
  return df, sl.fit("avg_param", df, loo=False)


def test_huber_value_and_derivative():
  v, g = sl.huber(np.array([-0.01, -5e-4, 0.0, 5e-4, 0.01]), 1e-3)
  np.testing.assert_allclose(v, [1e-3 * (0.01 - 5e-4), 1.25e-7, 0.0, 1.25e-7, 1e-3 * (0.01 - 5e-4)])
  np.testing.assert_allclose(g, [-1e-3, -5e-4, 0.0, 5e-4, 1e-3])


def test_grids_have_at_least_100_starts():
  for law in sl.LAWS.values():
    assert law.grid.shape[0] >= 100 and law.grid.shape[1] == law.n_params


def test_recovers_avg_param_law(avg_fit):
  df, res = avg_fit
  for k, v in CHIN.items():
    assert res.params[k] == pytest.approx(v, rel=0.05), k
  for k in ("E", "alpha", "beta"):
    assert res.params[k] == pytest.approx(CHIN[k], rel=0.02), k
  assert res.mae < 3e-3
  assert res.n_starts == sl.LAWS["avg_param"].grid.shape[0]
  np.testing.assert_allclose(res.residuals, np.log(res.predictions) - np.log(df["loss"]))


def test_recovers_chinchilla_law_and_uses_params_column():
  df = with_loss(grid_runs(ss=(0.0, 0.6)), "chinchilla", CHIN, 3e-4, seed=1)
  df["avg_params"] = 1.0  # must be ignored by the chinchilla law
  res = sl.fit("chinchilla", df, loo=False)
  for k, v in CHIN.items():
    assert res.params[k] == pytest.approx(v, rel=0.05), k


def test_law_forms_against_hand_computed_values():
  row = {"params": [2e8], "avg_params": [1e8], "nonzero_params": [5e7], "tokens": [4e9], "sparsity": [0.6]}
  chin = 1.7 + 400.0 / 2e8 ** 0.34 + 410.0 / 4e9 ** 0.28
  assert sl.predict("chinchilla", CHIN, row)[0] == pytest.approx(chin, rel=1e-12)
  assert sl.predict("avg_param", CHIN, row)[0] == pytest.approx(1.7 + 400.0 / 1e8 ** 0.34 + 410.0 / 4e9 ** 0.28,
                                                                rel=1e-12)
  f = FRANTAR
  frantar = (f["a_S"] * 0.4 ** f["b_S"] + f["c_S"]) * (1 / 5e7) ** f["b_N"] + (f["a_D"] / 4e9) ** f["b_D"] + f["c"]
  assert sl.predict("frantar", FRANTAR, row)[0] == pytest.approx(frantar, rel=1e-12)
  # by hand: 60 * 0.4 + 20 = 44; 44 * (5e7)^-0.3 = 0.215656; (3e7 / 4e9)^0.3 = 0.230419; + 1.6
  assert frantar == pytest.approx(0.215656 + 0.230419 + 1.6, abs=1e-5)
  assert math.isclose(44 * 5e7 ** -0.3, 0.215656, rel_tol=1e-5)


@pytest.mark.slow  # full grids of fit starts
def test_recovers_frantar_law_loosely():
  df = with_loss(grid_runs(ss=(0.0, 0.4, 0.8)), "frantar", FRANTAR, 3e-4, seed=2)
  res = sl.fit("frantar", df, loo=False)
  for k in ("b_N", "b_D", "c", "b_S"):
    assert res.params[k] == pytest.approx(FRANTAR[k], rel=0.15), k
  assert res.mae < 5e-3
  assert res.describe().startswith("frantar: L = (a_S")


def test_units_of_n_and_d_do_not_matter(avg_fit):
  df, res = avg_fit
  scaled = df.copy()
  scaled["avg_params"] *= 1e3
  scaled["tokens"] *= 1e3
  res2 = sl.fit("avg_param", scaled, loo=False)
  for k in ("alpha", "beta", "E"):
    assert res2.params[k] == pytest.approx(res.params[k], rel=1e-6), k
  assert res2.params["A"] == pytest.approx(res.params["A"] * 1e3 ** res.params["alpha"], rel=1e-3)
  np.testing.assert_allclose(res2.predictions, res.predictions, rtol=1e-6)
  np.testing.assert_allclose(res2.predict(scaled), res.predict(df), rtol=1e-6)


def test_fit_is_deterministic():
  df = with_loss(grid_runs(ns=(1e8, 3e8, 1e9), ds=(1e10, 3e10), ss=(0.0,)), "avg_param", CHIN, 1e-3)
  starts = sl.LAWS["avg_param"].grid[::8]
  a = sl.fit("avg_param", df, loo=False, starts=starts)
  b = sl.fit("avg_param", df, loo=False, starts=starts)
  assert a.params == b.params and a.objective == b.objective


@pytest.mark.slow  # full grids of fit starts
def test_leave_one_out_small_set():
  df = with_loss(grid_runs(ns=(1e8, 3e8, 1e9), ds=(1e10, 1e11), ss=(0.0, 0.5)), "avg_param", CHIN, 0.0)
  df = df.iloc[:9].reset_index(drop=True)
  res = sl.fit("avg_param", df)
  assert np.all(np.isfinite(res.loo_predictions))
  assert res.loo_mae == pytest.approx(np.mean(np.abs(res.loo_predictions - df["loss"])))
  assert res.loo_mae < 0.02  # noise-free data: the held-out point is predicted well
  # the warm-started refit agrees with a refit from the whole grid
  full = sl.fit("avg_param", df.drop(index=4), loo=False)
  assert res.loo_predictions[4] == pytest.approx(float(full.predict(df.iloc[[4]])[0]), rel=2e-3)
  # a corrupted point is predicted from the others, so its LOO error is large
  bad = df.copy()
  bad.loc[4, "loss"] *= 1.3
  res_bad = sl.fit("avg_param", bad, loo_starts=sl.LAWS["avg_param"].grid[::12])
  assert abs(res_bad.loo_predictions[4] - bad.loc[4, "loss"]) > 0.2 * bad.loc[4, "loss"]


def test_loo_is_nan_when_too_few_points_to_refit():
  df = with_loss(grid_runs(ns=(1e8, 3e8, 1e9), ds=(1e10, 1e11), ss=(0.0,)), "avg_param", CHIN, 0.0).iloc[:5]
  res = sl.fit("avg_param", df, starts=sl.LAWS["avg_param"].grid[::16])
  assert res.n_points == 5 and np.isnan(res.loo_mae) and np.all(np.isnan(res.loo_predictions))
  assert res.to_json()["loo_mae"] is None


def test_json_round_trip(avg_fit):
  df, res = avg_fit
  back = sl.FitResult.from_json(json.loads(json.dumps(res.to_json())))
  assert back.params == res.params and back.law == "avg_param"
  np.testing.assert_allclose(back.predict(df), res.predict(df))
  np.testing.assert_allclose(back.residuals, res.residuals)


@pytest.mark.parametrize(
    "mutate, law, match",
    [
        (lambda d: d.drop(columns="avg_params"), "avg_param", "missing column 'avg_params'"),
        (lambda d: d.drop(columns="tokens"), "chinchilla", "missing column 'tokens'"),
        (lambda d: d.drop(columns="sparsity"), "frantar", "missing column 'sparsity'"),
        (lambda d: d.drop(columns="loss"), "avg_param", "missing column 'loss'"),
        (lambda d: d.assign(loss=-d["loss"]), "avg_param", "'loss' must be positive"),
        (lambda d: d.assign(loss=np.where(d.index == 0, np.nan, d["loss"])), "avg_param", "'loss' has non-finite"),
        (lambda d: d.assign(params=-d["params"]), "chinchilla", "'params' must be positive"),
        (lambda d: d.assign(tokens=np.where(d.index == 1, np.inf, d["tokens"])), "avg_param", "'tokens' has non-finite"),
        (lambda d: d.assign(sparsity=1.0), "frantar", "'sparsity' must be in"),
        (lambda d: d.iloc[:4], "avg_param", "5 free parameters but only 4"),
        (lambda d: d.iloc[:6], "frantar", "7 free parameters but only 6"),
    ],
)
def test_bad_input_errors(mutate, law, match):
  df = mutate(with_loss(grid_runs(ns=(1e8, 1e9), ds=(1e10, 1e11)), "avg_param", CHIN, 0.0))
  with pytest.raises(ValueError, match=match):
    sl.fit(law, df, loo=False, starts=sl.LAWS[law].grid[:1])


def test_unknown_law():
  with pytest.raises(ValueError, match="unknown law 'kaplan'"):
    sl.get_law("kaplan")


def _cli(*args):
  code, out, err = cli(args)
  return type("R", (), {"returncode": code, "stdout": out, "stderr": err})


@pytest.mark.slow  # full grids of fit starts
def test_cli_fit_predict_round_trip(tmp_path):
  df = with_loss(grid_runs(ns=(1e8, 3e8, 1e9), ds=(1e10, 1e11), ss=(0.0, 0.5)), "avg_param", CHIN, 0.0)
  data, law, plot = tmp_path / "runs.csv", tmp_path / "law.json", tmp_path / "fit.png"
  df.iloc[:10].to_csv(data, index=False)
  r = _cli("fit", "--law", "avg_param", "--data", str(data), "--out", str(law), "--plot", str(plot),
           "--plot-params", str(tmp_path / "params.png"))
  assert r.returncode == 0, r.stderr
  saved = json.loads(law.read_text())
  assert saved["law"] == "avg_param" and set(saved["params"]) == {"E", "A", "alpha", "B", "beta"}
  assert len(saved["residuals"]) == 10 and saved["loo_mae"] is not None and saved["mae"] < 1e-3
  assert plot.stat().st_size > 1000 and (tmp_path / "params.png").stat().st_size > 1000
  points = df.iloc[10:].drop(columns="loss")
  points.to_csv(tmp_path / "points.csv", index=False)
  r = _cli("predict", "--law-file", str(law), "--data", str(tmp_path / "points.csv"))
  assert r.returncode == 0, r.stderr
  from io import StringIO

  out = pd.read_csv(StringIO(r.stdout))
  np.testing.assert_allclose(out["predicted_loss"], df["loss"].iloc[10:], rtol=2e-3)
  r = _cli("fit", "--law", "frantar", "--data", str(tmp_path / "points.csv"), "--out", str(tmp_path / "l2.json"))
  assert r.returncode == 1 and "missing column 'loss'" in r.stderr  # bad data: 1
  r = _cli("fit", "--law", "avg_param", "--data", str(data), "--out", str(law))
  assert r.returncode == 2 and "exists" in r.stderr  # an existing --out without --force is bad usage: 2
  r = _cli("fit", "--law", "avg_param", "--data", str(data), "--out", "-", "--no-loo")
  assert r.returncode == 0 and json.loads(r.stdout)["law"] == "avg_param"  # '-': the law as JSON on stdout
  r = _cli("predict", "--law-file", str(law), "--data", str(tmp_path / "points.csv"), "--json")
  assert r.returncode == 0 and len(json.loads(r.stdout)) == len(points)


def _write_summary(d, name, n, d_tok, s, loss, key="final_eval_loss"):
  run = d / "runs" / name
  run.mkdir(parents=True)
  summary = {"run_name": name, key: loss, "tokens": d_tok, "total_params": n, "avg_active_params": n * (1 - 0.45 * s),
             "final_active_params": n * (1 - 0.9 * s), "final_sparsity": s, "other": [1, 2]}
  (run / layout.SUMMARY_FILE).write_text(json.dumps(summary))


@pytest.mark.slow  # full grids of fit starts
def test_load_runs_and_fit_from_directory(tmp_path):
  df = with_loss(grid_runs(ns=(1e8, 3e8, 1e9), ds=(1e10, 1e11), ss=(0.0, 0.5)), "avg_param", CHIN, 0.0)
  for i, r in df.iterrows():
    key = "final_train_loss" if i == 3 else "final_eval_loss"  # fallback when there is no eval loss
    _write_summary(tmp_path, f"run{i:02d}", r["params"], r["tokens"], r["sparsity"], r["loss"], key)
  (tmp_path / "runs" / "unrelated.json").write_text("{}")
  loaded = runs.load_runs(str(tmp_path))
  assert len(loaded) == len(df) and list(loaded["run_name"]) == [f"run{i:02d}" for i in range(len(df))]
  np.testing.assert_allclose(loaded["loss"], df["loss"])
  np.testing.assert_allclose(loaded["avg_params"], df["avg_params"])
  res = sl.fit("avg_param", loaded, loo=False)
  assert res.mae < 1e-3
  r = _cli("fit", "--law", "frantar", "--data", str(tmp_path), "--out", str(tmp_path / "law.json"), "--no-loo")
  assert r.returncode == 0, r.stderr
  assert json.loads((tmp_path / "law.json").read_text())["run_names"][0] == "run00"


def test_an_eval_loss_from_before_the_end_is_refused(tmp_path):
  _write_summary(tmp_path, "early", 1e8, 1e10, 0.0, 8.13)
  path = tmp_path / "runs" / "early" / layout.SUMMARY_FILE
  summary = json.loads(path.read_text())
  summary.update(steps=1200, steps_trained=1200, final_eval_step=0, final_train_loss=5.58)
  path.write_text(json.dumps(summary))
  with pytest.raises(ValueError, match=r"final_eval_loss comes from step 0, before the end of training \(last step 1199\)"):
    runs.load_runs(str(tmp_path))
  summary["final_eval_step"] = 1199
  path.write_text(json.dumps(summary))
  assert runs.load_runs(str(tmp_path))["loss"].tolist() == [8.13]
  summary.update(steps_trained=120, final_eval_step=119)  # stopped early (data ran out): its last step counts
  path.write_text(json.dumps(summary))
  assert runs.load_runs(str(tmp_path))["loss"].tolist() == [8.13]


def test_load_runs_errors(tmp_path):
  with pytest.raises(ValueError, match=f"no {layout.SUMMARY_FILE}"):
    runs.load_runs(str(tmp_path))
  with pytest.raises(FileNotFoundError):
    runs.load_runs(str(tmp_path / "nope.csv"))
