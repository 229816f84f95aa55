"""collect and report on synthetic runs (summaries written by sparsity.core.accounting, losses from a known law)."""

import json
import os
import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, cli
from sparsity.core import accounting, compute, schedules, timeline
from sparsity.experiments import collect, report, sweep
from sparsity.maxtext import layout, loop
from sparsity.science import planning
from references import curve_average

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
        start, end = compute.step_fractions(s, td, ts)
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
    assert json.loads(row["kept_after_events"]) == s["kept_after_events"] and row["end_status"] == "completed"
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


def test_active_curves_reproduce_n_avg(runs_dir):
  df = collect.collect(str(runs_dir))
  for _, row in df.iterrows():
    edges, active = report.active_curve(row)
    assert edges[0] == 0 and edges[-1] == row["tokens"]
    mean = float(np.sum(np.diff(edges) * active) / row["tokens"])
    assert mean == pytest.approx(row["avg_params"], rel=1e-12)
    assert curve_average(row) == pytest.approx(row["avg_params"], rel=1e-12)


def test_dense_partners_are_the_closest_in_log_scale_with_the_same_tokens():
  # Hand-made: sparse N_avg 100 at 1000 tokens; dense runs of 55 and 150 params at 1000 tokens (150 is closer in
  # log scale, 55 in linear scale), one of exactly 100 params at other tokens; a sparse run whose tokens no dense
  # run has.
  df = pd.DataFrame([
      {"run_name": "sparse", "target_sparsity": 0.5, "tokens": 1000, "params": 200, "avg_params": 100.0},
      {"run_name": "d55", "target_sparsity": 0.0, "tokens": 1000, "params": 55, "avg_params": 55.0},
      {"run_name": "d150", "target_sparsity": 0.0, "tokens": 1000, "params": 150, "avg_params": 150.0},
      {"run_name": "d100-other-tokens", "target_sparsity": 0.0, "tokens": 2000, "params": 100, "avg_params": 100.0},
      {"run_name": "lonely", "target_sparsity": 0.8, "tokens": 3000, "params": 200, "avg_params": 90.0},
  ])
  assert report.dense_partners(df) == {"sparse": "d150", "lonely": None}


def test_curves_are_what_was_trained():
  # Hand-made: 1,000 prunable + 50 other weights, 4 tokens a step; a run configured for 100 steps with events at
  # 10..60 that stopped after 45 steps, whose (per-tensor) counts are not the schedule's global rounding.
  row = {"steps": 100, "steps_trained": 45, "prune_steps": json.dumps([10, 20, 30, 40, 50, 60]),
         "kept_after_events": json.dumps([901, 802, 703, 604, 505, 406]), "target_sparsity": 0.6,
         "sparsity_schedule": "geometric", "prunable_params": 1000, "non_prunable_params": 50, "tokens_per_step": 4}
  edges, active = report.active_curve(row)
  assert list(edges) == [0, 40, 80, 120, 160, 180]  # up to the 45 steps trained, not the 100 configured
  assert list(active) == [1050, 951, 852, 753, 654]
  assert curve_average(row) == (10 * 1050 + 10 * 951 + 10 * 852 + 10 * 753 + 5 * 654) / 45
  # A fine-tuning run: its mask fixed at step 0 (target_sparsity 0, one "event" at 0 keeping 400).
  ft = dict(row, steps=20, steps_trained=20, prune_steps="[0]", kept_after_events="[400]", target_sparsity=0.0)
  edges, active = report.active_curve(ft)
  assert list(edges) == [0, 80] and list(active) == [450] and curve_average(ft) == 450
  # An older table (no steps_trained, no kept_after_events): the planned schedule with one global rounding.
  old = {k: v for k, v in row.items() if k not in ("steps_trained", "kept_after_events")}
  sched = timeline.Schedule(100, (10, 20, 30, 40, 50, 60), timeline.event_densities(6, 0.6, "geometric"))
  edges, active = report.active_curve(old)
  assert edges[-1] == 400 and list(active) == [sched.active_at(s, 1000, 50) for s in (0, 10, 20, 30, 40, 50, 60)]


