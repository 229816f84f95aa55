"""Runs that end right (end to end through MaxText/train.py): several processes, data that runs out, per-tensor
scope, every optimizer MaxText offers, an extension point that is not reached."""

import json
import os
import shutil
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest

from conftest import (C4_TFDS, ROOT, TINY, cpu_env, final_state, kill_at_checkpoint, read_summary, read_tensorboard,
                      run_cli, run_train, start_train)
from sparsity.core import schedules
from sparsity.experiments import collect, sweep
from sparsity.maxtext import launch, layout, status

pytestmark = pytest.mark.slow

SPARSE = ["configs/sparse_base.yml", *TINY, "vocab_size=1024", "per_device_batch_size=1"]
# The same run on 2 processes x 2 devices and on 1 process x 4 devices: one mesh (fsdp 4), synthetic data.
# Events at steps 6..18 (the step split, set explicitly): a kill at the step-12 checkpoint is mid pruning.
MULTI = SPARSE + ["steps=24", "pruning_interval=3", "target_sparsity=0.75", "ici_fsdp_parallelism=4",
                  "prune_start_fraction=0.25", "prune_end_fraction=0.75",
                  "enable_checkpointing=true", "async_checkpointing=false", "checkpoint_period=6"]


def _launch(args, tmp_path, processes=2, devices=2, timeout=600):
  """``python -m sparsity launch`` (the user's way to start N processes): (returncode, output)."""
  code, out, err = run_cli(["launch", *args, f"base_output_directory={tmp_path}", "--processes", processes,
                            "--devices-per-process", devices], timeout=timeout)
  return code, out + err


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
  """The uninterrupted 2 x 2 run and the 1 x 4 run of ``MULTI``."""
  tmp = tmp_path_factory.mktemp("multi")
  start = time.monotonic()
  code, out = _launch(MULTI + ["run_name=two"], tmp)
  seconds = time.monotonic() - start
  assert code == 0, out[-6000:]
  start = time.monotonic()
  run_train(MULTI + ["run_name=one"], tmp, devices=4)
  return tmp, out, seconds, time.monotonic() - start


def test_two_processes_train_prune_checkpoint_and_write_one_summary(multi):
  tmp, out, seconds, single_seconds = multi
  s = read_summary(tmp, "two")
  assert s["steps_trained"] == 24 and not s["stopped_early"] and s["final_sparsity"] == pytest.approx(0.75, abs=1e-5)
  # Printed (and written) by process 0 only, after both counted the final masks.
  assert out.count("sparsity summary written") == 1 and "[p0] sparsity summary written" in out
  for p in ("[p0]", "[p1]"):  # both processes trained every step, with the same loss
    assert len({line.split("loss: ")[1].split(",")[0] for line in out.splitlines()
                if line.startswith(p) and "completed step: 23," in line}) == 1, p
  last = [line.split("loss: ")[1].split(",")[0] for line in out.splitlines() if "completed step: 23," in line]
  assert len(last) == 2 and last[0] == last[1]
  assert seconds < 3 * single_seconds + 60, (seconds, single_seconds)  # no hang at the end


def test_two_processes_equal_one_process_four_devices(multi):
  tmp, _, _, _ = multi
  two, one = read_summary(tmp, "two"), read_summary(tmp, "one")
  for key in ("prune_steps", "kept_after_events", "final_active_params", "avg_active_params", "effective_flops"):
    assert two[key] == one[key], key
  assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-5)
  a, b = final_state(tmp / "two"), final_state(tmp / "one")
  assert sorted(a.masks) == sorted(b.masks) and len(a.masks) == 8
  for name in a.masks:
    np.testing.assert_array_equal(a.masks[name], b.masks[name], err_msg=name)
    assert not np.any(a.params[name][~a.masks[name]]), f"pruned weights of {name} are not zero"
    np.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_killed_processes_resume_to_the_same_result(multi, tmp_path):
  ref_dir, _, _, _ = multi
  args = MULTI + ["run_name=killed", f"base_output_directory={tmp_path}"]
  procs = [start_train(launch.train_argv(args), env={**launch.process_env(i, 2, 2, coordinator=host), "PYTHONPATH": ROOT})
           for host in [launch.free_coordinator()] for i in range(2)]
  kill_at_checkpoint(procs, tmp_path / "killed", 12)  # mid pruning: events 6..18
  code, out = _launch(MULTI + ["run_name=killed"], tmp_path)  # the same command again: both resume
  assert code == 0, out[-6000:]
  a, b = read_summary(ref_dir, "two"), read_summary(tmp_path, "killed")
  assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=1e-6)
  for key in ("prune_steps", "final_active_params", "avg_active_params", "effective_flops"):
    assert a[key] == b[key], key
  ma, mb = final_state(ref_dir / "two").masks, final_state(tmp_path / "killed").masks
  for name in ma:
    np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)


