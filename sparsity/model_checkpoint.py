"""Finding and reading the parts of a MaxText checkpoint that the model tools need (inspect, export, generate).

A checkpoint is named by any of: a run directory (``<base_output_directory>/<run_name>``), its ``checkpoints``
directory, one step's directory (``checkpoints/<step>``) or that step's ``items`` directory. Only the
parameters, the pruning masks, the pruner's count and the train-state step are restored (an Orbax partial
restore): the optimizer's moments, twice the size of the model, stay on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from sparsity import checkpoint

PARAMS_PREFIX = "params/params/"


@dataclasses.dataclass(frozen=True)
class Located:
  """Where one checkpoint step lives."""

  items_dir: str  # <...>/checkpoints/<step>/items
  step: int  # the step directory's number
  run_dir: str | None  # <...>/<run_name> when the layout shows it


@dataclasses.dataclass
class ModelState:
  """The model's parameters and pruning state at one checkpoint step (NumPy arrays, MaxText paths)."""

  params: dict[str, np.ndarray]  # 'decoder/layers/mlp/wi_0/kernel' -> array
  masks: dict[str, np.ndarray]  # same paths, prunable parameters only; empty for a dense checkpoint
  state_step: int | None  # the train state's step (updates applied)
  pruner_count: int | None  # the pruner's update count (opt_state/count); None without a pruner


def _is_items(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "_METADATA")) or os.path.isfile(os.path.join(path, "_CHECKPOINT_METADATA"))


def locate(path: str, step: int | None = None) -> Located:
  """The ``items`` directory of ``step`` (default: the latest) under ``path`` (see the module docstring)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no such checkpoint directory: {path}")
  base = os.path.basename(path.rstrip("/"))
  if base == "items" and _is_items(path):
    step_dir = os.path.dirname(path)
    return _located_step(step_dir, step, path)
  if os.path.isdir(os.path.join(path, "items")):
    return _located_step(path, step, os.path.join(path, "items"))
  checkpoints = path
  if os.path.isdir(os.path.join(path, "checkpoints")):
    checkpoints = os.path.join(path, "checkpoints")
  steps = checkpoint.steps(checkpoints)
  if not steps:
    raise FileNotFoundError(
        f"no MaxText checkpoint under {path}: expected a run directory with checkpoints/<step>/items, a "
        "checkpoints directory, or one step's directory"
    )
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {checkpoints} (steps: {', '.join(map(str, steps))})")
  run_dir = os.path.dirname(checkpoints) if os.path.basename(checkpoints) == "checkpoints" else None
  return Located(os.path.join(checkpoints, str(step), "items"), step, run_dir)


def _located_step(step_dir: str, step: int | None, items: str) -> Located:
  name = os.path.basename(step_dir.rstrip("/"))
  number = int(name) if name.isdigit() else -1
  if step is not None and step != number:
    raise FileNotFoundError(f"{step_dir} is the checkpoint of step {number}, not of step {step}")
  checkpoints = os.path.dirname(step_dir)
  run_dir = os.path.dirname(checkpoints) if os.path.basename(checkpoints) == "checkpoints" else None
  return Located(items, number, run_dir)


def _flat(tree, prefix: str = "") -> dict[str, Any]:
  out = {}
  items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else None
  if items is None:
    return {prefix.rstrip("/"): tree}
  for k, v in items:
    out.update(_flat(v, f"{prefix}{k}/"))
  return out


def load(items_dir: str) -> ModelState:
  """Restores the parameters, masks, pruner count and step of one checkpoint on the host."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  try:
    ckptr, tree = checkpoint.metadata_tree(items_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(f"cannot read a MaxText checkpoint at {items_dir}: {e}") from e
  if not isinstance(tree, dict) or "params" not in tree:
    raise ValueError(f"{items_dir} holds no MaxText parameters (top-level keys: {sorted(tree) if isinstance(tree, dict) else tree})")
  want: dict[str, Any] = {"params": tree["params"]}
  if "step" in tree:
    want["step"] = tree["step"]
  opt = tree.get("opt_state")
  if isinstance(opt, dict):
    sub = {k: opt[k] for k in ("count", "masks") if k in opt}
    if sub:
      want["opt_state"] = sub
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), want)
  got = ckptr.restore(items_dir, args=ocp.args.PyTreeRestore(item=want, restore_args=restore_args, partial_restore=True))

  params = {}
  for p, x in _flat(got["params"], "params/").items():
    if not p.startswith(PARAMS_PREFIX):
      raise ValueError(f"unexpected parameter path {p!r} in {items_dir} (expected {PARAMS_PREFIX}...)")
    params[p[len(PARAMS_PREFIX):]] = np.asarray(x)
  opt_got = got.get("opt_state", {})
  masks = {p: np.asarray(x, bool) for p, x in _flat(opt_got.get("masks", {})).items() if p}
  count = opt_got.get("count")
  step = got.get("step")
  return ModelState(
      params=params,
      masks=masks,
      state_step=None if step is None else int(np.asarray(step)),
      pruner_count=None if count is None else int(np.asarray(count)),
  )


def read_summary(run_dir: str | None) -> dict | None:
  """The run's ``sparsity_summary.json`` (written when training ends), or None."""
  if not run_dir:
    return None
  path = os.path.join(run_dir, "sparsity_summary.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)
