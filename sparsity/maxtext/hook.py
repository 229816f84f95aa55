"""Installs the pruner at MaxText 0.2.5's extension points (with ``layout``, the only code that knows MaxText).

Extension points (``check_extension_points`` checks names and signatures before anything runs; a sparse run in
which one of them is not reached stops with an error naming it):

* ``maxtext.configs.pyconfig.initialize(argv, config_class=...)``: the sparsity keys join MaxText's pydantic
  config (``sparsity.maxtext.config``), so YAML, ``key=value`` overrides and validation work as for any key.
* ``maxtext.optimizers.optimizers.get_optimizer`` (called by ``train_utils.create_training_optimizer``): the
  optimizer MaxText builds is wrapped in ``sparsity.core.pruner.pruned``; masks live in the NNX optimizer state,
  inherit each parameter's sharding annotations and are checkpointed and restored by MaxText's Orbax.
* ``maxtext.trainers.pre_train.train.train_step``: adds the ``sparsity/*`` scalars to MaxText's metrics.
* ``train.train_loop`` / ``train.training_loop_iteration``: the loop of ``sparsity.maxtext.loop`` (pruning
  events between steps, the end of the run: final evaluation, final count, summary).
* ``maxtext.common.checkpointing.maybe_save_checkpoint`` (called by ``training_loop_iteration``): on a preemption
  notice, a checkpoint of the step reached, then a stop (``sparsity.maxtext.preemption``); at every save, a device
  fingerprint of the state, recorded beside the step once Orbax has finished it (``sparsity.maxtext.integrity``).
* ``maxtext.common.checkpointing.load_state_if_possible`` (called by ``maxtext_utils.setup_initial_state``): an
  unreadable checkpoint is reported with its file and cause; the restored state is checked before the first step.
* ``maxtext.utils.max_utils.initialize_summary_writer``: with ``DECOUPLE_GCLOUD=TRUE`` MaxText stubs out
  TensorBoard; this writes real event files (process 0 only) when tensorboardX is installed.
"""

from __future__ import annotations

import functools
import inspect
import os

import jax
import jax.numpy as jnp

from sparsity.core import accounting, compute, pruner, threshold
from sparsity.core.paths import flatten, shape_of, size_of
from sparsity.maxtext import checkpoint, families, layout, loop, modules, summary_writer
from sparsity.maxtext.config import config_class
from sparsity.maxtext.events import count_kept as mask_kept
from sparsity.maxtext.events import mask_leaves

# name -> (module getter, attribute, leading parameter names it must accept)
EXTENSION_POINTS = {
    "pyconfig.initialize": (modules.pyconfig, "initialize", ("argv", "config_class")),
    "optimizers.get_optimizer": (modules.optimizers, "get_optimizer", ("config", "learning_rate_schedule", "model", "mesh")),
    "train.train_step": (modules.train, "train_step", ("model", "config", "state_mesh_shardings", "params_shardings",
                                                       "state", "data")),
    "train.train_loop": (modules.train, "train_loop", ("config", "recorder", "state")),
    "train.training_loop_iteration": (modules.train, "training_loop_iteration",
                                      ("jax_device_state", "python_vars", "immutable_data")),
    "train.main": (modules.train, "main", ("argv",)),
    "max_utils.initialize_summary_writer": (modules.max_utils, "initialize_summary_writer",
                                            ("tensorboard_dir", "run_name", "enable_tensorboard")),
    # sparsity.maxtext.preemption (replaced for the training loop's duration by sparsity.maxtext.loop)
    "checkpointing.maybe_save_checkpoint": (modules.checkpointing, "maybe_save_checkpoint",
                                            ("checkpoint_manager", "state", "config", "data_iterator", "step")),
    "checkpointing.reached_preemption": (modules.checkpointing, "reached_preemption", ("checkpoint_manager", "step")),
    "checkpointing.wait_until_finished": (modules.checkpointing, "wait_until_finished", ("checkpoint_manager",)),
    # sparsity.maxtext.integrity (replaced for the training loop's duration by sparsity.maxtext.loop)
    "checkpointing.load_state_if_possible": (modules.checkpointing, "load_state_if_possible",
                                             ("checkpoint_manager", "data_iterator")),
    "checkpointing.latest_step": (modules.checkpointing, "latest_step", ("checkpoint_manager",)),
}
# Calls that must go through a module attribute (so that replacing the attribute reaches them).
CALLED_THROUGH = {"train_utils.create_training_optimizer": (modules.train_utils, "create_training_optimizer",
                                                            "optimizers.get_optimizer("),
                  "train.training_loop_iteration": (modules.train, "training_loop_iteration",
                                                    "checkpointing.maybe_save_checkpoint("),
                  "maxtext_utils.setup_initial_state": (modules.maxtext_utils, "setup_initial_state",
                                                        "checkpointing.load_state_if_possible(")}


