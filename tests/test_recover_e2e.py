"""Prune and recover through MaxText/train.py: a dense checkpoint pruned at the first step and recovery-trained."""

import numpy as np
import pytest

from conftest import C4_TFDS, TINY, final_state, read_summary, run_cli, run_train
from sparsity.maxtext import layout

pytestmark = pytest.mark.slow

MODEL = ["configs/sparse_base.yml", *TINY, *C4_TFDS, "tokenizer_path=tokenizer.llama2", "eval_steps=2",
         "enable_checkpointing=true", "async_checkpointing=false", "checkpoint_period=1000"]


def test_prune_and_recover_records_l0_and_the_trajectory(tmp_path, c4_path):
  run_train(MODEL + ["run_name=dense", "steps=20", "target_sparsity=0", "eval_interval=20", "eval_start_step=19"],
            tmp_path)
  dense = read_summary(tmp_path, "dense")
  items = layout.items_dir(layout.checkpoints_dir(tmp_path / "dense"), 19)
  # The documented command: prune at the first step (one_shot at 0) to 50%, then train with the mask fixed.
  run_train(MODEL + ["run_name=rec", "steps=10", f"load_parameters_path={items}", "target_sparsity=0.5",
                     "sparsity_schedule=one_shot", "prune_start_fraction=0", "eval_interval=5",
                     "learning_rate=1e-3"], tmp_path)
  s = read_summary(tmp_path, "rec")
  rec = s["recovery"]
  # L0 is the loaded model's loss on the same eval batches as the dense run's final evaluation
  assert rec["loaded_from"] == items and rec["loss_before_pruning"] == pytest.approx(dense["final_eval_loss"], rel=1e-5)
  assert rec["loss_after_pruning"] > rec["loss_before_pruning"]
  assert [e["step"] for e in s["eval_history"]] == [0, 5, 9]  # MaxText's evaluations, then the final weights'
  assert [e["tokens"] for e in s["eval_history"]] == [(e + 1) * s["tokens_per_step"] for e in (0, 5, 9)]
  assert s["final_eval_loss"] == s["eval_history"][-1]["loss"] and s["final_sparsity"] == pytest.approx(0.5, abs=1e-6)
  state = final_state(tmp_path / "rec")
  for name, mask in state.masks.items():
    assert not np.any(state.params[name][~mask]), name
  kept = sum(int(m.sum()) for m in state.masks.values())
  assert kept == sum(m.size for m in state.masks.values()) // 2  # 50% (every tensor here has an even size)
  # One global threshold, by brute force: the masks keep exactly the loaded (dense) weights whose magnitude is among
  # the largest half of all prunable weights together (a full sort), which per-tensor halves would not.
  loaded = final_state(tmp_path / "dense").params
  mags = np.sort(np.concatenate([np.abs(loaded[n]).ravel() for n in state.masks]))[::-1]
  t = mags[kept - 1]
  # above the threshold every weight is kept, below it none; equal magnitudes at it (ties) fill the rest of the count
  at_t = 0
  for name, mask in state.masks.items():
    mag = np.abs(loaded[name])
    np.testing.assert_array_equal(mask[mag != t], (mag > t)[mag != t], err_msg=name)
    at_t += int(mask[mag == t].sum())
  assert at_t == kept - int(np.sum(mags > t)) >= 1
  assert any(int(m.sum()) != m.size // 2 for m in state.masks.values())  # not half of every tensor
  # The unpruned control: the same checkpoint trained the same steps, dense; it records L0 alike, and nothing pruned
  run_train(MODEL + ["run_name=ctrl", "steps=10", f"load_parameters_path={items}", "target_sparsity=0",
                     "eval_interval=5", "learning_rate=1e-3"], tmp_path)
  c = read_summary(tmp_path, "ctrl")
  assert c["recovery"]["pruned"] is False and rec["pruned"] is True
  assert c["recovery"]["loss_before_pruning"] == rec["loss_before_pruning"]  # same weights, same eval batches
  assert c["recovery"]["loss_after_pruning"] == c["recovery"]["loss_before_pruning"]
  assert [e["tokens"] for e in c["eval_history"]] == [e["tokens"] for e in s["eval_history"]]  # the same steps
  assert c["final_sparsity"] == 0 and c["final_active_params"] == c["total_params"] == s["total_params"]
  code, out, err = run_cli(["collect", tmp_path, "--trajectories", "--out", "-", "--json"])
  assert code == 0, err[-2000:]
  import json  # pylint: disable=import-outside-toplevel

  rows = json.loads(out)
  assert [r["run_name"] for r in rows] == ["ctrl"] * 3 + ["rec"] * 3 and rows[3]["L0"] == rec["loss_before_pruning"]
  assert rows[3]["rho"] == pytest.approx(0.5) and rows[3]["N0"] == s["total_params"] and rows[0]["rho"] == 0
