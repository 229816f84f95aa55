"""The preemption notice and the resume plan check, without MaxText (end to end: ``test_preemption_e2e.py``)."""

import os
import signal

import pytest

from sparsity.maxtext import checkpoint, layout, preemption, status


class Stop(Exception):
  """Stands for MaxText's ``StopTraining``."""


class FakeCheckpointing:
  """MaxText's checkpointing module as ``preemption.maybe_save_checkpoint`` uses it; records the calls."""

  def __init__(self, synced_at=None, raise_on_forced_save=False):
    self.calls, self.waits = [], 0
    self.synced_at, self.raise_on_forced_save = synced_at, raise_on_forced_save

  def maybe_save_checkpoint(self, manager, state, config, data_iterator, step=None):
    self.calls.append(step)
    if step is None and self.raise_on_forced_save:
      raise Stop("Job received termination signal (SIGTERM).")

  def reached_preemption(self, manager, step):
    return step == self.synced_at

  def wait_until_finished(self, manager):
    self.waits += 1


def _save(ck, notice, step, manager="manager"):
  return preemption.maybe_save_checkpoint(ck.maybe_save_checkpoint, ck, Stop, notice, manager, "state", "config",
                                          "data", step)


def test_without_a_notice_maxtext_saves_as_usual():
  ck, notice = FakeCheckpointing(), preemption.Notice()
  for step in range(3):
    _save(ck, notice, step)
  _save(ck, notice, None)  # MaxText's final save
  assert ck.calls == [0, 1, 2, None] and ck.waits == 0
  assert notice.stop_message is None and notice.pending_stop(Stop) is None


def test_sigterm_forces_a_save_of_the_step_waits_for_it_then_stops_once():
  ck, notice = FakeCheckpointing(), preemption.Notice()
  _save(ck, notice, 4)
  notice.received = True  # what the SIGTERM handler records
  _save(ck, notice, 5)
  assert ck.calls == [4, None] and ck.waits == 1  # the forced save (no step: the state's own step), waited for
  assert notice.saved_step == 5 and notice.stop_message == status.SIGTERM_STOP
  stop = notice.pending_stop(Stop)
  assert isinstance(stop, Stop) and status.of_stop(str(stop)) == status.PREEMPTED
  _save(ck, notice, None)  # anything after it is MaxText's as usual
  assert ck.calls == [4, None, None] and ck.waits == 1


def test_jax_sync_point_saves_the_step_and_keeps_maxtexts_stop():
  ck, notice = FakeCheckpointing(synced_at=7, raise_on_forced_save=True), preemption.Notice()
  _save(ck, notice, 6)
  _save(ck, notice, 7)  # MaxText's own StopTraining, raised after its save, is held until the iteration ends
  assert ck.calls == [6, None] and ck.waits == 1 and notice.saved_step == 7
  assert status.of_stop(notice.stop_message) == status.PREEMPTED


def test_without_checkpointing_a_notice_only_stops():
  ck, notice = FakeCheckpointing(), preemption.Notice()
  notice.received = True
  _save(ck, notice, 3, manager=None)
  assert ck.calls == [] and ck.waits == 0 and notice.saved_step is None
  assert notice.stop_message == status.SIGTERM_STOP


def test_the_handler_records_sigterm_and_is_removed_after_the_loop():
  before = signal.getsignal(signal.SIGTERM)
  notice = preemption.Notice()
  notice.install(distributed=True)  # JAX's distributed system owns SIGTERM: left alone
  assert signal.getsignal(signal.SIGTERM) is before
  notice.install(distributed=False)
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    assert notice.received
  finally:
    notice.uninstall()
  assert signal.getsignal(signal.SIGTERM) is before


def test_sigint_saves_and_stops_like_sigterm_but_says_interrupted_and_a_second_one_stops_at_once():
  before = signal.getsignal(signal.SIGINT)
  ck, notice = FakeCheckpointing(), preemption.Notice()
  notice.install(distributed=False)
  try:
    os.kill(os.getpid(), signal.SIGINT)  # recorded, not a KeyboardInterrupt
    assert notice.received and notice.signal == signal.SIGINT and notice.end_status == status.INTERRUPTED
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    notice.uninstall()
  assert signal.getsignal(signal.SIGINT) is before
  _save(ck, notice, 5)
  assert ck.calls == [None] and ck.waits == 1 and notice.saved_step == 5  # the forced save, waited for
  stop = notice.pending_stop(Stop)
  assert notice.stop_message == status.SIGINT_STOP and status.of_stop(str(stop)) == status.INTERRUPTED


PLAN = {"target_sparsity": 0.75, "sparsity_schedule": "geometric", "pruning_structure": "unstructured",
        "pruning_scope": "global", "pruning_score": "magnitude", "pruning_seed": 0, "init_mask_from_zeros": False,
        "prunable_tensors": ["a/kernel", "b/kernel"], "prune_steps": [6, 8], "kept_after_events": [40, 25]}


def test_a_resume_with_another_plan_is_refused_naming_what_differs(tmp_path):
  run_dir = str(tmp_path)
  checkpoint.write_plan(run_dir, PLAN)
  checkpoint.check_plan(run_dir, dict(PLAN, pruning_structure="2:4"))  # no checkpoint yet: nothing to resume
  os.makedirs(layout.items_dir(layout.checkpoints_dir(run_dir), 8))
  checkpoint.check_plan(run_dir, dict(PLAN))
  with pytest.raises(ValueError) as e:
    checkpoint.check_plan(run_dir, dict(PLAN, pruning_structure="2:4", target_sparsity=0.5))
  text = str(e.value)
  assert 'pruning_structure: "unstructured" (checkpoint) vs "2:4" (this config)' in text
  assert "target_sparsity: 0.75 (checkpoint) vs 0.5 (this config)" in text and "(step 8)" in text
  assert "prune_steps" not in text and "cannot be resumed with this config" in text
  os.remove(layout.plan_path(run_dir))  # a run directory from before the plan file: not checked
  checkpoint.check_plan(run_dir, dict(PLAN, target_sparsity=0.5))