def test_inspect_export_and_finetune_a_checkpoint_written_by_two_processes(multi, tmp_path, c4_path):
  tmp, _, _, _ = multi
  code, out, err = run_cli(["inspect", tmp / "two", "--json"])
  assert code == 0, err[-3000:]
  r, s = json.loads(out), read_summary(tmp, "two")
  assert r["totals"]["active"] == s["final_active_params"] and r["pruner"]["mask_violations"] == 0
  model = ["configs/sparse_base.yml", *TINY, "vocab_size=1024"]
  code, out, err = run_cli(["export", tmp / "two", "--config", *model, "--out", tmp_path / "hf", "--json"])
  assert code == 0, err[-3000:]
  assert json.loads(out)["pruned_params"] == s["prunable_params"] - (s["final_active_params"] - s["non_prunable_params"])
  # Sparse fine-tuning on one process from the two processes' checkpoint keeps its zero set.
  items = layout.items_dir(layout.checkpoints_dir(tmp / "two"), 23)
  run_train(model + ["run_name=ft", "steps=3", "target_sparsity=0", "init_mask_from_zeros=true",
                     f"load_parameters_path={items}", *C4_TFDS, "tokenizer_path=tokenizer.llama2",
                     "enable_checkpointing=true", "async_checkpointing=false", "checkpoint_period=100"], tmp_path)
  before, after = final_state(tmp / "two"), final_state(tmp_path / "ft")
  for name, mask in before.masks.items():
    np.testing.assert_array_equal(after.params[name] == 0, before.params[name] == 0, err_msg=name)
  assert read_summary(tmp_path, "ft")["final_active_params"] == s["final_active_params"]


def test_a_process_that_fails_is_named_and_the_other_stopped(tmp_path):
  # Process 1 dies before joining JAX's distributed start-up; process 0 would wait for it (MaxText's
  # jax_distributed_initialization_timeout is 300 s). The launcher names it and stops process 0.
  start = time.monotonic()
  with open(tmp_path / "log.txt", "w") as log:
    res = launch.launch(SPARSE + ["run_name=broken", "steps=4", "ici_fsdp_parallelism=4",
                                  f"base_output_directory={tmp_path}"], 2, 2, grace=5,
                        script=os.path.join(ROOT, "tests", "fail_on_process.py"), out=log)
  text = (tmp_path / "log.txt").read_text()
  assert res.returncodes[1] == 3 and res.failed_first == 1 and res.exit_code == 3, text[-3000:]
  assert res.returncodes[0] != 0 and "[launch] process 1 exited with code 3" in text
  assert "[p1] process 1: simulated failure" in text
  assert time.monotonic() - start < 120  # stopped, not left waiting for minutes


