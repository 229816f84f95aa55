"""End to end through MaxText/train.py: real C4, several simulated devices, dense parity, resume."""

import glob
import os
import re

import numpy as np
import pytest

from conftest import (TINY, final_state, kill_at_checkpoint, read_metrics, read_summary, read_tensorboard,
                      run_configs, run_train, start_train)
from sparsity.core import compute
from sparsity.maxtext import layout

pytestmark = pytest.mark.slow

SPARSE = ["configs/sparse_base.yml", *TINY]
COMPILED = "[train] Total estimated memory size"  # what MaxText prints once it has compiled the training step


def _final_masks(tmp_path, run_name):
  state = final_state(os.path.join(tmp_path, run_name))
  return state.masks, state.params


def test_c4_tfds_sparse_run_summary_matches_logged_metrics_and_spends_the_papers_split(tmp_path, c4_path):
  """A sparse run on the C4 slice with sparse_base.yml's default schedule (no step fractions set: 25% of the compute
  dense, 50% pruning, 25% recovery): its summary agrees with what MaxText logged and with a brute-force count.
  (Explicit step fractions win over the split: the study miniature's fig1 runs, tests/test_study.py.)"""
  out = run_train(
      SPARSE
      + [
          "run_name=tfds",
          "dataset_type=tfds",
          f"dataset_path={c4_path}",
          "steps=40",
          "pruning_interval=2",
          "target_sparsity=0.8",
          "eval_interval=20",
          "eval_steps=2",
      ],
      tmp_path,
  )
  assert COMPILED in out.stdout + out.stderr  # the marker the bad-config tests look for does appear in a real run
  s = read_summary(tmp_path, "tfds")
  # Logged through MaxText's metric logger to TensorBoard (MaxText stubs TensorBoard out when decoupled
  # from Google Cloud; the hook restores real event files).
  tb = read_tensorboard(layout.tensorboard_dir(tmp_path / "tfds"))
  active = tb["sparsity/active_params"]
  assert sorted(active) == list(range(40))
  # The schedule: the step fractions derived from the compute split, events every 2 steps.
  assert s["schedule_split"] == "compute"
  start, end = s["prune_start_fraction"], s["prune_end_fraction"]
  assert (start, end) == compute.derived_step_fractions(40, 0.8, "geometric", 2, 0.25, 0.5)
  assert s["prune_steps"] == list(range(round(start * 40), round(end * 40) + 1, 2))
  assert s["steps"] == 40 and s["tokens"] == 40 * 4 * 64
  # Exact final count: round(0.2 * prunable) weights survive.
  kept = s["final_active_params"] - s["non_prunable_params"]
  assert kept == int(np.floor(0.2 * s["prunable_params"] + 0.5))
  assert s["final_sparsity"] == pytest.approx(0.8, abs=1e-6)
  # The compute split as spent, by hand from the summary's events and counts: active prunable weights summed over
  # the phases (dense before the first event, pruning up to the last, recovery from it)
  f = s["compute_fractions"]
  assert (f["dense"], f["pruning"], f["recovery"]) == pytest.approx((0.25, 0.5, 0.25), abs=0.01)
  prunable, spent = s["prunable_params"], [0, 0, 0]
  for t in range(40):
    done = [k for e, k in zip(s["prune_steps"], s["kept_after_events"]) if e <= t]
    phase = 0 if t < s["prune_steps"][0] else 1 if t < s["prune_steps"][-1] else 2
    spent[phase] += done[-1] if done else prunable
  assert [f["dense"], f["pruning"], f["recovery"]] == pytest.approx([x / sum(spent) for x in spent], rel=1e-12)
  assert s["effective_flops"] == pytest.approx(6 * s["tokens_per_step"] * sum(spent), rel=1e-12)
  assert s["dense_flops"] == pytest.approx(6 * s["tokens_per_step"] * 40 * prunable, rel=1e-12)
  # The summary's numbers agree with the logged ones.
  assert active[39] == pytest.approx(s["final_active_params"], rel=1e-6)
  assert tb["sparsity/avg_active_params"][39] == pytest.approx(s["avg_active_params"], rel=1e-6)
  assert tb["sparsity/effective_flops"][39] == pytest.approx(s["effective_flops"], rel=1e-6)
  assert tb["sparsity/density"][39] == pytest.approx(kept / s["prunable_params"], rel=1e-6)
  assert s["final_train_loss"] == pytest.approx(tb["learning/loss"][39], rel=1e-6)
  assert s["final_eval_loss"] is not None and np.isfinite(s["final_eval_loss"])
  # MaxText evaluates after steps 0 and 20 (eval_interval=20); the run ends with an evaluation of the final weights.
  assert s["final_eval_step"] == 39 and sorted(tb["eval/avg_loss"]) == [0, 20, 39]
  assert s["final_eval_loss"] == pytest.approx(tb["eval/avg_loss"][39], rel=1e-6)
  # Density is 1 before the first event and falls at each event.
  first = s["prune_steps"][0]
  dens = [tb["sparsity/density"][i] for i in range(40)]
  assert dens[:first] == [1.0] * first and dens[first] < 1.0 and all(a >= b for a, b in zip(dens, dens[1:]))
  # N_avg by hand: the mean over the 40 steps of the logged active params.
  assert s["avg_active_params"] == pytest.approx(np.mean([active[i] for i in range(40)]), rel=1e-6)
  assert s["effective_flops"] < s["dense_flops"]


