"""Gradual magnitude pruning as an optax transformation wrapping any optimizer.

``pruned(inner, plan)`` keeps one boolean mask per prunable parameter in its state, beside ``inner``'s
state, so the masks are sharded like the parameters, checkpointed with the optimizer state and restored
with it. Around every update:

1. at a pruning event (update ``count`` in ``plan.schedule.prune_steps``) the masks shrink to the exact number
   of weights the schedule keeps, chosen by magnitude (``sparsity.core.threshold``: one global threshold, or
   one per tensor) over the weights as they are before this update; masks only ever lose entries. The
   optimizer's per-parameter state of the newly pruned weights (Adam's moments, momentum) is zeroed then;
2. gradients of pruned weights are zeroed before ``inner`` sees them, so that state stays zero and no
   cross-weight optimizer (Muon, clipping inside ``inner``) sees them;
3. the update of a pruned weight is ``-param``, so after ``optax.apply_updates`` it is exactly zero.

Everything is a pure function of (params, masks, step, plan). By default step 1 runs inside the update under
``lax.cond`` (self-contained). With ``events_in_update=False`` the update does only steps 2 and 3, elementwise
selects that XLA fuses into the optimizer's own update, and the caller runs step 1 between updates: either
``apply_due_event(state, params, plan)`` (one call), or, to compile it into its own program,
``due_event`` (decided on the host) + ``mask_event`` + ``zero_pruned`` (pure, jittable). The training step then
compiles and runs like the dense one; both forms give the same numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from sparsity.core import threshold
from sparsity.core.config import (DEFAULT_PRUNABLE, SCOPES, SCORES, UNSTRUCTURED, check_regex, check_target,
                                   parse_structure, schedule_from_config)
from sparsity.core.paths import flatten, nest, shape_of, size_of, unnest
from sparsity.core.timeline import Schedule


def input_axis(path: str, shape: tuple) -> int:  # pylint: disable=unused-argument
  """Axis 0: a kernel's input dimension in the ``(in, out)`` convention of flax and optax."""
  return 0


class PruningState(NamedTuple):
  """State of ``pruned``: update count, masks of prunable parameters (nested dict by path), inner state."""

  count: jax.Array
  masks: Any
  inner_state: Any


@dataclasses.dataclass(frozen=True)
class PrunePlan:
  """What is pruned and when: everything ``pruned`` needs besides arrays. Field names are the config keys.

  Attributes:
    schedule: the run's discrete schedule (``sparsity.core.schedules.make_schedule``, or a config's:
      ``sparsity.core.config.schedule_from_config``).
    prunable_params: regex of prunable parameter paths (``re.search`` on 'a/b/kernel').
    non_prunable_params: regex of paths never pruned, applied after ``prunable_params`` (empty: none).
    pruning_scope: 'global' (one threshold over all prunable weights) or 'per_tensor'.
    pruning_score: 'magnitude' (``|w|``) or 'random' (uniform, seeded by ``pruning_seed``).
    pruning_seed: seed of the random score.
    init_mask_from_zeros: at the first update, also mask the prunable weights that are exactly zero (sparse
      fine-tuning from a pruned checkpoint: the zero set is then held fixed).
    pruning_structure: 'unstructured', or 'N:M': in every group of M consecutive weights along a kernel's
      contraction axis the N largest scores are never pruned and the others are candidates for the threshold, so
      at density N/M (the lowest allowed) every group holds exactly N non-zeros (the authors' fork's semantics,
      with groups along the input dimension, which sparse tensor cores need).
    group_axis: ``(path, shape) -> axis`` of a kernel's contraction dimension, for N:M. The default, axis 0, is
      the ``(in, out)`` kernel convention of flax and optax; the MaxText hook passes MaxText's layout.

  Raises:
    ValueError: naming the field, for a choice that does not exist or a regex that does not compile.
  """

  schedule: Schedule
  prunable_params: str = DEFAULT_PRUNABLE
  non_prunable_params: str = ""
  pruning_scope: str = "global"
  pruning_score: str = "magnitude"
  pruning_seed: int = 0
  init_mask_from_zeros: bool = False
  pruning_structure: str = UNSTRUCTURED
  group_axis: Callable[[str, tuple], int] = dataclasses.field(default=input_axis, compare=True)

  def __post_init__(self):
    if not isinstance(self.schedule, Schedule):
      raise ValueError(f"schedule must be a sparsity Schedule (make_schedule), got {type(self.schedule).__name__}")
    for name, choices in (("pruning_scope", SCOPES), ("pruning_score", SCORES)):
      if getattr(self, name) not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
    for name in ("prunable_params", "non_prunable_params"):
      check_regex(name, getattr(self, name))
    if self.schedule.densities:
      check_target(self.pruning_structure, 1.0 - self.schedule.densities[-1])

  @property
  def nm(self) -> tuple[int, int] | None:
    """``(N, M)`` of an N:M structure, None when unstructured."""
    return parse_structure(self.pruning_structure)

  @classmethod
  def from_config(cls, config, **kwargs) -> "PrunePlan":
    """The plan of a config holding the sparsity keys and ``steps`` (``SparsityKeys``, a MaxText config)."""
    keys = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if f.name not in ("schedule", "group_axis")}
    return cls(schedule=schedule_from_config(config), **{**keys, **kwargs})

  @property
  def masks_needed(self) -> bool:
    """Whether any mask can ever lose an entry (else the transformation is the inner optimizer's)."""
    return bool(self.schedule.prune_steps) or self.init_mask_from_zeros

  def is_prunable(self, path: str) -> bool:
    if not re.search(self.prunable_params, path):
      return False
    return not (self.non_prunable_params and re.search(self.non_prunable_params, path))


