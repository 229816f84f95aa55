"""Integrity of a resumed run: what a checkpoint held when it was saved, checked before training on it.

At every checkpoint MaxText saves, a fingerprint of each array of the train state (parameters, masks, optimizer
state) is computed on the device: per array, the wrapping uint32 sum of its bit patterns and the wrapping sum of
those words times odd position weights (``2 i + 1`` for flat index ``i``, mod 2**32). Any change of one word, one
bit included, changes both sums (an odd weight is invertible mod 2**32); a sharded array is reduced where it lies
and only the two scalars cross devices. On TPU/GPU the sums are reductions; on the CPU two integer matrix-vector
products (the same numbers: XLA:CPU vectorizes integer products, not integer reductions). Once Orbax's save of the
step has finished (its ``<step>`` directory exists; looked at on every call of MaxText's ``maybe_save_checkpoint``,
i.e. every step), process 0 writes ``<checkpoints>/<step>/sparsity_fingerprint.json`` (``checkpoint.RECORD_FILE``):
the fingerprints, each mask's kept count and the run's pruning plan (``checkpoint.PLAN_KEYS``), so that a deleted
``sparsity_plan.json`` cannot let a run with another plan resume (``checkpoint.check_plan`` reads both).

Before the first training step on a restored state (``verify``), on the device: every fingerprint must match the
record of the step, every masked-out weight must be exactly zero, and the masks' kept counts must be the plan's
at that step (the schedule's count per group: the total for a global scope, each tensor's for a per-tensor one)
and the record's. A mismatch raises ``CheckpointCorrupt`` naming the step, the tensors and the cause.

``guarded_restore`` wraps MaxText's ``checkpointing.load_state_if_possible``: an exception of Orbax's restore
(a truncated or unreadable file) becomes a short ``CheckpointUnreadable`` naming the file and the cause; the full
traceback goes to the log.
"""

from __future__ import annotations

import functools
import math
import os
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from sparsity.core import pruner, threshold
from sparsity.core.paths import path_str
from sparsity.files import write_json
from sparsity.maxtext import checkpoint, layout
from sparsity.maxtext.checkpoint import CheckpointUnreadable, read_record, record_path, unreadable_message


class CheckpointCorrupt(RuntimeError):
  """A restored state differs from what was saved, or breaks the pruning plan."""


# ------------------------------------------------------------------------------------------------------------------
# On the device.
# ------------------------------------------------------------------------------------------------------------------


