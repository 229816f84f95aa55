"""The per-family description of MaxText's linear weights (``sparsity/maxtext/families.py``), checked against what
MaxText builds for every family (``results/families/params.json``, written by ``benchmarks/families.py inventory``
from MaxText's own model code, with MaxText's logical axis names as the independent reference)."""

import json
import os
import re
import types

import pytest

from conftest import ROOT
from sparsity.maxtext import families, layout

INVENTORY = os.path.join(ROOT, "results", "families", "params.json")


def _inventory():
  with open(INVENTORY, encoding="utf-8") as f:
    return json.load(f)["families"]


def _models():
  """(row, decoder_block, scan, {path: [shape, logical names]}) for every family and scan mode."""
  out = []
  for row, entry in _inventory().items():
    for scan in ("scan_layers=true", "scan_layers=false"):
      if scan in entry:
        out.append((row, entry["decoder_block"], scan, entry[scan]))
  return out


# MaxText's logical name of each kernel's input (contracted) axis, by the last components of its path: the
# reference the description's axes are checked against (written from MaxText's layer code, not from families.py).
EXPECTED_INPUT = [
    (r"(query|key|value|qkv_proj)/kernel$", "embed_attn"),
    (r"attention/attention/out/kernel$", "mlp"),  # Qwen3-Next: 2-D (heads x head_dim, emb)
    (r"out/kernel$", "kv"),  # (heads, head_dim, emb): head_dim
    (r"(wq_a|wkv_a|wkv)/kernel$", "embed_attn"),
    (r"wq_b/kernel$", "q_lora"),
    (r"wkv_b/kernel$", "kv_lora"),
    (r"o_a_proj/kernel$", "q_heads"),  # grouped: (groups, in per group, rank)
    (r"o_b_proj/kernel$", "o_lora_up_proj"),
    (r"(in_proj_qkvz|in_proj_ba)/kernel$", "embed_attn"),
    (r"out_proj/kernel$", "gdn_head"),
    (r"compressor/(kv_proj|gate_proj)/kernel$", "embed_attn"),
    (r"indexer/q_proj/kernel$", "q_lora"),
    (r"indexer/(kv_proj|gate_proj|weights_proj)/kernel$", "embed_attn"),
    (r"gate/kernel$", ("embed", "embed_router")),  # routers
    (r"(wi|wi_0|wi_1)$", "embed_moe"),
    (r"wo$", "mlp_moe"),
    (r"(wi|wi_0|wi_1|ff_1|weights|per_layer_model_projection|per_layer_input_gate)(/kernel)?$", "embed"),
    (r"(wo|ff_2|per_layer_projection|layer_up_projection)(/kernel)?$", "mlp"),
    (r"logits_dense/kernel$", "embed_vocab"),
]


def _expected_input(path):
  for pattern, name in EXPECTED_INPUT:
    if re.search(pattern, path):
      return name
  return None


def test_the_inventory_covers_every_decoder_block_maxtext_offers():
  from maxtext.common.common_types import DecoderBlockType  # pylint: disable=import-outside-toplevel

  blocks = {b.value for b in DecoderBlockType}
  assert blocks == set(families.FAMILIES), blocks ^ set(families.FAMILIES)
  built = {e["decoder_block"] for e in _inventory().values()
           if any("error" not in e.get(s, {"error": 1}) for s in ("scan_layers=true", "scan_layers=false"))}
  assert built == blocks, blocks - built


