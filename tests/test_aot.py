"""Ahead-of-time compile for TPU topologies (MaxText/train_compile.py, sparsity.maxtext.aot), on this CPU host.

The compile tests need the TPU runtime (libtpu), which setup.sh installs; they compile the tiny model for a v5p-8
(4 chips) and trace a LLaMA-2 13B (more than 2**31 prunable weights, kernels past 2**31 entries) from abstract shapes.
"""

import json
import os
import subprocess
import sys
import types

import pytest

from conftest import ROOT, TINY, cpu_env, run_configs
from sparsity.maxtext import aot, layout

TRAIN_COMPILE = os.path.join(ROOT, "MaxText", "train_compile.py")
V5P_8 = ["compile_topology=v5p-8", "compile_topology_num_slices=1", "ici_fsdp_parallelism=4"]
# The paper's smallest shapes with 2 layers (width 512, 8 heads of 64, MLP 2048, vocab 32000): TPU buffers are tiled
# (8 x 128) and every scalar takes 512 bytes, so a model of a few MB per chip would measure those fixed costs.
SMALL = ["base_emb_dim=512", "base_num_query_heads=8", "base_num_kv_heads=8", "head_dim=64", "base_mlp_dim=2048",
         "base_num_decoder_layers=2", "max_target_length=128"]


def _compile(tmp_path, name, *args):
  out = subprocess.run([sys.executable, TRAIN_COMPILE, os.path.join(ROOT, "configs", "sparse_base.yml"), *SMALL,
                        *args, f"run_name={name}", f"base_output_directory={tmp_path}"],
                       cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=900, check=False)
  path = layout.compile_summary_path(layout.run_dir(str(tmp_path), name))
  summary = None
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      summary = json.load(f)
  return out, summary


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  """The small model compiled for a v5p-8: sparse (0.8, events every 10 steps) and dense."""
  tmp = tmp_path_factory.mktemp("aot")
  sparse = _compile(tmp, "sparse", *V5P_8, "target_sparsity=0.8", "steps=100", "pruning_interval=10")
  dense = _compile(tmp, "dense", *V5P_8, "target_sparsity=0")
  return sparse, dense


@pytest.mark.slow
def test_every_program_of_a_sparse_run_compiles_for_a_v5p_8_and_fits(compiled):
  (out, s), _ = compiled
  assert out.returncode == 0, out.stderr[-4000:]
  assert s["compile_topology"] == "v5p-8" and s["chips"] == 4 and s["hbm_bytes_per_chip"] == 95 * 10**9
  assert set(s["programs"]) == {"train_step", "pruning_event", "mask_count", "eval_step"}
  assert s["fits"] is True and s["programs_over_hbm"] == []
  # The prunable kernels, from SMALL's shapes: 2 layers x (4 attention kernels of 512 x 512 + 3 MLP kernels of
  # 512 x 2048) + the untied 512 x 32000 output projection; fsdp over 4 chips.
  prunable = 2 * (4 * 512 * 512 + 3 * 512 * 2048) + 512 * 32000
  assert s["prunable_params"] == prunable
  assert s["prunable_bytes_per_chip"] == prunable * 4 // 4  # float32, a quarter per chip
  assert s["mask_bytes_per_chip"] == prunable // 4  # one byte per weight, sharded like the weights
  for p in s["programs"].values():
    assert "out_of_memory" not in p
    assert p["estimated_seconds"] is not None and p["estimated_seconds"] > 0
    assert p["peak_bytes"] <= s["hbm_bytes_per_chip"]
  event = s["programs"]["pruning_event"]
  assert event["temp_bytes"] <= 0.5 * s["prunable_bytes_per_chip"]
  assert event["estimated_seconds"] <= s["programs"]["train_step"]["estimated_seconds"]
  # Nothing of the weights' size crosses chips: only all-reduces of histogram bins and counts.
  assert set(event["collectives"]) == {"all-reduce"}, event["collectives"]
  assert event["collectives"]["all-reduce"]["max_elements"] <= 256
  assert "pruning_event" in out.stdout and "not measured TPU times" in out.stdout


