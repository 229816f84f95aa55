"""Damaged checkpoints, end to end through MaxText/train.py on the C4 slice (grain): one trained run (checkpoints at
steps 0, 10, 20, 29) is copied once per case, its step-29 checkpoint removed so that the same command resumes from step
20, and the copy damaged: 64 bytes flipped inside an OCDBT data file, a truncated data file, an emptied ``_METADATA``, a
garbage ``manifest.ocdbt``, a masked-out weight made non-zero, the plan file deleted and another target given. Each
stops before training with a short message naming the step and the tensor or the file; an undamaged copy resumes to
the same final weights (bit for bit) as the uninterrupted run."""

import os
import shutil

import numpy as np
import pytest

from conftest import C4, TINY, final_state, read_summary, run_train
from sparsity.maxtext import checkpoint, integrity, layout

pytestmark = pytest.mark.slow

# Grain reads the C4 slice with its iterator checkpointed: a resumed run reads the batches the uninterrupted one did.
RUN = ["configs/sparse_base.yml", *TINY, "dataset_type=grain",
       f"grain_train_files={C4}/c4/en/3.1.0/c4-train.array_record*", "grain_worker_count=0", "vocab_size=1024",
       "per_device_batch_size=1", "steps=30",
       "pruning_interval=2", "target_sparsity=0.75", "prune_start_fraction=0.2", "prune_end_fraction=0.8",
       "enable_checkpointing=true", "checkpoint_period=10", "eval_interval=-1", "run_name=run"]
STEP = 20  # the checkpoint each case resumes from


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The uninterrupted run's base directory, its final state and summary."""
  base = tmp_path_factory.mktemp("integrity") / "straight"
  run_train(RUN, base)
  return {"base": base, "state": final_state(base / "run"), "summary": read_summary(base, "run")}


def _copy(trained, tmp_path, name):
  """A copy of the trained run that resumes from step 20: its run directory and step-20 items directory."""
  base = tmp_path / name
  shutil.copytree(trained["base"], base)
  run = base / "run"
  shutil.rmtree(run / layout.CHECKPOINTS / "29")
  os.remove(layout.summary_path(str(run)))
  return base, layout.items_dir(str(run / layout.CHECKPOINTS), STEP)


def _largest_data_file(items):
  data = os.path.join(items, "ocdbt.process_0", "d")
  return max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)


def _resume(base, extra=()):
  out = run_train(RUN + list(extra), base, check=False)
  return out.returncode, out.stdout + out.stderr


def _error(base):
  """The summary's error: short."""
  error = read_summary(base, "run")["error"]
  assert len(error) < 800, error
  return error


def test_record_beside_every_checkpoint(trained):
  ckpts = layout.checkpoints_dir(str(trained["base"] / "run"))
  assert checkpoint.steps(ckpts) == [0, 10, 20, 29]
  for step in (0, 10, 20, 29):
    record = checkpoint.read_record(ckpts, step)
    assert record["plan"] == checkpoint.read_plan(str(trained["base"] / "run"))
    plan = record["plan"]
    events = [i for i, s in enumerate(plan["prune_steps"]) if s <= step]
    prunable = sum(np.asarray(m).size for m in trained["state"].masks.values())
    assert sum(record["kept"].values()) == (plan["kept_after_events"][events[-1]] if events else prunable)


def test_clean_resume_verifies_and_matches(trained, tmp_path):
  base, _ = _copy(trained, tmp_path, "clean")
  code, out = _resume(base)
  assert code == 0, out[-4000:]
  assert f"checkpoint of step {STEP} verified: fingerprints of" in out
  state = final_state(base / "run")
  for name, value in trained["state"].params.items():
    np.testing.assert_array_equal(state.params[name], value, err_msg=name)
  assert state.masks.keys() == trained["state"].masks.keys()
  for name, mask in trained["state"].masks.items():
    np.testing.assert_array_equal(state.masks[name], mask, err_msg=name)
  ckpts = [layout.checkpoints_dir(str(b / "run")) for b in (trained["base"], base)]
  assert checkpoint.read_record(ckpts[1], 29) == checkpoint.read_record(ckpts[0], 29)  # same values, same record


