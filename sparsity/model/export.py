"""``python -m sparsity export``: a MaxText checkpoint as a Hugging Face ``LlamaForCausalLM`` directory.

Supported families (``EXPORT_FAMILIES``): ``decoder_block=llama2`` (LLaMA 2 and 3 shapes, with the settings
``check_supported`` lists); any other family is refused with an error naming it before anything is written.

What is written (``--format hf``): ``config.json`` (transformers' own ``LlamaConfig``), ``generation_config.json``,
``model.safetensors`` with the masks applied (every pruned weight exactly +0.0), ``tokenizer.model`` (the
SentencePiece model of the run), ``tokenizer.json`` + ``tokenizer_config.json`` (transformers' conversion of
it, so ``AutoTokenizer`` needs neither sentencepiece nor protobuf) and ``sparsity_export.json`` (what was
exported: step, counts, sizes). ``--format compressed``: the same, but each pruned linear weight is stored in
the compressed-tensors ``sparse-bitmask`` format (``sparsity.model.sparse_bitmask``) and ``config.json`` carries the
``quantization_config`` that compressed-tensors, llm-compressor, vLLM and transformers read. ``--format
compressed-24``: for a 2:4 model (``pruning_structure=2:4``), the ``sparse-24-bitmask`` format (2 values and a
bitmask per group of 4 along each weight's input dimension). The serving stacks of 2026 have dropped sparse
formats (compressed-tensors 0.15 removed these compressors; vLLM dropped its 2:4 kernels), so the dense export
with exact zeros is the portable one; the compressed ones load with compressed-tensors <= 0.13.

The parameter mapping is MaxText's own (``maxtext.checkpoint_conversion``: its LLaMA names, scanned-layer
slicing, kernel reshapes and the query scaling by sqrt(head_dim) that MaxText folds into the query kernel),
minus its RoPE permutation: that one is for llama3.1's interleaved rotary embedding, while MaxText's llama2
decoder uses the rotate-half embedding that Hugging Face LLaMA uses (``maxtext.utils.max_utils.
unpermute_from_match_maxtext_rope`` is the identity for llama2 too). The tests compare logits of the export
under transformers with MaxText's forward pass.

Everything is written to a temporary directory beside ``--out`` and renamed at the end, so a failed export
leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from sparsity.maxtext import checkpoint as ckpt
from sparsity.maxtext import host, layout, modules
from sparsity.model import sparse_bitmask

SAFETENSORS = "model.safetensors"
FORMATS = ("hf", "compressed", "compressed-24")
EXPORT_INFO = "sparsity_export.json"
MT_MODEL_KEY = "llama3.1-8b"  # MaxText's LLaMA-family mapping tables (names, hooks, HF shapes) are keyed by it


@dataclasses.dataclass(frozen=True)
class Shape:
  emb: int
  layers: int
  q_heads: int
  kv_heads: int
  head_dim: int
  mlp: int
  vocab: int
  scan_layers: bool


def _val(x):
  return getattr(x, "value", x)


# The model families (``decoder_block``, ``sparsity.maxtext.families``) export writes: LLaMA (2 and 3 shapes).
EXPORT_FAMILIES = ("llama2",)


def check_supported(config) -> Shape:
  """The model's shape; a ValueError naming the family if export does not support it (``EXPORT_FAMILIES``), or
  every setting a Hugging Face LLaMA cannot represent."""
  problems = []

  def need(ok, what):
    if not ok:
      problems.append(what)

  block = str(_val(config.decoder_block))
  need(block in EXPORT_FAMILIES, f"decoder_block={block!r} (the {block} family is not supported by export"
       + (", a mixture of experts" if int(config.num_experts) > 1 else "") + f"; supported: {', '.join(EXPORT_FAMILIES)})")
  need(list(config.mlp_activations) == ["silu", "linear"], f"mlp_activations={list(config.mlp_activations)} (need ['silu', 'linear'])")
  need(int(config.num_experts) == 1, f"num_experts={config.num_experts} (need 1: dense MLP)")
  need(not config.logits_via_embedding, "logits_via_embedding=true (tied embeddings are not supported; need false)")
  need(not config.final_logits_soft_cap, f"final_logits_soft_cap={config.final_logits_soft_cap} (need none)")
  need(_val(config.rope_type) == "default", f"rope_type={_val(config.rope_type)!r} (need 'default')")
  need(not str(config.model_name).startswith("llama3.1"), f"model_name={config.model_name!r} (llama3.1 RoPE)")
  need(int(config.rope_min_timescale) == 1, f"rope_min_timescale={config.rope_min_timescale} (need 1)")
  need(float(getattr(config, "rope_linear_scaling_factor", 1.0)) == 1.0, "rope_linear_scaling_factor != 1")
  need(not config.use_qk_norm, "use_qk_norm=true")
  need(not config.fused_qkv and not config.fused_mlp, "fused_qkv / fused_mlp")
  need(not getattr(config, "use_post_attn_norm", False) and not getattr(config, "use_post_ffw_norm", False),
       "use_post_attn_norm / use_post_ffw_norm")
  need(not _val(config.quantization), f"quantization={_val(config.quantization)!r}")
  need(int(config.param_scan_axis) == 1 or not config.scan_layers, f"param_scan_axis={config.param_scan_axis} (need 1)")
  if problems:
    raise ValueError(
        "unsupported model for a Hugging Face LLaMA export (export supports the LLaMA family, decoder_block=llama2, "
        "with only llama2-style decoders: SwiGLU MLP, RMSNorm, rotate-half RoPE, untied output projection; inspect "
        "reads every family's checkpoint): " + "; ".join(problems)
    )
  return Shape(
      emb=int(config.emb_dim), layers=int(config.num_decoder_layers), q_heads=int(config.num_query_heads),
      kv_heads=int(config.num_kv_heads), head_dim=int(config.head_dim), mlp=int(config.mlp_dim),
      vocab=int(config.vocab_size), scan_layers=bool(config.scan_layers),
  )


def expected_params(s: Shape) -> dict[str, tuple[int, ...]]:
  """MaxText's parameter paths and shapes for a llama2 decoder (``sparsity.maxtext.layout.llama_param_shapes``)."""
  return layout.llama_param_shapes(s.emb, s.layers, s.q_heads, s.kv_heads, s.head_dim, s.mlp, s.vocab,
                                   scan_layers=s.scan_layers)


