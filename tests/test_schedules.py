"""Schedules: event steps, densities, rounding, exact final density, N_avg."""

import math

import pytest

from sparsity.core import schedules as S


def test_paper_default_events_every_100_steps_from_25_to_75_percent():
  sch = S.make_schedule(1000, 0.8)
  assert sch.prune_steps == (250, 350, 450, 550, 650, 750)
  n = 6
  for i, d in enumerate(sch.densities, start=1):
    assert d == pytest.approx(0.2 ** (i / n))
  assert sch.densities[-1] == 1 - 0.8  # exact at the last event


def test_geometric_keeps_a_fixed_fraction_of_what_remains():
  sch = S.make_schedule(2000, 0.6, interval=100)
  ratios = [b / a for a, b in zip((1.0,) + sch.densities, sch.densities)]
  assert max(ratios) - min(ratios) < 1e-12


@pytest.mark.parametrize("name", ["cubic", "linear"])
def test_cubic_and_linear_densities(name):
  sch = S.make_schedule(1000, 0.5, schedule=name)
  n = len(sch.prune_steps)
  for i, d in enumerate(sch.densities, start=1):
    f = i / n
    want = 1 - 0.5 * (1 - (1 - f) ** 3) if name == "cubic" else 1 - 0.5 * f
    assert d == pytest.approx(want)
  assert all(a > b for a, b in zip(sch.densities, sch.densities[1:]))


def test_one_shot_is_a_single_event_at_the_start():
  sch = S.make_schedule(1000, 0.7, schedule="one_shot")
  assert sch.prune_steps == (250,) and sch.densities == (1 - 0.7,)


def test_rounding_of_fractions_and_off_grid_end():
  # 0.25 * 30 = 7.5 -> 8 (halves up); 0.75 * 30 = 22.5 -> 23, not on the 8 + 4k grid: appended.
  assert S.event_steps(30, 0.25, 0.75, 4, "geometric") == (8, 12, 16, 20, 23)
  # the end is clipped to the last step
  assert S.event_steps(10, 0.5, 1.0, 2, "linear") == (5, 7, 9)
  assert S.round_half_up(2.5) == 3 and S.round_half_up(3.5) == 4


def test_zero_sparsity_is_dense():
  sch = S.make_schedule(100, 0.0)
  assert sch.prune_steps == () and sch.average_active(10, 5) == 15


def test_keep_counts_exact_and_non_increasing():
  sch = S.make_schedule(1000, 0.8)
  for n in (1, 7, 1000, 41_500_000, 3 * 2**31 + 5):
    ks = sch.keep_counts(n)
    assert all(a >= b for a, b in zip(ks, ks[1:]))
    assert ks[-1] == math.floor(0.2 * n + 0.5)


def test_average_active_matches_step_by_step_simulation():
  for name in S.SCHEDULES:
    sch = S.make_schedule(537, 0.65, schedule=name, start_fraction=0.1, end_fraction=0.8, interval=37)
    assert sch.average_active(123_457, 999) == pytest.approx(S.mean_active_by_simulation(sch, 123_457, 999), rel=1e-12)


def test_hand_computed_average():
  # 8 steps, events at 2 and 4 (interval 2, fractions .25/.5), target 0.75, 100 prunable + 10 fixed.
  sch = S.make_schedule(8, 0.75, schedule="linear", start_fraction=0.25, end_fraction=0.5, interval=2)
  assert sch.prune_steps == (2, 4)
  assert sch.keep_counts(100) == (63, 25)  # densities .625 and .25: 62.5 rounds half up to 63
  # active: steps 0-1: 110, steps 2-3: 73, steps 4-7: 35 -> (220 + 146 + 140) / 8
  assert sch.sum_active(100, 10) == 506
  assert sch.average_active(100, 10) == 506 / 8
