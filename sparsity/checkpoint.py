"""Reading MaxText's Orbax checkpoints on the host, without building the trainer.

MaxText writes ``<base_output_directory>/<run_name>/checkpoints/<step>/items``; the train state inside holds
the model parameters and, in the optimizer state, the pruning masks (``.../masks/<param path>``).
"""

from __future__ import annotations

import os

import jax
import numpy as np


def steps(checkpoint_dir: str) -> list[int]:
  """Steps with a finished checkpoint (a ``<step>/items`` directory) under ``checkpoint_dir``, increasing."""
  return sorted(int(d) for d in os.listdir(checkpoint_dir)
                if d.isdigit() and os.path.isdir(os.path.join(checkpoint_dir, d, "items")))


def latest_step(checkpoint_dir: str) -> int:
  """The largest step with a finished checkpoint under ``checkpoint_dir`` (``.../checkpoints``)."""
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f"no checkpoint directory {checkpoint_dir}")
  found = steps(checkpoint_dir)
  if not found:
    raise FileNotFoundError(f"no finished checkpoint in {checkpoint_dir}")
  return found[-1]


def metadata_tree(items_dir: str):
  """``(checkpointer, tree of array metadata)`` of an ``items`` directory; no array is read."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(items_dir)
  tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
  return ckptr, getattr(tree, "tree", tree)


def load_tree(items_dir: str) -> dict:
  """The whole checkpointed pytree as NumPy arrays (restored on the host, any number of devices)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  ckptr, tree = metadata_tree(items_dir)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return ckptr.restore(items_dir, restore_args=restore_args)


def flat_paths(tree) -> dict[str, np.ndarray]:
  """{'a/b/c': array} for every leaf."""
  from sparsity.pruner import path_str  # pylint: disable=import-outside-toplevel

  return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def masks_and_params(items_dir: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """``({param path: mask}, {param path: param})`` from a MaxText checkpoint's ``items`` directory."""
  flat = flat_paths(load_tree(items_dir))
  masks, params = {}, {}
  for p, x in flat.items():
    if "/masks/" in p and x.dtype == np.bool_:
      masks[p.split("/masks/", 1)[1]] = x
    elif p.startswith("params/params/") and np.issubdtype(x.dtype, np.floating):
      params[p[len("params/params/"):]] = x
  return masks, params


def metadata_shapes(items_dir: str) -> dict[str, tuple]:
  """{path: shape} of every array in a checkpoint, from its metadata only (no array is read)."""
  from sparsity.pruner import path_str  # pylint: disable=import-outside-toplevel

  _, tree = metadata_tree(items_dir)
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {path_str(p): tuple(getattr(x, "shape", ()) or ()) for p, x in flat}


def check_resumable(checkpoint_dir: str, param_shapes: dict[str, tuple], mask_paths: list[str]) -> None:
  """Raises ValueError, before anything is restored, if the latest checkpoint does not fit the config.

  Args:
    checkpoint_dir: ``.../<run_name>/checkpoints``; nothing is checked when it holds no finished step.
    param_shapes: the config's model parameters, ``{path: shape}``.
    mask_paths: parameter paths the config keeps pruning masks for (empty for dense training).
  """
  try:
    step = latest_step(checkpoint_dir)
  except FileNotFoundError:
    return
  items = os.path.join(checkpoint_dir, str(step), "items")
  shapes = metadata_shapes(items)
  ck_params = {p[len("params/params/"):]: s for p, s in shapes.items() if p.startswith("params/params/")}
  ck_masks = sorted(p.split("/masks/", 1)[1] for p in shapes if "/masks/" in p)
  where = f"the checkpoint at {items} (step {step})"
  if ck_params and ck_params != param_shapes:
    diff = sorted(set(ck_params.items()) ^ set(param_shapes.items()))[:6]
    raise ValueError(f"{where} does not match the model of this config; differing (path, shape): {diff}. "
                     "Use another run_name, or the same model keys as the run that wrote it.")
  if sorted(mask_paths) != ck_masks:
    if not ck_masks:
      what = "was written by a dense run (no pruning masks)"
    elif not mask_paths:
      what = f"holds pruning masks for {len(ck_masks)} tensors but this config trains densely (target_sparsity=0)"
    else:
      what = f"masks {ck_masks} but this config prunes {sorted(mask_paths)}"
    raise ValueError(f"{where} {what}: it cannot be resumed with this config. Use another run_name, or load only "
                     "its weights with load_parameters_path (and init_mask_from_zeros=true to keep its zeros).")