def check_extension_points() -> None:
  """Raises if the installed MaxText is not the pinned one, or an extension point moved or changed signature."""
  version = modules.version()
  if version != modules.MAXTEXT_VERSION:
    raise RuntimeError(f"sparsity needs maxtext=={modules.MAXTEXT_VERSION}, found {version}: run setup.sh")
  for name, (module, attr, params) in EXTENSION_POINTS.items():
    fn = getattr(module(), attr, None)
    if fn is None:
      raise RuntimeError(f"MaxText extension point {name} is missing: the pinned maxtext=={modules.MAXTEXT_VERSION} changed")
    if hasattr(fn, _ORIGINAL):  # already replaced by a hook (whose original was checked before)
      continue
    got = tuple(inspect.signature(fn).parameters)
    if got[: len(params)] != params:
      raise RuntimeError(f"MaxText extension point {name} takes {got}, expected {params} first: the pinned "
                         f"maxtext=={modules.MAXTEXT_VERSION} changed")
  for name, (module, attr, call) in CALLED_THROUGH.items():
    if call not in inspect.getsource(getattr(module(), attr)):
      raise RuntimeError(f"MaxText's {name} no longer calls {call.rstrip('(')}: the pruner would not be installed")


class Run:
  """What the hooks of one run share: the plan, the parameter counts seen at init, what was reached. ``install``
  makes one and passes it to every hook it installs."""

  def __init__(self):
    self.plan: pruner.PrunePlan | None = None
    self.config = None
    self.prunable_sizes: list[int] = []
    self.model: dict = {}
    self._prunable_by_path: dict[str, int] = {}
    self.total = 0
    self.in_train_loop = False
    self.ahead_of_time = False  # sparsity.maxtext.aot is building the abstract train state (nothing will run)
    self.reached: set[str] = set()

  @property
  def prunable(self) -> int:
    return sum(self.prunable_sizes)

  @property
  def sparse(self) -> bool:
    """Whether this run prunes (from the plan, or from the config before the optimizer is built)."""
    if self.plan is not None:
      return self.plan.masks_needed
    cfg = self.config
    return cfg is not None and (cfg.target_sparsity > 0 or bool(cfg.init_mask_from_zeros))

  def accounting(self, fixed_kept: int | None = None) -> accounting.Accounting:
    """The run's accounting (the counts its scope keeps); ``fixed_kept``: a mask fixed from step 0."""
    cfg = self.config
    sched = self.plan.schedule
    steps, kept = sched.prune_steps, pruner.kept_after_events(self.plan, self.prunable_sizes)
    if fixed_kept is not None:
      steps, kept = (0,), (fixed_kept,)
    return accounting.Accounting(
        steps=sched.steps, prune_steps=tuple(steps), kept=tuple(kept), prunable=self.prunable,
        non_prunable=self.total - self.prunable,
        tokens_per_step=int(cfg.global_batch_size_to_train_on) * int(cfg.max_target_length),
    )

  def model_summary(self, state, final_kept: int) -> dict:
    """The summary's ``model`` (``_model_counts``) with, for a mixture of experts, the routed experts' final kept
    weights and the final active parameters of one token (non-expert active + k/E of the routed experts' active,
    i.e. the expectation under uniform routing). Counts masks: a collective, every process calls it."""
    out = dict(self.model)
    moe = out.get("moe")
    if moe and self.plan is not None:
      fam = families.FAMILIES.get(out["decoder_block"])
      is_expert = lambda p: getattr(families.classify(p, fam), "kind", None) == families.EXPERTS  # noqa: E731
      prunable_routed = sum(n for p, n in self._prunable_by_path.items() if is_expert(p))
      routed_kept = (mask_kept(state, is_expert) if self.plan.masks_needed else prunable_routed)
      routed_final = moe["routed_expert_params"] - prunable_routed + routed_kept
      final_active = final_kept + self.total - self.prunable
      moe = dict(moe, routed_expert_active_params=routed_final,
                 final_active_params_per_token=final_active - routed_final
                 + routed_final * moe["experts_per_token"] / moe["num_experts"])
      out["moe"] = moe
    return out

  def require(self, *names: str) -> None:
    """Raises naming the extension points of a sparse run that were not reached."""
    missing = [n for n in names if n not in self.reached]
    if self.sparse and missing:
      raise RuntimeError(
          f"sparse run (target_sparsity={self.config.target_sparsity}) but MaxText never reached the extension "
          f"point(s) {', '.join(missing)}: it would train dense; the installed MaxText does not call what "
          "sparsity.maxtext.hook patches"
      )


