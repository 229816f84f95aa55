"""Preemption (SIGTERM mid pruning) and resuming on another slice, end to end through MaxText/train.py.

One module-scoped set of runs serves every test: an uninterrupted reference (1 process x 4 devices, fsdp 4), and one
run SIGTERMed during its pruning phase whose run directory is copied twice; the original resumes with the same
command, one copy on 2 processes x 2 devices, the other with tensor 2 x fsdp 2.
"""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import (ROOT, TINY, cpu_env, final_state, read_summary, run_cli, run_configs, run_train,
                      terminate_at_checkpoint)
from sparsity.maxtext import checkpoint, layout, status

pytestmark = pytest.mark.slow

SPARSE = ["configs/sparse_base.yml", *TINY, "vocab_size=1024", "per_device_batch_size=1"]
# Events at steps 6, 8, ..., 24 (the step split set explicitly); periodic checkpoints at steps 8, 16, 24.
# SIGTERM goes once the step-8 checkpoint exists: the preemption step is then well inside [6, 24).
RUN = SPARSE + ["steps=30", "pruning_interval=2", "target_sparsity=0.75", "prune_start_fraction=0.2",
                "prune_end_fraction=0.8", "enable_checkpointing=true", "async_checkpointing=false",
                "checkpoint_period=8"]
FSDP4 = ["ici_fsdp_parallelism=4"]
TENSOR2_FSDP2 = ["ici_fsdp_parallelism=2", "ici_tensor_parallelism=2"]
SIGTERM_AFTER = 8
NAME = "run"
COMPILED = "[train] Total estimated memory size"  # what MaxText prints once it has compiled the training step


def _first_step(text, prefix=""):
  """The first training step a run's output reports (MaxText's "completed step: N")."""
  found = re.findall(rf"^{re.escape(prefix)}.*completed step: (\d+),", text, flags=re.M)
  assert found, text[-3000:]
  return int(found[0])


