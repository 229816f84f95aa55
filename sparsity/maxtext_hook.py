"""The one module that knows MaxText's internals: it installs the pruner at MaxText 0.2.5's extension points.

Extension points used (``check_extension_points`` fails loudly if any moved):

* ``maxtext.configs.pyconfig.initialize(argv, config_class=...)``: the sparsity keys join MaxText's pydantic
  config (``SparseMaxTextConfig``), so YAML, ``key=value`` overrides and validation work as for any key.
* ``maxtext.optimizers.optimizers.get_optimizer``: the optimizer MaxText builds is wrapped in
  ``sparsity.pruner.pruned``; masks live in the NNX optimizer state, inherit each parameter's sharding
  annotations and are checkpointed and restored by MaxText's own Orbax checkpointing.
* ``maxtext.trainers.pre_train.train.train_step``: adds the ``sparsity/*`` scalars to MaxText's metrics.
* ``maxtext.trainers.pre_train.train.train_loop`` / ``training_loop_iteration``: before each step that is a
  pruning event, the new masks are computed by their own jitted program and put in the train state, so the
  training step itself compiles and runs like the dense one; after the loop, counts the final masks and
  writes ``<base_output_directory>/<run_name>/sparsity_summary.json``.
* ``maxtext.utils.max_utils.initialize_summary_writer``: with ``DECOUPLE_GCLOUD=TRUE`` MaxText stubs out
  TensorBoard; this writes real event files to ``tensorboard_dir`` when tensorboardX is installed.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import pydantic

from sparsity import accounting, checkpoint, pruner, schedules, threshold
from sparsity.config import SparsityKeys

MAXTEXT_VERSION = "0.2.5"


def _maxtext():
  """Imports MaxText's modules (late: they pull in TensorFlow and configure JAX)."""
  # pylint: disable=import-outside-toplevel
  import importlib.util

  # MaxText resolves tokenizer names like "tokenizer.llama2" against a source checkout's src/maxtext/assets;
  # an installed wheel ships them inside the package.
  spec = importlib.util.find_spec("maxtext")
  if spec and spec.submodule_search_locations:
    os.environ.setdefault("MAXTEXT_ASSETS_ROOT", os.path.join(spec.submodule_search_locations[0], "assets"))
  from maxtext.configs import pyconfig, types
  from maxtext.optimizers import optimizers
  from maxtext.trainers.pre_train import train
  from maxtext.utils import max_utils

  return pyconfig, types, optimizers, train, max_utils


def check_extension_points() -> None:
  """Raises if the installed MaxText is not the pinned one or an extension point moved."""
  import maxtext.version  # pylint: disable=import-outside-toplevel

  version = getattr(maxtext.version, "__version__", None)
  if version != MAXTEXT_VERSION:
    raise RuntimeError(f"sparsity needs maxtext=={MAXTEXT_VERSION}, found {version}: run setup.sh")
  pyconfig, types, optimizers, train, max_utils = _maxtext()
  needed = {
      "pyconfig.initialize": pyconfig,
      "types.MaxTextConfig": types,
      "optimizers.get_optimizer": optimizers,
      "train.train_step": train,
      "train.train_loop": train,
      "train.training_loop_iteration": train,
      "train.main": train,
      "max_utils.initialize_summary_writer": max_utils,
  }
  for name, module in needed.items():
    if not hasattr(module, name.split(".")[1]):
      raise RuntimeError(f"MaxText extension point {name} is missing: the pinned maxtext=={MAXTEXT_VERSION} changed")


@functools.cache
def config_class():
  """MaxText's pydantic config extended with the sparsity keys (``sparsity.config.SparsityKeys``)."""
  _, types, _, _, _ = _maxtext()

  class SparseMaxTextConfig(types.MaxTextConfig, SparsityKeys):
    """MaxText config + sparse pre-training keys."""

    @pydantic.model_validator(mode="after")
    def _schedule_fits_run(self):
      if self.target_sparsity > 0:
        try:
          schedules.schedule_from_config(self)
        except ValueError as e:
          raise ValueError(f"sparsity schedule: {e}") from e
      return self

  return SparseMaxTextConfig


def load_config(argv):
  """MaxText's config from ``[yaml, key=value, ...]`` with the sparsity keys validated (no training)."""
  pyconfig, _, _, _, _ = _maxtext()
  return pyconfig.initialize(["", *argv], config_class=config_class())