def test_c4_grain_sparse_run(tmp_path, c4_path):
  run_train(
      SPARSE
      + [
          "run_name=grain",
          "dataset_type=grain",
          f"grain_train_files={c4_path}/c4/en/3.1.0/c4-train.array_record*",
          "grain_worker_count=0",
          "steps=12",
          "pruning_interval=2",
          "target_sparsity=0.5",
          "sparsity_schedule=cubic",
      ],
      tmp_path,
  )
  s = read_summary(tmp_path, "grain")
  assert s["sparsity_schedule"] == "cubic" and s["final_sparsity"] == pytest.approx(0.5, abs=1e-6)
  loss = read_tensorboard(layout.tensorboard_dir(tmp_path / "grain"))["learning/loss"]
  assert sorted(loss) == list(range(12)) and s["final_train_loss"] == pytest.approx(loss[11], rel=1e-6)
  assert loss[11] < loss[0]  # it learns from the real tokens


def _collectives(hlo_text):
  """Every cross-device collective of a compiled HLO module: (op, number of result elements)."""
  out = []
  for m in re.finditer(r"= \w+\[([\d,]*)\][^=]*? (all-gather|all-to-all|all-reduce|collective-permute)(-start)?\(", hlo_text):
    dims = [int(d) for d in m.group(1).split(",") if d]
    out.append((m.group(2), int(np.prod(dims)) if dims else 1))
  return out