def check_checkpoint(state: ckpt.ModelState, s: Shape, where: str) -> None:
  """A ValueError listing every parameter the config and the checkpoint disagree on."""
  want = expected_params(s)
  problems = []
  for p in sorted(set(want) - set(state.params)):
    problems.append(f"missing {p} (config expects shape {want[p]})")
  for p in sorted(set(state.params) - set(want)):
    problems.append(f"unexpected {p} {tuple(state.params[p].shape)}")
  for p in sorted(set(want) & set(state.params)):
    if tuple(state.params[p].shape) != want[p]:
      problems.append(f"{p}: checkpoint {tuple(state.params[p].shape)}, config {want[p]}")
  for p, m in sorted(state.masks.items()):
    if p not in state.params:
      problems.append(f"mask for unknown parameter {p}")
    elif m.shape != state.params[p].shape:
      problems.append(f"mask of {p}: {m.shape}, parameter {state.params[p].shape}")
  if problems:
    raise ValueError(
        f"checkpoint {where} does not match the config (pass the run's YAML and the same model overrides it "
        "was trained with):\n  " + "\n  ".join(problems)
    )


def masked_params(state: ckpt.ModelState) -> dict[str, np.ndarray]:
  """Parameters with the masks applied; zeros of prunable weights normalised to +0.0 (bit-exact round trips)."""
  out = {}
  for p, w in state.params.items():
    if p in state.masks:
      w = np.where(state.masks[p] & (w != 0), w, np.zeros((), w.dtype))
    out[p] = w
  return out


def _hf_model_dict(s: Shape) -> dict[str, int]:
  return {
      "num_hidden_layers": s.layers, "head_dim": s.head_dim, "hidden_size": s.emb, "intermediate_size": s.mlp,
      "num_attention_heads": s.q_heads, "num_key_value_heads": s.kv_heads, "vocab_size": s.vocab,
  }


