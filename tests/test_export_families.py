"""Hugging Face export and import for every family MaxText's converters map (``sparsity.model.hf_mapping``).

The slow test runs ``benchmarks/export_families.py`` (the command that writes results/export/table.json) on three
families: each trains a tiny 2:4-sparse run through ``MaxText/train.py``, exports it, loads it with transformers in
``.venv-hf`` and compares logits with MaxText's own forward pass, counts zeros and 2:4 groups in the written file,
then imports a locally made random Hugging Face checkpoint, runs MaxText on it and exports it back bit for bit.
"""

import json
import os
import subprocess
import sys
import types

import pytest

from conftest import ROOT, cpu_env, run_cli
from sparsity.model import hf_mapping

ROWS = ("llama3", "qwen3", "mixtral")


def _config(block, model_name="default"):
  return types.SimpleNamespace(decoder_block=block, model_name=model_name)


def test_refused_families_name_themselves_and_the_families_that_work():
  for block, reason in hf_mapping.REFUSED.items():
    with pytest.raises(ValueError) as e:
      hf_mapping.model_key(_config(block))
    msg = str(e.value)
    assert f"decoder_block={block!r}" in msg and reason in msg
    assert "families that work: " + ", ".join(hf_mapping.FAMILY_MODELS) in msg
  assert not set(hf_mapping.REFUSED) & set(hf_mapping.FAMILY_MODELS)


def test_every_family_is_either_exported_or_refused():
  from sparsity.maxtext import families  # pylint: disable=import-outside-toplevel

  assert set(hf_mapping.FAMILY_MODELS) | set(hf_mapping.REFUSED) == set(families.FAMILIES)


def test_each_family_uses_maxtext_tables_that_exist():
  from sparsity.maxtext import modules  # pylint: disable=import-outside-toplevel

  pm, shapes = modules.param_mapping(), modules.hf_shape()
  for block, key in hf_mapping.FAMILY_MODELS.items():
    assert key in pm.PARAM_MAPPING and key in pm.HOOK_FNS and key in shapes.HF_SHAPE, block
    # the run's own model name is used when it has the same tables, else the family's
    assert hf_mapping.model_key(_config(block, key)) == key
    assert hf_mapping.model_key(_config(block, "no-such-model")) == key
  assert hf_mapping.model_key(_config("qwen3", "qwen3-8b")) == "qwen3-8b"
  assert hf_mapping.model_key(_config("qwen3", "gemma2-2b")) == "qwen3-0.6b"  # another family's tables: not used


def test_the_committed_table_covers_every_family():
  with open(os.path.join(ROOT, "results", "export", "table.json"), encoding="utf-8") as f:
    table = json.load(f)
  measured = {r["family"]: r for r in table["rows"]}
  assert {r["family"] for r in table["refused"]} == set(hf_mapping.REFUSED)
  for row in ROWS:
    assert all(measured[row][c] for c in table["checks"]), measured[row]


@pytest.fixture(scope="module")
def table(tmp_path_factory, hf_python):  # pylint: disable=unused-argument
  base = tmp_path_factory.mktemp("export_families")
  out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "export_families.py"), "--only", ",".join(ROWS),
                        "--work", str(base / "work"), "--out", str(base / "out")], cwd=ROOT, env=cpu_env(),
                       capture_output=True, text=True, timeout=3000, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  with open(base / "out" / "table.json", encoding="utf-8") as f:
    rows = {r["family"]: r for r in json.load(f)["rows"]}
  return base, rows


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS)
def test_family_exports_loads_in_transformers_and_round_trips(table, row):
  _, rows = table
  r = rows[row]
  assert "reason" not in r, r.get("reason")
  assert r["export"] and r["loading_info"] == {}  # no missing, unexpected or mismatched tensors
  # a tied embedding: MaxText's logits use it rounded to bfloat16, and so does the comparison (tests/hf_check.py)
  assert r["logits_match"] and r.get("logits_rel_error_bf16_embedding", r["logits_rel_error"]) <= 1e-4
  assert r["zeros_kept"] and r["pruned"] > 0
  assert r["two_four_kept"]
  assert r["import"] and r["import_logits"]
  assert r.get("import_logits_rel_error_bf16_embedding", r["import_logits_rel_error"]) <= 1e-4
  assert r["round_trip"] and r["round_trip_differ"] == [] and r["round_trip_extra"] == []
  assert r["generate"] and len(r["maxtext_generated_ids"]) >= 1 and len(r["hf_generated_ids"]) >= 1


@pytest.mark.slow
def test_import_cli_refuses_a_config_that_does_not_match(table, tmp_path):
  base, _ = table
  made = base / "work" / "llama3-made"
  from benchmarks.export_families import argv_of  # pylint: disable=import-outside-toplevel

  code, _, err = run_cli(["import", made, "--config", *argv_of("llama3"), "base_emb_dim=128", "--out", tmp_path / "x"])
  assert code == 1 and "does not match the MaxText config" in err and "hidden_size (HF=64 vs MaxText=128)" in err, err[-2000:]
  assert not os.path.exists(tmp_path / "x")
  code, out, err = run_cli(["import", made, "--config", *argv_of("llama3"), "--out", tmp_path / "ok", "--json"])
  assert code == 0, err[-3000:]
  r = json.loads(out)
  assert r["load_parameters_path"] == str(tmp_path / "ok" / "0" / "items") and os.path.isdir(r["load_parameters_path"])


def test_import_stacks_a_scanned_router_on_its_layer_axis():
  from sparsity.model.hf_import import _stacking_key  # pylint: disable=import-outside-toplevel

  scanned, unscanned = types.SimpleNamespace(scan_layers=True), types.SimpleNamespace(scan_layers=False)
  router = "params-decoder-layers-MoeBlock_0-gate-kernel"
  per_layer = ["model.layers.0.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.gate.weight"]
  assert "MoeBlock" not in _stacking_key(router, per_layer, scanned)  # a list of layers: not read as experts
  assert _stacking_key(router, per_layer, unscanned) == router  # unscanned: MaxText's list is the experts
  experts = [["l0e0", "l1e0"], ["l0e1", "l1e1"]]
  assert _stacking_key("params-decoder-layers-MoeBlock_0-wi_0", experts, scanned) == "params-decoder-layers-MoeBlock_0-wi_0"


def test_a_multimodal_tables_language_model_takes_the_text_only_names():
  multimodal, text = {"text_config": {}, "vision_config": {}}, {}
  assert hf_mapping.text_only_name("model.language_model.layers.0.mlp.up_proj.weight", multimodal) == \
      "model.layers.0.mlp.up_proj.weight"
  assert hf_mapping.text_only_name("model.language_model.layers.0.mlp.up_proj.weight", text) == \
      "model.language_model.layers.0.mlp.up_proj.weight"
  assert hf_mapping.text_only_name("lm_head.weight", multimodal) == "lm_head.weight"