def _launch(args, base, processes=2, devices=2):
  """``python -m sparsity launch``: (returncode, output)."""
  code, out, err = run_cli(["launch", *args, f"base_output_directory={base}", "--processes", processes,
                            "--devices-per-process", devices])
  return code, out + err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{"straight", "preempted", "same", "two_processes", "tensor", "untouched"}: run directories, with what the
  preempted run left before it resumed (its exit code, summary, checkpoint steps, state), each resume's output, and a
  copy of the preempted run that is never resumed."""
  tmp = tmp_path_factory.mktemp("preemption")
  straight = tmp / "straight"
  run_train(RUN + FSDP4 + [f"run_name={NAME}"], straight, devices=4)
  run_train(RUN + TENSOR2_FSDP2 + [f"run_name={NAME}"], tmp / "straight_tensor", devices=4)  # the layout's own effect

  base = tmp / "same"
  with open(tmp / "preempted.log", "w", encoding="utf-8") as log:
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "MaxText", "train.py"), *RUN, *FSDP4,
                             f"run_name={NAME}", f"base_output_directory={base}"], cwd=ROOT, env=cpu_env(4),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    code = terminate_at_checkpoint(proc, base / NAME, SIGTERM_AFTER)
  with open(tmp / "preempted.log", encoding="utf-8") as f:
    preempted_log = f.read()
  preempted = {"code": code, "log": preempted_log, "summary": read_summary(base, NAME),
               "steps": checkpoint.steps(layout.checkpoints_dir(str(base / NAME))), "state": final_state(base / NAME),
               "plan": checkpoint.read_plan(str(base / NAME))}
  for copy in ("two_processes", "tensor", "untouched"):
    shutil.copytree(base, tmp / copy)

  same = run_train(RUN + FSDP4 + [f"run_name={NAME}"], base, devices=4)  # the same command again
  code2, out2 = _launch(RUN + FSDP4 + [f"run_name={NAME}"], tmp / "two_processes")
  assert code2 == 0, out2[-6000:]
  tensor = run_train(RUN + TENSOR2_FSDP2 + [f"run_name={NAME}"], tmp / "tensor", devices=4)
  return {"straight": straight, "straight_tensor": tmp / "straight_tensor", "preempted": preempted, "untouched": tmp / "untouched", "same": (base, same.stdout + same.stderr),
          "two_processes": (tmp / "two_processes", out2), "tensor": (tmp / "tensor", tensor.stdout + tensor.stderr)}


def test_sigterm_mid_pruning_saves_that_step_and_ends_preempted(runs):
  p = runs["preempted"]
  assert p["code"] == status.PREEMPTED_EXIT_CODE == 143, p["log"][-4000:]
  s = p["summary"]
  assert s["end_status"] == status.PREEMPTED and status.of_summary(s) == status.PREEMPTED and not status.is_result(s)
  assert s["error"] is None and s["stopped_early"] and not s["target_reached"] and not s["data_ran_out"]
  # The checkpoint of the step the run stopped after: a step past the periodic one that triggered the SIGTERM, inside
  # the pruning phase, and the last step trained.
  saved = p["steps"][-1]
  prune = s["prune_steps"]
  assert SIGTERM_AFTER < saved and prune[0] <= saved < prune[-1], (saved, prune)
  assert s["steps_trained"] == saved + 1 < s["steps"] == 30
  assert f"preempted: stopping after step {saved} (checkpoint of step {saved} saved)" in p["log"]
  assert f"completed step: {saved + 1}," not in p["log"]
  # It holds the masks, as the events up to that step left them.
  state = p["state"]
  assert state.state_step == saved + 1 and len(state.masks) == len(p["plan"]["prunable_tensors"]) == 8
  kept = sum(int(m.sum()) for m in state.masks.values())
  events_done = sum(1 for e in prune if e <= saved)
  assert kept == s["kept_after_events"][events_done - 1] == s["final_active_params"] - s["non_prunable_params"]
  assert s["kept_after_events"][-1] < kept < s["prunable_params"]
  for name, mask in state.masks.items():
    assert not np.any(state.params[name][~mask]), name


def _assert_same_end(runs, run_dir, same_masks, exact=False, rel=1e-4, max_differ=0):
  """``run_dir`` completed like the uninterrupted run: the same counts, the final loss equal (``exact``) or within
  ``rel`` (relative), the same final masks (``same_masks``; else all but ``max_differ`` boundary weights), and final
  masks that keep only weights the preemption checkpoint's masks kept (masks only lose entries: the restored masks
  were resharded, not scrambled)."""
  straight = runs["straight"] / NAME
  a, b = read_summary(straight.parent, NAME), read_summary(run_dir.parent, NAME)
  assert b["end_status"] == status.COMPLETED and b["steps_trained"] == 30 and b["target_reached"]
  for key in ("prune_steps", "kept_after_events", "final_active_params", "avg_active_params", "effective_flops"):
    assert a[key] == b[key], key
  if exact:
    assert a["final_train_loss"] == b["final_train_loss"]
  else:
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=rel)
  sa, sb, saved = final_state(straight), final_state(run_dir), runs["preempted"]["state"]
  assert sa.state_step == sb.state_step == 30 and sorted(sa.masks) == sorted(sb.masks) == sorted(saved.masks)
  differ = 0
  for name in sa.masks:
    assert not np.any(sb.masks[name] & ~saved.masks[name]), name
    assert not np.any(sb.params[name][~sb.masks[name]]), name
    if same_masks:
      np.testing.assert_array_equal(sa.masks[name], sb.masks[name], err_msg=name)
    differ += int(np.sum(sa.masks[name] != sb.masks[name]))
    if exact:
      np.testing.assert_array_equal(sa.params[name], sb.params[name], err_msg=name)
  assert differ <= max_differ, differ


def _mask_differences(a_dir, b_dir):
  a, b = final_state(a_dir), final_state(b_dir)
  return sum(int(np.sum(a.masks[n] != b.masks[n])) for n in a.masks)


def test_the_same_command_resumes_from_the_preemption_checkpoint_to_the_same_result(runs):
  run_dir, out = runs["same"]
  assert _first_step(out) == runs["preempted"]["steps"][-1] + 1  # resumed, not restarted
  _assert_same_end(runs, run_dir / NAME, same_masks=True, exact=True)


def test_a_one_process_checkpoint_resumes_on_two_processes_of_two_devices(runs):
  run_dir, out = runs["two_processes"]
  for p in ("[p0] ", "[p1] "):
    assert _first_step(out, p) == runs["preempted"]["steps"][-1] + 1
  _assert_same_end(runs, run_dir / NAME, same_masks=True)  # the same mesh (fsdp 4) over other processes


def test_an_fsdp4_checkpoint_resumes_with_tensor2_fsdp2(runs):
  run_dir, out = runs["tensor"]
  assert _first_step(out) == runs["preempted"]["steps"][-1] + 1
  # Tensor parallelism adds the sharded contractions' partial sums in another order, so the weights trained after the
  # resume differ in their last bits and the later events can flip a few weights at the threshold (as between 1 and
  # 4 devices, tests/test_e2e.py). Two uninterrupted runs, fsdp 4 and tensor 2 x fsdp 2, already differ so (measured:
  # final loss 4e-4 apart, relative): the resumed run must end as close to the fsdp-4 run as that, with exact counts.
  straight, tensor = read_summary(runs["straight"], NAME), read_summary(runs["straight_tensor"], NAME)
  layout_gap = abs(tensor["final_train_loss"] / straight["final_train_loss"] - 1)
  layout_masks = _mask_differences(runs["straight"] / NAME, runs["straight_tensor"] / NAME)
  assert tensor["kept_after_events"] == straight["kept_after_events"]
  _assert_same_end(runs, run_dir / NAME, same_masks=False, rel=max(1e-4, 3 * layout_gap),
                   max_differ=max(3 * layout_masks, 1e-4 * straight["prunable_params"]))


@pytest.fixture(scope="module")
def refused(runs, tmp_path_factory):
  """Resumes that cannot work, from a copy of the preempted run (mid run: a finished run cannot continue), all in
  one process (``conftest.run_configs``): {override: (exit code, output)}."""
  tmp = tmp_path_factory.mktemp("refused")
  shutil.copytree(runs["untouched"], tmp, dirs_exist_ok=True)
  before = checkpoint.steps(layout.checkpoints_dir(str(tmp / NAME)))
  results = run_configs([RUN + FSDP4 + [f"run_name={NAME}", override] for override, _ in REFUSED], tmp, devices=4)
  assert checkpoint.steps(layout.checkpoints_dir(str(tmp / NAME))) == before  # nothing written
  return dict(zip([override for override, _ in REFUSED], results))


REFUSED = [
    ("pruning_structure=1:4", 'pruning_structure: "unstructured" (checkpoint) vs "1:4" (this config)'),
    ("target_sparsity=0.5", "target_sparsity: 0.75 (checkpoint) vs 0.5 (this config)"),
    ("prunable_params=mlp", "but this config prunes ['decoder/layers/mlp/wi_0/kernel'"),
]


@pytest.mark.parametrize("override, message", REFUSED)
def test_a_resume_that_cannot_work_stops_before_compiling(refused, override, message):
  code, text = refused[override]
  assert code != 0 and message in text, text[-4000:]
  assert "cannot be resumed with this config" in text
  assert "completed step" not in text and COMPILED not in text
