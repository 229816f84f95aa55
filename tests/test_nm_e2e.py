"""N:M (2:4) sparsity end to end through MaxText/train.py: the pattern in the checkpoint checked independently,
1 vs 4 devices, a mesh that would split groups, resume, sparse fine-tuning and the 2:4 compressed export."""

import json
import os
import subprocess

import numpy as np
import pytest

from conftest import (C4_TFDS, ROOT, TINY, final_state, kill_at_checkpoint, read_summary, run_cli, run_configs,
                      run_train,
                      start_train)
from sparsity.maxtext import layout

pytestmark = pytest.mark.slow

MODEL = ["configs/sparse_base.yml", *TINY]
NM = MODEL + ["vocab_size=1024", "pruning_structure=2:4", "enable_checkpointing=true", "async_checkpointing=false"]


def _groups_along_contraction(w, path, m=4):
  """Non-zeros of every group of m consecutive weights along the kernel's input dimension, computed here from the
  kernel's shape (not from the project's layout module): MaxText kernels are (in..., out...), layers stacked on
  axis 1 when scanned; the attention output projection's input is (heads, head_dim), grouped along head_dim."""
  axis = w.ndim - 2 if path.endswith("self_attention/out/kernel") else 0
  x = np.moveaxis(w != 0, axis, -1)
  return x.reshape(*x.shape[:-1], x.shape[-1] // m, m).sum(-1)


@pytest.fixture(scope="module")
def nm_run(tmp_path_factory):
  base = tmp_path_factory.mktemp("nm")
  out = run_train(NM + ["run_name=nm", "steps=24", "pruning_interval=3", "checkpoint_period=1000"], base)
  return base, out


def test_the_readme_command_with_2_4_trains_and_every_group_holds_two(nm_run):
  base, out = nm_run
  s = read_summary(base, "nm")
  assert s["target_sparsity"] == 0.5 and s["pruning_structure"] == "2:4"  # target_sparsity: auto in sparse_base.yml
  assert s["final_sparsity"] == pytest.approx(0.5, abs=1e-9) and s["target_reached"]
  state = final_state(base / "nm")
  assert len(state.params) > 8 and len(state.masks) == 8
  for path, w in state.params.items():
    if path in state.masks:
      counts = _groups_along_contraction(w, path)
      assert np.all(counts == 2), (path, np.unique(counts))
  code, text, err = run_cli(["inspect", base / "nm", "--json"])
  assert code == 0, err[-2000:]
  r = json.loads(text)
  assert r["structure"] == {"n_of_m": "2:4", "tensors_checked": 8, "ok": True}


def test_without_scan_layers_every_layers_kernels_hold_2_of_4(tmp_path):
  run_train(NM + ["run_name=unscanned", "steps=12", "pruning_interval=3", "scan_layers=false", "checkpoint_period=1000"],
            tmp_path)
  state = final_state(tmp_path / "unscanned")
  assert any(p.startswith("decoder/layers_1/") for p in state.masks) and len(state.masks) == 2 * 7 + 1
  for path, mask in state.masks.items():
    counts = _groups_along_contraction(state.params[path], path)
    assert np.all(counts == 2), (path, np.unique(counts))


def test_one_and_four_devices_end_with_the_same_2_4_masks(tmp_path):
  args = NM + ["steps=6", "target_sparsity=0.5", "sparsity_schedule=one_shot", "prune_start_fraction=0",
               "checkpoint_period=1000"]
  run_train(args + ["run_name=one", "per_device_batch_size=4"], tmp_path, devices=1)
  run_train(args + ["run_name=four", "per_device_batch_size=1", "ici_fsdp_parallelism=2", "ici_tensor_parallelism=2"],
            tmp_path, devices=4)
  a, b = final_state(tmp_path / "one"), final_state(tmp_path / "four")
  for name in a.masks:
    np.testing.assert_array_equal(a.masks[name], b.masks[name], err_msg=name)
  assert read_summary(tmp_path, "one")["avg_active_params"] == read_summary(tmp_path, "four")["avg_active_params"]


def test_a_mesh_that_splits_groups_is_refused_before_compiling(tmp_path):
  # Width 24 over fsdp=4: shards of 6 along the input dimension of the query/key/value and MLP-in kernels.
  out = run_train(NM + ["run_name=split", "steps=4", "base_emb_dim=24", "head_dim=8", "base_mlp_dim=96",
                        "per_device_batch_size=1", "ici_fsdp_parallelism=4"], tmp_path, devices=4, check=False)
  text = out.stdout + out.stderr
  assert out.returncode != 0 and "would straddle two shards" in text, text[-3000:]
  assert "self_attention/query/kernel (24, 2, 4, 8): axis 0 of size 24 is split over 4 devices (fsdp)" in text
  assert "[train] Total estimated memory size" not in text and "completed step" not in text


def test_bad_structures_are_clear_errors(tmp_path):
  cases = [("pruning_structure=2:2", "need 0 < N < M"), ("target_sparsity=0.75", "is above 1 - N/M = 0.5"),
           ("base_mlp_dim=250", "not a multiple of 4")]
  results = run_configs([NM + ["run_name=bad", "steps=4", override] for override, _ in cases], tmp_path)
  for (override, message), (code, text) in zip(cases, results):
    assert code != 0 and message in text, (override, text[-3000:])
    assert "completed step" not in text


def test_a_killed_2_4_run_resumes_to_the_same_result(nm_run, tmp_path):
  base, _ = nm_run
  args = NM + ["run_name=killed", "steps=24", "pruning_interval=3", "checkpoint_period=6",
               f"base_output_directory={tmp_path}"]
  kill_at_checkpoint([start_train(args)], tmp_path / "killed", 12)
  run_train(args[:-1], tmp_path)
  a, b = read_summary(base, "nm"), read_summary(tmp_path, "killed")
  assert a["final_train_loss"] == b["final_train_loss"] and a["avg_active_params"] == b["avg_active_params"]
  ma, mb = final_state(base / "nm").masks, final_state(tmp_path / "killed").masks
  for name in ma:
    np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)


