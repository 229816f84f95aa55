"""MaxText's training loop with the pruning events between steps, and an end of run that always writes the summary.

``train_loop`` runs MaxText's own ``train_loop`` with its ``training_loop_iteration`` wrapped (``Loop``):

* before each training step that is an event, ``sparsity.maxtext.events.StateEvents`` changes the masks (the
  step program is wrapped, so an event runs only when the step's batch exists); each event logs one line through
  MaxText's logger: the step, the target density, the kept / prunable count and the event's time;
* the train state each step returns is kept, so a run that stops early (MaxText's ``StopTraining``: the data ran
  out, ``target_eval_loss`` was reached, or the data pipeline raised; or a ``SystemExit`` inside MaxText's loop) ends
  with the state it actually trained;
* every loss MaxText has already read back (its metrics are written one step late) is checked: a NaN or infinite
  loss stops the run as ``diverged`` (MaxText's ``abort_on_nan_loss`` exits first when on; its ``sys.exit`` is caught
  here and the summary written before the process exits with MaxText's code), and before a pruning event the loss of
  the step before it is read, so that NaN weights are never pruned;
* how the run ends is told apart (``sparsity.maxtext.status``): MaxText's data loader turns every exception of the
  data pipeline into ``StopTraining``, and only ``StopIteration`` (the exception it was raised from) means the data
  ran out; any other one (a corrupt shard) is a failure;
* SIGTERM (a preemption notice) or SIGINT (Ctrl-C) saves a checkpoint of the step reached and stops the loop after
  that step (``sparsity.maxtext.preemption``, installed for the loop's duration).

At the end, on every process (each computation on global arrays is a collective):

1. if evaluation is configured, the run completed or stopped gracefully, and MaxText's last evaluation was not after
   the last trained step, the final weights are evaluated with MaxText's own eval step and eval data
   (``final_evaluation``);
2. the final masks are counted and checked against the accounting; a fine-tuning run's fixed mask
   (``init_mask_from_zeros``) against the count taken before its first step (the loaded weights that are not zero,
   or a resumed run's restored masks);
3. process 0 writes ``sparsity_summary.json`` (``layout.SUMMARY_FILE``, strict JSON: a NaN loss is ``null``): how
   the run ended (``end_status``, ``exit_code``, ``error`` for a failure, the divergence's step and last finite loss),
   counts, N_avg, FLOPs and the compute spent dense / pruning / recovering (``compute_fractions``,
   ``sparsity.core.compute``) over the steps actually trained, the step fractions used and whether they came from the
   compute split (``schedule_split``), the final losses, every evaluation (``eval_history``), and why the run
   stopped early if it did; then it logs a short table of the run's end (``end_table``).

A run that did not complete raises after its summary is written (``MaxText/train.py`` exits with the exception's
``exit_code``): ``RunPreempted`` (SIGTERM), ``RunInterrupted`` (SIGINT), ``RunDiverged``, ``RunFailed``.

A run that failed (an exception in the data pipeline, the training loop or the end of the run) still writes a
summary saying ``failed`` with a short message naming the cause and the file (the full one when the train state is
intact, else the fields known without the device: ``minimal_failure_summary``); the exception itself (with its
traceback, in the log) propagates.

``target_tokens`` counts every step trained, also across resumes: process 0 records the count at each checkpoint
step (``TOKENS_FILE`` beside the checkpoints) and a resumed run starts from the count of the step it resumes after.

Prune and recover: a run that starts at step 0 from ``load_parameters_path`` with a pruning (or zero-masking)
event at step 0 and evaluation configured evaluates the loaded weights before the event (``loss_before_pruning``,
the P2 law's L0) and the pruned weights right after it (``loss_after_pruning``), before it trains. A dense run from
``load_parameters_path`` with evaluation configured (the unpruned control of a recovery) records L0 the same way.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import jax
import numpy as np

from sparsity import files
from sparsity.core import compute, threshold
from sparsity.core.paths import path_str
from sparsity.maxtext import events as events_lib
from sparsity.maxtext import integrity, layout, modules, preemption, status

# Settings that later tools (collect, report) group runs by.
# prune_start_fraction / prune_end_fraction: as used (sparsity.core.compute.step_split), with schedule_split.
RUN_SETTINGS = ("dense_compute_fraction", "pruning_compute_fraction", "pruning_interval", "pruning_scope",
                "pruning_score", "pruning_structure", "init_mask_from_zeros",
                "learning_rate", "per_device_batch_size", "global_batch_size_to_train_on", "max_target_length")
TRAIN_STEP_PROGRAMS = ("p_train_step", "p_train_step_dropless", "p_train_step_first_phase")
TOKENS_FILE = "target_tokens.json"  # in the run directory: {step: target tokens trained through that step}


def maxtext_evaluates_after(step: int, config, start_step: int) -> bool:
  """Whether MaxText's loop evaluates after train step ``step`` (its rule in ``training_loop_iteration``)."""
  interval, first = int(config.eval_interval), int(config.eval_start_step)
  return interval > 0 and step >= start_step and step >= first and (step - first) % interval == 0