def test_data_that_runs_out_ends_with_a_summary_of_the_steps_trained(tmp_path, c4_path):
  # 1,000 documents cut to 64 tokens, 8 sequences a step: the data runs out after about 120 of 300 steps, in the
  # middle of the pruning phase (events every 25 steps from 75 to 225).
  out = run_train(["configs/sparse_base.yml", *TINY, *C4_TFDS, "tokenizer_path=tokenizer.llama2",
                   "max_target_length=64", "per_device_batch_size=8", "steps=300", "pruning_interval=25",
                   "prune_start_fraction=0.25", "prune_end_fraction=0.75", "eval_interval=1000", "eval_steps=4",
                   "run_name=out"], tmp_path)
  s = read_summary(tmp_path, "out")
  assert s["stopped_early"] and s["data_ran_out"] and "run out of training data" in s["stop_reason"]
  assert s["end_status"] == "data_exhausted" and s["error"] is None  # MaxText's graceful stop: exit code 0
  assert not s["target_reached"] and "before its pruning schedule ended" in out.stdout + out.stderr
  trained = s["steps_trained"]
  assert 100 < trained < 150 and s["steps"] == 300 and s["tokens"] == trained * 8 * 64
  sched = schedules.make_schedule(300, 0.8, "geometric", 0.25, 0.75, 25)
  done = [e for e in sched.prune_steps if e < trained]
  assert s["prune_steps"] == list(sched.prune_steps) and len(done) == 2  # events at 75 and 100
  kept = sched.keep_counts(s["prunable_params"])[len(done) - 1]
  assert s["final_active_params"] == kept + s["non_prunable_params"] and 0 < s["final_sparsity"] < 0.8
  active = [sched.active_at(t, s["prunable_params"], s["non_prunable_params"]) for t in range(trained)]
  assert s["avg_active_params"] == pytest.approx(np.mean(active), rel=1e-12)
  # The run ends with an evaluation of the weights it trained (MaxText's last one was after step 0).
  assert s["final_eval_step"] == trained - 1 and np.isfinite(s["final_eval_loss"])
  tb = read_tensorboard(tmp_path / "out" / layout.TENSORBOARD)
  assert s["final_eval_loss"] == pytest.approx(tb["eval/avg_loss"][trained - 1], rel=1e-6)
  assert "sparsity summary written" in out.stdout + out.stderr


def test_a_data_pipeline_that_raises_fails_the_run(tmp_path, c4_path):
  # A copy of the C4 slice with a corrupt record near the start of its fourth train shard. Without shuffling or
  # packing the tfds pipeline reaches it after about a dozen steps; tf.data raises DataLossError, which MaxText's data
  # loader turns into StopTraining as it does the end of the data.
  data = tmp_path / "c4"
  shutil.copytree(c4_path, data)
  for root, _, files in os.walk(data):
    os.chmod(root, 0o755)
    for f in files:
      os.chmod(os.path.join(root, f), 0o644)
  with open(data / "c4" / "en" / "3.1.0" / "__local_c4_builder-train.tfrecord-00003-of-00008", "r+b") as f:
    f.seek(20000)
    f.write(b"\xff" * 64)
  out = run_train(["configs/sparse_base.yml", *TINY, "dataset_type=tfds", f"dataset_path={data}",
                   "dataset_name=c4/en:3.1.0", "eval_dataset_name=c4/en:3.1.0", "tokenizer_path=tokenizer.llama2",
                   "enable_data_shuffling=false", "packing=false", "per_device_batch_size=4", "steps=100",
                   "pruning_interval=10", "run_name=corrupt"], tmp_path / "out", check=False)
  text = out.stdout + out.stderr
  assert out.returncode == 1, text[-3000:]
  s = read_summary(tmp_path / "out", "corrupt")
  assert s["end_status"] == "failed" and s["error"].startswith("DataLossError: ") and "corrupted record" in s["error"]
  assert s["stopped_early"] and not s["data_ran_out"] and "training failed after" in text
  trained = s["steps_trained"]
  assert 0 < trained < 100 and s["tokens"] == trained * 4 * 64 and s["steps"] == 100
  done = [k for e, k in zip(s["prune_steps"], s["kept_after_events"]) if e < trained]
  assert done and s["final_active_params"] == done[-1] + s["non_prunable_params"]  # the counts of what it trained
  # Not a result: the sweep would run it again, collect leaves it out.
  assert sweep.end_status(str(tmp_path / "out"), "corrupt") == (status.FAILED, s["error"])
  with pytest.raises(ValueError, match="none of the 1 runs .* completed its schedule"):
    collect.collect(str(tmp_path / "out"))