@pytest.mark.parametrize("row,block,scan,params", _models(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_parameter_is_described_and_axes_are_maxtexts_input_axes(row, block, scan, params):
  assert "error" not in params, params
  fam = families.family(block)
  regex = families.default_prunable()
  for path, (shape, names) in params.items():
    w = families.classify(path, fam)
    assert w is not None, (row, scan, path)
    # The default prunable_params selects exactly the linear layers pruned by default: no embedding, norm, bias,
    # router or other parameter, and every expert.
    assert bool(re.search(regex, path)) == (w.linear and w.prunable), (row, path, w.name)
    if w.linear:
      axis = families.contraction_axis(path, tuple(shape), block)
      want = _expected_input(path)
      assert names is not None and names[axis] in (want if isinstance(want, tuple) else (want,)), (
          row, scan, path, shape, names, axis)
      assert layout.contraction_axis(path, tuple(shape)) == axis  # without the family: every description agrees
    if w.kind == families.EXPERTS:
      assert names[0] == "exp" and w.prunable, path
    if w.kind in (families.EMBEDDING, families.NORM, families.BIAS, families.ROUTER):
      assert not re.search(regex, path), path


def test_moe_families_prune_their_experts_and_not_their_routers():
  for row, entry in _inventory().items():
    fam = families.family(entry["decoder_block"])
    params = entry.get("scan_layers=true") or entry["scan_layers=false"]
    kinds = {families.classify(p, fam).kind for p in params}
    assert (families.EXPERTS in kinds) == (row in ("mixtral", "deepseek", "deepseek4", "gemma4", "qwen3_moe",
                                                   "qwen3_custom_moe", "qwen3_next", "qwen3_5", "gpt_oss", "llama4",
                                                   "envy")), row
    if families.EXPERTS in kinds:
      assert fam.moe and families.ROUTER in kinds, row


def test_the_issue_example_mixtral_counts():
  """decoder_block=mixtral num_experts=4 base_moe_mlp_dim=256 width 64, 2 layers, vocab 1024 (the issue's numbers)."""
  e, layers, mlp, vocab = 64, 2, 256, 1024
  shapes = {
      "decoder/layers/MoeBlock_0/wi_0": (4, layers, e, mlp), "decoder/layers/MoeBlock_0/wi_1": (4, layers, e, mlp),
      "decoder/layers/MoeBlock_0/wo": (4, layers, mlp, e), "decoder/layers/MoeBlock_0/gate/kernel": (e, layers, 4),
      "decoder/layers/self_attention/query/kernel": (e, layers, 4, 16),
      "decoder/layers/self_attention/key/kernel": (e, layers, 4, 16),
      "decoder/layers/self_attention/value/kernel": (e, layers, 4, 16),
      "decoder/layers/self_attention/out/kernel": (4, layers, 16, e), "decoder/logits_dense/kernel": (e, vocab),
      "token_embedder/embedding": (vocab, e), "decoder/decoder_norm/scale": (e,),
      "decoder/layers/pre_self_attention_layer_norm/scale": (e, layers),
      "decoder/layers/post_self_attention_layer_norm/scale": (e, layers),
  }
  import math  # pylint: disable=import-outside-toplevel

  sizes = {p: math.prod(s) for p, s in shapes.items()}
  assert sum(sizes.values()) == 557_888
  fam = families.check_params("mixtral", list(shapes), families.default_prunable())
  prunable = {p: n for p, n in sizes.items() if re.search(families.default_prunable(), p)}
  assert sum(prunable.values()) == 393_216 + 98_304
  assert families.kind_counts(fam, prunable) == {"experts": 393_216, "attention": 32_768, "output": 65_536}
  for p in ("wi_0", "wi_1"):
    assert families.contraction_axis(f"decoder/layers/MoeBlock_0/{p}", shapes[f"decoder/layers/MoeBlock_0/{p}"]) == 2
  assert families.contraction_axis("decoder/layers_0/MoeBlock_0/wo", (4, mlp, e), "mixtral") == 1
  assert families.batch_axes("decoder/layers/MoeBlock_0/wo", (4, layers, mlp, e), "mixtral") == (0,)


def test_stacked_axes_and_param_scan_axis():
  # Two stacked axes (Gemma 4 / Qwen3-Next: layers x local_layers) before the input axis of an expert kernel.
  assert families.contraction_axis("decoder/layers/local_layers/mlp/routed_experts/wi_0", (4, 1, 3, 64, 128)) == 3
  assert families.contraction_axis("decoder/layers/local_layers/attention/out_proj/kernel", (64, 1, 3, 64)) == 0
  # Qwen3-Next's 2-D full-attention output projection: needs its family's description.
  assert families.contraction_axis("decoder/layers/global_layer/attention/attention/out/kernel", (64, 1, 64),
                                   "qwen3_next") == 0
  # Layers stacked on another axis (param_scan_axis=2): the attention output (heads, head_dim, layers, emb).
  assert families.contraction_axis("decoder/layers/self_attention/out/kernel", (4, 16, 2, 64), "llama2", 2) == 1
  assert families.GroupAxis("llama2", 2)("decoder/layers/self_attention/out/kernel", (4, 16, 2, 64)) == 1
  assert families.GroupAxis("not_a_family")("decoder/layers/MoeBlock_0/wi_0", (4, 2, 64, 128)) == 2


def test_a_family_or_parameter_the_description_misses_is_an_error_naming_it():
  with pytest.raises(ValueError, match="decoder_block='transformer_x' is not described"):
    families.family("transformer_x")
  with pytest.raises(ValueError, match=r"decoder_block=llama2: parameters .* not describe.*decoder/layers/mlp/new_proj"):
    families.check_params("llama2", ["decoder/layers/mlp/wi_0/kernel", "decoder/layers/mlp/new_proj/kernel"])
  with pytest.raises(ValueError, match="token_embedder/embedding .* is not a linear weight of decoder_block=llama2"):
    families.contraction_axis("token_embedder/embedding", (1024, 64), "llama2")
  with pytest.raises(ValueError, match="fewer axes than its description"):
    families.contraction_axis("decoder/layers/MoeBlock_0/wi_0", (64, 128), "mixtral")


def test_routers_can_be_included_by_regex():
  regex = families.extend_default(r"+(^|/)gate/kernel$")  # prunable_params='+(^|/)gate/kernel$'
  assert regex.startswith(families.default_prunable())
  assert re.search(regex, "decoder/layers/MoeBlock_0/gate/kernel") and re.search(regex, "decoder/layers/MoeBlock_0/wi_0")
  assert not re.search(regex, "token_embedder/embedding")
  assert families.extend_default("mlp/wi_0") == "mlp/wi_0"
  assert families.contraction_axis("decoder/layers/MoeBlock_0/gate/kernel", (64, 2, 4), "mixtral") == 0


def test_the_shard_check_covers_expert_parallelism():
  """MaxText's own logical-axis rules (base.yml): ``embed_attn`` is split over the ``expert`` mesh axis too; the
  experts' input axis ``embed_moe`` is not, and their expert axis is a batch axis no group crosses."""
  from sparsity.core import pruner, schedules  # pylint: disable=import-outside-toplevel
  from sparsity.maxtext import hook  # pylint: disable=import-outside-toplevel
  from sparsity.maxtext.config import load_config  # pylint: disable=import-outside-toplevel

  config = load_config([os.path.join(ROOT, "configs", "sparse_base.yml"), "steps=10"])

  class Var:
    def __init__(self, shape, names):
      self.shape, self._names = shape, names

    def get_metadata(self):
      return {"sharding_names": self._names}

  plan = pruner.PrunePlan(schedules.make_schedule(10, 0.5), pruning_structure="2:4",
                          group_axis=families.GroupAxis("mixtral"))
  mesh = types.SimpleNamespace(shape={"data": 1, "stage": 1, "fsdp": 1, "fsdp_transpose": 1, "sequence": 1,
                                      "context": 1, "context_usp_ulysses": 1, "tensor": 1, "tensor_transpose": 1,
                                      "tensor_sequence": 1, "autoregressive": 1, "expert": 4})
  experts = {"decoder/layers/MoeBlock_0/wi_0": Var((4, 2, 24, 96), ("exp", "layers", "embed_moe", "mlp_moe")),
             "decoder/layers/MoeBlock_0/wo": Var((4, 2, 96, 24), ("exp", "layers", "mlp_moe", "embed_moe"))}
  hook._check_groups_within_shards(plan, experts, mesh, config)  # pylint: disable=protected-access
  query = {"decoder/layers/self_attention/query/kernel": Var((24, 2, 4, 8), ("embed_attn", "layers", "q_heads", "kv"))}
  with pytest.raises(ValueError, match=r"query/kernel \(24, 2, 4, 8\): axis 0 of size 24 is split over 4 devices "
                                       r"\(expert\) into shards of 6"):
    hook._check_groups_within_shards(plan, {**experts, **query}, mesh, config)  # pylint: disable=protected-access
  ok = {"decoder/layers/self_attention/query/kernel": Var((32, 2, 4, 8), ("embed_attn", "layers", "q_heads", "kv"))}
  hook._check_groups_within_shards(plan, ok, mesh, config)  # pylint: disable=protected-access


def test_plan_counts_every_expert_and_the_per_token_share():
  from sparsity.science import planning  # pylint: disable=import-outside-toplevel

  shape = planning.ModelShape(64, 4, 4, 16, 128, 2, 1024, False, num_experts=8, experts_per_token=2, moe_mlp_dim=64)
  c = planning.param_counts(shape)
  experts = 2 * 8 * 3 * 64 * 64  # layers x experts x (wi_0, wi_1, wo) x emb x expert width
  assert c["experts"] == c["mlp"] == experts and c["router"] == 2 * 64 * 8
  assert c["total"] == c["attention"] + experts + c["logits_dense"] + c["embedding"] + c["norms"] + c["router"]
  assert c["active_per_token"] == c["total"] - experts * 6 // 8
  dense = planning.param_counts(planning.ModelShape(64, 4, 4, 16, 128, 2, 1024, False))
  assert dense["experts"] == dense["router"] == 0 and dense["active_per_token"] == dense["total"]
  p = planning.plan(shape, 100, 512, 0.5, pruning_interval=10)
  assert p["total_params"] == c["total"] and p["moe"]["routed_expert_params"] == experts
  assert p["moe"]["law_params"].startswith("total_params")
  assert p["moe"]["final_active_params_per_token"] == pytest.approx(c["non_prunable"] + 0.5 * c["active_prunable_per_token"])
  cfg = types.SimpleNamespace(base_emb_dim=64, base_num_query_heads=4, base_num_kv_heads=4, head_dim=16, base_mlp_dim=128,
                              base_num_decoder_layers=2, vocab_size=1024, logits_via_embedding=False, steps=100,
                              global_batch_size_to_train_on=8, max_target_length=64, target_sparsity=0.5,
                              sparsity_schedule="geometric", pruning_interval=10, prune_start_fraction=0.25,
                              prune_end_fraction=0.75, decoder_block="mixtral", num_experts=8, num_experts_per_tok=2,
                              base_moe_mlp_dim=64)
  assert planning.config_to_plan_inputs(cfg)["shape"] == shape
  with pytest.raises(ValueError, match="decoder_block='deepseek' has other layers"):
    planning.config_to_plan_inputs(types.SimpleNamespace(**{**vars(cfg), "decoder_block": "deepseek"}))


def test_a_sparse_run_of_an_undescribed_family_stops_naming_it():
  """The hook's check at optimizer init: with the default prunable_params a sparse run needs its family described
  (no silent attention-only pruning); with a regex of the user's own, it does not."""
  from sparsity.core import pruner, schedules  # pylint: disable=import-outside-toplevel
  from sparsity.maxtext import hook  # pylint: disable=import-outside-toplevel

  plan = pruner.PrunePlan(schedules.make_schedule(10, 0.5), families.default_prunable())
  paths = ["decoder/layers/self_attention/query/kernel", "decoder/layers/MoeBlock_0/wi_0"]
  cfg = types.SimpleNamespace(decoder_block="transformer_x", prunable_params=families.default_prunable())
  with pytest.raises(ValueError, match="decoder_block='transformer_x' is not described"):
    hook._check_family(cfg, plan, paths)  # pylint: disable=protected-access
  cfg = types.SimpleNamespace(decoder_block="mixtral", prunable_params=families.default_prunable())
  with pytest.raises(ValueError, match="decoder_block=mixtral: parameters .*MoeBlock_0/wi_9"):
    hook._check_family(cfg, plan, paths + ["decoder/layers/MoeBlock_0/wi_9"])  # pylint: disable=protected-access
  assert hook._check_family(cfg, plan, paths).decoder_block == "mixtral"  # pylint: disable=protected-access
  cfg = types.SimpleNamespace(decoder_block="transformer_x", prunable_params="query")
  assert hook._check_family(cfg, plan, paths) is None  # pylint: disable=protected-access


def test_local_checkpoint_paths_become_absolute(tmp_path, monkeypatch):
  """Orbax restores only absolute paths: a relative load_parameters_path (as the study's recovery.yml writes it) is
  made absolute against the working directory when the config is read; URLs stay as they are."""
  from sparsity.maxtext.config import load_config  # pylint: disable=import-outside-toplevel

  monkeypatch.chdir(tmp_path)
  base = [os.path.join(ROOT, "configs", "sparse_base.yml"), "steps=10"]
  config = load_config(base + ["load_parameters_path=runs/a/checkpoints/9/items"])
  assert config.load_parameters_path == str(tmp_path / "runs" / "a" / "checkpoints" / "9" / "items")
  assert load_config(base + ["load_full_state_path=b/9/items", "enable_checkpointing=true"]).load_full_state_path == str(tmp_path / "b/9/items")
  assert load_config(base + ["load_parameters_path=gs://b/c/9/items"]).load_parameters_path == "gs://b/c/9/items"
  assert load_config(base).load_parameters_path == ""