def _one_and_four(tmp_path, extra):
  common = SPARSE + [
      "vocab_size=1024",
      "steps=10",
      "enable_checkpointing=true",
      "async_checkpointing=false",
      "checkpoint_period=1000",
      *extra,
  ]
  run_train(common + ["run_name=one", "per_device_batch_size=4"], tmp_path, devices=1)
  run_train(
      common + ["run_name=four", "per_device_batch_size=1", "ici_fsdp_parallelism=2", "ici_tensor_parallelism=2"],
      tmp_path,
      devices=4,
      xla_flags=f"--xla_dump_to={tmp_path}/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=sparsity_mask_event",
  )
  # The pruning event's compiled program on the 4 sharded devices: only all-reduces of histogram-sized counts
  # cross devices, nothing of the weights' size is gathered.
  dumps = glob.glob(os.path.join(tmp_path, "hlo", "*jit_sparsity_mask_event*after_optimizations.txt"))
  assert dumps, os.listdir(os.path.join(tmp_path, "hlo"))
  for path in dumps:
    with open(path, encoding="utf-8") as f:
      text = f.read()
    found = _collectives(text)
    assert found and all(op == "all-reduce" and n <= 256 for op, n in found), (path, found)
    assert not re.search(r"all-gather|all-to-all|collective-permute|reduce-scatter", text), path
  m1, p1 = _final_masks(tmp_path, "one")
  m4, p4 = _final_masks(tmp_path, "four")
  assert sorted(m1) == sorted(m4) and len(m1) == 8
  for name in m1:
    assert not np.any(p1[name][~m1[name]]) and not np.any(p4[name][~m4[name]]), f"pruned weights of {name} not zero"
  assert read_summary(tmp_path, "one")["final_active_params"] == read_summary(tmp_path, "four")["final_active_params"]
  return m1, m4


def test_one_and_four_devices_end_with_the_same_masks(tmp_path):
  # Pruned at step 0 (weights as initialised), then trained 10 steps with the mask fixed: the 1-device run
  # and the fsdp=2 x tensor=2 run select exactly the same weights.
  m1, m4 = _one_and_four(tmp_path, ["target_sparsity=0.7", "sparsity_schedule=one_shot", "prune_start_fraction=0"])
  for name in m1:
    np.testing.assert_array_equal(m1[name], m4[name], err_msg=name)


def test_one_and_four_devices_gradual_pruning_agree(tmp_path):
  # Gradual pruning after training steps: the two layouts add floating-point sums in different orders, so
  # weights at the threshold can differ in their last bits; the counts are identical and the masks agree
  # but for a handful of boundary weights. (Identical weights give identical masks: test_sharded_pruner.)
  m1, m4 = _one_and_four(
      tmp_path, ["target_sparsity=0.7", "pruning_interval=2", "prune_start_fraction=0.1", "prune_end_fraction=0.5"]
  )
  differ = sum(int(np.sum(m1[n] != m4[n])) for n in m1)
  total = sum(m1[n].size for n in m1)
  assert differ / total < 0.005, (differ, total)


def test_dense_run_reproduces_plain_maxtext_step_for_step(tmp_path):
  common = [
      "src/maxtext/configs/base.yml",
      *TINY,
      "vocab_size=1024",
      "steps=8",
      "per_device_batch_size=2",
      "dataset_type=synthetic",
      "enable_checkpointing=false",
      "skip_jax_distributed_system=true",
      "attention=dot_product",
  ]
  run_train(common + ["run_name=ours", "target_sparsity=0", f"metrics_file={tmp_path}/ours.txt"], tmp_path)
  run_train(
      common + ["run_name=plain", f"metrics_file={tmp_path}/plain.txt"],
      tmp_path,
      module="maxtext.trainers.pre_train.train",
  )
  ours, plain = read_metrics(tmp_path / "ours.txt"), read_metrics(tmp_path / "plain.txt")
  assert len(ours) == len(plain) == 8
  assert [m["learning/loss"] for m in ours] == [m["learning/loss"] for m in plain]
  assert all(m["sparsity/density"] == 1.0 for m in ours)
  s = read_summary(tmp_path, "ours")
  assert s["final_active_params"] == s["total_params"] and s["effective_flops"] == s["dense_flops"]


def _resume_args(run_name):
  return SPARSE + [
      f"run_name={run_name}",
      "vocab_size=1024",
      "steps=24",
      "pruning_interval=2",
      "target_sparsity=0.75",
      "enable_checkpointing=true",
      "async_checkpointing=false",
      "checkpoint_period=4",
  ]