def plan_from_config(config) -> pruner.PrunePlan:
  return pruner.PrunePlan(
      schedule=schedules.schedule_from_config(config),
      prunable=config.prunable_params,
      non_prunable=config.non_prunable_params,
      scope=config.pruning_scope,
      score=config.pruning_score,
      seed=config.pruning_seed,
      mask_zeros=config.init_mask_from_zeros,
  )


def _is_variable(x) -> bool:
  from flax import nnx  # pylint: disable=import-outside-toplevel

  return isinstance(x, nnx.Variable)


class _Run:
  """What the hooks share within one process: the plan and the parameter counts seen at init."""

  def __init__(self):
    self.plan: pruner.PrunePlan | None = None
    self.prunable = 0
    self.total = 0
    self.config = None
    self.in_train_loop = False
    self.external_events = False

  def accounting(self, fixed_kept: int | None = None) -> accounting.Accounting:
    """The run's accounting; with ``fixed_kept``, a mask holding that many prunable weights from step 0."""
    cfg = self.config
    schedule = self.plan.schedule
    if fixed_kept is not None:
      schedule = schedules.Schedule(schedule.steps, (0,), (fixed_kept / max(self.prunable, 1),))
    return accounting.Accounting(
        schedule=schedule,
        prunable=self.prunable,
        non_prunable=self.total - self.prunable,
        tokens_per_step=int(cfg.global_batch_size_to_train_on) * int(cfg.max_target_length),
    )


_RUN = _Run()


def _count(params, plan):
  flat, _ = pruner._flatten(params, _is_variable)  # pylint: disable=protected-access
  chosen = set(pruner.prunable_paths(params, plan, _is_variable))
  total = sum(pruner._size(x) for _, x in flat)  # pylint: disable=protected-access
  prunable = sum(pruner._size(x) for p, x in flat if p in chosen)  # pylint: disable=protected-access
  return prunable, total


def _get_optimizer(original, config, learning_rate_schedule, model=None, mesh=None):
  inner = original(config, learning_rate_schedule, model, mesh=mesh)
  plan = plan_from_config(config)
  _RUN.plan, _RUN.config = plan, config
  # Dense training (nothing can ever be pruned) keeps MaxText's optimizer untouched: same state, same numbers.
  # Inside the hooked training loop the mask changes run as their own program between steps (_MaskEvents),
  # so the training step compiles and runs like the dense one; anywhere else they stay inside the update.
  external = _RUN.in_train_loop
  tx = pruner.pruned(inner, plan, is_leaf=_is_variable, events_in_update=not external) if plan.masks_needed else inner
  _RUN.external_events = external and plan.masks_needed

  def init(params):
    _RUN.prunable, _RUN.total = _count(params, plan)
    if config.enable_checkpointing:
      _check_resume(config, params, plan)
    return tx.init(params)

  return type(tx)(init, tx.update)


def _check_resume(config, params, plan) -> None:
  """A clear error, before MaxText restores anything, if the run directory's checkpoint does not fit."""
  ckpt_dir = os.path.join(config.base_output_directory, config.run_name, "checkpoints")
  if not os.path.isdir(ckpt_dir):  # not local (e.g. gs://) or no checkpoint yet
    return
  flat, _ = pruner._flatten(params, _is_variable)  # pylint: disable=protected-access
  shapes = {p: pruner._shape(x) for p, x in flat}  # pylint: disable=protected-access
  masks = pruner.prunable_paths(params, plan, _is_variable) if plan.masks_needed else []
  checkpoint.check_resumable(ckpt_dir, shapes, masks)


def _train_step(original, model, config, *args, **kwargs):
  new_state, metrics = original(model, config, *args, **kwargs)
  if _RUN.plan is not None and _RUN.total:
    step = _optimizer_step(new_state) - 1
    if _RUN.plan.mask_zeros:
      metrics["scalar"].update(_fixed_mask_metrics(new_state, step))
    else:
      metrics["scalar"].update(_RUN.accounting().step_metrics(step))
  return new_state, metrics


