"""Using the sparse model: inspect, export to Hugging Face (dense and sparse-bitmask), sparse fine-tuning, generation.

Fast tests use small synthetic Orbax checkpoints. The slow ones train one tiny sparse run (per-tensor scope,
so that every linear layer keeps 20% of its weights and the comparisons exercise all of them), then check
the exports under PyTorch (.venv-hf, made by tools/setup_hf_env.sh) against MaxText's own forward pass
and generation.
"""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import ROOT, TINY, cpu_env, run_cli, run_train
from sparsity.cli import main as cli_main
from sparsity.core.paths import nest
from sparsity.maxtext import checkpoint as model_checkpoint
from sparsity.maxtext import layout
from sparsity.model import export, inspection as inspect_mod, sparse_bitmask

MODEL = ["configs/sparse_base.yml", *TINY]  # vocab 32000: the LLaMA-2 tokenizer fits the model
TOKENS = [[1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203]]


# ----------------------------------------------------------------------------------------------- helpers


def _save_checkpoint(items_dir, params, masks=None, count=None, step=None):
  """An Orbax checkpoint in MaxText's layout (``sparsity.maxtext.layout.checkpoint_tree``)."""
  import orbax.checkpoint as ocp

  tree = layout.checkpoint_tree(
      nest(params), None if masks is None else nest(masks), None if count is None else np.int32(count),
      inner_state={"0": {"mu": nest({k: np.zeros_like(v) for k, v in params.items()})}},
      step=None if step is None else np.int32(step))
  ocp.PyTreeCheckpointer().save(str(items_dir), tree)


def _synthetic_run(tmp_path, violate=False):
  """run/checkpoints/{2,5}/items of a small model: two prunable kernels with masks, one norm scale."""
  rng = np.random.default_rng(0)
  run = tmp_path / "run"
  ckpts = run / layout.CHECKPOINTS
  out = {}
  for step, keep in ((2, 0.5), (5, 0.25)):
    w1 = rng.standard_normal((4, 2, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 2, 4)).astype(np.float32)
    m1 = rng.random(w1.shape) < keep
    m2 = rng.random(w2.shape) < keep
    w1, w2 = np.where(m1, w1, 0), np.where(m2, w2, 0)
    if violate and step == 5:
      w1[~m1] = 1.0  # pruned weights that are not zero
    params = {"decoder/layers/mlp/wi_0/kernel": w1, "decoder/layers/mlp/wo/kernel": w2,
              "decoder/decoder_norm/scale": np.ones(4, np.float32)}
    masks = {"decoder/layers/mlp/wi_0/kernel": m1, "decoder/layers/mlp/wo/kernel": m2}
    _save_checkpoint(layout.items_dir(ckpts, step), params, masks, count=step + 1, step=step + 1)
    out[step] = (params, masks)
  with open(layout.summary_path(run), "w") as f:
    json.dump({"prune_steps": [0, 2, 4], "sparsity_schedule": "geometric", "target_sparsity": 0.75, "steps": 6}, f)
  return run, out


# -------------------------------------------------------------------------------------------- fast tests