def _is_variable(x) -> bool:
  from flax import nnx  # pylint: disable=import-outside-toplevel

  return isinstance(x, nnx.Variable)


def _initialize(run: Run, original, argv, *args, **kwargs):
  _check_config_file(argv)
  config = original(argv, *args, **kwargs)
  run.config = config
  return config


def _check_config_file(argv) -> None:
  """A missing YAML file named by the path the user gave (MaxText reports a path it rewrote, ``src/...``)."""
  path = argv[1] if len(argv) > 1 else ""
  if path.endswith((".yml", ".yaml")) and "=" not in path and not os.path.isfile(path):
    if not os.path.isfile(modules.pyconfig().resolve_config_path(path)):
      raise FileNotFoundError(f"config file not found: {path} (relative to the working directory {os.getcwd()})")


def _get_optimizer(run: Run, original, config, learning_rate_schedule, model=None, mesh=None):
  inner = original(config, learning_rate_schedule, model, mesh=mesh)
  plan = pruner.PrunePlan.from_config(config, group_axis=families.GroupAxis(_decoder_block(config),
                                                                        int(config.param_scan_axis)))
  run.plan, run.config = plan, config
  run.reached.add("optimizers.get_optimizer")
  if plan.masks_needed and not (run.in_train_loop or run.ahead_of_time):
    raise RuntimeError("the optimizer of a sparse run was built outside MaxText's train.train_loop (the extension "
                       "point sparsity.maxtext.loop wraps) and outside the ahead-of-time compile "
                       "(sparsity.maxtext.aot): the pruning events would never run")
  # Dense training keeps MaxText's optimizer untouched (same state, same numbers); sparse training runs the mask
  # changes as their own program between steps (sparsity.maxtext.events), so the training step compiles and runs
  # like the dense one.
  tx = pruner.pruned(inner, plan, is_leaf=_is_variable, events_in_update=False) if plan.masks_needed else inner

  def init(params):
    flat, _ = flatten(params, _is_variable)
    chosen = pruner.prunable_paths(params, plan, _is_variable)
    by_path = dict(flat)
    fam = _check_family(config, plan, [p for p, _ in flat])
    if plan.nm is not None and mesh is not None:
      _check_groups_within_shards(plan, {p: by_path[p] for p in chosen}, mesh, config)
    run.prunable_sizes = [size_of(by_path[p]) for p in chosen]
    run.total = sum(size_of(x) for _, x in flat)
    run.model = _model_counts(config, fam, {p: size_of(x) for p, x in flat}, chosen)
    run._prunable_by_path = {p: size_of(by_path[p]) for p in chosen}  # pylint: disable=protected-access
    if config.enable_checkpointing:
      _check_resume(run, config, {p: shape_of(x) for p, x in flat}, chosen if plan.masks_needed else [],
                    _plan_record(config, plan, chosen, run.prunable_sizes) if plan.masks_needed else None)
    return tx.init(params)

  return type(tx)(init, tx.update)


def _decoder_block(config) -> str:
  return str(getattr(config.decoder_block, "value", config.decoder_block))


def _check_family(config, plan: pruner.PrunePlan, paths: list[str]):
  """The run's family description (None if not described); with the default ``prunable_params`` a sparse run of a
  family the description does not cover, or with a parameter it does not describe, stops here naming it."""
  block = _decoder_block(config)
  if plan.masks_needed and config.prunable_params == families.default_prunable():
    return families.check_params(block, paths, config.prunable_params)
  return families.FAMILIES.get(block)