def _fixed_mask_metrics(state, step):
  """Metrics of a fine-tuning run whose mask is fixed from its first step: counted from the masks."""
  hi, lo = threshold.count_true(_state_masks(state))
  kept = hi.astype(jnp.float32) * 65536.0 + lo.astype(jnp.float32)
  acc = _RUN.accounting()
  active = kept + acc.non_prunable
  return {
      "sparsity/density": kept / max(acc.prunable, 1),
      "sparsity/active_params": active,
      "sparsity/avg_active_params": active,
      "sparsity/effective_flops": 6.0 * acc.tokens_per_step * active * (step + 1).astype(jnp.float32),
  }


def _state_masks(state):
  """The pruning masks inside a train state (``.../opt_state/masks/<param path>``)."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return [x for p, x in flat if "/masks/" in "/" + pruner.path_str(p) + "/" and x.dtype == jnp.bool_]


def _optimizer_step(state):
  """The optimizer's update count in an NNX train-state (``state.optimizer.step``)."""
  leaf = state["optimizer"]["step"]
  return jnp.asarray(getattr(leaf, "value", leaf)).astype(jnp.int32)


def _final_kept(state) -> int:
  return threshold.wide_to_python(jax.device_get(jax.jit(threshold.count_true)(_state_masks(state))))


_MASKS = "optimizer/opt_state/masks/"


class _MaskEvents:
  """Runs ``pruner.mask_event`` as its own jitted program on MaxText's train state, before the steps that need it.

  The state is an ``nnx.State`` whose parameters are at ``model/<path>`` and whose masks are at
  ``optimizer/opt_state/masks/<path>``. The program reads the prunable parameters and the masks, and returns the
  new masks with the masks' own shardings; the masks' old buffers are donated. Each event's kept counts are
  arguments, so one compiled program serves every event; it is compiled before the first step.
  """

  def __init__(self, plan: pruner.PrunePlan, state, start_step: int):
    self.plan = plan
    flat, self.treedef = jax.tree_util.tree_flatten_with_path(state)
    paths = [pruner.path_str(p) for p, _ in flat]
    index = {p: i for i, p in enumerate(paths)}
    self.mask_idx = [i for i, p in enumerate(paths) if p.startswith(_MASKS)]
    self.param_idx = [index["model/" + paths[i][len(_MASKS):]] for i in self.mask_idx]
    self.sizes = [pruner._size(flat[i][1]) for i in self.param_idx]  # pylint: disable=protected-access
    count = int(jax.device_get(flat[index["optimizer/opt_state/count"]][1]))
    if count != start_step:
      raise RuntimeError(f"the pruner's update count {count} is not MaxText's step {start_step}")
    shardings = [flat[i][1].sharding for i in self.mask_idx]

    def sparsity_mask_event(values, masks, keep, step, zeros):  # XLA module: jit_sparsity_mask_event
      return pruner.mask_event(values, masks, keep, step, plan, zeros=zeros)

    self._jit = jax.jit(sparsity_mask_event, donate_argnums=(1,), out_shardings=shardings, static_argnums=(4,))
    self._compiled = {}
    future = [s for s in plan.schedule.prune_steps if s >= start_step]
    if future:  # compile now, with MaxText's other programs, not in the middle of training
      self._program([x for _, x in flat], future[0], self.due(future[0]))

  def _program(self, leaves, step, inputs):
    """The compiled program for these inputs (one for pruning events, one for zero masking), and its arguments."""
    keep, zeros = inputs
    args = ([leaves[i] for i in self.param_idx], [leaves[i] for i in self.mask_idx], keep, jnp.int32(step))
    key = (keep is None, zeros)
    if key not in self._compiled:
      self._compiled[key] = self._jit.lower(*args, zeros).compile()
    return self._compiled[key], args

  def due(self, step: int):
    """``pruner.event_inputs`` for update ``step``: None when nothing is due."""
    return pruner.event_inputs(self.plan, self.sizes, step)

  def __call__(self, state, step: int, inputs):
    """The state with the masks due before update ``step`` (``inputs = self.due(step)``, not None)."""
    leaves = jax.tree_util.tree_leaves(state)
    program, args = self._program(leaves, step, inputs)
    for i, m in zip(self.mask_idx, program(*args)):
      leaves[i] = m
    return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _train_loop(original, loop_iteration_original, train_module, config, recorder, state=None):
  seen = {}
  events = []

  def iteration(jax_device_state, python_vars, immutable_data):
    step = int(python_vars["step"])
    if _RUN.external_events:
      if not events:
        events.append(_MaskEvents(_RUN.plan, jax_device_state["state"], int(immutable_data["start_step"])))
      inputs = events[0].due(step)
      if inputs is not None:
        jax_device_state["state"] = events[0](jax_device_state["state"], step, inputs)
    metrics = loop_iteration_original(jax_device_state, python_vars, immutable_data)
    seen["metrics"], seen["logger"] = metrics, python_vars["metric_logger_instance"]
    return metrics

  train_module.training_loop_iteration = iteration
  _RUN.in_train_loop = True
  try:
    state = original(config, recorder, state)
  finally:
    train_module.training_loop_iteration = loop_iteration_original
    _RUN.in_train_loop = False
  if jax.process_index() == 0 and _RUN.plan is not None and _RUN.total:
    train_loss = eval_loss = None
    if "metrics" in seen:
      train_loss = float(jax.device_get(seen["metrics"]["scalar"]["learning/loss"]))
      scalars = seen["logger"].cumulative_eval_metrics.get("scalar", {})
      if scalars.get("eval/total_weights", 0) > 0 and "eval/avg_loss" in scalars:
        eval_loss = float(scalars["eval/avg_loss"])
    kept = _final_kept(state) if _RUN.plan.masks_needed else _RUN.prunable
    acc = _RUN.accounting(fixed_kept=kept if _RUN.plan.mask_zeros else None)
    expected = acc.active_at(int(jax.device_get(_optimizer_step(state))) - 1) - acc.non_prunable
    if kept != expected:
      raise RuntimeError(f"final masks keep {kept} weights, the schedule says {expected}")
    summary = acc.summary(
        run_name=config.run_name,
        target_sparsity=config.target_sparsity,
        schedule_name=config.sparsity_schedule,
        final_kept=kept,
        final_train_loss=train_loss,
        final_eval_loss=eval_loss,
    )
    summary.update(_run_settings(config))
    if eval_loss is None:
      summary["final_eval_step"] = None
    path = accounting.write_summary(os.path.join(config.base_output_directory, config.run_name), summary)
    print(f"sparsity summary written to {path}", flush=True)
  return state


