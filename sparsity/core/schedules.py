"""Sparsity schedules: ``make_schedule`` gives a run's pruning events and densities, as ``MaxText/train.py`` does.

By default the events are placed by the paper's compute split (``sparsity.core.recipe``: dense for 25% of the
training compute, pruning over the next 50%, recovery with a fixed mask for the rest), solved for the run's steps,
target, schedule and interval by ``sparsity.core.compute.derived_step_fractions``; given step fractions are used as
they are. ``sparsity.core.timeline`` says how fractions become event steps and densities, and holds ``Schedule``.
A config's schedule is ``sparsity.core.config.schedule_from_config``, which calls this function.
"""

from __future__ import annotations

from sparsity.core import compute, timeline
from sparsity.core.recipe import DENSE_COMPUTE_FRACTION, PRUNING_COMPUTE_FRACTION, PRUNING_INTERVAL


def make_schedule(
    steps: int,
    target_sparsity: float,
    schedule: str = "geometric",
    start_fraction: float | None = None,
    end_fraction: float | None = None,
    interval: int = PRUNING_INTERVAL,
    dense_fraction: float = DENSE_COMPUTE_FRACTION,
    pruning_fraction: float = PRUNING_COMPUTE_FRACTION,
) -> timeline.Schedule:
  """The run's schedule (``timeline.Schedule``): ``target_sparsity == 0`` gives no events (dense training).

  Args:
    steps: training steps.
    target_sparsity: final fraction of prunable weights set to zero, in [0, 1).
    schedule: density after each event: 'geometric' (the paper's), 'cubic', 'linear' or 'one_shot'.
    start_fraction, end_fraction: first and last event at these fractions of the steps. Both None (the default):
      derived so that the run spends ``dense_fraction`` of its compute dense and ``pruning_fraction`` pruning (the
      paper's split unless those are given); one given: the other takes its step default
      (``recipe.STEP_FRACTIONS``). The rule of ``sparsity.core.compute.split``, as the trainer applies it.
    interval: steps between events (the paper's P).
    dense_fraction, pruning_fraction: the compute split used when no step fraction is given.

  Raises:
    ValueError: a target outside [0, 1), an unknown schedule, steps or interval not positive, bad fractions.
  """
  if not 0.0 <= target_sparsity < 1.0:
    raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
  start, end, _ = compute.split(steps, target_sparsity, schedule, interval, start_fraction, end_fraction,
                                dense_fraction, pruning_fraction)
  return timeline.at_step_fractions(steps, target_sparsity, schedule, start, end, interval)


__all__ = ["make_schedule"]