def _restore_all(items):
  """Every array of a checkpoint, ``{path: NumPy array}`` (Orbax's full restore on this host)."""
  import jax
  import orbax.checkpoint as ocp

  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(items).item_metadata.tree
  tree = ckptr.restore(items, args=ocp.args.PyTreeRestore(
      item=meta, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)))
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _silent_flip(items):
  """Flips 64 bytes inside the largest OCDBT data file at the first of a few offsets where Orbax still restores the
  checkpoint without an error (inside a compressed block, a flip can also break the block's decoding: then Orbax
  itself refuses, tried next); returns the checkpoint paths whose values changed."""
  before = _restore_all(items)
  path = _largest_data_file(items)
  original = open(path, "rb").read()
  for fraction in (0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6):
    at = int(len(original) * fraction)
    with open(path, "wb") as f:
      f.write(original[:at] + bytes(b ^ 0xFF for b in original[at:at + 64]) + original[at + 64:])
    try:
      after = _restore_all(items)
    except Exception:  # pylint: disable=broad-except
      continue
    changed = [p for p, x in before.items() if x.tobytes() != after[p].tobytes()]
    if changed:
      return changed
  with open(path, "wb") as f:
    f.write(original)
  return []


def test_flipped_bytes_in_a_data_file_stop_the_resume(trained, tmp_path):
  """The issue's case: 64 bytes flipped inside a data file of step 20, which Orbax restores silently as wrong values."""
  base, items = _copy(trained, tmp_path, "flip")
  changed = _silent_flip(items)
  assert changed, "no flip offset restored silently"
  code, out = _resume(base)
  assert code != 0
  error = _error(base)
  assert f"the checkpoint of step {STEP}" in error and "its values differ from those saved" in error, error
  tensor = changed[0].split("params/params/")[-1].split("opt_state/")[-1]  # as the train state names it
  assert tensor in error, (changed, error)
  assert "completed step: 21" not in out  # stopped before any training step


def test_truncated_data_file_is_reported_short(trained, tmp_path):
  base, items = _copy(trained, tmp_path, "truncated")
  path = _largest_data_file(items)
  os.truncate(path, os.path.getsize(path) // 2)
  code, _ = _resume(base)
  assert code != 0
  error = _error(base)
  assert "unreadable" in error and path in error and ("OUT_OF_RANGE" in error or "DATA_LOSS" in error), error


def test_nonzero_masked_out_weight_stops_the_resume(trained, tmp_path):
  import jax
  import orbax.checkpoint as ocp

  base, items = _copy(trained, tmp_path, "nonzero")
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(items).item_metadata.tree
  tree = ckptr.restore(items, args=ocp.args.PyTreeRestore(
      item=meta, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)))
  weights = tree["params"]["params"]["decoder"]["layers"]["mlp"]["wo"]["kernel"]
  mask = tree["opt_state"]["masks"]["decoder"]["layers"]["mlp"]["wo"]["kernel"]
  weights[tuple(np.argwhere(~mask)[0])] = 0.25
  shutil.rmtree(items)
  ckptr.save(items, tree)
  code, _ = _resume(base)
  assert code != 0
  assert "decoder/layers/mlp/wo/kernel: 1 masked-out weights are not zero" in _error(base)


def test_unreadable_metadata_and_another_plan_refused_before_training(trained, tmp_path):
  """Emptied _METADATA, garbage manifest.ocdbt, plan file deleted with another target: one process."""
  cases = {}
  base, items = _copy(trained, tmp_path, "metadata")
  open(os.path.join(items, "_METADATA"), "w").close()
  cases["metadata"] = (base, os.path.join(items, "_METADATA"))
  base, items = _copy(trained, tmp_path, "manifest")
  with open(os.path.join(items, "manifest.ocdbt"), "wb") as f:
    f.write(os.urandom(300))
  cases["manifest"] = (base, os.path.join(items, "manifest.ocdbt"))
  base, _ = _copy(trained, tmp_path, "plan")
  os.remove(layout.plan_path(str(base / "run")))
  cases["plan"] = (base, None)
  for name, (base, path) in cases.items():
    code, out = _resume(base, ["target_sparsity=0.5"] if name == "plan" else [])
    assert code != 0
    assert "completed step" not in out, name
    error = _error(base)
    if path is not None:
      assert "unreadable" in error and path in error and "dense" not in error, error
    else:
      assert "prunes differently" in error and "sparsity_fingerprint.json" in error, error
      assert "target_sparsity: 0.75 (checkpoint) vs 0.5 (this config)" in error, error
      assert not os.path.exists(layout.plan_path(str(base / "run")))  # nothing rewritten over the old checkpoints
