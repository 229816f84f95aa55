"""``python -m sparsity import``: a Hugging Face checkpoint on disk as a MaxText checkpoint, through MaxText's ``to_maxtext``.

The run's MaxText config (its YAML and overrides: the family's ``model_name`` or ``decoder_block`` and the model's
dimensions) builds MaxText's abstract model; MaxText's conversion tables of the family (``PARAM_MAPPING``,
``HOOK_FNS`` with ``saving_to_hf=False``) say which Hugging Face tensors each MaxText parameter is stacked from and
how; ``to_maxtext``'s own stacking helpers build each parameter from the ``*.safetensors`` files, and its
``save_weights_to_checkpoint`` writes the parameter-only Orbax checkpoint (``OUT/0/items``) that
``load_parameters_path`` takes: prune-and-recover (``configs/recovery.yml``) and sparse fine-tuning start from it.

Before anything is written, the Hugging Face ``config.json`` is checked against the MaxText config by MaxText's
own architecture check (heads, widths, layers, experts, vocabulary): a mismatch names every differing setting.
"""

from __future__ import annotations

import copy
import glob
import os
import shutil
import tempfile

import numpy as np

from sparsity.maxtext import host, modules
from sparsity.model import hf_mapping


def check_architecture(hf_cfg, config) -> None:
  """MaxText's architecture check of a Hugging Face config against the MaxText config (a ValueError listing each
  mismatch)."""
  try:
    modules.to_huggingface()._validate_or_update_architecture(copy.deepcopy(hf_cfg), config, override=False)  # pylint: disable=protected-access
  except ValueError as e:
    msg = str(e).split("\n\nAction Required")[0]
    raise ValueError(f"the Hugging Face checkpoint does not match the MaxText config (set the MaxText model "
                     f"dimensions to the checkpoint's): {msg}") from None


def _tensor_getter(hf_dir: str):
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel

  files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {hf_dir}")
  where = {}
  for f in files:
    with safe_open(f, framework="numpy") as h:
      where.update({k: f for k in h.keys()})

  def get(name: str) -> np.ndarray:
    if name not in where:
      raise ValueError(f"{hf_dir} has no tensor {name} (MaxText's conversion table expects it)")
    with safe_open(where[name], framework="numpy") as h:
      return h.get_tensor(name)

  return get


def _stacking_key(key, hf_names, config):
  """The key ``to_maxtext``'s stacking helper is given. Under ``scan_layers`` a flat list of Hugging Face names is the
  layers (as MaxText's ``process_maxtext_param`` reads it on export), but MaxText 0.2.5's
  ``_build_single_axis_stacked_tensor`` stacks any key naming a ``MoeBlock`` along axis 0 as if it held experts,
  which puts a scanned router (``...-MoeBlock_0-gate-kernel``: one name per layer) on the wrong axis; its key is
  given without that word."""
  flat = isinstance(hf_names, list) and hf_names and not isinstance(hf_names[0], list)
  if isinstance(key, str) and config.scan_layers and flat and "MoeBlock" in key and "Var" not in key:
    return key.replace("MoeBlock", "moe")
  return key


def maxtext_params(hf_dir: str, config, dtype: str = "float32"):
  """The MaxText parameter tree (MaxText's abstract model's structure) of the Hugging Face checkpoint ``hf_dir``."""
  from transformers import AutoConfig  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  key = hf_mapping.model_key(config)
  hf_cfg = AutoConfig.from_pretrained(hf_dir)
  check_architecture(hf_cfg, config)
  hf_dict = hf_mapping.tables_config(hf_cfg.to_dict(), key)
  t = hf_mapping.tables(config, hf_dict, key, to_hf=False)
  tm, utils = modules.to_maxtext(), modules.conversion_utils()
  info, treedef = tm.get_maxtext_model_info(config)
  keys = utils.validate_and_filter_param_map_keys(t.names.keys(), set(info))
  read = _tensor_getter(hf_dir)
  getter = lambda name: read(hf_mapping.text_only_name(name, hf_dict))  # noqa: E731
  weights = [None] * len(info)
  for k in keys:
    idx, shape = tm._get_maxtext_indices_and_shapes(k, info)  # pylint: disable=protected-access
    load = tm._get_hf_loading_function(t.names[k], getter, t.hooks.get(k), shape, config, _stacking_key(k, t.names[k], config))  # pylint: disable=protected-access
    tm._get_maxtext_weight(load, idx, shape, k, weights, dtype, False)  # pylint: disable=protected-access
  missing = [k for k, (i, _) in info.items() if weights[i] is None]
  if missing:
    raise ValueError(f"MaxText parameters not produced from {hf_dir}: {', '.join(missing)}")
  weights = [np.asarray(w).astype(dtype) for w in weights]
  return jax.tree_util.tree_unflatten(treedef, weights)


def import_hf(hf_dir: str, config, out: str, dtype: str = "float32", overwrite: bool = False) -> dict:
  """Writes the MaxText checkpoint ``out`` (``out/0/items``) of the Hugging Face checkpoint ``hf_dir``."""
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise ValueError(f"--out {out} exists; choose a new directory or pass --force")
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"no such Hugging Face checkpoint directory: {hf_dir}")
  tree = maxtext_params(hf_dir, config, dtype)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  try:
    modules.conversion_utils().save_weights_to_checkpoint(
        tmp, tree, 1, bool(config.checkpoint_storage_use_ocdbt), bool(config.checkpoint_storage_use_zarr3),
        config=config)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  import jax  # pylint: disable=import-outside-toplevel

  leaves = jax.tree_util.tree_leaves(tree)
  return {"out": out, "items": os.path.join(out, "0", "items"), "maxtext_conversion_model": hf_mapping.model_key(config),
          "params": int(sum(np.size(x) for x in leaves)), "tensors": len(leaves), "dtype": dtype,
          "load_parameters_path": os.path.join(out, "0", "items")}


def import_from_cli(hf_dir: str, argv: list[str], out: str, **kw) -> dict:
  """``import_hf`` with the config loaded from MaxText argv (``[yaml, key=value, ...]``)."""
  if not argv or not os.path.isfile(argv[0]):
    raise FileNotFoundError(f"no such config file: {argv[0] if argv else '(none)'}")
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"no such Hugging Face checkpoint directory: {hf_dir}")
  from sparsity.maxtext.config import load_config  # pylint: disable=import-outside-toplevel

  config = load_config(host.single_process(list(argv), extra=("enable_checkpointing=false",)))
  return import_hf(hf_dir, config, out, **kw)


__all__ = ["check_architecture", "maxtext_params", "import_hf", "import_from_cli"]
