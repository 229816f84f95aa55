"""Pruning events as their own jitted program on MaxText's train state (``layout`` says where things are).

Before a step that is an event, ``StateEvents`` runs ``sparsity.core.pruner.mask_event`` on the prunable
parameters and their masks, and ``zero_pruned``'s rule on the optimizer's per-weight state (Adam's moments,
momentum, Muon's ``mu``: the leaves of ``inner_state`` named and shaped like a masked parameter), and puts the
results back in the state. The masks' and that state's old buffers are donated and their shardings kept; each
event's kept counts are arguments, so one compiled program serves every event. It is compiled before step 0,
with MaxText's other programs. The training step itself then only applies the masks and compiles and runs
like the dense one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sparsity.core import pruner, threshold
from sparsity.core.paths import path_str, shape_of, size_of
from sparsity.maxtext import layout


def host_value(x) -> np.ndarray:
  """A replicated (global) array as NumPy on this host; works with any number of processes."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(jax.device_get(x))


def mask_leaves(state, select=None) -> list:
  """The pruning masks inside a train state, in leaf order (``select(param_path)``: only those it accepts)."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  paths = [(layout.state_mask_path(path_str(p)), x) for p, x in flat]
  return [x for p, x in paths if p is not None and (select is None or select(p))]


def count_kept(state, select=None) -> int:
  """True entries over every mask of a train state (``select(param_path)``: only the masks it accepts): a collective,
  so every process must call it."""
  leaves = mask_leaves(state, select)
  if not leaves:
    return 0
  return threshold.wide_to_python(tuple(host_value(v) for v in jax.jit(threshold.count_true)(leaves)))


@jax.jit
def _masked(params, masks):
  return [jnp.where(m, p, jnp.zeros_like(p)) for p, m in zip(params, masks)]


def masked_state(state):
  """A copy of a train state whose prunable parameters are multiplied by their masks (what the next update makes
  them): to evaluate a model right after a pruning event."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  paths = [path_str(p) for p, _ in flat]
  index = {p: i for i, p in enumerate(paths)}
  mask_idx = [i for i, p in enumerate(paths) if layout.state_mask_path(p) is not None]
  param_idx = [index[layout.STATE_PARAMS + layout.state_mask_path(paths[i])] for i in mask_idx]
  leaves = [x for _, x in flat]
  for i, p in zip(param_idx, _masked([leaves[i] for i in param_idx], [leaves[i] for i in mask_idx])):
    leaves[i] = p
  return jax.tree_util.tree_unflatten(treedef, leaves)


def abstract(tree):
  """``tree`` with every array (or shaped leaf) replaced by a ``ShapeDtypeStruct`` of its shape and dtype."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def optimizer_step(state) -> int:
  """MaxText's update count of a train state."""
  leaf = state
  for k in layout.STATE_STEP:
    leaf = leaf[k]
  return int(host_value(getattr(leaf, "value", leaf)))


class StateEvents:
  """The events of ``plan`` on MaxText's train state (see the module docstring)."""

  def __init__(self, plan: pruner.PrunePlan, state, start_step: int | None):
    """``start_step``: MaxText's step the loop starts at (checked against the pruner's count, and the next event's
    program compiled now); None for an abstract state, whose program is only lowered (``lower``)."""
    self.plan = plan
    flat, self.treedef = jax.tree_util.tree_flatten_with_path(state)
    paths = [path_str(p) for p, _ in flat]
    index = {p: i for i, p in enumerate(paths)}
    self.mask_idx = [i for i, p in enumerate(paths) if layout.state_mask_path(p) is not None]
    self.names = [layout.state_mask_path(paths[i]) for i in self.mask_idx]
    self.param_idx = [index[layout.STATE_PARAMS + n] for n in self.names]
    self.sizes = [size_of(flat[i][1]) for i in self.param_idx]
    inner = [(i, p[len(layout.STATE_INNER):]) for i, p in enumerate(paths) if p.startswith(layout.STATE_INNER)]
    owners = pruner.per_param_leaves([(p, shape_of(flat[i][1])) for i, p in inner],
                                     {n: shape_of(flat[i][1]) for n, i in zip(self.names, self.param_idx)})
    self.moment_idx = [inner[j][0] for j in sorted(owners)]
    self.moment_owner = [self.names.index(owners[j]) for j in sorted(owners)]
    shardings = ([flat[i][1].sharding for i in self.mask_idx], [flat[i][1].sharding for i in self.moment_idx])
    owner, names = self.moment_owner, list(self.names)

    def sparsity_mask_event(values, masks, moments, event):  # XLA module: jit_sparsity_mask_event
      new = pruner.mask_event(values, masks, event, plan, names)
      return new, [jnp.where(new[o], m, jnp.zeros_like(m)) for o, m in zip(owner, moments)]

    self._jit = jax.jit(sparsity_mask_event, donate_argnums=(1, 2), out_shardings=shardings)
    self._compiled = {}
    self.applied: set[int] = set()
    if start_step is None:  # an abstract state (ahead-of-time compilation): nothing to check or compile yet
      return
    count = int(host_value(flat[index[layout.STATE_COUNT]][1]))
    if count != start_step:
      raise RuntimeError(f"the pruner's update count {count} is not MaxText's step {start_step}")
    future = [s for s in plan.schedule.prune_steps if s >= start_step]
    if future:  # compile now, with MaxText's other programs, not in the middle of training
      self._program([x for _, x in flat], self.due(future[0]))

  def _args(self, leaves, event):
    pick = lambda idx: [leaves[i] for i in idx]  # noqa: E731
    return pick(self.param_idx), pick(self.mask_idx), pick(self.moment_idx), event

  def lower(self, state, event: pruner.Event):
    """The event program lowered for ``state``'s leaves (arrays or ``ShapeDtypeStruct``s with shardings)."""
    return self._jit.lower(*self._args(jax.tree_util.tree_leaves(state), event))

  def _program(self, leaves, event):
    """The compiled program for this kind of event (pruning, zero masking), and its arguments."""
    args = self._args(leaves, event)
    key = (event.prune, event.mask_zeros)
    if key not in self._compiled:
      self._compiled[key] = self._jit.lower(*args).compile()
    return self._compiled[key], args

  def due(self, step: int) -> pruner.Event | None:
    """The event due before update ``step``, or None."""
    return pruner.due_event(self.plan, self.sizes, step)

  def __call__(self, state, step: int):
    """The state with the event due before update ``step`` applied (the state itself if none is due)."""
    event = self.due(step)
    if event is None or step in self.applied:  # (an event may run early: prune and recover evaluates after it)
      return state
    self.applied.add(step)
    leaves = jax.tree_util.tree_leaves(state)
    program, args = self._program(leaves, event)
    masks, moments = program(*args)
    for i, m in zip(self.mask_idx, masks):
      leaves[i] = m
    for i, m in zip(self.moment_idx, moments):
      leaves[i] = m
    return jax.tree_util.tree_unflatten(self.treedef, leaves)


__all__ = ["StateEvents", "host_value", "mask_leaves", "count_kept", "masked_state", "optimizer_step"]
