"""Reading MaxText's Orbax checkpoints on the host, without building the trainer.

MaxText writes ``<base_output_directory>/<run_name>/checkpoints/<step>/items``; the train state inside holds
the model parameters and, in the optimizer state, the pruning masks (``.../masks/<param path>``).
"""

from __future__ import annotations

import os

import jax
import numpy as np


def latest_step(checkpoint_dir: str) -> int:
  """The largest step with a finished checkpoint under ``checkpoint_dir`` (``.../checkpoints``)."""
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f"no checkpoint directory {checkpoint_dir}")
  steps = [int(d) for d in os.listdir(checkpoint_dir) if d.isdigit() and os.path.isdir(os.path.join(checkpoint_dir, d, "items"))]
  if not steps:
    raise FileNotFoundError(f"no finished checkpoint in {checkpoint_dir}")
  return max(steps)


def load_tree(items_dir: str) -> dict:
  """The whole checkpointed pytree as NumPy arrays (restored on the host, any number of devices)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(items_dir)
  tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
  tree = getattr(tree, "tree", tree)
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