def prunable_paths(params, plan: PrunePlan, is_leaf=None) -> list[str]:
  """Paths of the prunable parameters, in leaf order; a clear error listing every path if none matches."""
  flat, _ = flatten(params, is_leaf)
  chosen = [p for p, _ in flat if plan.is_prunable(p)]
  if not chosen:
    listing = "\n  ".join(p for p, _ in flat)
    raise ValueError(
        f"prunable_params={plan.prunable_params!r} (non_prunable_params={plan.non_prunable_params!r}) matches no "
        f"parameter. Parameter paths are:\n  {listing}"
    )
  return chosen


def check_structure(plan: PrunePlan, shapes: dict[str, tuple]) -> dict[str, int]:
  """``{path: group axis}`` of the prunable parameters for an N:M plan ({} when unstructured); a ValueError naming
  every tensor whose contraction axis is not a multiple of M."""
  nm = plan.nm
  if nm is None:
    return {}
  axes, bad = {}, []
  for path, shape in shapes.items():
    axis = plan.group_axis(path, tuple(shape))
    axes[path] = axis
    if not 0 <= axis < len(shape) or shape[axis] % nm[1]:
      bad.append(f"{path} {tuple(shape)}: axis {axis}" + (f" of size {shape[axis]}" if 0 <= axis < len(shape) else ""))
  if bad:
    raise ValueError(f"pruning_structure={plan.pruning_structure} needs groups of {nm[1]} along each kernel's "
                     f"contraction axis; not a multiple of {nm[1]}: " + "; ".join(bad))
  return axes


def keep_tables(plan: PrunePlan, sizes: Sequence[int]) -> list[list[int]]:
  """Weights kept after each event: one row per event; columns = groups (1 for global, 1 per tensor)."""
  if plan.pruning_scope == "global":
    return [[k] for k in plan.schedule.keep_counts(sum(sizes))]
  per = [plan.schedule.keep_counts(n) for n in sizes]
  return [list(row) for row in zip(*per)] if per else []


def kept_after_events(plan: PrunePlan, sizes: Sequence[int]) -> tuple[int, ...]:
  """Prunable weights kept in all after each event, as the plan's scope keeps them (exact)."""
  return tuple(sum(row) for row in keep_tables(plan, sizes))


def compute_masks(values, masks, keep, plan: PrunePlan, step, names: Sequence[str] | None = None) -> list:
  """New masks keeping exactly ``keep`` weights per group (wide counts), never reviving an entry.

  With an N:M structure the N largest scores of every group of M along each tensor's group axis (from ``names``,
  the tensors' paths) are kept first; the threshold chooses among the others.
  """
  if plan.pruning_score == "magnitude":
    keys = [threshold.magnitude_key_fn(v, m) for v, m in zip(values, masks)]
  else:
    rng = jax.random.fold_in(jax.random.PRNGKey(plan.pruning_seed), step)
    keys = [threshold.random_keys(jax.random.fold_in(rng, i), m.shape, m) for i, m in enumerate(masks)]
  if plan.nm is not None:
    if names is None:
      raise ValueError(f"pruning_structure={plan.pruning_structure}: mask_event needs the tensors' names")
    axes = check_structure(plan, {p: tuple(m.shape) for p, m in zip(names, masks)})
    keys = [threshold.protect_top_n(k, axes[p], *plan.nm) for k, p in zip(keys, names)]
  if plan.pruning_scope == "global":
    new = threshold.top_k_masks(keys, keep[0])
  else:
    new = [threshold.top_k_masks([key], kk)[0] for key, kk in zip(keys, keep)]
  return [m & n for m, n in zip(masks, new)]