@pytest.mark.slow
def test_the_sparse_train_step_holds_the_dense_one_plus_the_masks(compiled):
  (_, sparse), (out, dense) = compiled
  assert out.returncode == 0, out.stderr[-4000:]
  assert "pruning_event" not in dense["programs"] and "mask_count" not in dense["programs"]
  assert dense["prunable_bytes_per_chip"] == sparse["prunable_bytes_per_chip"] and dense["mask_bytes_per_chip"] == 0
  extra = sparse["programs"]["train_step"]["argument_bytes"] - dense["programs"]["train_step"]["argument_bytes"]
  masks = sparse["mask_bytes_per_chip"]
  # The masks, plus at most 1% of the dense arguments (the pruner's update count and alignment).
  assert masks <= extra <= masks + 0.01 * dense["programs"]["train_step"]["argument_bytes"]


@pytest.mark.slow
def test_a_program_that_does_not_fit_exits_3_naming_it(tmp_path):
  # A 4-chip v5e (16 GB each) cannot hold a 2,048-wide, 48-layer model's float32 weights and Adam moments.
  out, s = _compile(tmp_path, "big", "compile_topology=v5e-4", "compile_topology_num_slices=1",
                    "ici_fsdp_parallelism=4", "base_emb_dim=4096", "base_mlp_dim=16384", "base_num_decoder_layers=48",
                    "base_num_query_heads=32", "base_num_kv_heads=32", "head_dim=128", "target_sparsity=0.8",
                    "steps=100", "pruning_interval=10")
  assert out.returncode == aot.FITS_EXIT_CODE, out.stderr[-3000:]
  assert s["fits"] is False and "train_step" in s["programs_over_hbm"]
  # The TPU compiler itself refuses it: its message is kept.
  assert "HBM" in s["programs"]["train_step"]["out_of_memory"]
  assert "does not fit" in out.stderr and "train_step" in out.stderr


@pytest.mark.slow
def test_a_13b_model_past_2_31_prunable_weights_traces_every_program(tmp_path):
  # LLaMA-2 13B: 12.7e9 prunable weights, and MLP kernels of 2.8e9 entries each (counted in chunks of rows,
  # threshold.row_ranges). Counts above 2**31 meet traced values in the metrics, the event's kept counts and the final
  # count; every program must trace (lowered for a v5p-64, nothing compiled or allocated).
  code = ("import json, sys; sys.path.insert(0, %r); from sparsity.maxtext import aot; "
          "print('SUMMARY', json.dumps(aot.trace(sys.argv)))") % ROOT
  argv = [os.path.join(ROOT, "configs", "sparse_base.yml"), "model_name=llama2-13b", "override_model_config=true",
          "compile_topology=v5p-64", "compile_topology_num_slices=1", "ici_fsdp_parallelism=32",
          "per_device_batch_size=1", "max_target_length=512", "target_sparsity=0.8", f"base_output_directory={tmp_path}",
          "run_name=13b"]
  out = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, env=dict(cpu_env(), ALLOW_MULTIPLE_LIBTPU_LOAD="1"),
                       capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  s = json.loads(out.stdout.split("SUMMARY ", 1)[1].splitlines()[0])
  assert set(s["programs"]) == {"train_step", "pruning_event", "mask_count", "eval_step"}
  # LLaMA-2 13B by hand: 40 layers of 4 attention kernels 5120 x 5120 and 3 MLP kernels 5120 x 13824, the untied
  # 5120 x 32000 output projection; besides them the 32000 x 5120 embedding and 2 norm scales a layer plus the final.
  prunable = 40 * (4 * 5120 * 5120 + 3 * 5120 * 13824) + 5120 * 32000
  total = prunable + 32000 * 5120 + (2 * 40 + 1) * 5120
  assert (s["prunable_params"], s["total_params"]) == (prunable, total) and prunable > 5 * 2**31
  # What the lowered programs return per chip (their outputs' shapes over their shardings), every array split over
  # the 32 chips: the event's new masks (1 byte a weight) and the prunable weights' Adam moments (mu, nu: 4 bytes
  # each), nothing replicated; the train step's state (weights and both moments of every parameter, the masks) plus
  # scalars (step counts, the RNG key, metrics); the final count of kept weights as 64 bits (past 2**31).
  programs = s["programs"]
  assert programs["pruning_event"]["output_bytes"] == (1 + 4 + 4) * prunable // 32
  state = (4 + 4 + 4) * total + 1 * prunable
  assert 0 <= programs["train_step"]["output_bytes"] - state // 32 <= 4096
  assert programs["mask_count"]["output_bytes"] == 8


BAD_TOPOLOGIES = [
    (["compile_topology=v5p-7", "compile_topology_num_slices=1"], "Invalid compile topology: v5p-7. Valid topology names"),
    (["compile_topology=v5p-8", "compile_topology_num_slices=1", "ici_fsdp_parallelism=3"],
     "do not divide compile_topology=v5p-8"),
    ([], "compile_topology is not set"),
]