def to_hf_tensors(params: dict[str, np.ndarray], s: Shape, dtype: str = "float32") -> dict[str, np.ndarray]:
  """{Hugging Face name: array} through MaxText's own to_huggingface mapping for the LLaMA family."""
  from types import SimpleNamespace  # pylint: disable=import-outside-toplevel

  param_mapping, hf_shape = modules.param_mapping(), modules.hf_shape()
  process_maxtext_param = modules.conversion_utils().process_maxtext_param
  hf = _hf_model_dict(s)
  names = param_mapping.PARAM_MAPPING[MT_MODEL_KEY](hf, None, s.scan_layers)
  hooks = param_mapping.HOOK_FNS[MT_MODEL_KEY](hf, None, s.scan_layers, saving_to_hf=True)
  # llama3.1's interleaved->rotate-half permutation does not apply to llama2 (see the module docstring).
  hooks = {k: [f for f in v if f.__name__ != "adjust_rope"] if isinstance(v, list) else v for k, v in hooks.items()}
  shapes = hf_shape.HF_SHAPE[MT_MODEL_KEY](hf)
  mt_config = SimpleNamespace(scan_layers=s.scan_layers, param_scan_axis=1, weight_dtype=dtype)
  out: dict[str, np.ndarray] = {}
  for path, w in params.items():
    key = layout.conversion_key(path)
    if key not in names:
      raise ValueError(f"no Hugging Face name for MaxText parameter {path}")
    for hf_name, arr in process_maxtext_param(key, w, names, hooks, shapes, mt_config):
      out[hf_name] = np.ascontiguousarray(np.asarray(arr))
  missing = sorted(set(shapes) - set(out))
  if missing:
    raise ValueError(f"Hugging Face weights not produced: {', '.join(missing)}")
  return out


def hf_module_of(path: str, s: Shape) -> list[str]:
  """The Hugging Face weight names that MaxText parameter ``path`` becomes."""
  names = modules.param_mapping().PARAM_MAPPING[MT_MODEL_KEY](_hf_model_dict(s), None, s.scan_layers)
  v = names[layout.conversion_key(path)]
  return v if isinstance(v, list) else [v]


def llama_config(config, s: Shape, dtype: str, tokenizer_ids: dict[str, int | None]):
  """transformers' ``LlamaConfig`` of the model (transformers needs no PyTorch for configs)."""
  from transformers import LlamaConfig  # pylint: disable=import-outside-toplevel

  return LlamaConfig(
      vocab_size=s.vocab, hidden_size=s.emb, intermediate_size=s.mlp, num_hidden_layers=s.layers,
      num_attention_heads=s.q_heads, num_key_value_heads=s.kv_heads, head_dim=s.head_dim, hidden_act="silu",
      max_position_embeddings=int(config.max_target_length), rms_norm_eps=float(config.normalization_layer_epsilon),
      rope_theta=float(config.rope_max_timescale), tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
      architectures=["LlamaForCausalLM"], dtype=dtype, **tokenizer_ids,
  )


def _generation_config(ids: dict[str, int | None]):
  from transformers import GenerationConfig  # pylint: disable=import-outside-toplevel

  return GenerationConfig(**{k: v for k, v in ids.items() if v is not None})


def _tokenizer_file(config) -> str | None:
  path = str(config.tokenizer_path)
  if _val(config.tokenizer_type) != "sentencepiece" or not os.path.isfile(path):
    return None
  return path