# Every optimizer MaxText offers, each run sharing a second purpose: three of them prune per tensor (at 63%, 80%, 95%).
OPTIMIZER_RUNS = [("opt_type=adamw", "per_tensor", 0.63), ("opt_type=adam_pax", "per_tensor", 0.95),
                  ("opt_type=sgd", "global", 0.8), ("opt_type=muon muon_type=optax_muon", "per_tensor", 0.8),
                  ("opt_type=muon muon_type=maxtext_muon", "global", 0.8)]


@pytest.mark.parametrize("optimizer, scope, target", OPTIMIZER_RUNS)
def test_every_maxtext_optimizer_prunes_and_per_tensor_scope_keeps_its_counts(tmp_path, optimizer, scope, target):
  run_train(SPARSE + ["run_name=opt", "steps=30", "pruning_interval=5", f"target_sparsity={target}",
                      f"pruning_scope={scope}", *optimizer.split(), "enable_checkpointing=true",
                      "async_checkpointing=false", "checkpoint_period=100"], tmp_path)
  s, state = read_summary(tmp_path, "opt"), final_state(tmp_path / "opt")
  assert np.isfinite(s["final_train_loss"])
  for name, mask in state.masks.items():
    assert not np.any(state.params[name][~mask]), name
  assert s["schedule_split"] == "compute"  # sparse_base.yml's default: the step fractions of the compute split
  # The compute the run spent, summed step by step from its events (brute force): about the paper's 25% dense / 50%
  # pruning / 25% recovery (30 steps, an event every 5: within a few steps' worth), and what the summary says.
  events, kept_after = s["prune_steps"], s["kept_after_events"]
  assert s["prune_start_fraction"] * 30 == pytest.approx(events[0]) and events[0] > 0
  parts = [0, 0, 0]
  for t in range(30):
    active = ([s["prunable_params"]] + [k for e, k in zip(events, kept_after) if e <= t])[-1]
    parts[0 if t < events[0] else 1 if t < events[-1] else 2] += active
  spent = [p / sum(parts) for p in parts]
  assert spent == pytest.approx(list(s["compute_fractions"].values()), rel=1e-12)
  assert spent == pytest.approx([0.25, 0.5, 0.25], abs=0.08), spent
  sizes = {n: m.size for n, m in state.masks.items()}
  kept = {n: int(m.sum()) for n, m in state.masks.items()}
  keep = lambda n: int(Fraction(n) * (1 - Fraction(str(target))) + Fraction(1, 2))  # noqa: E731  round half up
  assert s["final_active_params"] - s["non_prunable_params"] == sum(kept.values())
  assert list(kept_after) == sorted(kept_after, reverse=True) and kept_after[0] < s["prunable_params"]
  if scope == "global":
    assert sum(kept.values()) == keep(sum(sizes.values())) == kept_after[-1]
    assert s["final_sparsity"] == pytest.approx(target, abs=1e-5)
    return
  # per tensor: each tensor keeps its own rounded share (brute force, tensor by tensor; tensors of several sizes:
  # attention, MLP, output projection)
  assert len({*sizes.values()}) >= 3
  for name in state.masks:
    assert kept[name] == keep(sizes[name]), name
  assert kept_after[-1] == sum(keep(n) for n in sizes.values())


def test_a_sparse_run_whose_optimizer_hook_is_not_reached_stops_naming_it(tmp_path):
  env = cpu_env()
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "bypass_hook.py"), *SPARSE, "steps=4",
                        "run_name=bypass", f"base_output_directory={tmp_path}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600, check=False)
  text = out.stdout + out.stderr
  assert out.returncode != 0 and "never reached the extension point(s) optimizers.get_optimizer" in text, text[-3000:]
  assert "completed step" not in text
  with open(layout.summary_path(tmp_path / "bypass"), encoding="utf-8") as f:  # a failed run has a summary
    s = json.load(f)
  assert s["end_status"] == status.FAILED and "never reached the extension point(s)" in s["error"]