class RunEnded(Exception):
  """The run ended before completing (its summary written); ``exit_code``: what ``MaxText/train.py`` exits with."""

  exit_code = status.FAILED_EXIT_CODE

  def __init__(self, message: str, exit_code: int | None = None):
    super().__init__(message)
    if exit_code is not None:
      self.exit_code = exit_code


class RunFailed(RunEnded, RuntimeError):
  """Training failed (see the module docstring); the summary says ``failed`` with the message."""


class RunPreempted(RunEnded):
  """Training stopped on a preemption notice (SIGTERM) before its last step; the summary says ``preempted``."""

  exit_code = status.PREEMPTED_EXIT_CODE


class RunInterrupted(RunEnded):
  """Training stopped on SIGINT (Ctrl-C) before its last step; the summary says ``interrupted``."""

  exit_code = status.INTERRUPTED_EXIT_CODE


class RunDiverged(RunEnded):
  """The training loss became NaN or infinite; the summary says ``diverged``."""

  exit_code = status.DIVERGED_EXIT_CODE


class Diverged(Exception):
  """Raised inside MaxText's loop when a step's loss is not finite (``step``, ``loss``)."""

  def __init__(self, step: int, loss: float):
    super().__init__(f"the training loss of step {step} is {loss}")
    self.step, self.loss = step, loss


class LoopRecord:
  """What the wrapped loop saw: the device/python dicts of the last iteration, its step, why it stopped."""

  def __init__(self):
    self.device: dict[str, Any] | None = None
    self.python: dict[str, Any] | None = None
    self.state = None  # the train state the last step program returned
    self.metrics = None
    self.metrics_step: int | None = None  # the step of ``metrics``
    self.checked_step = -1  # the last step whose loss was read back and found finite
    self.last_finite: tuple[int, float] | None = None  # (step, loss) of the last finite loss read
    self.diverged: tuple[int, float] | None = None  # (step, loss) of the first non-finite loss read
    self.exit_code: int | None = None  # of a SystemExit raised inside MaxText's loop
    self.start_step: int | None = None
    self.last_eval_step: int | None = None
    self.stop_reason: str | None = None
    self.stop_cause: BaseException | None = None  # the exception MaxText's StopTraining was raised from
    self.fixed_kept: int | None = None  # init_mask_from_zeros: the fixed mask's count, taken before the first step
    self.target_tokens = None  # sum of MaxText's per-step total_weights (real, unpadded target tokens), on device
    self.tokens_before: float | None = 0.0  # target tokens of the steps before a resume (None: unknown)
    self.evals: list[dict[str, Any]] = []  # {"step", "loss"} of every evaluation, in order
    self.recovery: dict[str, Any] | None = None

  def check_loss(self, step: int, metrics) -> None:
    """Reads the loss of ``step`` (already read back by MaxText's metric logger, or synchronising); raises
    ``Diverged`` if it is not finite."""
    if metrics is None or step <= self.checked_step:
      return
    loss = float(events_lib.host_value(metrics["scalar"]["learning/loss"]))
    if not math.isfinite(loss):
      self.diverged = self.diverged or (step, loss)
      raise Diverged(step, loss)
    self.checked_step, self.last_finite = step, (step, loss)