def write_tokenizer(config, out_dir: str, vocab: int) -> tuple[dict[str, int | None], list[str]]:
  """Writes tokenizer.model, tokenizer.json and tokenizer_config.json; returns (special ids, warnings)."""
  src = _tokenizer_file(config)
  if src is None:
    return {}, [f"no tokenizer written: {config.tokenizer_path} is not a local SentencePiece model"]
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

  sp = spm.SentencePieceProcessor(model_file=src)
  warnings = []
  if sp.get_piece_size() > vocab:
    warnings.append(f"the tokenizer has {sp.get_piece_size()} pieces but the model's vocab_size is {vocab}")
  shutil.copyfile(src, os.path.join(out_dir, "tokenizer.model"))
  piece = lambda i: sp.id_to_piece(i) if 0 <= i < sp.get_piece_size() else None  # noqa: E731
  ids = {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id(), "pad_token_id": sp.pad_id() if sp.pad_id() >= 0 else None}
  tok_cfg = {
      "tokenizer_class": "LlamaTokenizer",
      "bos_token": piece(sp.bos_id()), "eos_token": piece(sp.eos_id()), "unk_token": piece(sp.unk_id()),
      "add_bos_token": bool(config.add_bos), "add_eos_token": False, "legacy": False,
      "clean_up_tokenization_spaces": False, "model_max_length": int(config.max_target_length),
  }
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(tok_cfg, f, indent=2)
  # transformers converts the SentencePiece model to its fast tokenizer (tokenizer.json) here, where
  # sentencepiece and protobuf are installed, so that loading the export needs neither.
  tok = AutoTokenizer.from_pretrained(out_dir)
  tok.save_pretrained(out_dir)
  path = os.path.join(out_dir, "tokenizer_config.json")
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  for k in ("is_local", "local_files_only"):  # facts about this load, not about the tokenizer
    saved.pop(k, None)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(saved, f, indent=2, sort_keys=True)
  return ids, warnings


def _safetensors_save(tensors: dict[str, np.ndarray], path: str) -> None:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  save_file(tensors, path, metadata={"format": "pt"})


@dataclasses.dataclass
class ExportResult:
  out: str
  format: str
  info: dict[str, Any]


def export(
    checkpoint: str, config, out: str, fmt: str = "hf", step: int | None = None, dtype: str = "float32",
    overwrite: bool = False,
) -> ExportResult:
  """Writes the Hugging Face directory ``out`` from a checkpoint and its MaxText ``config`` (see module docstring)."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r} ({', '.join(FORMATS)})")
  if dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"unknown dtype {dtype!r}")
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise ValueError(f"--out {out} exists; choose a new directory or pass --force")
  s = check_supported(config)
  where = ckpt.locate(checkpoint, step)
  state = ckpt.load(where.items_dir)
  check_checkpoint(state, s, where.items_dir)

  params = masked_params(state)
  hf = to_hf_tensors(params, s, dtype)
  prunable_hf = {n: p for p in state.masks for n in hf_module_of(p, s)}  # HF name -> MaxText path
  pruned = int(sum(np.count_nonzero(~m) for m in state.masks.values()))
  prunable = int(sum(m.size for m in state.masks.values()))

  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  try:
    ids, warnings = write_tokenizer(config, tmp, s.vocab)
    hf_cfg = llama_config(config, s, dtype, ids)
    hf_cfg.save_pretrained(tmp)
    _generation_config(ids).save_pretrained(tmp)
    dense_bytes = sum(a.nbytes for a in hf.values())
    linear_dense_bytes = sum(hf[n].nbytes for n in prunable_hf)
    if fmt != "hf":
      compress = sparse_bitmask.compress_24 if fmt == "compressed-24" else sparse_bitmask.compress
      tensors, linear_bytes = {}, 0
      for name, a in hf.items():
        if name in prunable_hf:
          module = name[: -len(".weight")]
          try:
            parts = compress(a)
          except ValueError as e:
            raise ValueError(f"{name}: {e}; --format compressed-24 needs a 2:4 model (pruning_structure=2:4)") from None
          for suffix, part in parts.items():
            tensors[f"{module}.{suffix}"] = part
            linear_bytes += part.nbytes
        else:
          tensors[name] = a
      linear_names = {n[: -len(".weight")] for n, a in hf.items() if a.ndim == 2 and n != "model.embed_tokens.weight"}
      ignore = sorted(linear_names - {n[: -len(".weight")] for n in prunable_hf})
      structure = "2:4" if fmt == "compressed-24" else "unstructured"
      _add_quantization_config(tmp, sparse_bitmask.compression_config(pruned / max(prunable, 1), ignore, structure))
    else:
      tensors, linear_bytes = hf, linear_dense_bytes
    _safetensors_save(tensors, os.path.join(tmp, SAFETENSORS))
    file_bytes = os.path.getsize(os.path.join(tmp, SAFETENSORS))
    info = {
        "format": fmt,
        "source": where.items_dir,
        "step": where.step,
        "state_step": state.state_step,
        "pruner_count": state.pruner_count,
        "masks": bool(state.masks),
        "dtype": dtype,
        "prunable_params": prunable,
        "pruned_params": pruned,
        "sparsity": pruned / prunable if prunable else 0.0,
        "total_params": int(sum(a.size for a in hf.values())),
        "prunable_hf_weights": sorted(prunable_hf),
        "dense_weight_bytes": int(dense_bytes),
        "weight_file_bytes": int(file_bytes),
        "prunable_dense_bytes": int(linear_dense_bytes),
        "prunable_stored_bytes": int(linear_bytes),
        "prunable_ratio": linear_bytes / linear_dense_bytes if linear_dense_bytes else 1.0,
        "file_ratio": file_bytes / dense_bytes if dense_bytes else 1.0,
        "warnings": warnings,
    }
    with open(os.path.join(tmp, EXPORT_INFO), "w", encoding="utf-8") as f:
      json.dump(info, f, indent=2)
    _plain_permissions(tmp)
    if os.path.exists(out):  # --overwrite: swap, then delete the old one
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
      os.rename(out, os.path.join(old, "x"))
      os.rename(tmp, out)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return ExportResult(out, fmt, info)


def _plain_permissions(directory: str) -> None:
  """mkdtemp makes a private directory (and safetensors a private file): give them the umask's modes."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(directory, 0o777 & ~umask)
  for name in os.listdir(directory):
    os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def _add_quantization_config(out_dir: str, qcfg: dict) -> None:
  path = os.path.join(out_dir, "config.json")
  with open(path, encoding="utf-8") as f:
    cfg = json.load(f)
  cfg["quantization_config"] = qcfg
  with open(path, "w", encoding="utf-8") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)