@pytest.mark.slow  # full grids of fit starts
def test_cli_collect_and_report(runs_dir, tmp_path):
  csv = tmp_path / "r.csv"
  code, out, err = cli(["collect", runs_dir, "--out", csv])
  assert code == 0 and "18 runs" in out and "prune_start_fraction" in err  # warned: schedule keys unknown
  df = pd.read_csv(csv)
  for col in ("loss", "tokens", "params", "avg_params", "nonzero_params", "sparsity", "run_name", "final_train_loss",
              "final_eval_loss", "target_sparsity", "sparsity_schedule", "prune_start_fraction", "prune_end_fraction",
              "pruning_interval", "dense_fraction", "pruning_fraction"):
    assert col in df.columns
  code, out, err = cli(["report", "--data", csv, "--out", tmp_path / "rep"])
  assert code == 0, err
  assert "predicted_vs_actual: " + str(tmp_path / "rep") in out and os.path.isfile(tmp_path / "rep" / "report.md")
  with open(tmp_path / "rep" / "law.json") as f:  # no --law-file: fitted on the 18 runs
    law = json.load(f)
  assert law["law"] == "avg_param" and law["run_names"] == list(df["run_name"])
  assert law["params"]["alpha"] == pytest.approx(TRUTH["alpha"], abs=0.02) and law["mae"] < 2e-3
  code, _, err = cli(["collect", tmp_path / "nothing", "--out", tmp_path / "new.csv"])
  assert code == 1 and "nothing" in err  # no such directory: bad data
  code, _, err = cli(["collect", runs_dir, "--out", csv])
  assert code == 2 and "--force" in err  # the CSV exists: bad usage
  code, out, _ = cli(["collect", runs_dir, "--out", "-"])
  assert code == 0 and pd.read_csv(__import__("io").StringIO(out)).shape[0] == 18
  some = set(df["run_name"][:3])
  code, out, _ = cli(["collect", runs_dir, "--out", "-", "--select", "^(" + "|".join(map(re.escape, some)) + ")$"])
  assert code == 0 and set(pd.read_csv(__import__("io").StringIO(out))["run_name"]) == some
  code, _, err = cli(["collect", runs_dir, "--out", "-", "--select", "^no-such-run$"])
  assert code == 1 and "matches no collected run" in err
  code, out, _ = cli(["report", csv, "--out", tmp_path / "rep", "--force", "--json"])
  assert code == 0 and set(json.loads(out)["figures"]) == set(report.FIGURES)


def test_runs_that_did_not_complete_are_not_results(tmp_path):
  """collect leaves them out (or lists them marked, when asked), fit refuses them; older summaries too."""
  sched = schedules.make_schedule(40, 0.5, "geometric", 0.25, 0.75, 10)
  acc = accounting.from_schedule(sched, 1000, 100, 64)

  def write(name, **extra):
    loop.write_summary(str(tmp_path / name), {"run_name": name, "target_sparsity": 0.5, "sparsity_schedule": "geometric",
                                              **acc.summary(), "final_eval_loss": 3.0, "final_eval_step": 39, **extra})

  write("done", end_status="completed", error=None)
  write("older-done")  # no end_status: a summary from before the key existed, of a run that trained every step
  short = acc.summary(steps_trained=12)
  write("out", **short, stopped_early=True, end_status="data_exhausted", error=None, final_eval_step=11)
  write("older-corrupt", **short, stopped_early=True, data_ran_out=True, final_eval_step=5,  # eval before the end
        stop_reason="`next(self.data_iterator)` failed with <class 'OSError'> exception: (bad shard).")
  loop.write_summary(str(tmp_path / "broken"), {"run_name": "broken", "end_status": "failed", "steps": 40,
                                                "steps_trained": 3, "error": "OSError: bad shard"})
  df = collect.collect(str(tmp_path))
  assert list(df["run_name"]) == ["done", "older-done"] and set(df["end_status"]) == {"completed"}
  assert df.attrs["incomplete"] == {"broken": "failed", "older-corrupt": "failed", "out": "data_exhausted"}
  every = collect.collect(str(tmp_path), include_incomplete=True).set_index("run_name")
  assert dict(every["end_status"]) == {"broken": "failed", "done": "completed", "older-corrupt": "failed",
                                       "older-done": "completed", "out": "data_exhausted"}
  assert every.loc["broken", "error"] == "OSError: bad shard" and every.loc["out", "tokens"] == 12 * 64
  assert np.isnan(every.loc["older-corrupt", "loss"])  # its eval predates its end: no loss, and no error either
  rep = report.write_report(every.reset_index(), str(tmp_path / "report"))  # drawn and listed, marked, not fitted
  assert sorted(rep.shown["active_params"]) == ["done", "older-corrupt", "older-done", "out"]  # "broken": no counts
  assert "2 runs: fitting the avg_param law needs more than 5" in rep.skipped["predicted_vs_actual"]
  table = (tmp_path / "report" / report.TABLE_FILE).read_text()
  assert "| run | end |" in table and "| out | data_exhausted |" in table and "| done | completed |" in table
  code, out, err = cli(["collect", tmp_path, "--out", tmp_path / "results.csv"])
  assert code == 0 and "2 runs" in out
  assert "3 runs did not complete their schedule" in err and "out (data_exhausted)" in err
  code, _, err = cli(["collect", tmp_path, "--out", tmp_path / "all.csv", "--include-incomplete"])
  assert code == 0 and "kept and marked by the end_status column" in err
  assert sorted(pd.read_csv(tmp_path / "all.csv")["end_status"]) == ["completed"] * 2 + ["data_exhausted"] + \
      ["failed"] * 2
  for data in (tmp_path, tmp_path / "all.csv"):  # a directory of summaries, or a CSV that includes them
    code, _, err = cli(["fit", "--law", "avg_param", "--data", data, "--out", "-"])
    assert code == 1 and "3 of 5 runs did not complete their schedule" in err, err[-2000:]
    assert "broken (failed)" in err and "out (data_exhausted)" in err and "older-corrupt (failed)" in err
  only_bad = tmp_path / "bad"
  only_bad.mkdir()
  for name in ("out", "broken"):
    os.rename(tmp_path / name, only_bad / name)
  with pytest.raises(ValueError, match="none of the 2 runs under .* completed its schedule"):
    collect.collect(str(only_bad))
