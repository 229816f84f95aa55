"""Safe expressions of sweep files, and the compute-to-step conversion of the paper's schedule fractions."""

import math

import pytest

from sparsity.experiments import expressions
from sparsity.core import compute, schedules


def test_arithmetic_comparisons_and_functions():
  env = {"a": 0.25, "b": 0.75, "s": "geometric", "n": 7}
  assert expressions.evaluate("a + b <= 1", env) is True
  assert expressions.evaluate("0 <= a < b <= 1", env) is True
  assert expressions.evaluate("a > b or s == 'geometric'", env) is True
  assert expressions.evaluate("not (a < b)", env) is False
  assert expressions.evaluate("ceil(n / 2) * 2 - n // 2 % 2", env) == 8 - 1
  assert expressions.evaluate("max(a, b) if s in ('geometric', 'cubic') else -1", env) == 0.75
  assert expressions.evaluate("isclose(a * 3, b)", env) is True
  assert expressions.names("min(a, b) + c") == {"a", "b", "c"}


@pytest.mark.parametrize("expr", [
    "__import__('os').system('echo hi')",
    "a.__class__",
    "(lambda: 1)()",
    "[x for x in (1, 2)]",
    "open('/etc/passwd')",
    "a[0]",
    "max(a, key=abs)",
    "2 ** 1000",
    "'x' * 10 ** 9",
    "{'k': 1}",
])
def test_unsafe_or_unknown_constructs_are_rejected(expr):
  with pytest.raises(ValueError):
    expressions.evaluate(expr, {"a": (1, 2)})


def test_unknown_name_and_syntax_errors_name_the_expression():
  with pytest.raises(ValueError, match="unknown name 'c'"):
    expressions.evaluate("a + c", {"a": 1})
  with pytest.raises(ValueError, match="invalid expression"):
    expressions.evaluate("a +", {"a": 1})
  with pytest.raises(ValueError, match="ZeroDivisionError"):
    expressions.evaluate("a / 0", {"a": 1})


def test_extra_functions_only_when_passed():
  fns = {**expressions.FUNCTIONS, "double": lambda x: 2 * x}
  assert expressions.evaluate("double(a)", {"a": 3}, fns) == 6
  with pytest.raises(ValueError, match="only calls"):
    expressions.evaluate("double(a)", {"a": 3})


@pytest.mark.parametrize("steps,sparsity,start,end", [
    (26800, 0.6, 4100, 16600),   # the authors' llama2-70m
    (72200, 0.5, 12500, 47200),  # the authors' ~1B released pairs
])
def test_authors_settings_are_the_25_50_25_compute_split(steps, sparsity, start, end):
  sched = schedules.make_schedule(steps, sparsity, "geometric", start / steps, end / steps, 100)
  dense, pruning, recovery = compute.measured_fractions(sched)
  assert dense == pytest.approx(0.25, abs=0.003)
  assert pruning == pytest.approx(0.50, abs=0.003)
  assert recovery == pytest.approx(0.25, abs=0.003)
  # and the conversion recovers their step fractions to within one pruning interval
  s, e = compute.step_fractions(sparsity)
  assert abs(s * steps - start) < 100 and abs(e * steps - end) < 100


@pytest.mark.parametrize("schedule", ["geometric", "cubic", "linear"])
@pytest.mark.parametrize("sparsity", [0.2, 0.4, 0.6, 0.8])
@pytest.mark.parametrize("td,ts", [(0.25, 0.5), (0.0, 1.0), (0.5, 0.25), (0.75, 0.25), (0.0, 0.25)])
def test_step_fractions_reach_the_requested_compute_fractions(schedule, sparsity, td, ts):
  start, end = compute.step_fractions(sparsity, td, ts, schedule)
  assert 0.0 <= start <= end <= 1.0
  sched = schedules.make_schedule(20000, sparsity, schedule, start, end, 100)
  dense, pruning, recovery = compute.measured_fractions(sched)
  assert dense == pytest.approx(td, abs=0.01)
  assert pruning == pytest.approx(ts, abs=0.01)
  assert recovery == pytest.approx(1.0 - td - ts, abs=0.01)


def test_step_fractions_edge_cases():
  assert compute.step_fractions(0.0, 0.25, 0.5) == (0.25, 0.75)  # dense: nothing to convert
  assert compute.step_fractions(0.8, 0.0, 1.0) == (0.0, 1.0)
  assert compute.mean_pruning_density(0.5) == pytest.approx(0.5 / math.log(2))
  with pytest.raises(ValueError):
    compute.step_fractions(0.5, 0.75, 0.5)
  with pytest.raises(ValueError):
    compute.step_fractions(1.0)