def export_from_cli(checkpoint: str, argv: list[str], out: str, **kw) -> ExportResult:
  """``export`` with the config loaded from MaxText argv (``[yaml, key=value, ...]``)."""
  if not argv or not os.path.isfile(argv[0]):
    raise FileNotFoundError(f"no such config file: {argv[0] if argv else '(none)'}")
  ckpt.locate(checkpoint, kw.get("step"))  # a missing checkpoint fails before MaxText loads
  if os.path.exists(out) and not kw.get("overwrite"):
    raise ValueError(f"--out {os.path.abspath(out)} exists; choose a new directory or pass --force")
  from sparsity.maxtext.config import load_config  # pylint: disable=import-outside-toplevel

  config = load_config(host.single_process(list(argv), extra=("enable_checkpointing=false",)))
  return export(checkpoint, config, out, **kw)


FORMAT_NAMES = {"hf": "Hugging Face LLaMA", "compressed": "compressed-tensors sparse-bitmask",
                "compressed-24": "compressed-tensors sparse-24-bitmask"}


def format_result(r: ExportResult) -> str:
  i = r.info
  lines = [
      f"wrote {r.out} ({FORMAT_NAMES[r.format]}, "
      f"{i['dtype']}) from step {i['step']}",
      f"pruned {i['pruned_params']:,} of {i['prunable_params']:,} prunable weights (sparsity {i['sparsity']:.4f}); "
      f"{i['total_params']:,} params",
  ]
  if r.format != "hf":
    lines.append(f"prunable linear weights: {i['prunable_stored_bytes']:,} bytes vs {i['prunable_dense_bytes']:,} dense "
                 f"(ratio {i['prunable_ratio']:.3f})")
    lines.append(f"weights file: {i['weight_file_bytes']:,} bytes vs {i['dense_weight_bytes']:,} dense "
                 f"(ratio {i['file_ratio']:.3f})")
  else:
    lines.append(f"weights file: {i['weight_file_bytes']:,} bytes")
  lines += [f"warning: {w}" for w in i["warnings"]]
  return "\n".join(lines)

