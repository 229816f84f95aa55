"""Mixture-of-experts families end to end through MaxText/train.py: the experts are pruned (issue: the default
``prunable_params`` used to leave them dense), 2:4 groups lie along each expert kernel's input axis, expert
parallelism, and DeepSeek's MLA and routed/shared experts. Checked with NumPy on the checkpoints and against the
planner's independent count."""

import json

import numpy as np
import pytest

from conftest import C4_TFDS, TINY, final_state, read_summary, run_cli, run_train

pytestmark = pytest.mark.slow

MIXTRAL = ["configs/sparse_base.yml", *TINY, "vocab_size=1024", "decoder_block=mixtral", "num_experts=4",
           "num_experts_per_tok=2", "base_moe_mlp_dim=256"]
CKPT = ["enable_checkpointing=true", "async_checkpointing=false", "checkpoint_period=1000"]
EXPERTS = [f"decoder/layers/MoeBlock_0/{k}" for k in ("wi_0", "wi_1", "wo")]
ROUTER = "decoder/layers/MoeBlock_0/gate/kernel"


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
  """The issue's command (target 0.8) on the C4 slice with the study's 1,024-piece tokenizer."""
  base = tmp_path_factory.mktemp("mixtral")
  run_train(MIXTRAL + C4_TFDS + CKPT + ["tokenizer_path=configs/study/c4_bpe_1024.model", "target_sparsity=0.8",
                                        "run_name=mixtral", "steps=30", "pruning_interval=3"], base)
  return base


def test_the_issue_command_prunes_every_expert_kernel(mixtral):
  from sparsity.science import planning  # pylint: disable=import-outside-toplevel

  s = read_summary(mixtral, "mixtral")
  # The planner's count of this shape (written from the architecture, not from the run) is the run's.
  counts = planning.param_counts(planning.ModelShape(64, 4, 4, 16, 256, 2, 1024, False, num_experts=4,
                                                     experts_per_token=2, moe_mlp_dim=256))
  assert s["total_params"] == counts["total"] == 557_888
  assert s["prunable_params"] == counts["prunable"] == 393_216 + 98_304  # experts + attention and output
  m = s["model"]
  assert m["decoder_block"] == "mixtral" and set(EXPERTS) <= set(m["prunable_tensors"]) and ROUTER not in m["prunable_tensors"]
  assert m["prunable_params_by_kind"] == {"experts": 393_216, "attention": 32_768, "output": 65_536}
  assert m["params_by_kind"]["router"] == 512 and "router" not in m["prunable_params_by_kind"]
  assert m["moe"]["active_params_per_token"] == counts["active_per_token"] == 557_888 - 393_216 // 2
  kept = round(0.2 * s["prunable_params"])
  assert s["final_sparsity"] == pytest.approx(0.8, abs=1e-6) and s["kept_after_events"][-1] == kept

  state = final_state(mixtral / "mixtral")
  assert set(EXPERTS) <= set(state.masks) and ROUTER not in state.masks and len(state.masks) == 8
  assert sum(int(m.sum()) for m in state.masks.values()) == kept
  for p, mask in state.masks.items():
    assert not np.any(state.params[p][~mask]), p  # every pruned weight is exactly zero
  assert np.count_nonzero(state.params[ROUTER]) == state.params[ROUTER].size  # the router is dense
  routed = sum(int(state.masks[p].sum()) for p in EXPERTS)
  active = kept + s["non_prunable_params"]
  assert m["moe"]["routed_expert_active_params"] == routed
  assert m["moe"]["final_active_params_per_token"] == pytest.approx(active - routed + routed * 2 / 4)

  code, text, err = run_cli(["inspect", mixtral / "mixtral", "--json"])
  assert code == 0, err[-2000:]
  rows = {t["path"]: t for t in json.loads(text)["tensors"]}
  assert all(rows[p]["prunable"] and rows[p]["pruned"] > 0 for p in EXPERTS) and not rows[ROUTER]["prunable"]


def test_global_pruning_leaves_every_expert_some_weights(mixtral):
  """Per (layer, expert) density of the three expert matrices after global magnitude pruning to 80%."""
  state = final_state(mixtral / "mixtral")
  dens = np.stack([state.masks[p].mean(axis=(2, 3)) for p in EXPERTS])  # (matrix, expert, layer)
  assert dens.shape == (3, 4, 2)
  assert np.all(dens > 0) and np.all(dens < 1)
  total = sum(state.masks[p].sum() for p in EXPERTS) / sum(state.masks[p].size for p in EXPERTS)
  assert dens.mean() == pytest.approx(total)


