"""collect and report on synthetic runs (summaries written by sparsity.core.accounting, losses from a known law)."""

import json
import os
import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_cli
from sparsity.core import accounting, compute, schedules
from sparsity.experiments import collect, report, sweep
from sparsity.maxtext import layout, loop
from sparsity.science import compute_fractions, planning

TRUTH = {"E": 1.8, "A": 400.0, "alpha": 0.34, "B": 900.0, "beta": 0.28}
SPLITS = [(0.25, 0.5), (0.0, 1.0), (0.5, 0.25)]
TOKENS_PER_STEP = 65536


def _law(n_avg, tokens):
  return TRUTH["E"] + TRUTH["A"] / n_avg ** TRUTH["alpha"] + TRUTH["B"] / tokens ** TRUTH["beta"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
  """18 runs: widths 256/384/512 of the 58M shape x sparsity 0/0.5/0.8 x 1000/2000 steps."""
  out = tmp_path_factory.mktemp("runs")
  i = 0
  for width in (256, 384, 512):
    shape = planning.scale_shape(planning.PAPER_MODELS["58M"], width)
    counts = planning.param_counts(shape)
    for s in (0.0, 0.5, 0.8):
      for steps in (1000, 2000):
        td, ts = SPLITS[i % len(SPLITS)] if s else (0.25, 0.5)
        i += 1
        start, end = compute_fractions.step_fractions(s, td, ts)
        sched = schedules.make_schedule(steps, s, "geometric", start, end, 100)
        acc = accounting.from_schedule(sched, counts["prunable"], counts["non_prunable"], TOKENS_PER_STEP)
        name = f"w{width}-s{s}-n{steps}"
        loss = _law(acc.cumulative_active(steps - 1) / steps, steps * TOKENS_PER_STEP)
        # what the trainer writes at the end of a run (sparsity.maxtext.loop.finish)
        loop.write_summary(str(out / name), {"run_name": name, "target_sparsity": s, "sparsity_schedule": "geometric",
                                             **acc.summary(), "final_train_loss": loss + 0.02,
                                             "final_eval_loss": loss, "final_eval_step": steps - 1})
  return out


def test_collect_rows_match_summaries(runs_dir):
  df = collect.collect(str(runs_dir))
  assert len(df) == 18 and list(df["run_name"]) == sorted(df["run_name"])
  for _, row in df.iterrows():
    with open(layout.summary_path(runs_dir / row["run_name"])) as f:
      s = json.load(f)
    assert row["loss"] == s["final_eval_loss"] and row["final_train_loss"] == s["final_train_loss"]
    assert (row["tokens"], row["params"], row["nonzero_params"]) == (s["tokens"], s["total_params"],
                                                                      s["final_active_params"])
    assert json.loads(row["prune_steps"]) == s["prune_steps"]
    if s["target_sparsity"] > 0:  # measured compute split (no manifest here)
      assert (row["dense_fraction"], row["pruning_fraction"]) in [pytest.approx(x, abs=0.011) for x in SPLITS]
    else:
      assert np.isnan(row["dense_fraction"])
    assert np.isnan(row["prune_start_fraction"])  # nothing records it: no summary key, no manifest


def test_collect_joins_the_manifest(runs_dir, tmp_path):
  spec = sweep.parse_spec({"base": os.path.join(ROOT, "configs", "sparse_base.yml"), "run_name": "w512-s0.5-n1000",
                           "labels": ["budget", "dense_fraction"], "fixed": {"budget": "tiny", "dense_fraction": 0.3,
                                                                             "pruning_interval": 7}})
  manifest = sweep.write_manifest(str(tmp_path), sweep.manifest(spec, sweep.expand(spec)))
  df = collect.collect(str(runs_dir), [manifest]).set_index("run_name")
  row = df.loc["w512-s0.5-n1000"]
  assert (row["budget"], row["dense_fraction"], row["pruning_interval"]) == ("tiny", 0.3, 7)
  # From the run's config file: sparse_base.yml sets no step fractions, so the trainer derives them (400 steps,
  # target auto = 0.8, geometric, interval 7 from the spec).
  want = compute.derived_step_fractions(400, 0.8, "geometric", 7)
  assert (row["prune_start_fraction"], row["prune_end_fraction"]) == want
  assert pd.isna(df.loc["w512-s0.8-n1000", "budget"])


def test_report_draws_every_figure(runs_dir, tmp_path):
  df = collect.collect(str(runs_dir))
  (tmp_path / "truth.json").write_text(json.dumps({"law": "avg_param", "params": TRUTH}))
  rep = report.write_report(df, str(tmp_path), str(tmp_path / "truth.json"))
  assert set(rep.figures) == set(report.FIGURES) and not rep.skipped
  for key, path in rep.figures.items():
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 100 and float(np.std(img[..., :3])) > 0.01, key
    assert sorted(rep.shown[key]) == sorted(df["run_name"]) or key == "schedule_sweep"
  assert sorted(rep.shown["schedule_sweep"]) == sorted(df.loc[df["target_sparsity"] > 0, "run_name"])
  table = (tmp_path / "report.md").read_text()
  lines = table.splitlines()
  header = [c.strip() for c in lines[2].strip("|").split("|")]
  rows = [dict(zip(header, [c.strip() for c in l.strip("|").split("|")])) for l in lines if l.startswith("| w")]
  assert len(rows) == 18 and header[-1] == "predicted loss"
  by_name = df.set_index("run_name")
  for r in rows:
    assert float(r["predicted loss"]) == pytest.approx(by_name.loc[r["run"], "loss"], abs=1e-4)  # the true law
    assert int(r["N_avg"].replace(",", "")) == round(by_name.loc[r["run"], "avg_params"])
  assert sorted(r["run"] for r in rows) == sorted(df["run_name"])


def test_report_uses_a_given_law_file_and_skips_what_it_cannot_draw(runs_dir, tmp_path):
  df = collect.collect(str(runs_dir))
  law = {"law": "avg_param", "params": {"E": 2.0, "A": 400.0, "alpha": 0.34, "B": 900.0, "beta": 0.28}}
  (tmp_path / "law.json").write_text(json.dumps(law))
  small = df.head(3).drop(columns=["dense_fraction", "pruning_fraction"])
  rep = report.write_report(small, str(tmp_path / "out"), str(tmp_path / "law.json"))
  assert "schedule_sweep" in rep.skipped and "predicted_vs_actual" in rep.figures
  assert rep.law.params["E"] == 2.0  # the given law, not a fit (3 runs could not be fitted)
  rep2 = report.write_report(small, str(tmp_path / "out2"))
  assert "needs more than 5" in rep2.skipped["predicted_vs_actual"]
  assert "schedule_sweep: not drawn" in (tmp_path / "out2" / "report.md").read_text()


def test_active_curves_reproduce_n_avg_and_pair_with_dense_runs(runs_dir):
  df = collect.collect(str(runs_dir))
  partners = report.dense_partners(df)
  for _, row in df.iterrows():
    edges, active = report.active_curve(row)
    assert edges[0] == 0 and edges[-1] == row["tokens"]
    mean = float(np.sum(np.diff(edges) * active) / row["tokens"])
    assert mean == pytest.approx(row["avg_params"], rel=1e-12)
    if row["target_sparsity"] > 0:
      p = df.set_index("run_name").loc[partners[row["run_name"]]]
      assert p["target_sparsity"] == 0 and p["tokens"] == row["tokens"]
      dense_same_tokens = df[(df["target_sparsity"] == 0) & (df["tokens"] == row["tokens"])]
      best = np.min(np.abs(np.log(dense_same_tokens["params"] / row["avg_params"])))
      assert abs(np.log(p["params"] / row["avg_params"])) == pytest.approx(best)


def test_cli_collect_and_report(runs_dir, tmp_path):
  csv = tmp_path / "r.csv"
  code, out, err = run_cli(["collect", runs_dir, "--out", csv])
  assert code == 0 and "18 runs" in out and "prune_start_fraction" in err  # warned: schedule keys unknown
  df = pd.read_csv(csv)
  for col in ("loss", "tokens", "params", "avg_params", "nonzero_params", "sparsity", "run_name", "final_train_loss",
              "final_eval_loss", "target_sparsity", "sparsity_schedule", "prune_start_fraction", "prune_end_fraction",
              "pruning_interval", "dense_fraction", "pruning_fraction"):
    assert col in df.columns
  code, out, err = run_cli(["report", "--data", csv, "--out", tmp_path / "rep"])
  assert code == 0, err
  assert "predicted_vs_actual: " + str(tmp_path / "rep") in out and os.path.isfile(tmp_path / "rep" / "report.md")
  with open(tmp_path / "rep" / "law.json") as f:  # no --law-file: fitted on the 18 runs
    law = json.load(f)
  assert law["law"] == "avg_param" and law["run_names"] == list(df["run_name"])
  assert law["params"]["alpha"] == pytest.approx(TRUTH["alpha"], abs=0.02) and law["mae"] < 2e-3
  code, _, err = run_cli(["collect", tmp_path / "nothing", "--out", tmp_path / "new.csv"])
  assert code == 1 and "nothing" in err  # no such directory: bad data
  code, _, err = run_cli(["collect", runs_dir, "--out", csv])
  assert code == 2 and "--force" in err  # the CSV exists: bad usage
  code, out, _ = run_cli(["collect", runs_dir, "--out", "-"])
  assert code == 0 and pd.read_csv(__import__("io").StringIO(out)).shape[0] == 18
  some = set(df["run_name"][:3])
  code, out, _ = run_cli(["collect", runs_dir, "--out", "-", "--select", "^(" + "|".join(map(re.escape, some)) + ")$"])
  assert code == 0 and set(pd.read_csv(__import__("io").StringIO(out))["run_name"]) == some
  code, _, err = run_cli(["collect", runs_dir, "--out", "-", "--select", "^no-such-run$"])
  assert code == 1 and "matches no collected run" in err
  code, out, _ = run_cli(["report", csv, "--out", tmp_path / "rep", "--force", "--json"])
  assert code == 0 and set(json.loads(out)["figures"]) == set(report.FIGURES)
