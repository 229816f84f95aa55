"""``python -m sparsity export``: a MaxText checkpoint as a Hugging Face model directory, through MaxText's converters.

Families (``hf_mapping.FAMILY_MODELS``): every ``decoder_block`` whose MaxText conversion tables
(``maxtext.checkpoint_conversion``: ``PARAM_MAPPING``, ``HOOK_FNS``, ``HF_SHAPE``) exist and whose export transformers
loads with MaxText's logits; any other family is refused with an error naming it and the families that work, before
anything is written. ``python -m sparsity export-table`` shows which families pass which check.

What is written (``--format hf``): ``config.json`` (transformers' own config class of the family, with the run's
architecture), ``generation_config.json``, ``model.safetensors`` with the masks applied (every pruned weight exactly
+0.0, through every hook of the mapping: transposes, expert splits, scales), ``tokenizer.model`` (the SentencePiece
model of the run), ``tokenizer.json`` + ``tokenizer_config.json`` (transformers' conversion of it, so
``AutoTokenizer`` needs neither sentencepiece nor protobuf) and ``sparsity_export.json`` (what was exported: step,
counts, sizes, which Hugging Face tensors are pruned). ``--format compressed``: the same, but each pruned 2-D weight
is stored in the compressed-tensors ``sparse-bitmask`` format (``sparsity.model.sparse_bitmask``) and
``config.json`` carries the ``quantization_config`` that compressed-tensors, llm-compressor, vLLM and transformers
read. ``--format compressed-24``: for a 2:4 model (``pruning_structure=2:4``), the ``sparse-24-bitmask`` format
(2 values and a bitmask per group of 4 along each weight's input dimension). The serving stacks of 2026 have dropped
sparse formats (compressed-tensors 0.15 removed these compressors; vLLM dropped its 2:4 kernels), so the dense
export with exact zeros is the portable one; the compressed ones load with compressed-tensors <= 0.13.

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
from sparsity.model import hf_mapping, sparse_bitmask

SAFETENSORS = "model.safetensors"
FORMATS = ("hf", "compressed", "compressed-24")
EXPORT_INFO = "sparsity_export.json"


def _val(x):
  return getattr(x, "value", x)


def check_supported(config) -> str:
  """The MaxText model name whose conversion tables the run uses; a ValueError naming the family if export does not
  support it, or the settings its Hugging Face architecture cannot represent."""
  key = hf_mapping.model_key(config)
  problems = []
  if _val(config.quantization):
    problems.append(f"quantization={_val(config.quantization)!r} (export writes unquantized weights)")
  if config.scan_layers and int(config.param_scan_axis) != 1:
    problems.append(f"param_scan_axis={config.param_scan_axis} (need 1)")
  if str(_val(config.decoder_block)) == "llama2":  # MaxText's LLaMA table is llama3.1's; these settings differ
    if list(config.mlp_activations) != ["silu", "linear"]:
      problems.append(f"mlp_activations={list(config.mlp_activations)} (need ['silu', 'linear'])")
    if int(config.num_experts) != 1:
      problems.append(f"num_experts={config.num_experts} (a LLaMA has a dense MLP; Mixtral is decoder_block=mixtral)")
    for name in ("use_qk_norm", "fused_qkv", "fused_mlp"):
      if getattr(config, name, False):
        problems.append(f"{name}=true")
  if problems:
    raise ValueError(f"unsupported settings for a Hugging Face export of decoder_block={_val(config.decoder_block)}: "
                     + "; ".join(problems))
  return key


def abstract_params(config) -> dict[str, tuple[int, ...]]:
  """MaxText's parameter paths and shapes of the config's model (its abstract model, built by ``to_maxtext``)."""
  info, _ = modules.to_maxtext().get_maxtext_model_info(config)
  return {k[len("params-"):].replace("-", "/"): tuple(shape) for k, (_, shape) in info.items()
          if k.startswith("params-")}


def check_checkpoint(state: ckpt.ModelState, want: dict[str, tuple[int, ...]], where: str) -> None:
  """A ValueError listing every parameter the config (``want``: path -> shape) and the checkpoint disagree on."""
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


def hf_model_config(config, key: str, dtype: str, tokenizer_ids: dict[str, int | None]):
  """transformers' config object of the export: the family's class with the run's architecture, the tokenizer's
  special ids (None where the run has no tokenizer) and the dtype written."""
  cfg = hf_mapping.hf_config(config, key)
  for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
    setattr(cfg, k, tokenizer_ids.get(k))
  cfg.dtype = dtype
  return cfg


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
  key = check_supported(config)
  where = ckpt.locate(checkpoint, step)
  state = ckpt.load(where.items_dir)
  check_checkpoint(state, abstract_params(config), where.items_dir)
  hf_dict = hf_mapping.hf_config(config, key).to_dict()
  tensors, origin = hf_mapping.to_hf(masked_params(state), config, hf_mapping.tables_config(hf_dict, key), key, dtype)
  prunable_hf = {n: p for p in state.masks for n in origin.get(p, ())}  # HF name -> MaxText path

  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  try:
    ids, warnings = write_tokenizer(config, tmp, int(config.vocab_size))
    hf_cfg = hf_model_config(config, key, dtype, ids)
    hf_cfg.save_pretrained(tmp)
    _generation_config(ids).save_pretrained(tmp)
    stored, prunable_bytes = _stored_tensors(tensors, prunable_hf, fmt)
    if fmt != "hf":
      _add_quantization_config(tmp, _compression_config(state, tensors, prunable_hf, fmt))
    _safetensors_save(stored, os.path.join(tmp, SAFETENSORS))
    info = _export_info(fmt, where, state, dtype, tensors, prunable_hf, prunable_bytes,
                        os.path.getsize(os.path.join(tmp, SAFETENSORS)), warnings, key, hf_cfg)
    with open(os.path.join(tmp, EXPORT_INFO), "w", encoding="utf-8") as f:
      json.dump(info, f, indent=2)
    _plain_permissions(tmp)
    _move_into_place(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return ExportResult(out, fmt, info)


def _stored_tensors(hf: dict[str, np.ndarray], prunable_hf: dict[str, str], fmt: str):
  """The tensors written for ``fmt`` and the bytes the prunable weights take in it."""
  if fmt == "hf":
    return hf, sum(hf[n].nbytes for n in prunable_hf)
  compress = sparse_bitmask.compress_24 if fmt == "compressed-24" else sparse_bitmask.compress
  tensors, stored = {}, 0
  for name, a in hf.items():
    if name not in prunable_hf or a.ndim != 2:
      tensors[name] = a
      continue
    try:
      parts = compress(a)
    except ValueError as e:
      raise ValueError(f"{name}: {e}; --format compressed-24 needs a 2:4 model (pruning_structure=2:4)") from None
    for suffix, part in parts.items():
      tensors[f"{name[: -len('.weight')]}.{suffix}"] = part
      stored += part.nbytes
  return tensors, stored


def _compression_config(state, hf, prunable_hf, fmt: str) -> dict:
  pruned = int(sum(np.count_nonzero(~m) for m in state.masks.values()))
  prunable = int(sum(m.size for m in state.masks.values()))
  linear = {n[: -len(".weight")] for n, a in hf.items() if a.ndim == 2 and n.endswith(".weight") and "embed" not in n}
  ignore = sorted(linear - {n[: -len(".weight")] for n, a in hf.items() if n in prunable_hf and a.ndim == 2})
  structure = "2:4" if fmt == "compressed-24" else "unstructured"
  return sparse_bitmask.compression_config(pruned / max(prunable, 1), ignore, structure)


def _export_info(fmt, where, state, dtype, hf, prunable_hf, prunable_bytes, file_bytes, warnings, key, hf_cfg) -> dict:
  pruned = int(sum(np.count_nonzero(~m) for m in state.masks.values()))
  prunable = int(sum(m.size for m in state.masks.values()))
  dense_bytes = sum(a.nbytes for a in hf.values())
  prunable_dense = sum(hf[n].nbytes for n in prunable_hf)
  return {
      "format": fmt,
      "architecture": hf_cfg.architectures[0],
      "maxtext_conversion_model": key,
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
      "prunable_dense_bytes": int(prunable_dense),
      "prunable_stored_bytes": int(prunable_bytes),
      "prunable_ratio": prunable_bytes / prunable_dense if prunable_dense else 1.0,
      "file_ratio": file_bytes / dense_bytes if dense_bytes else 1.0,
      "warnings": warnings,
  }


def _move_into_place(tmp: str, out: str) -> None:
  """Renames ``tmp`` to ``out``; an existing ``out`` (--force) is swapped out first, then deleted."""
  if os.path.exists(out):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rename(out, os.path.join(old, "x"))
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, out)


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


FORMAT_NAMES = {"hf": "Hugging Face safetensors", "compressed": "compressed-tensors sparse-bitmask",
                "compressed-24": "compressed-tensors sparse-24-bitmask"}


def format_result(r: ExportResult) -> str:
  i = r.info
  lines = [
      f"wrote {r.out} ({i['architecture']}, {FORMAT_NAMES[r.format]}, "
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

