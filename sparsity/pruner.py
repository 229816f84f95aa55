"""Gradual magnitude pruning as an optax ``GradientTransformation`` wrapping any optimizer.

``pruned(inner, plan)`` keeps one boolean mask per prunable parameter in its state, beside ``inner``'s
state, so the masks are sharded like the parameters, checkpointed with the optimizer state and restored
with it. Every update:

1. at a pruning event (``count`` in ``plan.prune_steps``) the masks shrink to the exact number of weights the
   schedule keeps, chosen by one global magnitude threshold (``sparsity.threshold``) over the weights as
   they are before this step's update; masks only ever lose entries;
2. gradients of pruned weights are zeroed before ``inner`` sees them, and ``inner``'s moments of pruned
   weights are zeroed, so no momentum can revive them;
3. the update of a pruned weight is ``-param``, so after ``optax.apply_updates`` it is exactly zero.

All of it is a pure function of (params, masks, step, plan). By default step 1 runs inside the jitted
training step under ``lax.cond``. With ``events_in_update=False`` the training step does only steps 2 and 3,
elementwise selects that XLA fuses into the optimizer's own update, and the caller runs step 1
(``mask_event``) as a separate program before the updates that are events: the training step then
compiles and runs like the dense one.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from sparsity import schedules, threshold


class PruningState(NamedTuple):
  """State of ``pruned``: update count, masks of prunable parameters (a nested dict), inner state."""

  count: jax.Array
  masks: Any
  inner_state: Any


@dataclasses.dataclass(frozen=True)
class PrunePlan:
  """Static description of what is pruned and when: everything ``pruned`` needs besides arrays.

  Attributes:
    schedule: the run's discrete schedule.
    prunable: regex of prunable parameter paths (``re.search`` on 'a/b/kernel').
    non_prunable: regex of paths never pruned (empty: none).
    scope: 'global' (one threshold) or 'per_tensor'.
    score: 'magnitude' or 'random'.
    seed: seed of the random score.
    mask_zeros: at the first update, also mask the prunable weights that are exactly zero (sparse
      fine-tuning from a pruned checkpoint: the zero set is then held fixed).
  """

  schedule: schedules.Schedule
  prunable: str
  non_prunable: str = ""
  scope: str = "global"
  score: str = "magnitude"
  seed: int = 0
  mask_zeros: bool = False

  @property
  def masks_needed(self) -> bool:
    """Whether any mask can ever lose an entry (else the transformation is the inner optimizer's)."""
    return bool(self.schedule.prune_steps) or self.mask_zeros

  def is_prunable(self, path: str) -> bool:
    if not re.search(self.prunable, path):
      return False
    return not (self.non_prunable and re.search(self.non_prunable, path))


def path_str(path) -> str:
  """'decoder/layers/mlp/wi_0/kernel' from a pytree key path (dict keys, attributes, indices).

  A ``.value`` attribute (how a variable wrapper such as ``nnx.Variable`` holds its array) is not part
  of the parameter's name; a dict key named 'value' (the attention value projection) is.
  """
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":
        parts.append(k.name)
    elif isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(getattr(k, "key", getattr(k, "name", k))))
  return "/".join(parts)


def _flatten(params, is_leaf=None):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_leaf)
  return [(path_str(p), x) for p, x in leaves], treedef