@pytest.mark.parametrize("shape", [(3, 8), (5, 13), (1, 1), (4, 0), (7, 33)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_sparse_bitmask_round_trip_is_bit_exact(shape, dtype):
  import ml_dtypes

  np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
  rng = np.random.default_rng(1)
  w = rng.standard_normal(shape).astype(np_dtype)
  w[rng.random(shape) < 0.8] = 0
  if shape[0] > 2:
    w[1] = 0  # an empty row
  parts = sparse_bitmask.compress(w)
  assert parts["compressed"].dtype == w.dtype and parts["compressed"].size == np.count_nonzero(w)
  assert parts["bitmask"].dtype == np.uint8 and parts["bitmask"].shape == (shape[0], (shape[1] + 7) // 8)
  assert parts["shape"].tolist() == list(shape) and parts["row_offsets"].dtype == np.int64
  assert parts["row_offsets"].tolist() == [int(np.count_nonzero(w[:i])) for i in range(shape[0])]
  back = sparse_bitmask.decompress(parts)
  assert back.dtype == w.dtype and back.tobytes() == w.tobytes()


def test_sparse_bitmask_size_at_80_percent():
  w = np.random.default_rng(2).standard_normal((256, 512)).astype(np.float32)
  w[np.random.default_rng(3).random(w.shape) < 0.8] = 0
  stored = sum(a.nbytes for a in sparse_bitmask.compress(w).values())
  assert stored / w.nbytes < 0.3  # 0.2 * 4 bytes of values + 1/8 byte of mask per weight, of 4 bytes


def test_sparse_bitmask_rejects_non_matrices():
  with pytest.raises(ValueError, match="2-D"):
    sparse_bitmask.compress(np.zeros((2, 2, 2), np.float32))


def test_locate_accepts_run_checkpoints_step_and_items_dirs(tmp_path):
  run, _ = _synthetic_run(tmp_path)
  ck = layout.checkpoints_dir(str(run))
  for path in (run, ck, os.path.dirname(layout.items_dir(ck, 5)), layout.items_dir(ck, 5)):
    where = model_checkpoint.locate(str(path))
    assert (where.items_dir, where.step, where.run_dir) == (layout.items_dir(ck, 5), 5, str(run)), path
  assert model_checkpoint.locate(str(run), step=2).items_dir == layout.items_dir(ck, 2)
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 3"):
    model_checkpoint.locate(str(run), step=3)
  with pytest.raises(FileNotFoundError, match="not of step 2"):
    model_checkpoint.locate(os.path.dirname(layout.items_dir(ck, 5)), step=2)
  with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
    model_checkpoint.locate(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no MaxText checkpoint"):
    model_checkpoint.locate(str(tmp_path / "empty"))


def test_inspect_counts_of_a_synthetic_checkpoint(tmp_path):
  run, saved = _synthetic_run(tmp_path)
  r = inspect_mod.report(str(run))
  params, masks = saved[5]
  assert r["step"] == 5 and r["state_step"] == 6 and r["pruner"]["count"] == 6 and r["pruner"]["masks"]
  rows = {t["path"]: t for t in r["tensors"]}
  for name, m in masks.items():
    assert rows[name]["prunable"] and rows[name]["pruned"] == int((~m).sum())
    assert rows[name]["active"] == int(m.sum()) and rows[name]["sparsity"] == pytest.approx((~m).mean())
  assert not rows["decoder/decoder_norm/scale"]["prunable"] and rows["decoder/decoder_norm/scale"]["pruned"] == 0
  pruned = sum(int((~m).sum()) for m in masks.values())
  assert r["totals"]["params"] == 64 + 64 + 4 and r["totals"]["prunable"] == 128
  assert r["totals"]["pruned"] == pruned and r["totals"]["active"] == 132 - pruned
  assert r["totals"]["sparsity"] == pytest.approx(pruned / 128)
  assert r["pruner"]["mask_violations"] == 0
  assert r["schedule"]["events_done"] == 3 and r["schedule"]["next_event"] is None
  r2 = inspect_mod.report(str(run), step=2)
  assert r2["pruner"]["count"] == 3 and r2["schedule"]["events_done"] == 2 and r2["schedule"]["next_event"] == 4


def test_inspect_cli_table_and_json(tmp_path, capsys):
  run, _ = _synthetic_run(tmp_path, violate=True)
  assert cli_main(["inspect", str(run), "--json"]) == 0
  r = json.loads(capsys.readouterr().out)
  assert r["pruner"]["mask_violations"] > 0
  assert cli_main(["inspect", layout.checkpoints_dir(str(run)), "--step", "2"]) == 0
  text = capsys.readouterr().out
  assert "pruner: count 3, masks present for 2 tensors" in text
  assert "decoder/layers/mlp/wi_0/kernel" in text and "active params" in text
  assert "2 of 3 events done, next at step 4" in text
  assert cli_main(["inspect", str(tmp_path / "missing")]) == 1
  assert "no such checkpoint directory" in capsys.readouterr().err


def test_inspect_dense_checkpoint_counts_zeros(tmp_path):
  w = np.arange(24, dtype=np.float32).reshape(4, 2, 3)  # one zero
  _save_checkpoint(layout.items_dir(tmp_path / "c", 0), {"decoder/layers/mlp/wi_0/kernel": w,
                                                    "token_embedder/embedding": np.zeros((3, 4), np.float32)})
  r = inspect_mod.report(str(tmp_path / "c"))
  assert r["pruner"] == {"count": None, "masks": False, "dense_checkpoint": True, "masked_tensors": 0,
                         "mask_violations": 0}
  assert r["totals"]["prunable"] == 24 and r["totals"]["pruned"] == 1  # the embedding's zeros are not prunable
  assert "no masks (dense checkpoint" in inspect_mod.format_report(r)


def _config(**over):
  base = dict(
      decoder_block="llama2", mlp_activations=["silu", "linear"], num_experts=1, logits_via_embedding=False,
      final_logits_soft_cap=None, rope_type="default", model_name="default", rope_min_timescale=1,
      rope_linear_scaling_factor=1.0, use_qk_norm=False, fused_qkv=False, fused_mlp=False, quantization="",
      param_scan_axis=1, scan_layers=True, emb_dim=8, num_decoder_layers=2, num_query_heads=2, num_kv_heads=1,
      head_dim=4, mlp_dim=12, vocab_size=16,
  )
  base.update(over)
  return types.SimpleNamespace(**base)


def test_unsupported_models_are_refused_with_the_reasons():
  assert export.check_supported(_config()) == "llama3.1-8b"  # MaxText's LLaMA conversion tables
  for block in ("gemma", "mistral", "gpt3", "default"):
    with pytest.raises(ValueError) as e:
      export.check_supported(_config(decoder_block=block))
    msg = str(e.value)
    assert f"decoder_block={block!r}" in msg and f"the {block} family cannot be exported" in msg
    assert "families that work: llama2, qwen2, qwen3, qwen3_moe, mixtral" in msg
  with pytest.raises(ValueError) as e:
    export.check_supported(_config(mlp_activations=["gelu"], num_experts=8, use_qk_norm=True, quantization="int8"))
  msg = str(e.value)
  assert "decoder_block=llama2" in msg and "mlp_activations=['gelu']" in msg and "num_experts=8" in msg
  assert "use_qk_norm=true" in msg and "quantization='int8'" in msg


def test_checkpoint_config_mismatch_names_each_parameter():
  want = layout.llama_param_shapes(8, 2, 2, 1, 4, 12, 16)  # an independent table of MaxText's llama2 parameters
  params = {p: np.zeros(shape, np.float32) for p, shape in want.items()}
  ok = model_checkpoint.ModelState(params=dict(params), masks={}, state_step=1, pruner_count=None)
  export.check_checkpoint(ok, want, "x")
  params["decoder/layers/mlp/wi_0/kernel"] = np.zeros((8, 2, 99), np.float32)
  del params["decoder/decoder_norm/scale"]
  params["decoder/extra/bias"] = np.zeros(3, np.float32)
  bad = model_checkpoint.ModelState(params=params, masks={"decoder/layers/mlp/wo/kernel": np.ones((1,), bool)},
                                    state_step=1, pruner_count=1)
  with pytest.raises(ValueError) as e:
    export.check_checkpoint(bad, want, "ckpt")
  msg = str(e.value)
  assert "does not match the config" in msg
  assert "decoder/layers/mlp/wi_0/kernel: checkpoint (8, 2, 99), config (8, 2, 12)" in msg
  assert "missing decoder/decoder_norm/scale" in msg and "unexpected decoder/extra/bias" in msg
  assert "mask of decoder/layers/mlp/wo/kernel" in msg


_MAPPING_SCRIPT = r"""
import json, sys, numpy as np
from sparsity.maxtext import host, layout
from sparsity.maxtext.config import load_config
from sparsity.model import export, hf_mapping
argv = sys.argv[1:]
config = load_config(host.single_process(argv, extra=("enable_checkpointing=false",)))
key = export.check_supported(config)
want = export.abstract_params(config)
rng = np.random.default_rng(0)
p = {k: rng.standard_normal(v).astype(np.float32) for k, v in want.items()}
hf, origin = hf_mapping.to_hf(p, config, hf_mapping.hf_config(config, key).to_dict(), key, "float32")
E, H, D, KV, M, V = 64, 4, 16, 4, 256, 32000
L = "decoder/layers/"
checks = {
  "abstract_is_the_independent_table": want == layout.llama_param_shapes(E, 2, H, KV, D, M, V),
  # MaxText folds 1/sqrt(head_dim) into the query kernel; Hugging Face scales in attention.
  "q": np.array_equal(hf["model.layers.1.self_attn.q_proj.weight"], (p[L + "self_attention/query/kernel"][:, 1] * 4.0).reshape(E, H * D).T),
  "k": np.array_equal(hf["model.layers.1.self_attn.k_proj.weight"], p[L + "self_attention/key/kernel"][:, 1].reshape(E, KV * D).T),
  "v": np.array_equal(hf["model.layers.0.self_attn.v_proj.weight"], p[L + "self_attention/value/kernel"][:, 0].reshape(E, KV * D).T),
  "o": np.array_equal(hf["model.layers.0.self_attn.o_proj.weight"], p[L + "self_attention/out/kernel"][:, 0].reshape(H * D, E).T),
  "gate": np.array_equal(hf["model.layers.1.mlp.gate_proj.weight"], p[L + "mlp/wi_0/kernel"][:, 1].T),
  "up": np.array_equal(hf["model.layers.1.mlp.up_proj.weight"], p[L + "mlp/wi_1/kernel"][:, 1].T),
  "down": np.array_equal(hf["model.layers.0.mlp.down_proj.weight"], p[L + "mlp/wo/kernel"][:, 0].T),
  "norm": np.array_equal(hf["model.layers.1.post_attention_layernorm.weight"], p[L + "post_self_attention_layer_norm/scale"][:, 1]),
  "lm_head": np.array_equal(hf["lm_head.weight"], p["decoder/logits_dense/kernel"].T),
  "embed": np.array_equal(hf["model.embed_tokens.weight"], p["token_embedder/embedding"]),
  "count": len(hf) == 3 + 2 * 9,
  "origin": origin[L + "mlp/wo/kernel"] == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"],
}
print("RESULT" + json.dumps(checks))
"""


@pytest.mark.slow  # builds the MaxText model in a subprocess
def test_maxtext_mapping_to_hugging_face_names_and_layouts():
  out = subprocess.run([sys.executable, "-c", _MAPPING_SCRIPT, *MODEL], cwd=ROOT, env=cpu_env(), capture_output=True,
                       text=True, timeout=300, check=False)
  lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
  assert out.returncode == 0 and lines, out.stderr[-3000:]
  checks = json.loads(lines[-1][len("RESULT"):])
  assert all(checks.values()), checks


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
  from transformers import LlamaConfig

  cfg = _config(scan_layers=True, max_target_length=16, normalization_layer_epsilon=1e-5, rope_max_timescale=10000,
                tokenizer_path="none", tokenizer_type="sentencepiece", add_bos=True)
  want = layout.llama_param_shapes(8, 2, 2, 1, 4, 12, 16)
  rng = np.random.default_rng(0)
  params = {p: rng.standard_normal(shape).astype(np.float32) for p, shape in want.items()}
  _save_checkpoint(layout.items_dir(layout.checkpoints_dir(tmp_path / "run"), 3), params)
  monkeypatch.setattr(export, "abstract_params", lambda config: want)
  monkeypatch.setattr(export.hf_mapping, "hf_config", lambda config, key=None: LlamaConfig(vocab_size=16, hidden_size=8, num_attention_heads=2))
  monkeypatch.setattr(export.hf_mapping, "tables_config", lambda d, key: d)
  monkeypatch.setattr(export.hf_mapping, "to_hf",
                      lambda p, config, d, key, dtype: ({"lm_head.weight": np.zeros((16, 8), np.float32)}, {}))

  def broken(config, out_dir, vocab):
    with open(os.path.join(out_dir, "tokenizer.model"), "w") as f:
      f.write("half")
    raise OSError("disk full")

  monkeypatch.setattr(export, "write_tokenizer", broken)
  out = tmp_path / "exports" / "model"
  with pytest.raises(OSError, match="disk full"):
    export.export(str(tmp_path / "run"), cfg, str(out))
  assert os.listdir(tmp_path / "exports") == []
  out.mkdir()
  with pytest.raises(ValueError, match="exists"):
    export.export(str(tmp_path / "run"), cfg, str(out))


# -------------------------------------------------------------------------------------------- slow tests


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
  """A tiny LLaMA trained 8 steps, pruned to 80% per tensor at steps 0, 2 and 4; checkpoints at steps 0 and 7."""
  base = tmp_path_factory.mktemp("model_tools")
  run_train(MODEL + [
      "run_name=sparse", "steps=8", "per_device_batch_size=2", "target_sparsity=0.8", "pruning_scope=per_tensor",
      "prune_start_fraction=0", "prune_end_fraction=0.5", "pruning_interval=2", "enable_checkpointing=true",
      "async_checkpointing=false", "checkpoint_period=1000",
  ], base)
  return base / "sparse"


@pytest.fixture(scope="module")
def exports(sparse_run, tmp_path_factory):
  base = tmp_path_factory.mktemp("exports")
  results = {}
  for fmt in ("hf", "compressed"):
    code, out, err = run_cli(["export", str(sparse_run), "--config", *MODEL, "--out", str(base / fmt), "--format", fmt])
    assert code == 0, err[-3000:]
    results[fmt] = out
  return base, results


@pytest.fixture(scope="module")
def hf_results(exports, hf_python, tmp_path_factory):
  base, _ = exports
  tmp = tmp_path_factory.mktemp("hf_check")
  req = {"dense": str(base / "hf"), "compressed": str(base / "compressed"), "tokens": TOKENS, "prompt": "I love to",
         "max_new_tokens": 6}
  (tmp / "req.json").write_text(json.dumps(req))
  out = subprocess.run([hf_python, os.path.join(ROOT, "tests", "hf_check.py"), str(tmp / "req.json"),
                        str(tmp / "res.json")], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads((tmp / "res.json").read_text())


def _final_state(run_dir):
  return model_checkpoint.load(model_checkpoint.locate(str(run_dir)).items_dir)


@pytest.mark.slow
def test_inspect_the_sparse_run(sparse_run):
  code, out, err = run_cli(["inspect", str(sparse_run), "--json"])
  assert code == 0, err[-2000:]
  r = json.loads(out)
  summary = json.loads(open(layout.summary_path(sparse_run)).read())
  t = r["totals"]
  assert r["step"] == 7 and r["state_step"] == 8 and r["pruner"]["count"] == 8 and r["pruner"]["masks"]
  assert r["pruner"]["masked_tensors"] == 8 and r["pruner"]["mask_violations"] == 0
  assert t["prunable"] == summary["prunable_params"] and t["params"] == summary["total_params"]
  assert t["active"] == summary["final_active_params"] and t["sparsity"] == pytest.approx(0.8, abs=1e-4)
  for row in r["tensors"]:
    if row["prunable"]:  # per-tensor scope: every linear layer at 80%
      assert row["sparsity"] == pytest.approx(0.8, abs=1.0 / row["size"] + 1e-9), row["path"]
      assert row["zeros"] >= row["pruned"]
  assert r["schedule"]["prune_steps"] == [0, 2, 4] and r["schedule"]["events_done"] == 3
  code, out, _ = run_cli(["inspect", layout.checkpoints_dir(str(sparse_run)), "--step", "0"])
  assert code == 0
  assert "step: 0 (train state step 1)" in out and "1 of 3 events done, next at step 2" in out


@pytest.mark.slow
def test_export_matches_maxtext_and_compresses(sparse_run, exports, hf_results, tmp_path):
  base, printed = exports
  state = _final_state(sparse_run)
  pruned = sum(int((~m).sum()) for m in state.masks.values())

  # MaxText's own forward pass on the same tokens, float32.
  script = ("import sys, json, numpy as np; from sparsity.model.generate import forward_logits; "
            f"l = forward_logits({MODEL!r}, {str(sparse_run)!r}, np.array({TOKENS!r})); "
            f"np.save({str(tmp_path / 'mt.npy')!r}, l)")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=cpu_env(), capture_output=True, text=True,
                       timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  mt = np.load(tmp_path / "mt.npy")
  hf = np.asarray(hf_results["logits"], np.float32)
  assert hf_results["model_class"] == "LlamaForCausalLM" and hf_results["loaded_equals_file"]
  assert mt.shape == hf.shape == (1, len(TOKENS[0]), 32000)
  assert np.abs(mt - hf).max() < 1e-4, np.abs(mt - hf).max()
  assert np.abs(mt).max() > 0.1  # a real comparison, not of two zero outputs

  # Zeros in the exported linear weights are exactly the pruned weights.
  linear = [k for k in hf_results["zeros"] if k.endswith("_proj.weight") or k == "lm_head.weight"]
  assert len(linear) == 2 * 7 + 1
  assert sum(hf_results["zeros"][k] for k in linear) == pruned
  assert hf_results["zeros"]["model.embed_tokens.weight"] == 0

  # Compressed: the library decompresses it to the dense export bit for bit, and compresses the dense export
  # to the same tensors the export wrote.
  assert hf_results["sparsity_compressor"] == "BitmaskCompressor"
  assert hf_results["quantization_config"]["sparsity_config"]["format"] == "sparse-bitmask"
  assert len(hf_results["decompressed_bitwise_equal"]) == len(hf_results["zeros"])
  assert sorted(hf_results["compressed_modules"]) == sorted(k[: -len(".weight")] for k in linear)
  assert hf_results["library_compress_equal"] == hf_results["compressed_modules"]
  assert np.array_equal(np.asarray(hf_results["decompressed_logits"], np.float32), hf)

  # Size on disk: pruned linear weights well under half their dense bytes at 80% sparsity.
  info = json.loads((base / "compressed" / export.EXPORT_INFO).read_text())
  assert info["sparsity"] == pytest.approx(0.8, abs=1e-4) and info["pruned_params"] == pruned
  assert info["prunable_ratio"] < 0.3, info["prunable_ratio"]
  dense_file = os.path.getsize(base / "hf" / export.SAFETENSORS)
  assert info["weight_file_bytes"] == os.path.getsize(base / "compressed" / export.SAFETENSORS) < dense_file
  assert f"ratio {info['prunable_ratio']:.3f}" in printed["compressed"]

  # The tokenizer files load with transformers and encode as the SentencePiece model does.
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=str(base / "hf" / "tokenizer.model"))
  assert hf_results["tokenizer_ids"] == [1] + sp.encode("The quick brown fox jumps over the lazy dog.")
  for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
    assert (base / "hf" / f).is_file(), f


@pytest.mark.slow
def test_export_errors_leave_out_untouched(sparse_run, exports, tmp_path):
  base, _ = exports
  cases = [
      ([str(tmp_path / "missing"), "--config", *MODEL], "no such checkpoint directory"),
      ([str(sparse_run), "--config", *MODEL, "base_emb_dim=128"], "does not match the config"),
      ([str(sparse_run), "--config", *MODEL, "decoder_block=mistral", "logits_via_embedding=true"],
       "the mistral family cannot be exported"),
  ]
  errors = []
  for args, message in cases:
    code, _, err = run_cli(["export", *args, "--out", str(tmp_path / "out")])
    assert code == 1 and message in err, err[-3000:]  # bad data: exit code 1
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # no --out, no temporary directory
    errors.append(err)
  assert "decoder/layers/mlp/wi_0/kernel: checkpoint (64, 2, 256), config (128, 2, 256)" in errors[1]
  assert "decoder_block='mistral'" in errors[2] and "families that work: llama2" in errors[2]
  code, _, err = run_cli(["export", str(sparse_run), "--config", *MODEL, "--out", str(base / "hf")])
  assert code == 2 and "exists" in err and "--force" in err  # usage: exit code 2


@pytest.mark.slow
def test_sparse_finetune_holds_the_zero_set(sparse_run, tmp_path, c4_path):
  before = _final_state(sparse_run)
  items = model_checkpoint.locate(str(sparse_run)).items_dir
  run_train(MODEL + [
      "run_name=finetune", "steps=5", "per_device_batch_size=2", "target_sparsity=0", "init_mask_from_zeros=true",
      f"load_parameters_path={items}", "learning_rate=1e-2", "dataset_type=grain",
      f"grain_train_files={c4_path}/c4/en/3.1.0/c4-train.array_record*", "grain_worker_count=0",
      "enable_checkpointing=true", "async_checkpointing=false", "checkpoint_period=1000",
  ], tmp_path)
  after = _final_state(tmp_path / "finetune")
  assert after.pruner_count == 5 and sorted(after.masks) == sorted(before.masks)
  changed = 0
  for name, mask in before.masks.items():
    w0, w1 = before.params[name], after.params[name]
    np.testing.assert_array_equal(w1 == 0, w0 == 0, err_msg=f"zero set of {name} changed")
    np.testing.assert_array_equal(after.masks[name], w0 != 0, err_msg=name)
    assert not np.any(w1[~mask]), f"a pruned weight of {name} revived"
    changed += int(np.sum(w1[mask] != w0[mask]))
  assert changed > 0.5 * sum(int(m.sum()) for m in before.masks.values())  # it trained the kept weights
  s0 = json.loads(open(layout.summary_path(sparse_run)).read())
  s1 = json.loads(open(layout.summary_path(tmp_path / "finetune")).read())
  assert s1["final_active_params"] == s0["final_active_params"] and np.isfinite(s1["final_train_loss"])
  # the fixed mask's count is the loaded weights' non-zero prunable count (checked at the end of the run against the
  # final masks), an exact integer
  nonzero = sum(int(np.count_nonzero(before.params[n])) for n in before.masks)
  assert s1["end_status"] == "completed" and s1["prune_steps"] == [0] and s1["kept_after_events"] == [nonzero]


@pytest.mark.slow
def test_generate_with_maxtext_matches_hugging_face_greedy(sparse_run, hf_results):
  code, out, err = run_cli(["generate", str(sparse_run), "--config", *MODEL, "dtype=float32", "--prompt", "I love to",
                            "--max-new-tokens", "6", "--json"])
  assert code == 0, err[-4000:]
  r = json.loads(out)
  assert r["prompt_ids"] == hf_results["prompt_ids"]
  assert len(r["ids"]) == 6 and r["text"].strip()
  assert r["ids"] == hf_results["generated_ids"]  # MaxText's engine and transformers pick the same tokens