def _words(x) -> jax.Array:
  """The bit patterns of ``x`` as uint32 (one word per entry; 8-byte entries as two)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _odd_weights(shape, index=None) -> jax.Array:
  """``2 i + 1`` mod 2**32 for each entry's flat (row-major) index ``i``, from per-axis uint32 indices (``index``;
  default: every entry's, as iotas): exact past 2**31 (or 2**32) entries, and partitioned like the array it weighs
  (no index array is gathered)."""
  if index is None:
    index = [jax.lax.broadcasted_iota(jnp.uint32, shape, axis) for axis in range(len(shape))]
  flat = jnp.uint32(0)
  stride = 1
  for axis in reversed(range(len(shape))):
    flat = flat + jnp.asarray(index[axis], jnp.uint32) * jnp.uint32(stride % (1 << 32))
    stride *= int(shape[axis])
  return flat * jnp.uint32(2) + jnp.uint32(1)


def _reduced(w) -> jax.Array:
  """``[sum, weighted sum]`` of uint32 words by reductions (TPU, GPU: read once, reduced where each shard lies)."""
  return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * _odd_weights(w.shape), dtype=jnp.uint32)])


def _by_products(w) -> jax.Array:
  """The same two sums from two integer matrix-vector products over ``w`` seen as rows of its last axis (XLA:CPU
  vectorizes integer products, not integer reductions: about 5x faster there). With ``i = r C + c``:
  ``sum w (2 i + 1) = 2 C sum_r r rows_r + 2 sum_c c cols_c + sum w``."""
  u32 = jnp.uint32
  m = w.reshape(-1, w.shape[-1]) if w.ndim else w.reshape(1, 1)
  n_rows, n_cols = m.shape
  rows = jnp.dot(m, jnp.ones((n_cols,), u32), preferred_element_type=u32)
  cols = jnp.dot(jnp.ones((n_rows,), u32), m, preferred_element_type=u32)
  total = jnp.sum(rows, dtype=u32)
  weighted = (u32(n_cols % (1 << 32)) * jnp.sum(jax.lax.iota(u32, n_rows) * rows, dtype=u32)
              + jnp.sum(jax.lax.iota(u32, n_cols) * cols, dtype=u32))
  return jnp.stack([total, weighted * u32(2) + total])


def leaf_fingerprint(x, form: str | None = None) -> jax.Array:
  """``[sum of words, sum of words x odd position weights]`` of one array, uint32 with wraparound. ``form``:
  ``"reduced"`` or ``"products"`` (the same numbers); default: products on the CPU, reductions elsewhere."""
  w = _words(jnp.asarray(x))
  if form is not None:
    return {"reduced": _reduced, "products": _by_products}[form](w)
  return jax.lax.platform_dependent(w, cpu=_by_products, default=_reduced)


@jax.jit
def fingerprints(leaves) -> jax.Array:
  """``(len(leaves), 2)`` uint32: ``leaf_fingerprint`` of each array (one program, one small transfer)."""
  if not leaves:
    return jnp.zeros((0, 2), jnp.uint32)
  return jnp.stack([leaf_fingerprint(x) for x in leaves])


def stray_counts(params, masks) -> list:
  """Per mask: the masked-out entries of its parameter that are not zero (wide counts)."""
  return [threshold.count_true([jnp.logical_and(jnp.logical_not(m), p != 0)]) for p, m in zip(params, masks)]


@functools.partial(jax.jit, static_argnums=2)
def _counts(params, masks, counted: tuple):
  """Stray counts of every mask, kept counts of the masks in ``counted`` (those of 2**32 entries or more: the others'
  is their fingerprint's plain sum, exact below 2**32)."""
  return [threshold.count_true([m]) for m, c in zip(masks, counted) if c], stray_counts(params, masks)


def measure(leaves, params, masks):
  """The device work of the checks (dispatched, not waited for): ``fingerprints`` of every array, and per mask its
  stray count (and its kept count past 2**32 entries): ``(fingerprints, (counted kept, stray))``."""
  counted = tuple(math.prod(m.shape) >= 1 << 32 for m in masks)
  return fingerprints(leaves), (_counts(params, masks, counted) if masks else ([], []))


# ------------------------------------------------------------------------------------------------------------------
# The train state.
# ------------------------------------------------------------------------------------------------------------------


def state_arrays(state) -> list[tuple[str, jax.Array]]:
  """``(path, array)`` of every array of a train state, in leaf order."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return [(path_str(p), x) for p, x in flat if hasattr(x, "dtype") and hasattr(x, "shape")]


def _masks_and_params(arrays):
  by_path = dict(arrays)
  names = [n for n in (layout.state_mask_path(p) for p, _ in arrays) if n is not None]
  return names, [by_path[layout.STATE_PARAMS + n] for n in names], [by_path[layout.STATE_MASKS + n] for n in names]


def _host(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(jax.device_get(x))


def _wide_ints(wides) -> list[int]:
  return [threshold.wide_to_python((_host(h), _host(lo))) for h, lo in wides]


def _hex(pair) -> str:
  return f"{int(pair[0]):08x}{int(pair[1]):08x}"


class Measured:
  """The device results for one state (dispatched, not waited for): fingerprints, kept and stray counts."""

  def __init__(self, state):
    arrays = state_arrays(state)
    self.paths = [p for p, _ in arrays]
    self.names, params, masks = _masks_and_params(arrays)
    self.sizes = [math.prod(m.shape) for m in masks]
    self._counted = [n >= 1 << 32 for n in self.sizes]
    self._prints, self._counts = measure([x for _, x in arrays], params, masks)

  def fingerprints(self) -> dict[str, str]:
    return dict(zip(self.paths, map(_hex, _host(self._prints))))

  def kept(self) -> dict[str, int]:
    """Each mask's kept count: its fingerprint's plain sum (the number of True words mod 2**32), or counted."""
    sums = dict(zip(self.paths, (int(s) for s, _ in _host(self._prints))))
    counted = iter(_wide_ints(self._counts[0]))
    return {n: next(counted) if c else sums[layout.STATE_MASKS + n] for n, c in zip(self.names, self._counted)}

  def stray(self) -> dict[str, int]:
    return dict(zip(self.names, _wide_ints(self._counts[1])))


# ------------------------------------------------------------------------------------------------------------------
# The record beside each checkpoint step.
# ------------------------------------------------------------------------------------------------------------------


class Recorder:
  """Fingerprints each checkpoint MaxText saves and writes its record once Orbax's save has finished."""

  def __init__(self, checkpoint_dir: str, plan):
    """``plan``: the run's plan record (``checkpoint.PLAN_KEYS``; None for a dense run), or a function returning it
    (the hook knows it only once MaxText has built the optimizer)."""
    self.checkpoint_dir = checkpoint_dir
    self.plan = plan
    self.pending: dict[int, Measured] = {}
    self.written: list[int] = []

  def saved(self, step: int, state) -> None:
    """A save of ``step`` was issued for ``state``: fingerprint it now (on the device, before the next step)."""
    self.pending[int(step)] = Measured(state)

  def flush(self) -> None:
    """Writes the record of every pending step whose save has finished (process 0; every process waits for the
    same small results)."""
    for step in sorted(self.pending):
      if not os.path.isdir(layout.items_dir(self.checkpoint_dir, step)):
        continue
      measured = self.pending.pop(step)
      plan = self.plan() if callable(self.plan) else self.plan
      record = {"format": checkpoint.RECORD_FORMAT, "step": step, "plan": plan, "kept": measured.kept(),
                "fingerprints": measured.fingerprints()}
      if jax.process_index() == 0:
        write_json(record_path(self.checkpoint_dir, step), record)
        self.written.append(step)


def maybe_save_checkpoint(original, recorder: Recorder, latest_step, checkpoint_manager, state, config, data_iterator,
                          step=None):
  """MaxText's ``checkpointing.maybe_save_checkpoint`` (``original``), fingerprinting the state when it issued a
  save (the manager's ``latest_step`` changed) and writing the records of the saves that finished."""
  before = None if checkpoint_manager is None else latest_step(checkpoint_manager)

  def record():
    after = None if checkpoint_manager is None else latest_step(checkpoint_manager)
    if after is not None and after != before:
      recorder.saved(after, state)
    recorder.flush()

  try:
    out = original(checkpoint_manager, state, config, data_iterator, step)
  except BaseException:  # e.g. MaxText's preemption stop after its save: recorded, never masking the exception
    try:
      record()
    except Exception as e:  # pylint: disable=broad-except
      print(f"WARNING: could not write a checkpoint's fingerprint record: {type(e).__name__}: {e}", flush=True)
    raise
  record()  # a failed write of the record (a full disk) fails the run like any other write
  return out


# ------------------------------------------------------------------------------------------------------------------
# Before training on a restored state.
# ------------------------------------------------------------------------------------------------------------------


def expected_kept(plan: pruner.PrunePlan, sizes: list[int], step: int) -> tuple[str, list[int]] | None:
  """The plan's kept counts after train step ``step``: ``("global", [total])`` or ``("per_tensor", [each])`` (in
  ``sizes``' order); None when the plan does not fix them (a mask fixed from the loaded weights' zeros)."""
  if plan.init_mask_from_zeros:
    return None
  events = [i for i, s in enumerate(plan.schedule.prune_steps) if s <= step]
  if not events:
    row = list(sizes) if plan.pruning_scope != "global" else [sum(sizes)]
  else:
    row = list(pruner.keep_tables(plan, sizes)[events[-1]])
  return ("global" if plan.pruning_scope == "global" else "per_tensor"), row


def verify(state, checkpoint_dir: str, step: int, plan: pruner.PrunePlan | None) -> list[str]:
  """Raises ``CheckpointCorrupt`` if the state restored from the checkpoint of ``step`` is not what was saved or
  breaks ``plan`` (see the module docstring); returns what was checked. A collective: every process calls it."""
  record = read_record(checkpoint_dir, step)
  measured = Measured(state)
  where = f"the checkpoint of step {step} ({layout.items_dir(checkpoint_dir, step)})"
  problems, checked = [], []
  if record is not None:
    saved = record.get("fingerprints", {})
    got = measured.fingerprints()
    changed = [p for p in got if p in saved and saved[p] != got[p]]
    missing = sorted(set(saved) ^ set(got))
    problems += [f"{p}: its values differ from those saved (fingerprint {got[p]}, saved {saved[p]})" for p in changed]
    if missing:
      problems.append(f"the arrays saved and restored differ: {missing[:4]}")
    checked.append(f"fingerprints of {len(got)} arrays")
  kept, stray = measured.kept(), measured.stray()
  problems += [f"{n}: {k:,} masked-out weights are not zero" for n, k in stray.items() if k]
  if record is not None and record.get("kept") is not None:
    problems += [f"{n}: the mask keeps {kept[n]:,} weights, {k:,} when saved" for n, k in record["kept"].items()
                 if n in kept and kept[n] != k]
  if plan is not None and kept:
    want = expected_kept(plan, measured.sizes, step)
    if want is not None:
      scope, row = want
      if scope == "global" and sum(kept.values()) != row[0]:
        problems.append(f"the masks keep {sum(kept.values()):,} weights, the plan {row[0]:,} after step {step}")
      elif scope == "per_tensor":
        problems += [f"{n}: the mask keeps {kept[n]:,} weights, the plan {k:,} after step {step}"
                     for n, k in zip(measured.names, row) if kept[n] != k]
      checked.append("kept counts against the plan")
  checked.append(f"zeros outside {len(kept)} masks")
  if problems:
    shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
    raise CheckpointCorrupt(f"{where} is corrupt: {shown}. Resume from an earlier checkpoint (delete this step's "
                            "directory) or start another run_name.")
  if record is None:
    print(f"WARNING: {where} has no fingerprint record ({checkpoint.RECORD_FILE}): its values cannot be compared "
          "with those saved", flush=True)
  return checked


def verify_start(run, config, state, start_step: int) -> None:
  """``verify`` of the state MaxText restored from this run's own checkpoint (the step before ``start_step``), before
  the first training step; nothing when the run starts fresh or its checkpoints are not local."""
  checkpoint_dir = _local_checkpoints(config)
  if start_step <= 0 or checkpoint_dir is None:
    return
  if start_step - 1 not in checkpoint.steps(checkpoint_dir):
    return  # restored from elsewhere (load_full_state_path)
  checked = verify(state, checkpoint_dir, start_step - 1, run.plan if run.sparse else None)
  print(f"checkpoint of step {start_step - 1} verified: {', '.join(checked)}", flush=True)


def _local_checkpoints(config) -> str | None:
  run_dir = layout.run_dir(config.base_output_directory, config.run_name)
  if not config.enable_checkpointing or "://" in run_dir:
    return None
  return layout.checkpoints_dir(run_dir)


class Guard:
  """The integrity hooks of one training loop: MaxText's ``checkpointing.maybe_save_checkpoint`` records each save
  (``Recorder``), its ``load_state_if_possible`` reports an unreadable checkpoint (``guarded_restore``)."""

  def __init__(self, run, config, checkpointing):
    self.checkpointing = checkpointing
    self.save, self.restore = checkpointing.maybe_save_checkpoint, checkpointing.load_state_if_possible
    checkpoint_dir = _local_checkpoints(config)
    self.recorder = None
    if checkpoint_dir is not None:
      self.recorder = Recorder(checkpoint_dir, lambda: getattr(run, "plan_record", None))
      checkpointing.maybe_save_checkpoint = functools.partial(maybe_save_checkpoint, self.save, self.recorder,
                                                                checkpointing.latest_step)
      checkpointing.load_state_if_possible = functools.partial(guarded_restore, self.restore, checkpoint_dir)

  def uninstall(self) -> None:
    """Puts MaxText's functions back and writes the records of the saves that finished (MaxText waited for them)."""
    self.checkpointing.maybe_save_checkpoint, self.checkpointing.load_state_if_possible = self.save, self.restore
    if self.recorder is not None:
      try:
        self.recorder.flush()
      except Exception as e:  # pylint: disable=broad-except  (the run's own end must not be masked)
        print(f"WARNING: could not write a checkpoint's fingerprint record: {type(e).__name__}: {e}", flush=True)


# ------------------------------------------------------------------------------------------------------------------
# Restoring.
# ------------------------------------------------------------------------------------------------------------------

def guarded_restore(original, checkpoint_dir: str, *args, **kwargs):
  """MaxText's ``checkpointing.load_state_if_possible`` (``original``): an exception while restoring from
  ``checkpoint_dir`` becomes ``CheckpointUnreadable`` naming the file and the cause (full traceback in the log)."""
  found = checkpoint.steps(checkpoint_dir)
  try:
    return original(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    if not found:  # not this run's checkpoint (load_parameters_path, load_full_state_path)
      raise
    text = "".join(traceback.format_exception(e))
    print(f"restoring the checkpoint of step {found[-1]} failed; the full error:\n{text}", flush=True)
    raise CheckpointUnreadable(f"the checkpoint of step {found[-1]} ({layout.items_dir(checkpoint_dir, found[-1])}) is "
                               f"unreadable: {unreadable_message(text, checkpoint_dir)}") from None


__all__ = ["CheckpointCorrupt", "leaf_fingerprint", "fingerprints", "stray_counts", "measure",
           "state_arrays", "Measured", "Recorder", "maybe_save_checkpoint",
           "expected_kept", "verify", "verify_start", "Guard", "guarded_restore"]
