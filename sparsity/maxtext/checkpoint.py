"""Reading MaxText's Orbax checkpoints on the host, without building the trainer (``layout`` says where).

A checkpoint is named by any of: a run directory (``<base_output_directory>/<run_name>``), its ``checkpoints``
directory, one step's directory (``checkpoints/<step>``) or that step's ``items`` directory. ``load`` restores
only the parameters, the pruning masks, the pruner's count and the train-state step (an Orbax partial restore,
as NumPy arrays on this host, whatever the number of devices or processes that wrote it): the optimizer's
moments, twice the size of the model, stay on disk.

A checkpoint Orbax cannot read (an emptied ``_METADATA``, a garbage ``manifest.ocdbt``, a truncated data file) raises
``CheckpointUnreadable`` naming the file and TensorStore's cause. Beside each finished step the trainer writes
``<step>/sparsity_fingerprint.json`` (``RECORD_FILE``: the device fingerprints of the saved arrays, the masks' kept
counts and the run's pruning plan; ``sparsity.maxtext.integrity``), which ``check_plan`` also reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np

from sparsity.core.paths import path_str
from sparsity.files import write_json
from sparsity.maxtext import layout


# The record beside each checkpoint step (``sparsity.maxtext.integrity`` writes it): fingerprints, kept counts, plan.
RECORD_FILE = "sparsity_fingerprint.json"
RECORD_FORMAT = 1


class CheckpointUnreadable(RuntimeError):
  """Orbax could not read a checkpoint (a file truncated, emptied or overwritten)."""


def record_path(checkpoint_dir: str, step: int) -> str:
  return os.path.join(checkpoint_dir, str(step), RECORD_FILE)


def read_record(checkpoint_dir: str, step: int) -> dict | None:
  """The record of ``step`` (None without one); a record that cannot be parsed raises ``CheckpointUnreadable``."""
  path = record_path(checkpoint_dir, step)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointUnreadable(f"the checkpoint of step {step} is unreadable: {path}: {e}") from e
  if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("step") != step:
    raise CheckpointUnreadable(f"the checkpoint of step {step} is unreadable: {path} is not its fingerprint record")
  return record


_CAUSES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "UNAVAILABLE")


def unreadable_message(text: str, checkpoint_dir: str) -> str:
  """A short description of an Orbax/TensorStore restore error ``text`` under ``checkpoint_dir``: the file (named by
  the error, or for a short read the data file of the size TensorStore found), the array being read, the status code
  (``DATA_LOSS``, ``OUT_OF_RANGE``, ...) and TensorStore's innermost reason."""
  cause = next((c for c in _CAUSES if f"{c}: " in text), None)
  line = text[text.index(f"{cause}: "):].splitlines()[0] if cause else ""
  line = line.split(" [tensorstore_spec=")[0]
  reason = line.split('": ')[-1].strip() if line else ""
  array = re.search(r'"([\w.]+?)(?:/zarr\.json|/c(?:/\d+)*)"', line)
  root = os.path.abspath(checkpoint_dir).rstrip("/")
  paths = re.findall(rf'"({re.escape(root)}/[^"]+)"', text)
  named = [f for f in paths if os.path.isfile(f)]
  size = re.search(r"not valid for value of size (\d+)", line)
  if size and not named:  # a short read: the data file of the database read (its items directory) of that size now
    where = next((d for d in paths if os.path.isdir(d)), root)
    named = sorted(os.path.join(d, f) for d, _, fs in os.walk(where) for f in fs
                   if os.path.getsize(os.path.join(d, f)) == int(size.group(1)))
    reason += " (the file is shorter than its index says: truncated)"
  parts = [f"file {named[0]}" if named else f"under {root}"]
  if array:
    parts.append(f"array {array.group(1).replace('.', '/')}")
  if cause:
    parts.append(f"{cause}: {reason[:300]}")
  return ", ".join(parts)


def steps(checkpoint_dir: str) -> list[int]:
  """Steps with a finished checkpoint (a ``<step>/items`` directory) under ``checkpoint_dir``, increasing."""
  if not os.path.isdir(checkpoint_dir):
    return []
  return sorted(int(d) for d in os.listdir(checkpoint_dir)
                if d.isdigit() and os.path.isdir(layout.items_dir(checkpoint_dir, int(d))))


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
  tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None)
  if tree is None:  # Orbax logs and swallows why it could not read the metadata: its handler says it
    _raise_unreadable(items_dir)
  return ckptr, getattr(tree, "tree", tree)