def _run_settings(config) -> dict:
  """Settings that later tools (collect, report) group runs by, and the step of the last evaluation."""
  keys = ("prune_start_fraction", "prune_end_fraction", "pruning_interval", "pruning_scope", "pruning_score",
          "learning_rate", "per_device_batch_size", "global_batch_size_to_train_on", "max_target_length")
  out = {k: getattr(config, k) for k in keys}
  last_eval = None
  if config.eval_interval > 0:
    start = max(int(config.eval_start_step), 0)
    if config.steps - 1 >= start:
      last_eval = start + (config.steps - 1 - start) // config.eval_interval * config.eval_interval
  out["final_eval_step"] = last_eval
  return out


def _summary_writer(original, tensorboard_dir, run_name, enable_tensorboard=True):
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  except ImportError:
    return original(tensorboard_dir, run_name, enable_tensorboard)
  if jax.process_index() != 0 or not enable_tensorboard or not tensorboard_dir:
    return original(tensorboard_dir, run_name, enable_tensorboard)
  return SummaryWriter(os.path.join(tensorboard_dir, run_name) if run_name else tensorboard_dir)


_INSTALLED = False


def install() -> None:
  """Installs the hooks into the imported MaxText modules (idempotent)."""
  global _INSTALLED
  if _INSTALLED:
    return
  check_extension_points()
  pyconfig, _, optimizers, train, max_utils = _maxtext()
  pyconfig.initialize = functools.partial(pyconfig.initialize, config_class=config_class())
  optimizers.get_optimizer = functools.partial(_get_optimizer, optimizers.get_optimizer)
  train.train_step = functools.partial(_train_step, train.train_step)
  train.train_loop = functools.partial(_train_loop, train.train_loop, train.training_loop_iteration, train)
  max_utils.initialize_summary_writer = functools.partial(_summary_writer, max_utils.initialize_summary_writer)
  _INSTALLED = True


def main(argv) -> None:
  """Runs MaxText's pre-training (``maxtext.trainers.pre_train.train.main``) with the pruner installed."""
  install()
  _, _, _, train, _ = _maxtext()
  train.main(argv)
