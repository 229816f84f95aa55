"""The paper's schedule fractions are fractions of training *compute*; the trainer's keys are fractions of *steps*.

Section 6.1 of the paper splits "total training FLOPs" into dense training (``t_d``), weight removal
(``t_s``) and sparse recovery (the rest), and recommends ``(t_d, t_s) = (25%, 50%)``. Compute here is
density-weighted steps: a step at prunable density ``rho`` costs ``rho`` (the paper's effective compute,
linear in sparsity). The authors' own settings confirm this reading: ``llama2-70m`` (sparsity 0.6, pruning
from step 4100 to 16600 of 26800) and the ~1B pairs (sparsity 0.5, steps 12500 to 47200 of 72200) give
compute fractions (0.25, 0.50, 0.25) to within 0.3%, while their step fractions are (0.15, 0.62) and
(0.17, 0.65).

With final density ``d = 1 - S`` and ``m`` the mean density during the pruning phase (continuous
schedule: geometric ``S / -ln(1 - S)``, cubic ``1 - 3 S / 4``, linear ``1 - S / 2``), a run of ``T`` steps
with ``a`` dense steps, ``b`` pruning steps and ``c`` recovery steps has compute ``a + m b + d c``; setting
``a = t_d C``, ``m b = t_s C``, ``d c = (1 - t_d - t_s) C`` and ``a + b + c = T`` gives

  ``prune_start_fraction = t_d / K`` and ``prune_end_fraction = (t_d + t_s / m) / K``,
  with ``K = t_d + t_s / m + (1 - t_d - t_s) / d``.

``measured_fractions`` gives the exact discrete fractions of a ``Schedule`` (to check a conversion).
"""

from __future__ import annotations

import math

from sparsity.core import schedules

DIGITS = 6  # step fractions are rounded to this many decimals (plenty for any run length used here)


def mean_pruning_density(target_sparsity: float, schedule: str = "geometric") -> float:
  """Mean prunable density over the pruning phase of a continuous ``schedule`` ending at ``1 - S``."""
  s = float(target_sparsity)
  if not 0.0 <= s < 1.0:
    raise ValueError(f"target_sparsity must be in [0, 1), got {s}")
  if s == 0.0:
    return 1.0
  if schedule == "geometric":
    return s / -math.log1p(-s)
  if schedule == "cubic":
    return 1.0 - 0.75 * s
  if schedule == "linear":
    return 1.0 - 0.5 * s
  if schedule == "one_shot":
    return 1.0 - s
  raise ValueError(f"unknown sparsity_schedule {schedule!r}; choose one of {schedules.SCHEDULES}")


def step_fractions(target_sparsity: float, dense_fraction: float = 0.25, pruning_fraction: float = 0.5,
                   schedule: str = "geometric") -> tuple[float, float]:
  """``(prune_start_fraction, prune_end_fraction)`` in steps for compute fractions ``(t_d, t_s)``.

  Dense runs (``target_sparsity == 0``) and ``one_shot`` have no compute to convert and get
  ``(t_d, t_d + t_s)``. Results are rounded to ``DIGITS`` decimals and clipped to [0, 1].

  Raises:
    ValueError: fractions outside [0, 1] or ``t_d + t_s > 1``.
  """
  td, ts = float(dense_fraction), float(pruning_fraction)
  if not (0.0 <= td <= 1.0 and 0.0 <= ts <= 1.0 and td + ts <= 1.0 + 1e-12):
    raise ValueError(f"need 0 <= dense_fraction, pruning_fraction and their sum <= 1, got {td}, {ts}")
  s = float(target_sparsity)
  m = mean_pruning_density(s, schedule)
  if s == 0.0 or schedule == "one_shot":
    return round(td, DIGITS), round(min(1.0, td + ts), DIGITS)
  k = td + ts / m + max(0.0, 1.0 - td - ts) / (1.0 - s)
  start, end = td / k, (td + ts / m) / k
  return round(min(1.0, start), DIGITS), round(min(1.0, end), DIGITS)


def prune_start_for(target_sparsity: float, dense_fraction: float, pruning_fraction: float,
                    schedule: str = "geometric") -> float:
  """``step_fractions(...)[0]`` (for sweep expressions)."""
  return step_fractions(target_sparsity, dense_fraction, pruning_fraction, schedule)[0]


def prune_end_for(target_sparsity: float, dense_fraction: float, pruning_fraction: float,
                  schedule: str = "geometric") -> float:
  """``step_fractions(...)[1]`` (for sweep expressions)."""
  return step_fractions(target_sparsity, dense_fraction, pruning_fraction, schedule)[1]


def measured_fractions(schedule: schedules.Schedule) -> tuple[float, float, float]:
  """Exact density-weighted compute fractions ``(dense, pruning, recovery)`` of a discrete schedule.

  Dense: steps before the first event; pruning: from the first event up to (excluding) the last one;
  recovery: from the last event on. A schedule without events is all dense.
  """
  steps = schedule.steps
  if not schedule.prune_steps:
    return 1.0, 0.0, 0.0
  first, last = schedule.prune_steps[0], schedule.prune_steps[-1]

  def weighted(a: int, b: int) -> float:  # sum of density over steps a..b-1
    bounds = [a] + [s for s in schedule.prune_steps if a < s < b] + [b]
    return sum((y - x) * schedule.density_at(x) for x, y in zip(bounds[:-1], bounds[1:]) if y > x)

  parts = (weighted(0, first), weighted(first, last), weighted(last, steps))
  total = sum(parts)
  return tuple(p / total for p in parts)  # type: ignore[return-value]


__all__ = ["mean_pruning_density", "step_fractions", "prune_start_for", "prune_end_for", "measured_fractions"]