def _recovery_start(config, record: LoopRecord, state_events) -> None:
  """Prune and recover (see the module docstring): L0 before the step-0 event, the loss right after it. A run from
  ``load_parameters_path`` without an event at step 0 (a dense run: the recovery's unpruned control, trained the
  same steps) records L0 alone, ``pruned: false``, its loss "after pruning" being L0."""
  if not (config.load_parameters_path and record.start_step == 0 and config.eval_interval > 0):
    return
  if state_events is not None and state_events.due(0) is None:
    return  # a sparse run whose schedule starts later: not prune-and-recover
  pruned = state_events is not None
  dev = record.device
  before = final_evaluation(config, record, last=False)
  after = before
  if pruned:
    dev["state"] = state_events(dev["state"], 0)  # the event now, so that the pruned weights can be evaluated
    after = final_evaluation(config, record, state=events_lib.masked_state(dev["state"]), last=False)
  record.recovery = {"loaded_from": str(config.load_parameters_path), "pruned": pruned,
                     "loss_before_pruning": None if before is None else before[0],
                     "loss_after_pruning": None if after is None else after[0]}
  print(f"prune and recover: eval loss {record.recovery['loss_before_pruning']} before pruning, "
        + (f"{record.recovery['loss_after_pruning']} right after it" if pruned else "no pruning (unpruned control)"),
        flush=True)


class Loop:
  """MaxText's ``training_loop_iteration`` with the pruner's work around it (see the module docstring)."""

  def __init__(self, run, config, record: LoopRecord, notice: preemption.Notice, stop, iteration_original):
    self.run, self.config, self.record, self.notice = run, config, record, notice
    self.stop, self.original = stop, iteration_original
    self.events = None  # events_lib.StateEvents of a sparse run, made at the first iteration

  def __call__(self, jax_device_state, python_vars, immutable_data):
    run, record = self.run, self.record
    run.reached.add("train.training_loop_iteration")
    first = record.device is None
    record.device, record.python = jax_device_state, python_vars
    if first:  # the optimizer and the step were built and traced by now
      self._start(jax_device_state, int(immutable_data["start_step"]))
    step = int(python_vars["step"])
    try:
      metrics = self.original(jax_device_state, python_vars, immutable_data)
    except self.stop as e:
      _record_stop(record, e)
      raise
    previous, previous_step = record.metrics, record.metrics_step
    record.metrics, record.metrics_step = metrics, step
    record.check_loss(previous_step, previous)  # MaxText read it back in this iteration (its metrics lag one step)
    weights = metrics["scalar"].get("learning/total_weights")
    if weights is not None:  # added on the device: no synchronisation per step
      record.target_tokens = weights if record.target_tokens is None else record.target_tokens + weights
    self._record_tokens(step)
    preempted = self.notice.pending_stop(self.stop)
    if preempted is not None:  # after the whole iteration: the step's state and metrics are MaxText's as usual
      _record_stop(record, preempted)
      raise preempted
    if maxtext_evaluates_after(step, self.config, record.start_step):
      record.last_eval_step = step
      record.evals.append({"step": step, "loss": _logged_eval_loss(record)})
    return metrics

  def _start(self, jax_device_state, start_step: int) -> None:
    run, record = self.run, self.record
    run.require("optimizers.get_optimizer", "train.train_step")
    record.start_step = start_step
    record.tokens_before = _tokens_before(self.config, start_step)
    integrity.verify_start(run, self.config, jax_device_state["state"], start_step)  # before any step or event
    if run.sparse:
      self.events = events_lib.StateEvents(run.plan, jax_device_state["state"], start_step)
    for name in TRAIN_STEP_PROGRAMS:
      if jax_device_state.get(name) is not None:
        jax_device_state[name] = self._step_program(jax_device_state[name])
    if run.sparse and run.plan.init_mask_from_zeros:
      record.fixed_kept = fixed_mask_count(jax_device_state["state"], start_step)
    _recovery_start(self.config, record, self.events)

  def _step_program(self, program):
    """``program(state, batch, ...)`` preceded by the pruning event due at the loop's current step; the state it
    returns is kept (``LoopRecord.state``)."""

    def run(state, *args, **kwargs):
      step = int(self.record.python["step"])
      if self.events is not None and self.events.due(step) is not None and step not in self.events.applied:
        self.record.check_loss(self.record.metrics_step, self.record.metrics)  # never prune after a NaN loss
        state = self.event(state, step)
      out = program(state, *args, **kwargs)
      self.record.state = out[0]
      return out

    return run

  def event(self, state, step: int):
    """The event due before ``step`` applied to ``state``, logged in one line (MaxText's logger) with its time."""
    jax.block_until_ready(state)
    start = time.perf_counter()
    state = self.events(state, step)
    jax.block_until_ready(events_lib.mask_leaves(state))
    seconds = time.perf_counter() - start
    kept, prunable = events_lib.count_kept(state), max(self.run.prunable, 1)
    prune_steps = self.run.plan.schedule.prune_steps
    if step in prune_steps:
      target = self.run.accounting().kept[prune_steps.index(step)]
      what = f"pruning event at step {step}: target density {target / prunable:.4f}"
    else:
      what = f"zero-mask event at step {step}: the loaded weights that are zero masked"
    modules.max_logging().log(f"{what}, kept {kept:,} / {prunable:,} prunable, {seconds * 1e3:.1f} ms")
    return state

  def _record_tokens(self, step: int) -> None:
    """At a checkpoint step, process 0 records the target tokens trained through ``step`` (``TOKENS_FILE``)."""
    cfg = self.config
    saved = step % int(cfg.checkpoint_period) == 0 or self.notice.saved_step == step
    if not (cfg.enable_checkpointing and saved) or self.record.target_tokens is None or jax.process_index() != 0:
      return
    run_dir = layout.run_dir(cfg.base_output_directory, cfg.run_name)
    if "://" in run_dir or self.record.tokens_before is None:
      return
    path = os.path.join(run_dir, TOKENS_FILE)
    known = _read_tokens(path)
    known[str(step)] = self.record.tokens_before + float(events_lib.host_value(self.record.target_tokens))
    files.write_json(path, known)


