"""tools/authors_fork: the parts that need no checkout of the authors' fork (CI has none)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools", "authors_fork")


def _module(name):
  sys.path.insert(0, TOOLS)
  spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


rc = _module("run_cell")


@pytest.fixture(scope="module")
def runs():
  return {r.name: r for r in rc.cell_runs()}


def _yaml(path):
  with open(path, encoding="utf-8") as f:
    return yaml.safe_load(f)


def test_cell_is_the_b1_cell_of_the_spec(runs):
  assert len(runs) == 15
  kinds = sorted((r.values["kind"], int(r.values["base_emb_dim"]), r.values["seed"]) for r in runs.values())
  assert kinds == sorted([("sparse", 64, s) for s in range(3)]
                         + [("dense", w, s) for w in (32, 40, 48, 56) for s in range(3)])
  assert all(r.values["budget"] == "b1" for r in runs.values())


@pytest.mark.parametrize("name", ["paired-b1-sparse-w64-s0.8-seed2", "paired-b1-dense-w40-s0.0-seed1"])
def test_fork_yaml_matches_our_run(runs, name, tmp_path):
  """The fork's keys against our files read directly: the spec, c4_tiny.yml and sparse_base.yml."""
  run = runs[name]
  y = rc.fork_yaml(rc.run_config(run), name, "/fork", str(tmp_path))
  tiny = _yaml(os.path.join(REPO, "configs", "study", "c4_tiny.yml"))
  base = _yaml(os.path.join(REPO, "configs", "sparse_base.yml"))
  width = int(name.split("-w")[1].split("-")[0])
  seed = int(name.rsplit("seed", 1)[1])
  assert y["steps"] == 600  # budget b1: base_steps 600, step_scale 1
  assert (y["base_emb_dim"], y["head_dim"], y["base_mlp_dim"]) == (width, width // 4, 4 * width)
  assert y["init_weights_seed"] == y["data_shuffle_seed"] == seed
  for key in ("per_device_batch_size", "max_target_length", "learning_rate", "warmup_steps_fraction", "vocab_size",
              "base_num_decoder_layers", "base_num_query_heads", "base_num_kv_heads", "dataset_name",
              "eval_dataset_name", "eval_steps"):
    assert y[key] == tiny[key], key
  for key in ("mlp_activations", "logits_via_embedding", "decoder_block", "adam_weight_decay"):
    assert y[key] == base[key], key
  assert y["cosine_learning_rate_final_fraction"] == 0.1  # MaxText's learning_rate_final_fraction default
  assert y["tokenizer_path"] == os.path.join(REPO, tiny["tokenizer_path"])
  assert os.path.normpath(y["dataset_path"]) == os.path.normpath(os.path.join(REPO, tiny["dataset_path"]))
  assert y["eval_interval"] == 600 and y["base_config"] == "/fork/MaxText/configs/base.yml"
  assert not y["monitor_goodput"] and not y["enable_goodput_recording"]
  assert y["metrics_file"] == os.path.join(str(tmp_path), name, "metrics.jsonl")


def test_fork_schedule_matches_our_events(runs):
  """Our run's events as its summary recorded them (stats.csv); the fork's, by its train-loop condition, are the
  same steps without our last, off-grid one."""
  stats = pd.read_csv(os.path.join(REPO, "results", "study", "stats.csv")).set_index("run_name")
  ours = json.loads(stats.loc["paired-b1-sparse-w64-s0.8-seed0", "prune_steps"])
  y = rc.fork_yaml(rc.run_config(runs["paired-b1-sparse-w64-s0.8-seed0"]), "x", "/fork", "/tmp")
  assert (y["gmp_start_step"], y["gmp_end_step"], y["gmp_pruning_frequency"], y["sparsity"]) == (60, 300, 2, 0.8)
  fork = [s for s in range(600) if s >= 60 and s <= 300 and s % 2 == 0]  # the fork's condition, written out
  assert rc.fork_events(y, 600) == fork
  assert ours[:-1] == fork and ours[-1] == 301


def test_dense_run_gets_no_fork_event(runs):
  y = rc.fork_yaml(rc.run_config(runs["paired-b1-dense-w32-s0.0-seed0"]), "x", "/fork", "/tmp")
  assert y["sparsity"] == 0.0 and rc.fork_events(y, 600) == []


def test_fork_schedule_refuses_an_off_grid_start():
  sched = types.SimpleNamespace(steps=100, prune_steps=(5, 7, 9))  # the fields fork_pruning reads
  with pytest.raises(ValueError, match="not a multiple"):
    rc.fork_pruning(sched, 2)


def test_fork_keep_counts_geometric():
  n, prunable = 121, 196608
  kept = rc.fork_keep_counts(n, 0.8, prunable)
  assert len(kept) == n
  assert kept[0] == math.floor(0.2 ** (1 / n) * prunable)
  ratios = np.array(kept[1:]) / np.array(kept[:-1])
  assert np.allclose(ratios, 0.2 ** (1 / n), atol=2 / kept[-1])  # a fixed fraction of what is left
  assert abs(kept[-1] - 0.2 * prunable) <= 1


def test_scheduled_average_by_hand():
  # 10 steps, 100 weights: 100 for steps 0-3, 50 for steps 4-6, 20 for 7-9
  assert rc.scheduled_average([4, 7], [50, 20], 100, 10) == (4 * 100 + 3 * 50 + 3 * 20) / 10


def _metrics(path, steps, loss=4.5):
  with open(path, "w", encoding="utf-8") as f:
    for s in range(steps):
      f.write(json.dumps({"step": s, "learning/loss": 7.0 - s, "pruning/nonzero_prunable": 100.0 - s,
                          "pruning/prunable": 100.0, "pruning/num_param": 150.0,
                          "pruning/density": (100.0 - s) / 100}) + "\n")
    f.write(json.dumps({"step": steps - 1, "eval/avg_loss": loss, "eval/total_loss": 1.0}) + "\n")


def test_read_metrics_and_fork_row(runs, tmp_path):
  path = tmp_path / "metrics.jsonl"
  _metrics(path, 4)
  res = rc.read_metrics(str(path))
  assert res["loss"] == 4.5 and res["step0_loss"] == 7.0 and res["nonzero_prunable"] == [100, 99, 98, 97]
  assert (res["prunable_params"], res["total_params"], res["final_density"]) == (100, 150, 0.97)
  run = runs["paired-b1-dense-w32-s0.0-seed0"]
  cfg = {**rc.run_config(run), "steps": 4}
  row = rc.fork_row(run, cfg, {**res, "gmp": {"gmp_start_step": 4, "gmp_end_step": 4, "gmp_pruning_frequency": 2}},
                    str(tmp_path))
  assert row["avg_prunable"] == 98.5 and row["avg_params"] == 148.5 and row["non_prunable_params"] == 50
  assert row["code"] == "fork" and row["n_events"] == 0


def test_our_rows_come_from_the_study_csvs(runs):
  rows = {r["run_name"]: r for r in rc.our_rows(list(runs.values()))}
  stats = pd.read_csv(os.path.join(REPO, "results", "study", "runs.csv")).set_index("run_name")
  dense = rows["paired-b1-dense-w40-s0.0-seed0"]  # fig1's run of the same config
  assert dense["loss"] == stats.loc["fig1-b1-dense-w40-s0.0-seed0", "loss"] and dense["source"].endswith(
      "fig1-b1-dense-w40-s0.0-seed0")
  sparse = rows["paired-b1-sparse-w64-s0.8-seed0"]
  assert sparse["n_events"] == 122 and (sparse["first_event"], sparse["last_event"]) == (60, 301)
  assert sparse["avg_prunable"] == pytest.approx(sparse["avg_params"] - 65856)


def _row(code, kind, width, seed, loss, prunable, total, avg=None):
  name = f"paired-b1-{kind}-w{width}-s{0.8 if kind == 'sparse' else 0.0}-seed{seed}"
  return {"code": code, "run_name": name, "kind": kind, "budget": "b1", "base_emb_dim": width, "seed": seed,
          "target_sparsity": 0.8 if kind == "sparse" else 0.0, "loss": loss, "prunable_params": prunable,
          "non_prunable_params": total - prunable, "total_params": total, "avg_params": avg or total,
          "tokens": 1.0}


def test_gaps_interpolate_like_the_paired_analysis():
  """Sparse at prunable N_avg 75 (total 125), between dense prunable 50 (loss 5) and 100 (loss 4): the dense
  loss there is 4.5 by hand; one code's gap per seed is known, so its mean and t interval are too."""
  rows = []
  for code, shift in (("ours", 0.1), ("fork", 0.0)):
    for seed, extra in ((0, 0.0), (1, 0.2)):
      rows += [_row(code, "dense", 32, seed, 5.0, 50, 100), _row(code, "dense", 40, seed, 4.0, 100, 150),
               _row(code, "sparse", 64, seed, 4.5 + shift + extra, 200, 250, avg=125)]
  diffs, summary = rc.gaps(pd.DataFrame(rows))
  s = summary.set_index(["code", "matching"])
  assert s.loc[("ours", "prunable"), "difference"] == pytest.approx(0.2)
  assert s.loc[("fork", "prunable"), "difference"] == pytest.approx(0.1)
  half = 12.706204736 * 0.2 / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(n), sd = 0.1414
  assert s.loc[("fork", "prunable"), "high"] - 0.1 == pytest.approx(half, rel=1e-6)
  assert set(diffs["code"]) == {"ours", "fork"}


def test_classify_counts_ties_and_boundary():
  cm = _module("compare_masks")
  w = [np.array([0.5, 0.2, 0.2, 0.1], np.float32), np.array([0.3, 0.05], np.float32)]
  ours = [np.array([1, 1, 0, 0], bool), np.array([1, 0], bool)]  # keeps 3: one of the tied 0.2s
  fork = [np.array([1, 1, 1, 0], bool), np.array([1, 0], bool)]  # keeps |w| >= 0.2: both
  rows = cm.classify(w, ours, fork, ["a/kernel", "b/kernel"], 0.2)
  assert rows[0]["differ"] == 1 and rows[0]["ties"] == 1 and rows[0]["fork_only"] == 1
  assert rows[0]["unexplained"] == 0 and rows[1]["differ"] == 0
  # one code keeps a weight more (a count difference): the extra weight lies between the two smallest kept
  fork = [np.array([1, 1, 0, 0], bool), np.array([1, 1], bool)]
  ours = [np.array([1, 1, 0, 0], bool), np.array([1, 0], bool)]
  rows = cm.classify(w, ours, fork, ["a/kernel", "b/kernel"], 0.05)
  assert rows[1]["differ"] == rows[1]["ties"] == 1  # 0.05 is the fork's threshold: a tie
  rows = cm.classify(w, ours, fork, ["a/kernel", "b/kernel"], 0.04)
  assert rows[1]["boundary"] == 1 and rows[1]["unexplained"] == 0
  # keeps 0.1 where the fork keeps 0.05: no count difference explains it
  ours = [np.array([1, 1, 0, 1], bool), np.array([1, 1], bool)]
  rows = cm.classify(w, ours, fork, ["a/kernel", "b/kernel"], 0.04)
  assert rows[0]["unexplained"] == 1


def test_fork_train_sets_epochs_on_the_training_pipeline_only(tmp_path):
  """A stand-in checkout: its train.py calls the pipeline as the fork's tfds iterators do."""
  pipe = tmp_path / "MaxText" / "input_pipeline"
  pipe.mkdir(parents=True)
  (pipe / "__init__.py").write_text("")
  (pipe / "_tfds_data_processing.py").write_text(
      "def preprocessing_pipeline(dataset, shuffle=False, num_epochs=1):\n  return (dataset, num_epochs)\n"
      "def make_train():\n  return preprocessing_pipeline(dataset='train', shuffle=True)\n"
      "def make_eval():\n  return preprocessing_pipeline(dataset='eval', shuffle=False)\n")
  (tmp_path / "MaxText" / "train.py").write_text(
      "import sys\nfrom input_pipeline._tfds_data_processing import make_train, make_eval\n"
      "print(make_train(), make_eval(), sys.argv[1:])\n")
  out = subprocess.run([sys.executable, os.path.join(TOOLS, "fork_train.py"), "--fork", str(tmp_path),
                        "--num-epochs", "100", "--", "x.yml", "steps=3"], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "('train', 100) ('eval', 1) ['x.yml', 'steps=3']"