def test_sparse_finetuning_from_a_2_4_checkpoint_keeps_the_pattern(nm_run, tmp_path, c4_path):
  base, _ = nm_run
  items = layout.items_dir(layout.checkpoints_dir(base / "nm"), 23)
  run_train(MODEL + ["vocab_size=1024", "run_name=ft", "steps=4", "target_sparsity=0", "init_mask_from_zeros=true",
                     f"load_parameters_path={items}", *C4_TFDS, "tokenizer_path=tokenizer.llama2",
                     "enable_checkpointing=true", "async_checkpointing=false", "checkpoint_period=100"], tmp_path)
  state = final_state(tmp_path / "ft")
  for path, mask in state.masks.items():
    assert np.all(_groups_along_contraction(state.params[path], path) <= 2), path
    assert np.all(_groups_along_contraction(mask, path) == 2), path


def test_2_4_export_decompresses_bit_for_bit(nm_run, tmp_path, hf_python):
  base, _ = nm_run
  model = MODEL + ["vocab_size=1024"]
  for fmt in ("hf", "compressed-24"):
    code, _, err = run_cli(["export", base / "nm", "--config", *model, "--out", tmp_path / fmt, "--format", fmt])
    assert code == 0, err[-3000:]
  info = json.loads((tmp_path / "compressed-24" / "sparsity_export.json").read_text())
  assert info["format"] == "compressed-24" and info["prunable_ratio"] < 0.7  # half the values plus a bitmask
  req = {"dense": str(tmp_path / "hf"), "compressed24": str(tmp_path / "compressed-24"), "tokens": [[1, 5, 9]]}
  (tmp_path / "req.json").write_text(json.dumps(req))
  out = subprocess.run([hf_python, os.path.join(ROOT, "tests", "hf_check.py"), str(tmp_path / "req.json"),
                        str(tmp_path / "res.json")], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  r = json.loads((tmp_path / "res.json").read_text())
  assert r["compressor24"] == "Sparse24BitMaskCompressor"
  assert r["quantization_config24"]["sparsity_config"]["format"] == "sparse-24-bitmask"
  assert len(r["decompressed24_bitwise_equal"]) == len(r["zeros"])  # every weight, bit for bit
  assert len(r["compressed24_modules"]) == 2 * 7 + 1 and r["library_compress24_equal"] == r["compressed24_modules"]
  # an unstructured model is refused in this format
  code, _, err = run_cli(["export", base / "nm", "--config", *model, "--out", tmp_path / "x", "--format",
                          "compressed-24", "--step", "0"])
  assert code == 1 and "not 2:4 sparse" in err
