"""A TensorBoard writer whose failed write stops the run instead of hanging it.

tensorboardX's ``SummaryWriter`` writes event files from a background thread fed through a bounded queue. When a
write fails (``No space left on device``) that thread dies with the error, nothing reads the queue any more, and
the training loop blocks forever on the next metric it logs (MaxText's metric logger calls ``add_scalar`` every
step). ``CheckedSummaryWriter`` records the writer thread's error and raises it, naming the file, on the next
call (``add_*``, ``flush``, ``close``); a queue that stays full for ``PUT_TIMEOUT`` seconds raises too.
"""

from __future__ import annotations

import functools
import queue

from tensorboardX import SummaryWriter

PUT_TIMEOUT = 30.0  # seconds a metric may wait for room in the writer's queue


class WriteFailed(OSError):
  """TensorBoard's writer thread could not write its event file."""


class CheckedSummaryWriter(SummaryWriter):
  """``tensorboardX.SummaryWriter`` that raises ``WriteFailed`` once its writer thread has failed (module docstring)."""

  def _get_file_writer(self):
    writer = super()._get_file_writer()
    events = writer.event_writer
    if not getattr(events, "_checked", False):
      _check_event_writer(events)
    return writer

  def flush(self):
    _raise_if_failed(self)
    super().flush()

  def close(self):
    failure = _failure(self)
    if failure is not None:  # the thread is gone: flushing or stopping it would block or fail again
      self.all_writers = self.file_writer = None
      raise failure
    super().close()


def _check_event_writer(events) -> None:
  """Wraps one ``EventFileWriter``: its record writer keeps the error that kills the thread, and ``add_event``
  raises it (or a timeout on a full queue) instead of blocking."""
  records = events._ev_writer  # pylint: disable=protected-access
  path = getattr(records, "_file_name", None) or events.get_logdir()
  events._failure = None  # pylint: disable=protected-access

  def recording(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
      try:
        return fn(*args, **kwargs)
      except BaseException as e:
        failure = WriteFailed(f"TensorBoard could not write {path}: {type(e).__name__}: {e}")
        events._failure = failure  # pylint: disable=protected-access
        raise

    return call

  records.write_event = recording(records.write_event)
  records.flush = recording(records.flush)
  put = events._event_queue.put  # pylint: disable=protected-access

  def add_event(event):
    if events._failure is not None:  # pylint: disable=protected-access
      raise events._failure  # pylint: disable=protected-access
    if events._closed:  # pylint: disable=protected-access
      return
    worker = events._worker  # pylint: disable=protected-access
    if worker is not None and not worker.is_alive():
      raise WriteFailed(f"TensorBoard's writer thread for {path} stopped")
    try:
      put(event, timeout=PUT_TIMEOUT)
    except queue.Full:
      raise (events._failure or WriteFailed(  # pylint: disable=protected-access
          f"TensorBoard's writer for {path} took no event for {PUT_TIMEOUT:g} s")) from None

  events.add_event = add_event
  events._checked = True  # pylint: disable=protected-access


def _failure(writer: SummaryWriter) -> BaseException | None:
  for fw in (getattr(writer, "all_writers", None) or {}).values():
    failure = getattr(fw.event_writer, "_failure", None)
    if failure is not None:
      return failure
  return None


def _raise_if_failed(writer: SummaryWriter) -> None:
  failure = _failure(writer)
  if failure is not None:
    raise failure


__all__ = ["CheckedSummaryWriter", "WriteFailed", "PUT_TIMEOUT"]
