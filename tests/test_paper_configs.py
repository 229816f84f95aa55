"""configs/paper/: the paper's model family (Table 1) and the released ~1B shape, as MaxText configs."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, cpu_env
from sparsity.core import compute
from sparsity.core.config import schedule_from_config
from sparsity.science import planning
from sparsity.maxtext import yaml_chain

PAPER = os.path.join(ROOT, "configs", "paper")
# Table 1: prunable and total parameters, tokens per budget.
TABLE1 = {
    "58m": (42e6, 58e6, "58M", {"10x": 14.7e9, "20x": 29.4e9}),
    "162m": (138e6, 162e6, "162M", {"10x": 33.5e9, "20x": 67.1e9}),
    "468m": (435e6, 468e6, "468M", {"10x": 94.4e9, "20x": 188.8e9}),
}
FAMILY = [(m, b) for m in TABLE1 for b in ("10x", "20x")]
BATCH_LINE = re.compile(r"^# global batch: (\d+) sequences x (\d+) tokens = ([\d,]+) tokens on (\d+) devices "
                        r"\(per_device_batch_size (\d+)\)$", re.M)


def _path(model, budget):
  return os.path.join(PAPER, f"llama2_{model}_{budget}.yml")


def _shape(cfg):
  return planning.ModelShape(int(cfg["base_emb_dim"]), int(cfg["base_num_query_heads"]), int(cfg["base_num_kv_heads"]),
                             int(cfg["head_dim"]), int(cfg["base_mlp_dim"]), int(cfg["base_num_decoder_layers"]),
                             int(cfg["vocab_size"]), bool(cfg["logits_via_embedding"]))


def test_every_config_chains_to_sparse_base_and_maxtext_base():
  files = sorted(glob.glob(os.path.join(PAPER, "*.yml")))
  assert len(files) == 7
  for f in files:
    chain = yaml_chain.chain(f)
    assert [os.path.normpath(c) for c in chain[1:]] == [
        os.path.join(ROOT, "configs", "sparse_base.yml"), os.path.join(yaml_chain.maxtext_configs_dir(), "base.yml")]


@pytest.mark.parametrize("model,budget", FAMILY)
def test_family_matches_table1(model, budget):
  prunable, total, key, tokens = TABLE1[model]
  cfg = yaml_chain.load(_path(model, budget))
  shape = _shape(cfg)
  assert shape == planning.PAPER_MODELS[key]
  counts = planning.param_counts(shape)
  assert abs(counts["prunable"] / prunable - 1) <= 0.011
  assert abs(counts["total"] / total - 1) <= 0.011
  assert cfg["mlp_activations"] == ["silu", "linear"] and cfg["decoder_block"] == "llama2"
  # LLaMA-2: MLP = 4 x width, head_dim 64
  assert shape.mlp_dim == 4 * shape.emb and shape.head_dim * shape.num_query_heads == shape.emb


@pytest.mark.parametrize("model,budget", FAMILY)
def test_documented_batch_and_steps_give_table1_tokens(model, budget):
  with open(_path(model, budget), encoding="utf-8") as f:
    text = f.read()
  seqs, seq, tps, devices, per_device = BATCH_LINE.search(text).groups()
  seqs, seq, tps, devices, per_device = int(seqs), int(seq), int(tps.replace(",", "")), int(devices), int(per_device)
  cfg = yaml_chain.load(_path(model, budget))
  assert seqs * seq == tps and per_device * devices == seqs
  assert cfg["per_device_batch_size"] == per_device and cfg["max_target_length"] == seq
  target = TABLE1[model][3][budget]
  steps = int(cfg["steps"])
  assert steps * tps >= target > (steps - 1) * tps  # the fewest steps reaching Table 1's tokens
  assert f"= {steps} (" in text  # the derivation in the comment is the one in the file


@pytest.mark.parametrize("model", TABLE1)
def test_budgets_differ_only_in_steps(model):
  a, b = yaml_chain.load(_path(model, "10x")), yaml_chain.load(_path(model, "20x"))
  assert {k for k in a if a[k] != b.get(k)} == {"steps", "run_name"}
  assert b["steps"] == pytest.approx(2 * a["steps"], rel=0.01)


@pytest.mark.parametrize("model,budget", FAMILY)
def test_family_schedule_is_the_papers_compute_split(model, budget):
  cfg = yaml_chain.load(_path(model, budget))
  assert (cfg["warmup_steps_fraction"], cfg["lr_schedule_type"], cfg["pruning_interval"]) == (0.01, "cosine", 100)
  assert (cfg["dataset_type"], cfg["dataset_name"], cfg["eval_dataset_name"]) == ("tfds", "c4/en:3.1.0", "c4/en:3.1.0")
  assert cfg["dataset_path"] == "" and cfg["tokenizer_path"] == "tokenizer.llama2"
  start, end = compute.step_fractions(cfg["target_sparsity"], 0.25, 0.5, cfg["sparsity_schedule"])
  assert (cfg["prune_start_fraction"], cfg["prune_end_fraction"]) == (start, end)
  sched = schedule_from_config(type("C", (), cfg))
  assert compute.measured_fractions(sched) == pytest.approx((0.25, 0.5, 0.25), abs=0.005)


def test_released_1b_settings():
  cfg = yaml_chain.load(os.path.join(PAPER, "llama2_1b_released.yml"))
  shape = _shape(cfg)
  assert shape == planning.ModelShape(2048, 8, 8, 256, 8192, 16, 32000, False)
  assert (cfg["steps"], cfg["per_device_batch_size"], cfg["learning_rate"]) == (72200, 16, 7.753e-4)
  assert (cfg["target_sparsity"], cfg["warmup_steps_fraction"]) == (0.5, 0.01)
  sched = schedule_from_config(type("C", (), cfg))
  assert sched.prune_steps[0] == 12500 and sched.prune_steps[-1] == 47200
  assert all(b - a == 100 for a, b in zip(sched.prune_steps, sched.prune_steps[1:]))


CHECK_SCRIPT = r"""
import contextlib, glob, io, json, os, sys
from sparsity.maxtext.config import load_config
from sparsity.science import planning
out = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.yml"))):
  with contextlib.redirect_stdout(io.StringIO()):
    c = load_config([f, "base_output_directory=/tmp/unused", "skip_jax_distributed_system=true"])
  p = planning.plan(**planning.config_to_plan_inputs(c))
  out[os.path.basename(f)] = {"prunable": p["prunable_params"], "total": p["total_params"], "steps": c.steps,
                              "lr": c.learning_rate, "start": c.prune_start_fraction, "end": c.prune_end_fraction,
                              "sparsity": c.target_sparsity, "per_device": c.per_device_batch_size,
                              "dataset_type": str(c.dataset_type), "seq": c.max_target_length}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_all_configs_load_through_maxtext():
  proc = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, PAPER], cwd=ROOT, env=cpu_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
  assert len(got) == 7
  for name, g in got.items():
    cfg = yaml_chain.load(os.path.join(PAPER, name))
    assert (g["steps"], g["lr"], g["start"], g["end"], g["sparsity"], g["per_device"], g["seq"]) == (
        cfg["steps"], cfg["learning_rate"], cfg["prune_start_fraction"], cfg["prune_end_fraction"],
        cfg["target_sparsity"], cfg["per_device_batch_size"], cfg["max_target_length"])
    assert "tfds" in g["dataset_type"].lower()
    assert (g["prunable"], g["total"]) == tuple(planning.param_counts(_shape(cfg))[k] for k in ("prunable", "total"))
    m = re.fullmatch(r"llama2_(\d+m)_\d+x\.yml", name)
    if m:
      prunable, total, _, _ = TABLE1[m.group(1)]
      assert abs(g["prunable"] / prunable - 1) <= 0.011 and abs(g["total"] / total - 1) <= 0.011
