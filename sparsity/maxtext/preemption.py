"""Preemption and interrupts: SIGTERM or SIGINT during MaxText's training loop saves a checkpoint of the step being
trained, then stops (``preempted`` after SIGTERM, ``interrupted`` after SIGINT: ``sparsity.maxtext.status``).

A TPU VM gets SIGTERM shortly before it is preempted. MaxText 0.2.5's own path
(``maxtext/common/checkpointing.py``) learns of it through JAX's preemption sync point
(``multihost_utils.reached_preemption_sync_point``), which exists only when JAX's distributed system is initialized
(several processes; its preemption service then owns SIGTERM); and, unless ``enable_autocheckpoint=true``, it
stops with ``StopTraining`` *without* saving the step it reached. ``Notice`` completes that path:

* in a process without JAX's distributed system (one host, ``skip_jax_distributed_system=true``), SIGTERM and SIGINT
  (Ctrl-C) are caught while MaxText's loop runs (``install``) and only recorded; elsewhere the default action stays
  (the process dies); a second SIGINT raises ``KeyboardInterrupt`` at once (the user insists: no save);
* ``maybe_save_checkpoint`` (installed in place of MaxText's ``checkpointing.maybe_save_checkpoint`` for the loop)
  saves, at the first step boundary after the notice (SIGTERM here, or JAX's sync point), a checkpoint of the step
  just trained through MaxText's own forced save (its final-checkpoint path), waits until it is written, and records
  the stop instead of raising it inside MaxText's iteration, so that the step is completed (its metrics logged, its
  state kept) before ``pending_stop`` ends the loop with MaxText's own SIGTERM ``StopTraining`` message
  (``status.SIGTERM_STOP``, which ``status.of_stop`` reads as ``preempted``).

The checkpoint holds the whole train state (masks included: they live in the optimizer state), so rerunning the
same command resumes from it. Without checkpointing the run still stops at the step boundary, as preempted.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from sparsity.maxtext import status


SIGNALS = {signal.SIGTERM: (status.SIGTERM_STOP, status.PREEMPTED), signal.SIGINT: (status.SIGINT_STOP,
                                                                                   status.INTERRUPTED)}


class Notice:
  """A stop notice for one training loop: whether SIGTERM or SIGINT arrived, and the stop it leads to."""

  def __init__(self):
    self.received = False  # a signal caught by ``install``'s handler
    self.signal: int | None = None  # the first one caught
    self.saved_step: int | None = None  # the step of the checkpoint saved on the notice
    self.stop_message: str | None = None  # set once the step boundary after the notice was reached
    self._previous: dict[int, Any] = {}

  def install(self, distributed: bool) -> None:
    """Catches SIGTERM and SIGINT (recording them) unless JAX's distributed system owns them (``distributed``) or
    this is not the main thread (where Python cannot set handlers)."""
    if distributed or threading.current_thread() is not threading.main_thread():
      return
    for sig in SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)

  def uninstall(self) -> None:
    """Restores the handlers ``install`` replaced."""
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  @property
  def end_status(self) -> str:
    """``preempted`` (SIGTERM, or JAX's preemption sync point) or ``interrupted`` (SIGINT)."""
    return SIGNALS.get(self.signal, SIGNALS[signal.SIGTERM])[1]

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.received and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
    if not self.received:
      self.signal = signum
      name, end = signal.Signals(signum).name, SIGNALS[signum][1]
      print(f"{name} received: saving a checkpoint after the current step, then stopping ({end})"
            + ("; Ctrl-C again stops at once without saving" if signum == signal.SIGINT else ""), flush=True)
    self.received = True

  def pending_stop(self, stop_class) -> BaseException | None:
    """The ``StopTraining`` to raise after the iteration in which the notice was acted on, else None."""
    return None if self.stop_message is None else stop_class(self.stop_message)


def maybe_save_checkpoint(original, checkpointing, stop_class, notice: Notice, checkpoint_manager, state, config,
                          data_iterator, step=None):
  """MaxText's ``checkpointing.maybe_save_checkpoint`` (``original``), acting on a preemption ``notice`` (see the
  module docstring). ``checkpointing``: MaxText's module (for ``reached_preemption`` and ``wait_until_finished``);
  ``stop_class``: its ``StopTraining``."""
  if step is None or notice.stop_message is not None:
    return original(checkpoint_manager, state, config, data_iterator, step)
  synced = checkpoint_manager is not None and checkpointing.reached_preemption(checkpoint_manager, int(step))
  if not (notice.received or synced):
    return original(checkpoint_manager, state, config, data_iterator, step)
  message = SIGNALS[notice.signal][0] if notice.signal is not None else status.SIGTERM_STOP
  if checkpoint_manager is not None:
    try:  # no step: MaxText's forced save of the state's last step (its final-checkpoint path)
      original(checkpoint_manager, state, config, data_iterator)
    except stop_class as e:  # MaxText's own preemption stop (JAX's sync point), raised after its save
      message = str(e)
    checkpointing.wait_until_finished(checkpoint_manager)
    notice.saved_step = int(step)
  notice.stop_message = message
  print(f"{notice.end_status}: stopping after step {int(step)}" + (f" (checkpoint of step {int(step)} saved)"
                                                          if notice.saved_step is not None else " (no checkpointing)"),
        flush=True)
  return None


__all__ = ["Notice", "maybe_save_checkpoint"]