@pytest.fixture(scope="module")
def bad_topologies(tmp_path_factory):
  """(exit code, output) of each BAD_TOPOLOGIES case through train_compile's entry, all in one process."""
  tmp = tmp_path_factory.mktemp("bad_topologies")
  cases = [[os.path.join(ROOT, "configs", "sparse_base.yml"), *SMALL, *args, "target_sparsity=0.8", "steps=100",
            "pruning_interval=10", f"run_name=bad{i}"] for i, (args, _) in enumerate(BAD_TOPOLOGIES)]
  return tmp, run_configs(cases, tmp, entry="compile")


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(BAD_TOPOLOGIES)))
def test_bad_topologies_are_clear_errors_before_compiling(bad_topologies, case):
  tmp, results = bad_topologies
  code, text = results[case]
  assert code == 2 and BAD_TOPOLOGIES[case][1] in text, text[-3000:]
  assert "Jitting" not in text
  assert not os.path.exists(layout.compile_summary_path(layout.run_dir(str(tmp), f"bad{case}")))


def _config(**kw):
  base = dict(compile_topology="v5p-8", compile_topology_num_slices=1, mesh_axes=["data", "fsdp"],
              ici_parallelism=[1, 4], dcn_parallelism=[-1, 1])
  return types.SimpleNamespace(**{**base, **kw})


def test_check_topology_counts_devices_and_fills_minus_one():
  assert aot.check_topology(_config()) == 4
  assert aot.check_topology(_config(ici_parallelism=[-1, 2])) == 4
  assert aot.check_topology(_config(compile_topology="v4-128", ici_parallelism=[-1, 16])) == 64
  assert aot.check_topology(_config(compile_topology_num_slices=2, dcn_parallelism=[2, 1])) == 8
  with pytest.raises(aot.CompileError, match="ici_.*do not divide"):
    aot.check_topology(_config(ici_parallelism=[2, 4]))
  with pytest.raises(aot.CompileError, match="dcn_.*do not divide"):
    aot.check_topology(_config(compile_topology_num_slices=2, dcn_parallelism=[3, 1]))


def test_unknown_topology_lists_the_known_ones():
  with pytest.raises(aot.CompileError) as e:
    aot.check_topology(_config(compile_topology="v5p-9"))
  assert "v5p-8" in str(e.value) and "v5e-256" in str(e.value) and "v4-128" in str(e.value)
  with pytest.raises(aot.CompileError, match="HBM per chip is known for"):
    aot.hbm_bytes("tpu7x-8")


def test_a_missing_tpu_runtime_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu -> ImportError
  with pytest.raises(aot.CompileError, match="setup.sh.*libtpu"):
    aot.check_topology(_config())


@pytest.mark.slow
def test_sweep_compile_first_lists_the_runs_that_would_not_fit_and_submits_nothing(tmp_path):
  import yaml  # pylint: disable=import-outside-toplevel

  from conftest import run_cli  # pylint: disable=import-outside-toplevel

  fixed = {k: int(v) for k, v in (w.split("=") for w in TINY)}
  fixed.update(target_sparsity=0.8, steps=100, pruning_interval=10)
  spec = tmp_path / "spec.yml"
  spec.write_text(yaml.safe_dump({"name": "aotcheck", "base": os.path.join(ROOT, "configs", "sparse_base.yml"),
                                  "run_name": "fsdp{ici_fsdp_parallelism}", "fixed": fixed,
                                  "axes": {"ici_fsdp_parallelism": [4, 3]}}))
  calls = tmp_path / "xpk-calls"
  fake = tmp_path / "xpk"
  fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
  fake.chmod(0o755)
  code, _, err = run_cli(["sweep", spec, "--launcher", "xpk", "--compile-first", "--cluster", "c1", "--tpu-type",
                          "v5p-8", "--docker-image", "img", "--output-bucket", "gs://b/s", "--xpk-bin", fake])
  assert code == 3, err[-3000:]
  assert "compile fsdp4 for v5p-8 x 1: fits (peak" in err
  assert "compile fsdp3 for v5p-8 x 1: DID NOT COMPILE" in err and "do not divide" in err
  assert "nothing submitted; 1 of 2 runs would not fit or did not compile on v5p-8: fsdp3" in err
  assert not calls.exists()  # xpk was never called
