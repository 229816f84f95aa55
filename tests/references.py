"""Step-by-step references the tests compare the library's closed forms against (test-only code)."""

from typing import Any

from sparsity.experiments import report


def mean_active_by_simulation(schedule, prunable: int, non_prunable: int = 0) -> float:
  """Mean of ``schedule.active_at`` over every step (the slow reference for ``Schedule.average_active``)."""
  return sum(schedule.active_at(t, prunable, non_prunable) for t in range(schedule.steps)) / schedule.steps


def curve_average(row: Any) -> float:
  """N_avg of a results row's rebuilt curve (``report.accounting_of``), summed step by step over the steps trained:
  equals the summary's ``avg_active_params`` when the row is consistent."""
  acc, trained = report.accounting_of(row), report.trained_steps(row)
  return sum(acc.active_at(t) for t in range(trained)) / trained