def _two_of_four_along(w, axis):
  x = np.moveaxis(w != 0, axis, -1)
  return x.reshape(*x.shape[:-1], x.shape[-1] // 4, 4).sum(-1)


def test_2_4_with_expert_parallelism_groups_lie_along_each_experts_input_axis(tmp_path):
  # 2 devices as 2-way expert parallelism (MaxText's dense MoE path: its sparse one needs ragged-all-to-all,
  # which XLA:CPU does not have).
  run_train(MIXTRAL + CKPT + ["pruning_structure=2:4", "run_name=ep", "steps=12", "pruning_interval=2",
                              "per_device_batch_size=1", "ici_expert_parallelism=2", "sparse_matmul=false"],
            tmp_path, devices=2)
  s = read_summary(tmp_path, "ep")
  assert s["pruning_structure"] == "2:4" and s["final_sparsity"] == pytest.approx(0.5, abs=1e-9)
  state = final_state(tmp_path / "ep")
  assert set(EXPERTS) <= set(state.masks)
  for p, w in state.params.items():
    if p not in state.masks:
      continue
    # Independently of the project's layout code: MaxText stores expert kernels (experts, layers, in, out), the
    # attention output projection (heads, layers, head_dim, emb), every other kernel (in, [layers,] out...).
    axis = 2 if p in EXPERTS else w.ndim - 2 if p.endswith("self_attention/out/kernel") else 0
    counts = _two_of_four_along(w, axis)
    assert np.all(counts == 2), (p, np.unique(counts))
  code, text, err = run_cli(["inspect", tmp_path / "ep", "--json"])
  assert code == 0, err[-2000:]
  assert json.loads(text)["structure"] == {"n_of_m": "2:4", "tensors_checked": 8, "ok": True}


def test_deepseek_prunes_mla_and_routed_and_shared_experts(tmp_path):
  run_train(["configs/sparse_base.yml", *TINY, "vocab_size=1024", "model_name=deepseek3-tiny",
             "override_model_config=true", "base_num_decoder_layers=2", "first_num_dense_layers=1", "num_experts=4",
             "num_experts_per_tok=2", "base_moe_mlp_dim=128", "q_lora_rank=32", "kv_lora_rank=16",
             "qk_nope_head_dim=16", "qk_rope_head_dim=8", "v_head_dim=16", "target_sparsity=0.8", "run_name=ds",
             "steps=12", "pruning_interval=2", *CKPT], tmp_path)
  s = read_summary(tmp_path, "ds")
  state = final_state(tmp_path / "ds")
  moe = "decoder/moe_layers/DeepSeekMoeBlock_0/"
  want = [f"{moe}MoeBlock_0/{k}" for k in ("wi_0", "wi_1", "wo")] + [f"{moe}shared_experts/{k}/kernel" for k in
                                                                     ("wi_0", "wi_1", "wo")]
  for layers in ("dense_layers", "moe_layers"):
    want += [f"decoder/{layers}/self_attention/{k}/kernel" for k in ("wq_a", "wq_b", "wkv_a", "wkv_b", "out")]
  want += [f"decoder/dense_layers/mlp/{k}/kernel" for k in ("wi_0", "wi_1", "wo")] + ["decoder/logits_dense/kernel"]
  assert set(state.masks) == set(want)
  assert f"{moe}MoeBlock_0/gate/kernel" in state.params and f"{moe}MoeBlock_0/gate/kernel" not in state.masks
  assert s["prunable_params"] == sum(state.params[p].size for p in want)
  assert sum(int(m.sum()) for m in state.masks.values()) == s["kept_after_events"][-1] == round(0.2 * s["prunable_params"])
  kinds = s["model"]["prunable_params_by_kind"]
  assert set(kinds) == {"attention", "mlp", "experts", "shared_experts", "output"}
  assert kinds["experts"] == sum(state.params[p].size for p in want[:3])


def test_the_committed_inventory_is_what_maxtext_builds(tmp_path):
  """results/families/params.json (what the fast tests check the description against) is current: rebuilt here
  for a few families in a subprocess (benchmarks/families.py inventory), it is the same."""
  import os  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  from conftest import ROOT, cpu_env  # pylint: disable=import-outside-toplevel

  committed = os.path.join(ROOT, "results", "families", "params.json")
  shutil.copy(committed, tmp_path / "committed.json")
  code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from benchmarks import families as f; "
          "json.dump(f.inventory(sys.argv[2].split(',')), open(sys.argv[3], 'w'))")
  out = subprocess.run([sys.executable, "-c", code, ROOT, "mixtral,deepseek,qwen3_next", str(tmp_path / "now.json")],
                       cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  now = json.loads((tmp_path / "now.json").read_text())["families"]
  old = json.loads((tmp_path / "committed.json").read_text())["families"]
  for row, entry in now.items():
    assert entry == old[row], row