def nest_paths(flat: dict) -> dict:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (the inverse of ``flatten_nested``)."""
  out: dict = {}
  for path, v in flat.items():
    node = out
    *head, last = path.split("/")
    for h in head:
      node = node.setdefault(h, {})
    node[last] = v
  return out


def flatten_nested(tree, prefix="") -> dict:
  """{'a': {'b': {'c': x}}} -> {'a/b/c': x} for nested mappings (dicts or flax ``State``)."""
  out = {}
  for k, v in tree.items():
    p = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict) or hasattr(v, "items") and not hasattr(v, "shape"):
      out.update(flatten_nested(v, p))
    else:
      out[p] = v
  return out


def _shape(x):
  return tuple(getattr(x, "shape", ()))


def _size(x) -> int:
  n = 1
  for d in _shape(x):
    n *= int(d)
  return n


def prunable_paths(params, plan: PrunePlan, is_leaf=None) -> list[str]:
  """Paths of the prunable parameters; a clear error if the regexes select none."""
  flat, _ = _flatten(params, is_leaf)
  chosen = [p for p, _ in flat if plan.is_prunable(p)]
  if not chosen:
    listing = "\n  ".join(p for p, _ in flat)
    raise ValueError(
        f"prunable_params={plan.prunable!r} (non_prunable_params={plan.non_prunable!r}) matches no parameter. "
        f"Parameter paths are:\n  {listing}"
    )
  return chosen


def keep_tables(plan: PrunePlan, sizes: Sequence[int]):
  """Weights kept after each event: one row per event; columns = groups (1 for global, 1 per tensor)."""
  if plan.scope == "global":
    return [[k] for k in plan.schedule.keep_counts(sum(sizes))]
  per = [plan.schedule.keep_counts(n) for n in sizes]
  return [list(row) for row in zip(*per)] if per else []


def compute_masks(values, masks, keep, plan: PrunePlan, step):
  """New masks keeping exactly ``keep`` weights per group (Python ints or wide counts), never reviving."""
  if plan.score == "magnitude":
    keys = [threshold.magnitude_key_fn(v, m) for v, m in zip(values, masks)]
  else:
    rng = jax.random.fold_in(jax.random.PRNGKey(plan.seed), step)
    keys = [threshold.random_keys(jax.random.fold_in(rng, i), m.shape, m) for i, m in enumerate(masks)]
  if plan.scope == "global":
    new = threshold.top_k_masks(keys, keep[0])
  else:
    new = [threshold.top_k_masks([key], kk)[0] for key, kk in zip(keys, keep)]
  return [m & n for m, n in zip(masks, new)]


def event_inputs(plan: PrunePlan, sizes: Sequence[int], step: int):
  """What ``mask_event`` needs before update ``step``, decided on the host: ``None`` if nothing is due, else
  ``(keep, zeros)`` with ``keep`` this event's kept count per group as wide counts (None: no pruning event)."""
  zeros = plan.mask_zeros and step == 0
  if step not in plan.schedule.prune_steps:
    return (None, True) if zeros else None
  counts = keep_tables(plan, sizes)[plan.schedule.prune_steps.index(step)]
  return [threshold.wide_const(k) for k in counts], zeros


def mask_event(values, masks, keep, step, plan: PrunePlan, zeros: bool = False) -> list:
  """The masks with the changes due before update ``step``; a pure function for a separate jitted program.

  Use it with ``pruned(..., events_in_update=False)``, whose updates then never change the masks: call this
  between updates, on the parameters as they are before update ``step``, and put its result in the state.
  The result is the masks ``pruned`` would compute inside update ``step`` itself.

  Args:
    values: the prunable parameters, in the masks' order.
    masks: their current boolean masks.
    keep: this event's kept count per group (Python ints or wide ``(hi, lo)`` int32 counts, which may be
      traced, so one compiled program serves every event), or None when ``step`` is not a pruning event.
    step: the update count (only the random score uses it).
    plan: what to prune.
    zeros: also mask the weights that are exactly zero (``plan.mask_zeros`` at update 0).
  """
  if zeros:
    masks = [m & (v != 0) for m, v in zip(masks, values)]
  if keep is not None:
    masks = compute_masks(values, masks, keep, plan, step)
  return list(masks)


