"""How a run ended: the summary's ``end_status`` (one of ``END_STATUSES``), told from MaxText's ``StopTraining``.

* ``completed``: every configured step was trained. The only end whose summary is a result (``is_result``):
  ``collect`` leaves any other out of its CSV unless asked, ``fit`` refuses it.
* ``data_exhausted``: the training data ran out (MaxText's data loader met ``StopIteration``); the run trained fewer
  steps than configured. Exit code 0 (MaxText's own graceful stop).
* ``target_eval_loss``: MaxText's ``target_eval_loss`` was reached (its own early stop). Exit code 0.
* ``preempted``: the job received SIGTERM (what a TPU VM gets before it is preempted) while training: a checkpoint
  of the step reached was saved (``sparsity.maxtext.preemption``: MaxText's own preemption stop, completed with a
  save of that step, and SIGTERM caught by the pruner in a process without JAX's distributed system), the summary
  counts the steps trained, and rerunning the same command resumes from that checkpoint and ends as an uninterrupted
  run would. Exit code ``PREEMPTED_EXIT_CODE`` (143 = 128 + SIGTERM: what a shell or Kubernetes reports for a
  process ended by SIGTERM, so a scheduler's retry-on-preemption rule, e.g. a JobSet ``podFailurePolicy`` on exit
  code 143, restarts it, while ``failed`` (1) is told apart).
* ``interrupted``: the job received SIGINT (Ctrl-C) while training: handled exactly like ``preempted`` (a finished
  checkpoint of the step reached, the same command resumes from it), told apart so that a scheduler does not retry
  what a person stopped. Exit code ``INTERRUPTED_EXIT_CODE`` (130 = 128 + SIGINT). A second Ctrl-C stops at once.
* ``diverged``: the training loss became NaN or infinite. MaxText's own check (``abort_on_nan_loss``,
  ``abort_on_inf_loss``, on by default) ends its loop with ``sys.exit(1)``; with those off the pruner stops the run
  itself, at the latest one step after the loss, and never runs a pruning event after a non-finite loss. The summary
  says at which step (``diverged_at_step``), the last finite loss and its step, and the kept count. Exit code
  ``DIVERGED_EXIT_CODE`` (1, MaxText's).
* ``failed``: an exception ended training: any exception in MaxText's data pipeline (a corrupt shard, a failing
  reader: MaxText's data loader turns every one into ``StopTraining``, and only ``StopIteration`` means the data ran
  out), or any exception raised by the training loop or the end of the run (a failed write: a full disk). The
  summary's ``error`` is short (``error_text``: the exception's type, message and the file and line it was raised
  at); the full traceback is in the log. Exit code ``FAILED_EXIT_CODE`` (1; a ``SystemExit`` raised inside MaxText's
  loop keeps its own code).

``sweep`` reruns (resumes) a run without a summary or with a ``RESUMABLE`` end (preempted, interrupted); the other
ends are left as they are unless asked (``sweep --rerun STATUS``). ``collect`` and ``fit`` take completed runs only.

Summaries written before ``end_status`` existed are read with ``of_summary`` (from ``stopped_early``,
``steps_trained`` / ``steps`` and ``stop_reason``).

The only module that knows MaxText's stop messages (``maxtext/common/data_loader.py``, ``metric_logger.py``,
``checkpointing.py`` in MaxText 0.2.5).
"""

from __future__ import annotations

from typing import Any, Mapping

COMPLETED = "completed"
DATA_EXHAUSTED = "data_exhausted"
TARGET_EVAL_LOSS = "target_eval_loss"
PREEMPTED = "preempted"
INTERRUPTED = "interrupted"
DIVERGED = "diverged"
FAILED = "failed"
END_STATUSES = (COMPLETED, DATA_EXHAUSTED, TARGET_EVAL_LOSS, PREEMPTED, INTERRUPTED, DIVERGED, FAILED)
RESUMABLE = (PREEMPTED, INTERRUPTED)  # a rerun of the same command continues from the checkpoint saved at the stop

# MaxText's StopTraining messages (0.2.5).
_OUT_OF_DATA = "run out of training data"  # data_loader.loader_exception_guard, for StopIteration only
_LOADER_FAILED = "`next(self.data_iterator)` failed"  # data_loader.loader_exception_guard, any other exception
_TARGET_LOSS = "Target loss"  # metric_logger: "Target loss self.config.target_eval_loss=... is achieved."
_SIGTERM = "termination signal (SIGTERM)"  # checkpointing: "Job received termination signal (SIGTERM)."
SIGTERM_STOP = "Job received termination signal (SIGTERM)."  # the whole message, for the pruner's own stop
SIGINT_STOP = "Job received an interrupt (SIGINT)."  # the pruner's own stop on Ctrl-C