def _read_tokens(path: str) -> dict[str, float]:
  try:
    with open(path, encoding="utf-8") as f:
      return dict(json.load(f))
  except (OSError, ValueError):
    return {}


def _tokens_before(config, start_step: int) -> float | None:
  """The target tokens trained before ``start_step`` (0 at step 0; from ``TOKENS_FILE`` on a resume; None if it does
  not say)."""
  if start_step == 0:
    return 0.0
  run_dir = layout.run_dir(config.base_output_directory, config.run_name)
  return _read_tokens(os.path.join(run_dir, TOKENS_FILE)).get(str(start_step - 1))


def train_loop(run, original, iteration_original, train_module, config, recorder, state=None):
  """MaxText's ``train_loop`` with the pruner's loop (see the module docstring). ``run``: what the hook learned of
  this run (``sparsity.maxtext.hook.Run``: plan, counts, extension points reached), passed in by ``hook.install``."""
  run.reached.add("train.train_loop")
  record, notice, stop = LoopRecord(), preemption.Notice(), modules.exceptions().StopTraining
  train_module.training_loop_iteration = Loop(run, config, record, notice, stop, iteration_original)
  run.in_train_loop = True
  checkpointing = modules.checkpointing()
  save_original = checkpointing.maybe_save_checkpoint
  checkpointing.maybe_save_checkpoint = functools.partial(preemption.maybe_save_checkpoint, save_original,
                                                          checkpointing, stop, notice)
  guard = integrity.Guard(run, config, checkpointing)  # fingerprints each save, checks the restore
  notice.install(distributed=jax.distributed.is_initialized())
  error = None
  try:
    state = original(config, recorder, state)
  except stop as e:  # a StopTraining MaxText's loop did not catch (raised after it, e.g. by its metric logger)
    _record_stop(record, e)
  except (Exception, SystemExit, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    error = e
  finally:
    train_module.training_loop_iteration = iteration_original
    guard.uninstall()
    checkpointing.maybe_save_checkpoint = save_original
    notice.uninstall()
    run.in_train_loop = False
  return _end(run, config, record, notice, state, error)


def _diverged(record: LoopRecord, error: BaseException | None) -> bool:
  """Whether the loop ended on a non-finite loss: our own ``Diverged``, or a ``SystemExit`` (MaxText's
  ``abort_on_nan_loss``) after a loss that was not finite."""
  if isinstance(error, SystemExit):
    record.exit_code = error.code if isinstance(error.code, int) else status.FAILED_EXIT_CODE
    try:
      record.check_loss(record.metrics_step, record.metrics)
    except Diverged:
      pass
  return record.diverged is not None and isinstance(error, (Diverged, SystemExit))


def _end(run, config, record: LoopRecord, notice: preemption.Notice, state, error: BaseException | None):
  """Writes the summary of the loop that ended (with ``error``, if it raised) and raises unless it completed."""
  if record.state is not None:
    state = record.state  # the state of the last trained step, also when the loop stopped early
  elif record.device is not None:
    state = record.device["state"]
  diverged = _diverged(record, error)
  if error is not None and not diverged:  # the device state may be gone (donated to a step that raised)
    write_failure(config, record, error)
    if isinstance(error, KeyboardInterrupt):
      raise RunInterrupted("interrupted (a second SIGINT): stopped without saving; rerun the same command to resume "
                           "from the latest checkpoint") from error
    if isinstance(error, SystemExit):
      raise RunFailed(f"MaxText's loop exited with code {error.code}", exit_code=record.exit_code) from error
    raise error
  if run.plan is None or not run.total:  # the optimizer was never built: nothing to count (run.require says why)
    if notice.stop_message is not None and events_lib.optimizer_step(state) < int(config.steps):
      raise _stopped(config, notice, events_lib.optimizer_step(state))
    return state
  try:
    summary = finish(run, config, state, record)
  except Exception as e:
    write_failure(config, record, e)
    raise
  trained = events_lib.optimizer_step(state)
  end, message = end_of_run(config, record, trained)
  if end == status.FAILED:
    raise RunFailed(f"training failed after {trained} of {int(config.steps)} steps: {message}"
                    + ("" if summary is None else f" (the summary, {layout.SUMMARY_FILE}, says failed)"))
  if end == status.DIVERGED:
    raise RunDiverged(f"diverged: {message}", exit_code=record.exit_code)
  if end in status.RESUMABLE:
    raise _stopped(config, notice, trained)
  return state


def _stopped(config, notice: preemption.Notice, trained: int) -> RunEnded:
  """``RunPreempted`` or ``RunInterrupted`` of a loop that a signal stopped after ``trained`` steps."""
  saved = ("no checkpoint (checkpointing is off)" if notice.saved_step is None
           else f"the checkpoint of step {notice.saved_step}")
  end = notice.end_status
  cls = RunInterrupted if end == status.INTERRUPTED else RunPreempted
  signal_name = "SIGINT" if end == status.INTERRUPTED else "SIGTERM"
  return cls(f"{end} ({signal_name}) after {trained} of {int(config.steps)} steps: rerun the same command to resume "
             f"from {saved}")


def _record_stop(record: LoopRecord, e: BaseException) -> None:
  if record.stop_reason is None:
    record.stop_reason, record.stop_cause = str(e), e.__context__


def end_of_run(config, record: LoopRecord, trained: int) -> tuple[str, str | None]:
  """``(end_status, error)`` of a run whose loop returned after ``trained`` steps (``sparsity.maxtext.status``); a
  stop that is not a failure after the last configured step (e.g. ``target_eval_loss`` reached by the last
  evaluation) leaves the run completed."""
  if record.diverged is not None:
    step, loss = record.diverged
    last = ("no finite loss before it" if record.last_finite is None
            else f"last finite loss {record.last_finite[1]:.4f} at step {record.last_finite[0]}")
    return status.DIVERGED, f"the training loss of step {step} is {loss} ({last})"
  if record.stop_reason is not None:
    end = status.of_stop(record.stop_reason, record.stop_cause)
    if end == status.FAILED:
      cause = record.stop_cause
      return end, record.stop_reason if cause is None else status.error_text(cause)
    if trained < int(config.steps):
      return end, None
  if trained < int(config.steps):
    return status.FAILED, f"MaxText's loop ended after {trained} of {int(config.steps)} steps without a stop reason"
  return status.COMPLETED, None


def fixed_mask_count(state, start_step: int) -> int:
  """A fine-tuning run's fixed mask (``init_mask_from_zeros``), counted before its first step: the prunable weights
  that are not zero (what the step-0 event keeps) at step 0, the restored masks when resuming. A collective."""
  if start_step > 0:
    return events_lib.count_kept(state)
  flat = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  names = [n for n in map(layout.state_mask_path, flat) if n is not None]
  params = [flat[layout.STATE_PARAMS + n] for n in names]
  wide = jax.jit(lambda ps: threshold.count_true([p != 0 for p in ps]))(params)
  return threshold.wide_to_python(tuple(events_lib.host_value(v) for v in wide))


def final_evaluation(config, record: LoopRecord, state=None, last: bool = True) -> tuple[float, float] | None:
  """``(loss, weights)`` of MaxText's eval step over its eval data on ``state`` (default: the loop's current
  state), or None without eval data. ``last``: nothing evaluates after this one (the eval iterator is closed).

  The same calls as MaxText's eval in ``training_loop_iteration`` (its eval data iterator, input sharding, eval
  logical-axis rules, ``eval_steps`` limit); the loss is the weighted mean MaxText reports as ``eval/avg_loss``.
  """
  # pylint: disable=import-outside-toplevel
  from flax.core.spmd import logical_axis_rules
  from maxtext.utils import sharding

  dev, py = record.device, record.python
  iterator, p_eval = py.get("eval_data_iterator"), dev.get("p_eval_step")
  if iterator is None or p_eval is None:
    return None
  if hasattr(iterator, "reset"):
    iterator.reset()
  mesh, state = dev["mesh"], dev["state"] if state is None else state
  batch_sharding = sharding.get_input_data_sharding(config, mesh, rules=config.logical_axis_rules_for_eval)
  total_loss = total_weights = 0.0
  count = 0
  try:
    for batch in iterator:
      batch = jax.device_put(batch, batch_sharding)
      with jax.set_mesh(mesh), logical_axis_rules(config.logical_axis_rules_for_eval):
        metrics = p_eval(state, batch)
      scalar = metrics["scalar"]
      total_loss += float(events_lib.host_value(scalar["evaluation/total_loss"]))
      total_weights += float(events_lib.host_value(scalar["evaluation/total_weights"]))
      count += 1
      if 0 < config.eval_steps <= count:
        break
  finally:
    # A tf.data iterator left half-read past the end of training can hang or abort the interpreter's exit (its
    # worker threads outlive TensorFlow's runtime): close it when nothing reads it any more.
    if last and hasattr(iterator, "close"):
      iterator.close()
  return (total_loss / total_weights, total_weights) if total_weights > 0 else None


def _logged_eval_loss(record: LoopRecord) -> float | None:
  logger = (record.python or {}).get("metric_logger_instance")
  scalars = getattr(logger, "cumulative_eval_metrics", {}).get("scalar", {}) if logger is not None else {}
  if scalars.get("eval/total_weights", 0) > 0 and "eval/avg_loss" in scalars:
    return float(scalars["eval/avg_loss"])
  return None


def finish(run, config, state, record: LoopRecord) -> dict | None:
  """The end of the run (see the module docstring) of ``run`` (``hook.Run``); returns the summary on process 0."""
  trained = events_lib.optimizer_step(state)
  last = trained - 1
  end, error = end_of_run(config, record, trained)
  eval_loss, eval_step = None, None
  if record.last_eval_step is not None:
    eval_loss, eval_step = _logged_eval_loss(record), record.last_eval_step
  if (config.eval_interval > 0 and record.device is not None and eval_step != last and trained > 0
      and end in (status.COMPLETED, status.DATA_EXHAUSTED, status.TARGET_EVAL_LOSS)):
    result = final_evaluation(config, record)
    if result is not None:
      eval_loss, eval_step = result[0], last
      record.evals.append({"step": last, "loss": eval_loss})
      _log_final_eval(config, last, eval_loss)
  train_loss = None
  if record.metrics is not None:
    train_loss = float(events_lib.host_value(record.metrics["scalar"]["learning/loss"]))

  plan = run.plan
  kept = events_lib.count_kept(state) if plan.masks_needed else run.prunable  # every process
  if plan.init_mask_from_zeros and record.fixed_kept is None:
    raise RuntimeError("init_mask_from_zeros: the fixed mask was not counted before the first step")
  acc = run.accounting(fixed_kept=record.fixed_kept if plan.init_mask_from_zeros else None)
  expected = acc.active_at(last) - acc.non_prunable
  if kept != expected:
    what = ("the fixed mask counted before the first step keeps" if plan.init_mask_from_zeros
            else "the accounting says")
    raise RuntimeError(f"final masks keep {kept} weights, {what} {expected} (step {last})")
  target_reached = kept == (acc.kept[-1] if acc.kept else acc.prunable)
  tokens = None
  if record.target_tokens is not None and record.tokens_before is not None:
    tokens = record.tokens_before + float(events_lib.host_value(record.target_tokens))
  summary = {
      "run_name": config.run_name,
      "end_status": end,  # sparsity.maxtext.status
      "exit_code": record.exit_code if end == status.DIVERGED and record.exit_code else status.EXIT_CODES[end],
      "error": error,
      "target_sparsity": float(config.target_sparsity),
      "sparsity_schedule": str(config.sparsity_schedule),
      **acc.summary(steps_trained=trained, final_kept=kept),
      "final_kept_params": kept,
      "stopped_early": trained < int(config.steps),
      "stop_reason": record.stop_reason if trained < int(config.steps) else None,
      "data_ran_out": end == status.DATA_EXHAUSTED,
      "target_reached": target_reached,
      "diverged_at_step": None if record.diverged is None else record.diverged[0],
      "last_finite_loss": None if record.last_finite is None else record.last_finite[1],
      "last_finite_loss_step": None if record.last_finite is None else record.last_finite[0],
      "final_train_loss": train_loss,
      "final_eval_loss": eval_loss,
      "final_eval_step": eval_step,
      "target_tokens": tokens,
      "eval_history": [{"step": e["step"], "tokens": (e["step"] + 1) * acc.tokens_per_step, "loss": e["loss"]}
                       for e in record.evals],
      "recovery": record.recovery,
      "model": run.model_summary(state, kept),  # family, counts by kind, experts (sparsity.maxtext.families)
      **{k: getattr(config, k) for k in RUN_SETTINGS},
      **compute.step_split(config)._asdict(),  # prune_start_fraction, prune_end_fraction, schedule_split
  }
  if jax.process_index() != 0:
    return None
  _report(config, summary, acc, record)
  return summary


def _report(config, summary: dict[str, Any], acc, record: LoopRecord) -> None:
  """Process 0: the warnings of a run that did not reach its target, the summary written, the end table logged."""
  end, trained, kept = summary["end_status"], summary["steps_trained"], summary["final_kept_params"]
  if end in (status.FAILED, status.DIVERGED):
    print(f"ERROR: training {end} after {trained} of {int(config.steps)} steps: {summary['error']}", flush=True)
  elif not summary["target_reached"]:
    print(f"WARNING: training stopped at step {trained}, before its pruning schedule ended (events at steps "
          f"{acc.prune_steps[0]}..{acc.prune_steps[-1]}): the final masks keep {kept:,} of {acc.prunable:,} prunable "
          f"weights (sparsity {summary['final_sparsity']:.4f}, target {config.target_sparsity}). Repeat the data "
          "(MaxText's num_epoch) or train fewer steps.", flush=True)
  path = write_summary(layout.run_dir(config.base_output_directory, config.run_name), summary)
  stopped = f", stopped at step {trained}" + (f": {record.stop_reason}" if record.stop_reason else "")
  print(f"sparsity summary written to {path} (end_status {end}{stopped if summary['stopped_early'] else ''})",
        flush=True)
  tensorboard = (os.path.join(config.tensorboard_dir, config.run_name)
                 if config.enable_tensorboard and config.tensorboard_dir else None)
  modules.max_logging().log(end_table(summary, path, tensorboard))


def end_table(summary: dict[str, Any], summary_path: str, tensorboard: str | None) -> str:
  """The short table a run ends with: how it ended, its sparsity and counts, N_avg, the compute split spent, the
  final losses and where its summary and TensorBoard logs are."""
  loss = lambda x: "-" if x is None or not math.isfinite(x) else f"{x:.4f}"  # noqa: E731
  split = summary.get("compute_fractions") or {}
  rows = [("end status", f"{summary['end_status']} (exit code {summary['exit_code']})"
           + (f": {summary['error']}" if summary.get("error") else "")),
          ("steps trained", f"{summary['steps_trained']:,} of {summary['steps']:,}"),
          ("final sparsity", f"{summary['final_sparsity']:.4f} (target {summary['target_sparsity']:g})"),
          ("kept weights", f"{summary['final_kept_params']:,} of {summary['prunable_params']:,} prunable"),
          ("N_avg", f"{summary['avg_active_params']:,.0f} active parameters on average (of "
                    f"{summary['total_params']:,})"),
          ("compute spent", " / ".join(f"{k} {v:.3f}" for k, v in split.items())),
          ("final train loss", loss(summary["final_train_loss"])),
          ("final eval loss", loss(summary["final_eval_loss"])),
          ("summary", summary_path),
          ("TensorBoard", tensorboard or "off")]
  if summary.get("diverged_at_step") is not None:
    rows.insert(2, ("diverged at step", f"{summary['diverged_at_step']} (last finite loss "
                                        f"{loss(summary['last_finite_loss'])} at step "
                                        f"{summary['last_finite_loss_step']})"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(["run end:"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def minimal_failure_summary(config, record: LoopRecord, error: BaseException) -> dict[str, Any]:
  """The summary of a run that failed where its train state cannot be read (no device work): how it ended, the
  error, the steps MaxText's loop had finished, and the run's settings. A second Ctrl-C (``KeyboardInterrupt``) is
  ``interrupted``; a ``SystemExit`` keeps its exit code."""
  trained = None if record.python is None else int(record.python["step"])
  end = status.INTERRUPTED if isinstance(error, KeyboardInterrupt) else status.FAILED
  code = record.exit_code if isinstance(error, SystemExit) else status.EXIT_CODES[end]
  text = "KeyboardInterrupt: a second SIGINT stopped the run without saving" if end == status.INTERRUPTED else (
      f"SystemExit({error.code}) raised inside MaxText's loop" if isinstance(error, SystemExit)
      else status.error_text(error))
  return {"run_name": config.run_name, "end_status": end, "exit_code": code, "error": text,
          "target_sparsity": float(config.target_sparsity), "sparsity_schedule": str(config.sparsity_schedule),
          "steps": int(config.steps), "steps_trained": trained, "stopped_early": True,
          "stop_reason": record.stop_reason,
          "final_train_loss": None, "final_eval_loss": None, "final_eval_step": None,
          **{k: getattr(config, k) for k in RUN_SETTINGS}}


def write_failure(config, record: LoopRecord, error: BaseException) -> None:
  """Process 0 writes ``minimal_failure_summary`` (never raising: the error itself is what propagates)."""
  if jax.process_index() != 0:
    return
  try:
    summary = minimal_failure_summary(config, record, error)
    path = write_summary(layout.run_dir(config.base_output_directory, config.run_name), summary)
    print(f"sparsity summary written to {path} (end_status {summary['end_status']}: {summary['error']})", flush=True)
  except Exception as e:  # pylint: disable=broad-except
    print(f"could not write the failed run's summary: {status.error_text(e)}", flush=True)


def _log_final_eval(config, step: int, loss: float) -> None:
  """The final evaluation in MaxText's log and, on process 0, in TensorBoard at train step ``step``."""
  print(f"final evaluation after train step {step}: eval/avg_loss={loss:.4f}", flush=True)
  if jax.process_index() != 0 or not config.enable_tensorboard or not config.tensorboard_dir:
    return
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  with SummaryWriter(os.path.join(config.tensorboard_dir, config.run_name)) as w:
    w.add_scalar("eval/avg_loss", loss, step)
    w.add_scalar("eval/avg_perplexity", float(np.exp(loss)), step)


def write_summary(run_directory: str, summary: dict[str, Any]) -> str:
  """Writes ``sparsity_summary.json`` (strict JSON, atomically: ``sparsity.files.write_json``); returns its path."""
  return files.write_json(layout.summary_path(run_directory), summary)


__all__ = ["train_loop", "finish", "final_evaluation", "write_summary", "maxtext_evaluates_after", "RUN_SETTINGS",
           "RunEnded", "RunFailed", "RunPreempted", "RunInterrupted", "RunDiverged", "LoopRecord", "write_failure",
           "end_of_run", "end_table", "fixed_mask_count", "minimal_failure_summary"]
