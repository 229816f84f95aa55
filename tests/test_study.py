"""CI's miniature of the reproduction study: the same sweep specs (scaled down with step_scale), collect and study."""

import json

import pandas as pd
import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow

FIG1 = r"fig1-(b1-(sparse-w64-s0.8|dense-w(32|40|48)-s0.0)|b2-dense-w32-s0.0)-seed0$"


def test_the_study_specs_run_collect_and_report_in_miniature(tmp_path, c4_path):
  runs = tmp_path / "runs"
  code, out, err = run_cli(["sweep", "configs/study/fig1.yml", "step_scale=0.01", "--select", FIG1, "--out", runs],
                           timeout=1800)
  assert code == 0, (out + err)[-4000:]
  for spec, scale, select in [("ablations", 0.01, r"abl-score-b1-random-s0.8-seed0$"),
                              ("paired", 0.01, r"paired-b1-sparse-w64-s0.8-seed0$"),
                              ("fig4", 0.05, r"fig4-b1-d0.0-p0.5-seed0$")]:  # fig4: 2% needs 30 reference steps
    code, out, err = run_cli(["sweep", f"configs/study/{spec}.yml", f"step_scale={scale}", "--select", select,
                              "--out", runs], timeout=1800)
    assert code == 0, (out + err)[-4000:]
  code, out, err = run_cli(["sweep", "configs/study/recovery.yml", "step_scale=0.01", f"runs_dir={runs}",
                            "--select", r"rec-w32-(ctrl|r0.5|2of4)$", "--out", runs], timeout=1800)
  assert code == 0, (out + err)[-4000:]
  code, _, err = run_cli(["collect", runs, "--out", tmp_path / "runs.csv"])
  assert code == 0, err
  df = pd.read_csv(tmp_path / "runs.csv")
  fig1 = df[df["run_name"].str.startswith("fig1-")].set_index("run_name")
  assert len(fig1) == 5 and set(fig1["kind"]) == {"sparse", "dense"} and set(fig1["budget"]) == {"b1", "b2"}
  sparse = fig1.loc["fig1-b1-sparse-w64-s0.8-seed0"]
  assert sparse["steps"] == 6 and sparse["final_eval_step"] == 5  # evaluated once, after the last step
  assert sparse["sparsity"] == pytest.approx(0.8, abs=1e-5) and sparse["pruning_interval"] == 1
  # fig1.yml sets both step fractions (prune_start_for): explicit step fractions win over the compute split
  assert sparse["schedule_split"] == "steps" and sparse["prune_start_fraction"] == 0.099765
  again = tmp_path / "again"  # a reader reruns one run from its spec: the same final eval loss, bit for bit
  code, out, err = run_cli(["sweep", "configs/study/fig1.yml", "step_scale=0.01", "--select",
                            r"fig1-b1-sparse-w64-s0.8-seed0$", "--out", again], timeout=1800)
  assert code == 0, (out + err)[-4000:]
  rerun = json.loads((again / "fig1-b1-sparse-w64-s0.8-seed0" / "sparsity_summary.json").read_text())
  first = json.loads((runs / "fig1-b1-sparse-w64-s0.8-seed0" / "sparsity_summary.json").read_text())
  assert rerun["final_eval_loss"] == first["final_eval_loss"] and rerun["final_sparsity"] == first["final_sparsity"]
  code, _, err = run_cli(["collect", runs, "--trajectories", "--out", tmp_path / "traj.csv"])
  assert code == 0, err
  traj = pd.read_csv(tmp_path / "traj.csv")
  assert sorted(traj["run_name"].unique()) == ["rec-w32-2of4", "rec-w32-ctrl", "rec-w32-r0.5"]
  dense32 = fig1.loc["fig1-b2-dense-w32-s0.0-seed0"]
  assert traj["L0"].iloc[0] == pytest.approx(dense32["final_eval_loss"], rel=1e-5)  # L0: the loaded model's loss
  assert set(traj["structure"]) == {"2:4", "unstructured"} and set(traj["rho"]) == {0.0, 0.5}
  assert (traj["L0"] == traj["L0"].iloc[0]).all()  # the control and the pruned runs start from one checkpoint
  code, out, err = run_cli(["study", tmp_path / "runs.csv", "--trajectories", tmp_path / "traj.csv",
                            "--out", tmp_path / "study", "--json"])
  assert code == 0, err[-3000:]
  files = json.loads(out)
  text = (tmp_path / "study" / "study.md").read_text()
  assert "## Figure 1" in text and "| fig1 | b1 | 80% | prunable | 1 |" in text and "fig1_pairs" in files
  # the paired spec's sparse run against fig1's dense runs of its seed (the same dense runs), under both matchings
  assert "| paired | b1 | 80% | prunable | 1 |" in text and "| paired | b1 | 80% | total | 1 |" in text
  assert "not bracketed" not in text
  paired = df.set_index("run_name").loc["paired-b1-sparse-w64-s0.8-seed0"]
  assert paired["schedule_split"] == "compute" and paired["pruning_interval"] == 1  # the trainer derived its split
  assert "## Figure 4" in text and "| 0% | 50% | 42 |" in text
  assert "## Ablations" in text and "| score | random-s0.8 | b1 | 1 |" in text
  assert "not fitted" in text  # 4 runs are too few for the 5-parameter laws: said, not hidden
  # recovery against its unpruned control, whether the P2 law could be fitted or not (2 runs: it cannot)
  assert "gap to control" in text and "| rec-w32-r0.5 |" in text and "| rec-w32-ctrl |" not in text
