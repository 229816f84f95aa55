"""A run's family in Hugging Face terms, through MaxText's own checkpoint converters (``maxtext.checkpoint_conversion``).

Nothing about a parameter layout is written here: names, stacking, reshapes, transposes, expert splits and scales
are MaxText's ``PARAM_MAPPING``, ``HOOK_FNS`` and ``HF_SHAPE`` tables, applied by its own ``process_maxtext_param``
(MaxText -> Hugging Face) and its ``to_maxtext`` stacking helpers (Hugging Face -> MaxText). Those tables are keyed
by a MaxText model name; ``FAMILY_MODELS`` says which one stands for each ``decoder_block`` (the run's own
``model_name`` when the tables have it). The Hugging Face config is transformers' own class for the family
(MaxText's ``HF_MODEL_CONFIGS`` entry of that model), with the run's architecture written into it by MaxText's
``_validate_or_update_architecture`` plus the settings ``EXTRA_ATTRS`` lists.

Everything here runs in the main environment (NumPy, JAX, transformers' config classes; no PyTorch).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sparsity.maxtext import modules

# decoder_block -> the MaxText model name whose conversion tables and Hugging Face config stand for the family.
FAMILY_MODELS = {
    "llama2": "llama3.1-8b",
    "qwen2": "qwen2.5-1.5b",
    "qwen3": "qwen3-0.6b",
    "qwen3_moe": "qwen3-30b-a3b",
    "mixtral": "mixtral-8x7b",
    "gemma2": "gemma2-2b",
    "gemma3": "gemma3-4b",
    "gpt_oss": "gpt-oss-20b",
}

# decoder_block -> why export refuses it.
REFUSED = {
    "default": "MaxText's generic decoder has no Hugging Face architecture",
    "mistral": "MaxText's converter has no Mistral table (it maps only mixtral-8x7b/8x22b)",
    "gemma": "MaxText's converter has no Gemma 1 table",
    "gpt3": "MaxText's converter has no GPT-3 table",
    "llama4": "MaxText's converter has no Llama 4 table in PARAM_MAPPING",
    "qwen3_custom_moe": "MaxText's converter has no table for the custom Qwen3 MoE (latent expert projection)",
    "deepseek": ("mapped by MaxText's converter (deepseek3-671b's tables); transformers' DeepseekV3ForCausalLM loads "
                 "the tiny export with MaxText's logits (within 5e-7 of MaxText's Linen forward pass, checked by hand) but initializes the router's "
                 "e_score_correction_bias, which MaxText's table does not map, and MaxText's from_pretrained forward "
                 "of the scanned checkpoint fails ('Array has been deleted'), so import and generate are unchecked"),
    "deepseek4": "mapped by MaxText's converter (deepseek4-284b); not verified against transformers",
    "gemma4": "mapped by MaxText's converter; not verified against transformers yet",
    "gemma4_small": "mapped by MaxText's converter; not verified against transformers yet",
    "qwen3_next": "mapped by MaxText's converter; not verified against transformers yet",
    "qwen3_5": "mapped by MaxText's converter; not verified against transformers yet",
    "olmo3": "MaxText's converter has no HF_SHAPE table for olmo3",
    "envy": "MaxText's converter has no table for it",
    "simple": "MaxText's test block",
    "simple_mlp": "MaxText's test block",
}

# (Hugging Face attribute, MaxText attribute) pairs written besides MaxText's own list (shape attributes): settings a
# tiny or modified run changes and transformers' forward pass reads.
EXTRA_ATTRS = (
    ("rms_norm_eps", "normalization_layer_epsilon"),
    ("tie_word_embeddings", "logits_via_embedding"),
    ("first_k_dense_replace", "first_num_dense_layers"),
    ("n_group", "n_routing_groups"),
    ("topk_group", "topk_routing_group"),
    ("routed_scaling_factor", "routed_scaling_factor"),
    ("sliding_window", "sliding_window_size"),
    ("final_logit_softcapping", "final_logits_soft_cap"),
    ("attn_logit_softcapping", "attn_logits_soft_cap"),
)
OFF_WHEN_ZERO = ("sliding_window", "final_logit_softcapping", "attn_logit_softcapping")


def _val(x):
  return getattr(x, "value", x)


def supported() -> tuple[str, ...]:
  return tuple(FAMILY_MODELS)


def model_key(config) -> str:
  """The MaxText model name whose conversion tables the run uses; a ValueError naming the family if none."""
  block = str(_val(config.decoder_block))
  if block not in FAMILY_MODELS:
    reason = REFUSED.get(block, "not a family MaxText's converter maps")
    raise ValueError(f"decoder_block={block!r}: the {block} family cannot be exported or imported ({reason}); "
                     f"families that work: {', '.join(FAMILY_MODELS)}")
  name = str(config.model_name)
  pm = modules.param_mapping()
  if name in pm.PARAM_MAPPING and name in pm.HOOK_FNS and name in modules.hf_shape().HF_SHAPE \
      and _family_of(name) == _family_of(FAMILY_MODELS[block]):
    return name
  return FAMILY_MODELS[block]


def _family_of(name: str) -> str:
  """The conversion table a model name uses (its PARAM_MAPPING function's name)."""
  return modules.param_mapping().PARAM_MAPPING[name].__name__ if name in modules.param_mapping().PARAM_MAPPING else ""


def hf_config(config, key: str | None = None):
  """transformers' config object of the run (MaxText's ``HF_MODEL_CONFIGS`` entry for ``key``, its class rebuilt with
  the run's architecture)."""
  import copy  # pylint: disable=import-outside-toplevel

  key = key or model_key(config)
  base = modules.hf_model_configs().HF_MODEL_CONFIGS[key]
  base = getattr(base, "text_config", None) or base  # a multimodal entry: its language model
  cfg = copy.deepcopy(base)
  modules.to_huggingface()._validate_or_update_architecture(cfg, config, override=True)  # pylint: disable=protected-access
  d = cfg.to_dict()
  for hf_attr, mt_attr in EXTRA_ATTRS:
    value = getattr(config, mt_attr, None)
    if hf_attr not in d or value is None:
      continue
    if hf_attr in OFF_WHEN_ZERO and not value:
      d[hf_attr] = None  # MaxText's 0: no sliding window / no soft cap
    else:
      d[hf_attr] = type(d[hf_attr])(value) if d[hf_attr] is not None else value
  if "query_pre_attn_scalar" in d:
    d["query_pre_attn_scalar"] = _query_pre_attn_scalar(config)
  if "qk_nope_head_dim" in d:
    d.pop("qk_head_dim", None)  # derived by the class from the nope and rope parts
    d["head_dim"] = d["qk_rope_head_dim"]  # transformers' MLA rotates head_dim = the rope part
  for k in ("n_group", "topk_group"):
    if d.get(k) is not None and d[k] < 1:
      d[k] = 1  # MaxText's -1: no routing groups
  if d.get("layer_types") is not None and len(d["layer_types"]) != d["num_hidden_layers"]:
    d.pop("layer_types")  # the class derives it for the new depth
  rope = d.get("rope_parameters")
  if _val(getattr(config, "rope_type", "default")) == "default" and isinstance(rope, dict) and "rope_theta" in rope:
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": float(config.rope_max_timescale)}
  elif isinstance(rope, dict) and "full_attention" in rope and "sliding_attention" in rope:  # global and local layers
    rope["full_attention"]["rope_theta"] = float(config.rope_max_timescale)
    if rope["full_attention"].get("rope_type") == "linear":
      rope["full_attention"]["factor"] = float(config.rope_linear_scaling_factor)
    rope["sliding_attention"]["rope_theta"] = float(getattr(config, "local_rope_max_timescale", config.rope_max_timescale))
  if list(config.mlp_activations)[0] == "gelu":  # MaxText's gelu is the tanh approximation
    for k in ("hidden_activation", "hidden_act"):
      if k in d:
        d[k] = "gelu_pytorch_tanh"
  for k in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the reference model's tokenizer; export sets the run's
    d[k] = None
  for k in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
    d.pop(k, None)
  out = type(cfg)(**d)
  out.architectures = [_causal_lm_class(out)]
  return out


def _query_pre_attn_scalar(config) -> float:
  """Gemma's ``query_pre_attn_scalar`` (transformers scales queries by its inverse square root) of the run: Gemma 3's
  is MaxText's own scalar (``maxtext.models.gemma3.get_query_pre_attn_scalar``, the inverse square root); Gemma 2's
  is ``head_dim``, the factor by which MaxText's conversion hook (``scale_query_layer``) unfolds the query kernel."""
  if str(_val(config.decoder_block)) == "gemma3":
    scalar = modules.model_module("gemma3").get_query_pre_attn_scalar(config)
    return int(round(scalar ** -2))
  return int(config.head_dim)


def _causal_lm_class(cfg) -> str:
  from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # pylint: disable=import-outside-toplevel

  return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[cfg.model_type]


def tables_config(hf_dict: dict, key: str) -> dict:
  """The config dict MaxText's tables of ``key`` read: a multimodal entry's tables read the language model from its
  ``text_config`` (the export writes that language model alone)."""
  full = modules.hf_model_configs().HF_MODEL_CONFIGS[key]
  if getattr(full, "text_config", None) is None:
    return hf_dict
  d = full.to_dict()
  d["text_config"] = hf_dict
  return d


@dataclasses.dataclass
class Tables:
  """MaxText's conversion tables for one run, in one direction."""

  names: dict
  hooks: dict
  shapes: dict


def tables(config, hf_dict: dict, key: str, to_hf: bool) -> Tables:
  """``PARAM_MAPPING``, ``HOOK_FNS`` (``saving_to_hf=to_hf``) and ``HF_SHAPE`` of ``key`` for the run; composite
  keys promoted as MaxText's ``to_huggingface`` does."""
  pm = modules.param_mapping()
  scan = bool(config.scan_layers)
  if to_hf:
    m = modules.to_huggingface()._get_model_mappings(key, scan, hf_dict, config)  # pylint: disable=protected-access
    names, hooks, shapes = m["param_mapping"], m["hook_fn_mapping"], m["shape_mapping"]
  else:
    names = pm.PARAM_MAPPING[key](hf_dict, config, scan)
    hooks = pm.HOOK_FNS[key](hf_dict, config, scan, saving_to_hf=False)
    shapes = modules.hf_shape().HF_SHAPE[key](hf_dict)
  if str(_val(config.decoder_block)) == "llama2" and _val(config.rope_type) != "llama3.1":
    # llama3.1's interleaved -> rotate-half permutation does not apply: MaxText's llama2 decoder uses the
    # rotate-half embedding Hugging Face LLaMA uses (max_utils.unpermute_from_match_maxtext_rope is the identity).
    hooks = {k: [f for f in v if f.__name__ != "adjust_rope"] if isinstance(v, list) else v for k, v in hooks.items()}
  return Tables(names, hooks, shapes)


def _flat_names(v) -> list[str]:
  if v is None:
    return []
  if isinstance(v, (list, tuple)):
    return [n for x in v for n in _flat_names(x)]
  return [v]


def to_hf(params: dict[str, np.ndarray], config, hf_dict: dict, key: str, dtype: str):
  """``({Hugging Face name: array}, {MaxText path: [Hugging Face names]})`` through MaxText's ``process_maxtext_param``."""
  from sparsity.maxtext import layout  # pylint: disable=import-outside-toplevel

  t = tables(config, hf_dict, key, to_hf=True)
  process = modules.conversion_utils().process_maxtext_param
  by_key = {layout.conversion_key(p): p for p in params}
  composite = {k: mk for mk in t.names if isinstance(mk, tuple) for k in mk}
  unmapped = sorted(p for k, p in by_key.items() if k not in t.names and k not in composite)
  if unmapped:
    raise ValueError(f"MaxText's {key} conversion table has no Hugging Face name for: {', '.join(unmapped)} (the run's "
                     "settings differ from the family's Hugging Face architecture)")
  mt_config = _ConfigView(config, dtype)
  out: dict[str, np.ndarray] = {}
  origin: dict[str, list[str]] = {}
  for mk, hf_names in t.names.items():
    parts = mk if isinstance(mk, tuple) else (mk,)
    if not all(k in by_key for k in parts):
      continue
    weight = [params[by_key[k]] for k in parts] if isinstance(mk, tuple) else params[by_key[mk]]
    for name, arr in process(mk, weight, t.names, t.hooks, t.shapes, mt_config):
      out[text_only_name(name, hf_dict)] = np.ascontiguousarray(np.asarray(arr))
    for k in parts:
      origin[by_key[k]] = [text_only_name(n, hf_dict) for n in _flat_names(hf_names)]
  return out, origin


MULTIMODAL_PREFIX, TEXT_PREFIX = "model.language_model.", "model."


def text_only_name(name: str, hf_dict: dict) -> str:
  """The name of a multimodal table's language-model tensor in the text-only class the export writes (e.g.
  ``Gemma3ForCausalLM`` keeps ``model.layers...`` where ``Gemma3ForConditionalGeneration`` has
  ``model.language_model.layers...``); other names unchanged."""
  if "text_config" in hf_dict and name.startswith(MULTIMODAL_PREFIX):
    return TEXT_PREFIX + name[len(MULTIMODAL_PREFIX):]
  return name


class _ConfigView:
  """The MaxText config with the written dtype (``process_maxtext_param`` reads ``weight_dtype``)."""

  def __init__(self, config, dtype: str):
    self._config, self.weight_dtype = config, dtype

  def __getattr__(self, name: str) -> Any:
    return getattr(self._config, name)


__all__ = ["FAMILY_MODELS", "REFUSED", "EXTRA_ATTRS", "supported", "model_key", "hf_config", "tables_config", "Tables", "tables", "to_hf", "text_only_name"]