# Exit codes of MaxText/train.py by end status (any other failure: 1; completed and MaxText's graceful stops: 0).
FAILED_EXIT_CODE = 1
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT
DIVERGED_EXIT_CODE = 1  # MaxText's sys.exit(1) on a NaN loss
EXIT_CODES = {COMPLETED: 0, DATA_EXHAUSTED: 0, TARGET_EVAL_LOSS: 0, PREEMPTED: PREEMPTED_EXIT_CODE,
              INTERRUPTED: INTERRUPTED_EXIT_CODE, DIVERGED: DIVERGED_EXIT_CODE, FAILED: FAILED_EXIT_CODE}


def of_stop(reason: str, cause: BaseException | None = None) -> str:
  """The end status of a run that MaxText's ``StopTraining(reason)`` ended; ``cause``: the exception it was raised
  while handling (its ``__context__``), when known. A stop that is none of MaxText's known ones is a failure."""
  if _OUT_OF_DATA in reason or _LOADER_FAILED in reason:  # MaxText's data loader, for any exception of next()
    if cause is not None:
      return DATA_EXHAUSTED if isinstance(cause, StopIteration) else FAILED
    return DATA_EXHAUSTED if _OUT_OF_DATA in reason else FAILED
  if reason.startswith(_TARGET_LOSS):
    return TARGET_EVAL_LOSS
  if _SIGTERM in reason:
    return PREEMPTED
  if reason == SIGINT_STOP:
    return INTERRUPTED
  return FAILED


ERROR_CHARS = 600  # the summary's error is short; the log holds the full traceback


def error_text(e: BaseException) -> str:
  """An exception as the summary's ``error``: its type, its message (the first ``ERROR_CHARS`` characters) and the
  file and line it was raised at (the innermost frame of its traceback, when it has one)."""
  message = " ".join(str(e).split())
  if len(message) > ERROR_CHARS:
    message = message[:ERROR_CHARS] + f"... ({len(message)} characters; the full message is in the log)"
  tb = e.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  where = "" if tb is None else f" (raised at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"
  return f"{type(e).__name__}: {message}{where}"


def of_summary(summary: Mapping[str, Any]) -> str:
  """A summary's end status: its ``end_status``, or for a summary written before that key existed, derived from
  ``stopped_early`` (else ``steps_trained < steps``) and ``stop_reason``."""
  status = summary.get("end_status")
  if status:
    if status not in END_STATUSES:
      raise ValueError(f"{summary.get('run_name')}: unknown end_status {status!r} (known: {', '.join(END_STATUSES)})")
    return str(status)
  stopped = summary.get("stopped_early")
  if stopped is None and summary.get("steps_trained") is not None and summary.get("steps") is not None:
    stopped = int(summary["steps_trained"]) < int(summary["steps"])
  if not stopped:
    return COMPLETED
  return of_stop(str(summary.get("stop_reason") or ""))


def is_result(summary: Mapping[str, Any]) -> bool:
  """Whether the run's summary is a result (it completed its schedule)."""
  return of_summary(summary) == COMPLETED


def reruns(end: str | None, rerun: tuple[str, ...] = ()) -> bool:
  """Whether ``sweep`` runs again a run whose summary says ``end`` (None: no summary): one that never ended, a
  ``RESUMABLE`` end, or an end listed in ``rerun`` (``sweep --rerun``; ``"all"``: every end but completed)."""
  if end is None or end in RESUMABLE:
    return True
  return end != COMPLETED and (end in rerun or "all" in rerun)


__all__ = ["SIGTERM_STOP", "SIGINT_STOP", "FAILED_EXIT_CODE", "PREEMPTED_EXIT_CODE", "INTERRUPTED_EXIT_CODE",
           "DIVERGED_EXIT_CODE", "EXIT_CODES", "END_STATUSES", "RESUMABLE", "COMPLETED", "DATA_EXHAUSTED",
           "TARGET_EVAL_LOSS", "PREEMPTED", "INTERRUPTED", "DIVERGED", "FAILED", "of_stop", "of_summary", "is_result",
           "reruns", "error_text"]