def pruned(
    inner: optax.GradientTransformation, plan: PrunePlan, is_leaf=None, events_in_update: bool = True
) -> optax.GradientTransformation:
  """Wraps ``inner`` so that the parameters are pruned on ``plan``'s schedule (see the module docstring).

  Args:
    inner: the optimizer to wrap.
    plan: what to prune and when.
    is_leaf: optional pytree leaf predicate for ``init``'s params (e.g. flax ``nnx.Variable``) so that masks
      are built as copies of those leaves and keep their metadata, such as sharding annotations.
    events_in_update: compute the mask changes inside the update, under ``lax.cond`` (self-contained). With
      False the update only applies the masks in its state and the caller runs ``mask_event`` between
      updates as its own program. On XLA:CPU a conditional holding the selection costs about 4% of every
      step of a 58M model even when not taken (and its compile time), so the MaxText hook uses False.
  """
  event_steps = plan.schedule.prune_steps if events_in_update else ()

  def init(params):
    flat, _ = _flatten(params, is_leaf)
    chosen = set(prunable_paths(params, plan, is_leaf))
    masks = {p: jax.tree.map(lambda a: jnp.ones(_shape(a), jnp.bool_), x) for p, x in flat if p in chosen}
    return PruningState(jnp.zeros((), jnp.int32), nest_paths(masks), inner.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("pruned() needs params in update()")
    flat_params, treedef = _flatten(params)
    flat_masks = flatten_nested(state.masks)
    names = [p for p, _ in flat_params if p in flat_masks]
    values = {p: x for p, x in flat_params}
    masks = [flat_masks[p] for p in names]
    step = state.count

    prunable = [values[p] for p in names]
    if plan.mask_zeros and events_in_update:
      masks = jax.lax.cond(step == 0, lambda m: mask_event(prunable, m, None, step, plan, zeros=True), list, masks)

    if event_steps:
      table = keep_tables(plan, [_size(v) for v in prunable])  # [event][group] -> Python int
      steps_arr = jnp.asarray(event_steps, jnp.int32)
      is_event = jnp.any(steps_arr == step)
      event_idx = jnp.argmax(steps_arr == step)

      def prune(masks):
        # This event's keep counts as exact wide integers (two int32 limbs), looked up by event number.
        keep = []
        for g in range(len(table[0])):
          hi = jnp.asarray([row[g] >> 16 for row in table], jnp.int32)[event_idx]
          lo = jnp.asarray([row[g] & 0xFFFF for row in table], jnp.int32)[event_idx]
          keep.append((hi, lo))
        return mask_event(prunable, masks, keep, step, plan)

      masks = jax.lax.cond(is_event, prune, list, masks)

    mask_of = dict(zip(names, masks))
    flat_updates = jax.tree_util.tree_leaves(updates)
    masked_grads = [
        jnp.where(mask_of[p], g, jnp.zeros_like(g)) if p in mask_of else g
        for (p, _), g in zip(flat_params, flat_updates)
    ]
    masked_grads = jax.tree_util.tree_unflatten(treedef, masked_grads)
    inner_state = state.inner_state
    if plan.masks_needed:
      # The optimizer's moments of pruned weights are zeroed as they enter its update: with zero gradients they
      # then leave it zero too. These selects fuse into the optimizer's own elementwise update (no extra pass
      # over memory); a lax.cond around them would instead copy the whole optimizer state every step.
      full_masks = jax.tree_util.tree_unflatten(treedef, [mask_of.get(p, True) for p, _ in flat_params])
      inner_state = optax.tree_map_params(
          inner, lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), inner_state, full_masks
      )
    new_updates, inner_state = inner.update(masked_grads, inner_state, params)

    flat_new = jax.tree_util.tree_leaves(new_updates)
    final = [
        jnp.where(mask_of[p], u, -x.astype(u.dtype)) if p in mask_of else u
        for (p, x), u in zip(flat_params, flat_new)
    ]
    new_masks = nest_paths(dict(zip(names, masks)))
    return jax.tree_util.tree_unflatten(treedef, final), PruningState(step + 1, new_masks, inner_state)

  return optax.GradientTransformation(init, update)