def test_killed_run_resumes_to_the_same_result(tmp_path):
  run_train(_resume_args("straight"), tmp_path)

  # Start the same run, kill it hard once the checkpoint at step 8 (mid pruning: events 6..18) exists.
  kill_at_checkpoint([start_train(_resume_args("killed") + [f"base_output_directory={tmp_path}"])],
                     tmp_path / "killed", 8)

  run_train(_resume_args("killed"), tmp_path)  # the same command again: resumes from the last checkpoint
  a, b = read_summary(tmp_path, "straight"), read_summary(tmp_path, "killed")
  assert a["final_train_loss"] == b["final_train_loss"]
  for key in ("prune_steps", "final_active_params", "avg_active_params", "effective_flops"):
    assert a[key] == b[key], key
  ma, _ = _final_masks(tmp_path, "straight")
  mb, _ = _final_masks(tmp_path, "killed")
  for name in ma:
    np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)


BAD = [
    # The validation's own words (the key alone also appears in MaxText's echo of its config and argv).
    ("target_sparsity=1.5", "target_sparsity\n  Input should be less than 1 [type=less_than, input_value=1.5"),
    ("sparsity_schedule=exponential",
     "sparsity_schedule\n  Input should be 'geometric', 'cubic', 'linear' or 'one_shot' [type=literal_error, "
     "input_value='exponential'"),
    ("pruning_interval=0", "pruning_interval\n  Input should be greater than 0 [type=greater_than, input_value=0"),
    ("prune_start_fraction=0.9", "prune_start_fraction (0.9) must be <= prune_end_fraction (0.75)"),
    ("dense_compute_fraction=0.75", "need dense_compute_fraction and pruning_compute_fraction in [0, 1] with a sum"),
    ("prunable_params=nothing_matches_this", "matches no parameter"),
    ("prunable_params=(unclosed", "not a valid regular expression"),
    ("sparsity_typo=0.5", "'sparsity_typo' not in 'target_sparsity', 'sparsity_schedule'"),
]
BAD_ARGS = SPARSE + ["vocab_size=1024", "steps=4", "run_name=bad"]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
  """{override: (exit code, output)} of every BAD case, run in one process (``conftest.run_configs``)."""
  results = run_configs([BAD_ARGS + [override] for override, _ in BAD], tmp_path_factory.mktemp("bad"))
  return dict(zip([override for override, _ in BAD], results))


@pytest.mark.parametrize("override, message", BAD)
def test_bad_config_fails_before_compiling_with_a_clear_message(bad_runs, override, message):
  code, text = bad_runs[override]
  assert code != 0, text[-3000:]
  assert message in text, text[-3000:]
  assert "completed step" not in text and COMPILED not in text
  if "matches no parameter" in message:
    assert "decoder/layers/mlp/wi_0/kernel" in text  # the error lists the candidate paths


def test_the_training_script_itself_exits_non_zero_on_a_bad_config(tmp_path):
  """The cases above run through MaxText/train.py's own entry in one process; the script, as users run it, too."""
  override, message = BAD[0]
  out = run_train(BAD_ARGS + [override], tmp_path, check=False, timeout=300)
  text = out.stdout + out.stderr
  assert out.returncode == 1 and message in text, text[-3000:]
  assert "completed step" not in text and COMPILED not in text


def test_checkpoint_that_does_not_match_the_config_is_a_clear_error(tmp_path):
  args = SPARSE + ["vocab_size=1024", "run_name=mix", "enable_checkpointing=true", "async_checkpointing=false"]
  run_train(args + ["steps=3", "target_sparsity=0"], tmp_path)  # a dense run leaves a checkpoint
  sparse, narrower = run_configs([args + ["steps=6", "target_sparsity=0.5"],
                                  args + ["steps=6", "target_sparsity=0", "base_emb_dim=32"]], tmp_path)
  for (code, text), message in ((sparse, "was written by a dense run (no pruning masks)"),
                                (narrower, "does not match the model of this config")):
    assert code != 0 and message in text, text[-3000:]
    assert "completed step" not in text and COMPILED not in text