@functools.partial(jax.tree_util.register_dataclass, data_fields=("keep", "step"), meta_fields=("prune", "mask_zeros"))
@dataclasses.dataclass(frozen=True)
class Event:
  """The mask changes due before one update: ``due_event`` makes it, ``mask_event`` applies it.

  A pytree: the counts and step are arrays (so one compiled program serves every pruning event), ``prune``
  and ``mask_zeros`` are static.

  Attributes:
    keep: this event's kept count per group, as exact two-limb ``(hi, lo)`` int32 counts; () if not pruning.
    step: the update count (int32; the random score uses it).
    prune: whether this is a pruning event of the schedule.
    mask_zeros: whether to mask the weights that are exactly zero (``init_mask_from_zeros`` at update 0).
  """

  keep: tuple
  step: jax.Array
  prune: bool
  mask_zeros: bool


def due_event(plan: PrunePlan, sizes: Sequence[int], step: int) -> Event | None:
  """The event due before update ``step`` (a Python int, decided on the host), or None if nothing is due.

  Args:
    plan: what to prune.
    sizes: sizes of the prunable parameters, in the masks' order.
    step: the update count.
  """
  zeros = plan.init_mask_from_zeros and step == 0
  prune = step in plan.schedule.prune_steps
  if not (zeros or prune):
    return None
  keep = ()
  if prune:
    keep = tuple(threshold.wide_const(k) for k in keep_tables(plan, sizes)[plan.schedule.prune_steps.index(step)])
  return Event(keep, jnp.int32(step), prune, zeros)


def mask_event(values, masks, event: Event, plan: PrunePlan, names: Sequence[str] | None = None) -> list:
  """The masks after ``event``; a pure function, jittable on its own.

  Args:
    values: the prunable parameters as they are before the event's update, in the masks' order.
    masks: their current boolean masks.
    event: from ``due_event``.
    plan: what to prune.
    names: the parameters' paths (needed by an N:M structure, for each tensor's group axis).
  """
  masks = list(masks)
  if event.mask_zeros:
    masks = [m & (v != 0) for m, v in zip(masks, values)]
  if event.prune:
    masks = compute_masks(values, masks, event.keep, plan, event.step, names)
  return masks


def per_param_leaves(leaves: Sequence[tuple[str, tuple]], params: dict[str, tuple]) -> dict[int, str]:
  """Which leaves of an optimizer state hold per-weight values of which parameter.

  Args:
    leaves: ``(path, shape)`` of every leaf of the state (e.g. ``flatten(inner_state)``).
    params: ``{parameter path: shape}`` of the masked parameters.

  Returns:
    ``{leaf index: parameter path}`` for every leaf whose path ends with ``/<parameter path>`` (the longest such
    parameter) and whose shape is the parameter's: Adam's ``mu``/``nu``, momentum, Muon's ``mu``. Factored or
    scalar statistics (Adafactor rows, counts) have other shapes and are left alone.
  """
  by_len = sorted(params, key=len, reverse=True)
  out = {}
  for i, (path, shape) in enumerate(leaves):
    for p in by_len:
      if (path == p or path.endswith("/" + p)) and tuple(shape) == tuple(params[p]):
        out[i] = p
        break
  return out


def zero_pruned(tree, masks: dict[str, jax.Array], is_leaf=None):
  """``tree`` (an optimizer state) with its per-weight values of pruned weights set to zero.

  Args:
    tree: any pytree; the leaves ``per_param_leaves`` assigns to a parameter are masked.
    masks: ``{parameter path: boolean mask}``.
    is_leaf: optional pytree leaf predicate.
  """
  flat, treedef = flatten(tree, is_leaf)
  owner = per_param_leaves([(p, shape_of(x)) for p, x in flat], {p: shape_of(m) for p, m in masks.items()})
  out = [jnp.where(masks[owner[i]], x, jnp.zeros_like(x)) if i in owner else x for i, (_, x) in enumerate(flat)]
  return jax.tree_util.tree_unflatten(treedef, out)