def _raise_unreadable(items_dir: str) -> None:
  """Raises ``CheckpointUnreadable`` naming the file of ``items_dir`` that Orbax cannot read, and why."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from etils import epath  # pylint: disable=import-outside-toplevel

  where = f"the checkpoint at {items_dir} is unreadable"
  try:
    ocp.PyTreeCheckpointHandler().metadata(epath.Path(items_dir))
  except json.JSONDecodeError as e:
    raise CheckpointUnreadable(f"{where}: file {os.path.join(items_dir, '_METADATA')} is not JSON ({e})") from None
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointUnreadable(f"{where}: {unreadable_message(str(e), items_dir)}") from None
  raise CheckpointUnreadable(f"{where}: Orbax reads no array metadata from it")


def metadata_shapes(items_dir: str) -> dict[str, tuple]:
  """{path: shape} of every array in a checkpoint, from its metadata only (no array is read)."""
  import jax  # pylint: disable=import-outside-toplevel

  _, tree = metadata_tree(items_dir)
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {path_str(p): tuple(getattr(x, "shape", ()) or ()) for p, x in flat}


@dataclasses.dataclass(frozen=True)
class Located:
  """Where one checkpoint step lives."""

  items_dir: str  # <...>/checkpoints/<step>/items
  step: int  # the step directory's number
  run_dir: str | None  # <...>/<run_name> when the layout shows it


@dataclasses.dataclass
class ModelState:
  """The model's parameters and pruning state at one checkpoint step (NumPy arrays, parameter paths)."""

  params: dict[str, np.ndarray]  # 'decoder/layers/mlp/wi_0/kernel' -> array
  masks: dict[str, np.ndarray]  # same paths, prunable parameters only; empty for a dense checkpoint
  state_step: int | None  # the train state's step (updates applied)
  pruner_count: int | None  # the pruner's update count; None without a pruner


def _is_items(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "_METADATA")) or os.path.isfile(os.path.join(path, "_CHECKPOINT_METADATA"))


def _run_dir_of(checkpoints: str) -> str | None:
  return os.path.dirname(checkpoints) if os.path.basename(checkpoints) == layout.CHECKPOINTS else None


def locate(path: str, step: int | None = None) -> Located:
  """The ``items`` directory of ``step`` (default: the latest) under ``path`` (see the module docstring)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no such checkpoint directory: {path}")
  if os.path.basename(path.rstrip("/")) == layout.ITEMS and _is_items(path):
    return _located_step(os.path.dirname(path), step, path)
  if os.path.isdir(os.path.join(path, layout.ITEMS)):
    return _located_step(path, step, os.path.join(path, layout.ITEMS))
  checkpoints = layout.checkpoints_dir(path) if os.path.isdir(layout.checkpoints_dir(path)) else path
  found = steps(checkpoints)
  if not found:
    raise FileNotFoundError(
        f"no MaxText checkpoint under {path}: expected a run directory with {layout.CHECKPOINTS}/<step>/{layout.ITEMS}, "
        "a checkpoints directory, or one step's directory"
    )
  if step is None:
    step = found[-1]
  elif step not in found:
    raise FileNotFoundError(f"no checkpoint for step {step} in {checkpoints} (steps: {', '.join(map(str, found))})")
  return Located(layout.items_dir(checkpoints, step), step, _run_dir_of(checkpoints))


def _located_step(step_dir: str, step: int | None, items: str) -> Located:
  name = os.path.basename(step_dir.rstrip("/"))
  number = int(name) if name.isdigit() else -1
  if step is not None and step != number:
    raise FileNotFoundError(f"{step_dir} is the checkpoint of step {number}, not of step {step}")
  return Located(items, number, _run_dir_of(os.path.dirname(step_dir)))


def _flat(tree, prefix: str = "") -> dict[str, Any]:
  out = {}
  items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else None
  if items is None:
    return {prefix.rstrip("/"): tree}
  for k, v in items:
    out.update(_flat(v, f"{prefix}{k}/"))
  return out


def load(items_dir: str) -> ModelState:
  """Restores the parameters, masks, pruner count and step of one checkpoint on this host."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  try:
    ckptr, tree = metadata_tree(items_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(f"cannot read a MaxText checkpoint at {items_dir}: {e}") from e
  top = layout.CKPT_PARAMS[0]
  if not isinstance(tree, dict) or top not in tree:
    raise ValueError(f"{items_dir} holds no MaxText parameters (top-level keys: {sorted(tree) if isinstance(tree, dict) else tree})")
  want: dict[str, Any] = {top: tree[top]}
  if layout.CKPT_STEP in tree:
    want[layout.CKPT_STEP] = tree[layout.CKPT_STEP]
  opt = tree.get(layout.CKPT_OPT)
  if isinstance(opt, dict):
    sub = {k: opt[k] for k in (layout.CKPT_COUNT, layout.CKPT_MASKS) if k in opt}
    if sub:
      want[layout.CKPT_OPT] = sub
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), want)
  got = ckptr.restore(items_dir, args=ocp.args.PyTreeRestore(item=want, restore_args=restore_args, partial_restore=True))

  params = {}
  for p, x in _flat(got[top], f"{top}/").items():
    name = layout.ckpt_param_path(p)
    if name is None:
      raise ValueError(f"unexpected parameter path {p!r} in {items_dir} (expected {'/'.join(layout.CKPT_PARAMS)}/...)")
    params[name] = np.asarray(x)
  opt_got = got.get(layout.CKPT_OPT, {})
  masks = {p: np.asarray(x, bool) for p, x in _flat(opt_got.get(layout.CKPT_MASKS, {})).items() if p}
  count = opt_got.get(layout.CKPT_COUNT)
  step = got.get(layout.CKPT_STEP)
  return ModelState(
      params=params,
      masks=masks,
      state_step=None if step is None else int(np.asarray(step)),
      pruner_count=None if count is None else int(np.asarray(count)),
  )