def _model_counts(config, fam, sizes: dict[str, int], chosen: list[str]) -> dict:
  """The summary's ``model``: family, parameters and prunable parameters by kind, and for a mixture of experts the
  routed experts' parameters and the parameters one token uses."""
  out = {"decoder_block": _decoder_block(config), "param_scan_axis": int(config.param_scan_axis),
         "params_by_kind": families.kind_counts(fam, sizes),
         "prunable_params_by_kind": families.kind_counts(fam, {p: sizes[p] for p in chosen}),
         "prunable_tensors": list(chosen)}
  experts, k = int(config.num_experts), int(config.num_experts_per_tok)
  if experts > 1:
    routed = out["params_by_kind"].get(families.EXPERTS, 0)
    out["moe"] = {"num_experts": experts, "experts_per_token": k, "routed_expert_params": routed,
                  "active_params_per_token": sum(sizes.values()) - routed + routed * k // experts}
  return out


def _check_groups_within_shards(plan: pruner.PrunePlan, params: dict, mesh, config) -> None:
  """A ValueError, before anything compiles, if a group of M along a kernel's contraction axis would straddle two
  shards of that kernel (the axis's shard size must be a multiple of M)."""
  from flax.linen import partitioning  # pylint: disable=import-outside-toplevel

  m = plan.nm[1]
  bad = []
  for path, var in params.items():
    shape = shape_of(var)
    axis = plan.group_axis(path, shape)
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    names = meta.get("sharding_names") or meta.get("out_sharding") or meta.get("sharding")
    if not names:
      continue
    spec = partitioning.logical_to_mesh_axes(tuple(names), config.logical_axis_rules)
    entry = spec[axis] if axis < len(spec) else None
    mesh_axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    mesh_axes = tuple(a for a in mesh_axes if int(mesh.shape[a]) > 1)
    shards = 1
    for a in mesh_axes:
      shards *= int(mesh.shape[a])
    if shards > 1 and (shape[axis] % shards or (shape[axis] // shards) % m):
      bad.append(f"{path} {shape}: axis {axis} of size {shape[axis]} is split over {shards} devices "
                 f"({', '.join(mesh_axes)}) into shards of {shape[axis] / shards:g}")
  if bad:
    raise ValueError(f"pruning_structure={plan.pruning_structure}: a group of {m} along a kernel's contraction axis "
                     "would straddle two shards; use a mesh whose shards of these axes hold whole groups: "
                     + "; ".join(bad))


def _plan_record(config, plan: pruner.PrunePlan, chosen: list[str], sizes: list[int]) -> dict:
  """The run's pruning plan, ``checkpoint.PLAN_KEYS`` (what its checkpoints' masks follow): the sparsity keys as the
  config sets them, and what the plan derives from them."""
  derived = {"prunable_tensors": sorted(chosen), "prune_steps": list(plan.schedule.prune_steps),
             "kept_after_events": list(pruner.kept_after_events(plan, sizes))}
  return {k: derived[k] if k in derived else getattr(config, k) for k in checkpoint.PLAN_KEYS}


def _check_resume(run: Run, config, shapes: dict[str, tuple], masks: list[str], plan: dict | None) -> None:
  """A clear error, before MaxText restores anything, if the run directory's checkpoint does not fit (its model, its
  masks, or the plan its masks follow); then process 0 of a sparse run that will train records its ``plan`` beside
  its checkpoints."""
  run_dir = layout.run_dir(config.base_output_directory, config.run_name)
  if "://" in run_dir:  # not local (e.g. gs://): nothing to check here
    return
  ckpt_dir = layout.checkpoints_dir(run_dir)
  resuming = os.path.isdir(ckpt_dir) and bool(checkpoint.steps(ckpt_dir))
  if os.path.isdir(ckpt_dir):
    checkpoint.check_resumable(ckpt_dir, shapes, masks)
  if plan is not None:
    run.plan_record = plan  # recorded beside each checkpoint step (sparsity.maxtext.integrity)
    checkpoint.check_plan(run_dir, plan)
    # The plan file is written by a run that starts fresh only: never over checkpoints another plan may have written.
    if jax.process_index() == 0 and not run.ahead_of_time and not resuming:
      checkpoint.write_plan(run_dir, plan)


def _train_step(run: Run, original, model, config, *args, **kwargs):
  new_state, metrics = original(model, config, *args, **kwargs)
  run.reached.add("train.train_step")
  if run.plan is not None and run.total:
    step = new_state
    for key in layout.STATE_STEP:
      step = step[key]
    step = jnp.asarray(getattr(step, "value", step)).astype(jnp.int32) - 1
    if run.plan.init_mask_from_zeros:
      metrics["scalar"].update(_fixed_mask_metrics(run, new_state, step))
    else:
      metrics["scalar"].update(run.accounting().step_metrics(step))
  return new_state, metrics


def _fixed_mask_metrics(run: Run, state, step):
  """Metrics of a fine-tuning run whose mask is fixed from its first step: counted from the masks."""
  acc = run.accounting()
  return fixed_mask_metrics(threshold.count_true(mask_leaves(state)), step, acc.prunable, acc.non_prunable,
                            acc.tokens_per_step)


def fixed_mask_metrics(kept, step, prunable: int, non_prunable: int, tokens_per_step: int) -> dict:
  """The ``sparsity/*`` metrics at train step ``step`` (traced) of a fixed mask keeping ``kept`` weights (two-limb).

  Every count is formed exactly in int32 limbs and rounded to float32 once: the active parameters are the float32
  nearest ``kept + non_prunable`` (adding ``non_prunable`` to an already rounded float32 count rounds twice and is
  off past 2**24). The exact integer counts are the summary's (``sparsity.maxtext.loop``). Counts enter as Python
  ints or floats: an int past 2**31 cannot meet a traced int32/float32.
  """
  active = threshold.wide_to_float32(threshold.wide_add(kept, threshold.wide_const(int(non_prunable))))
  kept_f = threshold.wide_to_float32(kept)
  return {
      "sparsity/density": kept_f / float(max(prunable, 1)),
      "sparsity/active_params": active,
      "sparsity/avg_active_params": active,
      "sparsity/effective_flops": compute.flops(kept_f * (step + 1).astype(jnp.float32), float(tokens_per_step)),
  }


def _summary_writer(original, tensorboard_dir, run_name, enable_tensorboard=True):
  try:
    import tensorboardX  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return original(tensorboard_dir, run_name, enable_tensorboard)
  if jax.process_index() != 0 or not enable_tensorboard or not tensorboard_dir:
    return original(tensorboard_dir, run_name, enable_tensorboard)
  return summary_writer.CheckedSummaryWriter(os.path.join(tensorboard_dir, run_name) if run_name else tensorboard_dir)


_ORIGINAL = "_sparsity_original"  # attribute of an installed hook: the MaxText function it wraps


def _original(module, attr: str):
  """MaxText's own function at ``module.attr`` (under any hook installed before)."""
  fn = getattr(module, attr)
  return getattr(fn, _ORIGINAL, fn)


def install() -> Run:
  """Installs the hooks into the imported MaxText modules for a new run; returns the ``Run`` they share (each hook is
  a ``functools.partial`` over it). Installing again replaces the previous run's hooks: each wraps MaxText's own
  function, never another hook."""
  check_extension_points()
  run = Run()
  pyconfig, optimizers = modules.pyconfig(), modules.optimizers()
  train, max_utils = modules.train(), modules.max_utils()
  o = {name: _original(module, attr) for name, (module, attr) in {
      "initialize": (pyconfig, "initialize"), "get_optimizer": (optimizers, "get_optimizer"),
      "train_step": (train, "train_step"), "train_loop": (train, "train_loop"),
      "training_loop_iteration": (train, "training_loop_iteration"),
      "initialize_summary_writer": (max_utils, "initialize_summary_writer")}.items()}
  hooks = {
      (pyconfig, "initialize"): functools.partial(
          _initialize, run, functools.partial(o["initialize"], config_class=config_class())),
      (optimizers, "get_optimizer"): functools.partial(_get_optimizer, run, o["get_optimizer"]),
      (train, "train_step"): functools.partial(_train_step, run, o["train_step"]),
      (train, "train_loop"): functools.partial(loop.train_loop, run, o["train_loop"], o["training_loop_iteration"],
                                               train),
      (max_utils, "initialize_summary_writer"): functools.partial(_summary_writer, o["initialize_summary_writer"]),
  }
  for (module, attr), fn in hooks.items():
    setattr(fn, _ORIGINAL, o[attr])
    setattr(module, attr, fn)
  return run


def main(argv) -> None:
  """Runs MaxText's pre-training (``maxtext.trainers.pre_train.train.main``) with the pruner installed."""
  run = install()
  try:
    modules.train().main(argv)
  except (Exception, KeyboardInterrupt) as e:  # before the loop: failed, or interrupted (Ctrl-C while it starts)
    if run.config is not None and "train.train_loop" not in run.reached:  # (the loop writes its own summary)
      loop.write_failure(run.config, loop.LoopRecord(), e)
    raise
  run.require("train.train_loop")


__all__ = ["EXTENSION_POINTS", "check_extension_points", "install", "main", "Run"]