def pruned(
    inner: optax.GradientTransformation, plan: PrunePlan, is_leaf=None, events_in_update: bool = True
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that the parameters are pruned on ``plan``'s schedule (see the module docstring).

  Args:
    inner: the optimizer to wrap (extra arguments of ``update`` are passed on to it).
    plan: what to prune and when.
    is_leaf: optional pytree leaf predicate for ``init``'s params (e.g. flax ``nnx.Variable``) so that masks
      are built as copies of those leaves and keep their metadata, such as sharding annotations.
    events_in_update: compute the mask changes inside the update, under ``lax.cond`` (self-contained). With
      False the update only applies the masks in its state and the caller runs the events between updates
      (``apply_due_event``, or ``due_event``/``mask_event``/``zero_pruned`` in a program of its own). On XLA:CPU
      a conditional holding the selection costs about 4% of every step of a 58M model even when not taken
      (and its compile time), so the MaxText hook uses False.
  """
  inner = optax.with_extra_args_support(inner)
  event_steps = plan.schedule.prune_steps if events_in_update else ()

  def init(params):
    flat, _ = flatten(params, is_leaf)
    chosen = set(prunable_paths(params, plan, is_leaf))
    check_structure(plan, {p: shape_of(x) for p, x in flat if p in chosen})
    masks = {p: jax.tree.map(lambda a: jnp.ones(shape_of(a), jnp.bool_), x) for p, x in flat if p in chosen}
    return PruningState(jnp.zeros((), jnp.int32), nest(masks), inner.init(params))

  def update(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("pruned() needs params in update()")
    flat_params, treedef = flatten(params)
    flat_masks = unnest(state.masks)
    names = [p for p, _ in flat_params if p in flat_masks]
    values = dict(flat_params)
    prunable = [values[p] for p in names]
    masks = [flat_masks[p] for p in names]
    step = state.count
    inner_state = state.inner_state

    if events_in_update and plan.masks_needed:
      # Each event also zeroes the optimizer's state of the newly pruned weights (with masked gradients it then
      # stays zero), as ``apply_due_event`` does between updates: both forms compute the same numbers.
      def with_event(event):
        def run(carry):
          new = mask_event(prunable, carry[0], event, plan, names)
          return new, zero_pruned(carry[1], dict(zip(names, new)))
        return run

      carry = (masks, inner_state)
      if plan.init_mask_from_zeros:
        carry = jax.lax.cond(step == 0, with_event(Event((), step, False, True)), lambda c: c, carry)
      if event_steps:
        table = keep_tables(plan, [size_of(v) for v in prunable])  # [event][group] -> Python int
        steps_arr = jnp.asarray(event_steps, jnp.int32)
        event_idx = jnp.argmax(steps_arr == step)
        # This event's keep counts as exact wide integers (two int32 limbs), looked up by event number.
        columns = (threshold.wide_array([row[g] for row in table]) for g in range(len(table[0])))
        keep = tuple((hi[event_idx], lo[event_idx]) for hi, lo in columns)
        carry = jax.lax.cond(jnp.any(steps_arr == step), with_event(Event(keep, step, True, False)), lambda c: c,
                             carry)
      masks, inner_state = carry

    mask_of = dict(zip(names, masks))
    flat_updates = jax.tree_util.tree_leaves(updates)
    masked_grads = [
        jnp.where(mask_of[p], g, jnp.zeros_like(g)) if p in mask_of else g for (p, _), g in zip(flat_params, flat_updates)
    ]
    new_updates, inner_state = inner.update(
        jax.tree_util.tree_unflatten(treedef, masked_grads), inner_state, params, **extra_args
    )
    final = [
        jnp.where(mask_of[p], u, -x.astype(u.dtype)) if p in mask_of else u
        for (p, x), u in zip(flat_params, jax.tree_util.tree_leaves(new_updates))
    ]
    new_state = PruningState(step + 1, nest(mask_of), inner_state)
    return jax.tree_util.tree_unflatten(treedef, final), new_state

  return optax.GradientTransformationExtraArgs(init, update)


@functools.partial(jax.jit, static_argnames=("plan",), donate_argnames=("state",))
def _event_program(state: PruningState, params, event: Event, plan: PrunePlan) -> PruningState:
  flat_params = dict(flatten(params)[0])
  flat_masks = unnest(state.masks)
  names = list(flat_masks)
  new = mask_event([flat_params[p] for p in names], [flat_masks[p] for p in names], event, plan, names)
  masks = dict(zip(names, new))
  return PruningState(state.count, nest(masks), zero_pruned(state.inner_state, masks))


def apply_due_event(state: PruningState, params, plan: PrunePlan) -> PruningState:
  """Runs the event due before the next update, if any (``pruned(..., events_in_update=False)``).

  Call it before every update with the parameters the update will see; it decides on the host (from
  ``state.count``) whether an event is due, and then computes the new masks and zeroes the optimizer state of
  the newly pruned weights in one jitted program (compiled once per kind of event). ``state`` is donated.
  """
  step = int(jax.device_get(state.count))
  names = list(unnest(state.masks))
  flat_params = dict(flatten(params)[0])
  event = due_event(plan, [size_of(flat_params[p]) for p in names], step)
  if event is None:
    return state
  return _event_program(state, params, event, plan)


__all__ = [
    "PruningState", "PrunePlan", "Event", "pruned", "apply_due_event", "due_event", "mask_event", "zero_pruned",
    "per_param_leaves", "prunable_paths", "keep_tables", "kept_after_events", "compute_masks", "check_structure",
    "input_axis",
]