def read_summary(run_dir: str | None) -> dict | None:
  """The run's ``sparsity_summary.json`` (written when training ends), or None."""
  if not run_dir or not os.path.isfile(layout.summary_path(run_dir)):
    return None
  with open(layout.summary_path(run_dir), encoding="utf-8") as f:
    return json.load(f)


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
  items = layout.items_dir(checkpoint_dir, step)
  shapes = metadata_shapes(items)
  ck_params = {layout.ckpt_param_path(p): s for p, s in shapes.items() if layout.ckpt_param_path(p) is not None}
  ck_masks = sorted(m for m in map(layout.ckpt_mask_path, shapes) if m is not None)
  where = f"the checkpoint at {items} (step {step})"
  if not ck_params:
    raise CheckpointUnreadable(f"{where} is unreadable: its metadata ({os.path.join(items, '_METADATA')}) lists no "
                               f"MaxText parameters ({'/'.join(layout.CKPT_PARAMS)}/...)")
  if ck_params != param_shapes:
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


# The keys of a run's pruning plan (``sparsity_plan.json``) that its checkpoints' masks depend on.
PLAN_KEYS = ("target_sparsity", "sparsity_schedule", "pruning_structure", "pruning_scope", "pruning_score",
             "pruning_seed", "init_mask_from_zeros", "prunable_tensors", "prune_steps", "kept_after_events")


def read_plan(run_dir: str) -> dict | None:
  """The pruning plan a sparse run with checkpointing wrote when it started (``layout.PLAN_FILE``), or None."""
  path = layout.plan_path(run_dir)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_plan(run_dir: str, plan: dict) -> str:
  """Writes the run's pruning plan (``PLAN_KEYS``) atomically; returns its path."""
  return write_json(layout.plan_path(run_dir), {k: plan[k] for k in PLAN_KEYS})


def check_plan(run_dir: str, plan: dict) -> None:
  """Raises ValueError, before anything is restored, if ``run_dir`` has a finished checkpoint whose run pruned by
  another plan than ``plan`` (another structure, target, schedule, scope, score or prunable set: its masks would
  not be the ones this config's schedule expects). The plan is read from the run's plan file and from the record
  beside the latest checkpoint step (``RECORD_FILE``), so that deleting the plan file lets no other plan through.
  Nothing is checked without a checkpoint, or without either record (a run directory written before they existed)."""
  ckpts = layout.checkpoints_dir(run_dir)
  found = steps(ckpts)
  if not found:
    return
  records = [(layout.plan_path(run_dir), read_plan(run_dir))]
  step_record = read_record(ckpts, found[-1])
  if step_record is not None:
    records.append((record_path(ckpts, found[-1]), step_record.get("plan")))
  for path, written in records:
    if written is None:
      continue
    differ = [k for k in PLAN_KEYS if written.get(k) != plan[k]]
    if not differ:
      continue
    shown = "; ".join(f"{k}: {_short(written.get(k))} (checkpoint) vs {_short(plan[k])} (this config)" for k in differ)
    raise ValueError(f"the checkpoint at {layout.items_dir(ckpts, found[-1])} (step {found[-1]}) was written by a run "
                     f"that prunes differently ({path}): {shown}. It cannot be resumed with this config. Use another "
                     "run_name, or load only its weights with load_parameters_path (and init_mask_from_zeros=true to "
                     "keep its zeros).")


def _short(value, limit: int = 120) -> str:
  text = json.dumps(value)
  return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["RECORD_FILE", "RECORD_FORMAT", "CheckpointUnreadable", "record_path", "read_record",
           "unreadable_message", "PLAN_KEYS", "read_plan", "write_plan", "check_plan", "steps", "latest_step",
           "metadata_tree", "metadata_shapes", "Located", "ModelState", "locate", "load", "read_summary",
           "check_resumable"]
