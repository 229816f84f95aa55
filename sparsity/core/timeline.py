"""A schedule's timeline: at which steps pruning happens and how dense the model is after each event, for given step
fractions (``sparsity.core.schedules.make_schedule`` chooses the fractions: the paper's compute split by default).

Step conventions (0-based training steps, ``steps`` in total):

* ``start = round(prune_start_fraction * steps)`` and ``end = round(prune_end_fraction * steps)``,
  rounding halves up, ``end`` clipped to ``steps - 1``.
* A pruning event happens at ``start, start + P, start + 2P, ...`` while ``<= end``; if ``end`` is not on
  that grid it is added as the last event, so the target density is always reached exactly at ``end``.
  ``one_shot`` has a single event at ``start``.
* An event at step ``s`` prunes the parameters as they are at the beginning of step ``s`` (after ``s``
  updates), so step ``s`` itself already trains the pruned model.
* With ``n`` events, event ``i`` (1-based) sets the prunable density to

  - ``geometric`` (the paper's): ``(1 - S) ** (i / n)``: every event keeps the same fraction of what is left;
  - ``cubic`` (Zhu & Gupta 2017): ``1 - S * (1 - (1 - i / n) ** 3)``;
  - ``linear``: ``1 - S * i / n``;
  - ``one_shot``: ``1 - S``.

* The number of prunable weights kept after an event is ``round(density * prunable)`` (halves up), taken
  non-increasing, so the last event keeps exactly ``round((1 - S) * prunable)``.
"""

from __future__ import annotations

import dataclasses
import math

SCHEDULES = ("geometric", "cubic", "linear", "one_shot")


def round_half_up(x: float) -> int:
  """Rounds to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
  return int(math.floor(x + 0.5))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The discrete pruning schedule of one run.

  Attributes:
    steps: total training steps.
    prune_steps: the steps at which pruning events happen, increasing.
    densities: prunable density after each event (same length as ``prune_steps``).
  """

  steps: int
  prune_steps: tuple[int, ...]
  densities: tuple[float, ...]

  def density_at(self, step: int) -> float:
    """Prunable density during ``step`` (after any event at ``step``)."""
    d = 1.0
    for s, dens in zip(self.prune_steps, self.densities):
      if s <= step:
        d = dens
    return d

  def keep_counts(self, n: int) -> tuple[int, ...]:
    """Weights kept after each event out of ``n`` prunable weights: exact, non-increasing."""
    out, prev = [], n
    for d in self.densities:
      prev = min(prev, round_half_up(d * n))
      out.append(prev)
    return tuple(out)

  def active_at(self, step: int, prunable: int, non_prunable: int = 0) -> int:
    """Active (non-zero, trainable) parameters during ``step`` when pruning is exact."""
    keep = prunable
    for s, k in zip(self.prune_steps, self.keep_counts(prunable)):
      if s <= step:
        keep = k
    return keep + non_prunable

  def sum_active(self, prunable: int, non_prunable: int = 0, first_step: int = 0, last_step: int | None = None) -> int:
    """Exact integer sum of active parameters over steps ``first_step .. last_step`` inclusive."""
    last = self.steps - 1 if last_step is None else last_step
    if last < first_step:
      return 0
    bounds = [first_step] + [s for s in self.prune_steps if first_step < s <= last] + [last + 1]
    return sum((b - a) * self.active_at(a, prunable, non_prunable) for a, b in zip(bounds[:-1], bounds[1:]))

  def average_active(self, prunable: int, non_prunable: int = 0, first_step: int = 0, last_step: int | None = None) -> float:
    """Mean active parameters over steps ``first_step .. last_step`` inclusive (default: the whole run).

    Computed in closed form over the piecewise-constant segments; equals the mean of ``active_at``.
    """
    last = self.steps - 1 if last_step is None else last_step
    if last < first_step:
      raise ValueError("empty step range")
    return self.sum_active(prunable, non_prunable, first_step, last) / (last + 1 - first_step)


def event_steps(steps: int, start_fraction: float, end_fraction: float, interval: int, schedule: str) -> tuple[int, ...]:
  """Steps at which pruning events happen (see the module docstring for the rounding rules)."""
  if steps <= 0:
    raise ValueError(f"steps must be positive, got {steps}")
  if interval <= 0:
    raise ValueError(f"pruning_interval must be positive, got {interval}")
  if not 0.0 <= start_fraction <= end_fraction <= 1.0:
    raise ValueError(
        f"need 0 <= prune_start_fraction <= prune_end_fraction <= 1, got {start_fraction}, {end_fraction}"
    )
  start = min(round_half_up(start_fraction * steps), steps - 1)
  if schedule == "one_shot":
    return (start,)
  end = max(start, min(round_half_up(end_fraction * steps), steps - 1))
  out = list(range(start, end + 1, interval))
  if out[-1] != end:
    out.append(end)
  return tuple(out)


def event_densities(n_events: int, target_sparsity: float, schedule: str) -> tuple[float, ...]:
  """Prunable density after each of ``n_events`` events."""
  s = float(target_sparsity)
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown sparsity_schedule {schedule!r}; choose one of {SCHEDULES}")
  out = []
  for i in range(1, n_events + 1):
    f = i / n_events
    if schedule == "geometric":
      d = (1.0 - s) ** f
    elif schedule == "cubic":
      d = 1.0 - s * (1.0 - (1.0 - f) ** 3)
    elif schedule == "linear":
      d = 1.0 - s * f
    else:  # one_shot
      d = 1.0 - s
    out.append(d)
  if out:
    out[-1] = 1.0 - s  # exact at the last event whatever the float rounding above
  return tuple(out)


def at_step_fractions(steps: int, target_sparsity: float, schedule: str, start_fraction: float, end_fraction: float,
                      interval: int) -> Schedule:
  """The schedule with events from ``start_fraction`` to ``end_fraction`` of the steps, every ``interval`` steps;
  ``target_sparsity == 0`` gives no events (dense training)."""
  if not 0.0 <= target_sparsity < 1.0:
    raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
  if target_sparsity == 0.0:
    return Schedule(steps, (), ())
  ps = event_steps(steps, start_fraction, end_fraction, interval, schedule)
  return Schedule(steps, ps, event_densities(len(ps), target_sparsity, schedule))


__all__ = ["SCHEDULES", "Schedule", "round_half_up", "event_steps", "event_densities", "at_step_fractions"]
