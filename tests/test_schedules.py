"""Schedules: event steps, densities, rounding, exact final density, N_avg; the default is the trainer's."""

import contextlib
import io
import math
import os

import pytest

from conftest import ROOT
from references import mean_active_by_simulation
from sparsity.core import schedules as S, timeline as T


def test_step_split_events_every_100_steps_from_25_to_75_percent():
  sch = S.make_schedule(1000, 0.8, start_fraction=0.25, end_fraction=0.75)
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
  sch = S.make_schedule(1000, 0.7, schedule="one_shot", start_fraction=0.25)
  assert sch.prune_steps == (250,) and sch.densities == (1 - 0.7,)
  # by default after a quarter of the compute: a dense steps of 1 and 1000 - a of 0.3, a = (a + 0.3 (1000 - a)) / 4
  assert S.make_schedule(1000, 0.7, schedule="one_shot").prune_steps == (round(75 / 0.825),)


def test_rounding_of_fractions_and_off_grid_end():
  # 0.25 * 30 = 7.5 -> 8 (halves up); 0.75 * 30 = 22.5 -> 23, not on the 8 + 4k grid: appended.
  assert T.event_steps(30, 0.25, 0.75, 4, "geometric") == (8, 12, 16, 20, 23)
  # the end is clipped to the last step
  assert T.event_steps(10, 0.5, 1.0, 2, "linear") == (5, 7, 9)
  assert T.round_half_up(2.5) == 3 and T.round_half_up(3.5) == 4


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
  for name in T.SCHEDULES:
    sch = S.make_schedule(537, 0.65, schedule=name, start_fraction=0.1, end_fraction=0.8, interval=37)
    assert sch.average_active(123_457, 999) == pytest.approx(mean_active_by_simulation(sch, 123_457, 999), rel=1e-12)


def test_hand_computed_average():
  # 8 steps, events at 2 and 4 (interval 2, fractions .25/.5), target 0.75, 100 prunable + 10 fixed.
  sch = S.make_schedule(8, 0.75, schedule="linear", start_fraction=0.25, end_fraction=0.5, interval=2)
  assert sch.prune_steps == (2, 4)
  assert sch.keep_counts(100) == (63, 25)  # densities .625 and .25: 62.5 rounds half up to 63
  # active: steps 0-1: 110, steps 2-3: 73, steps 4-7: 35 -> (220 + 146 + 140) / 8
  assert sch.sum_active(100, 10) == 506
  assert sch.average_active(100, 10) == 506 / 8


def _spent(sch):
  """Density summed step by step over (dense, pruning, recovery): before the first event, up to the last, after."""
  parts = [0.0, 0.0, 0.0]
  for t in range(sch.steps):
    phase = 0 if t < sch.prune_steps[0] else 1 if t < sch.prune_steps[-1] else 2
    parts[phase] += sch.density_at(t)
  return [p / sum(parts) for p in parts]


@pytest.mark.parametrize("steps,target,schedule,interval", [(1000, 0.8, "geometric", 100), (400, 0.8, "geometric", 100),
                                                            (2000, 0.5, "cubic", 50), (3000, 0.6, "linear", 100)])
def test_default_is_the_papers_compute_split(steps, target, schedule, interval):
  """Without step fractions, 25% of the compute (density summed over steps) is dense and 50% pruning."""
  sch = S.make_schedule(steps, target, schedule, interval=interval)
  assert _spent(sch) == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
  assert sch.densities[-1] == 1 - target and all(b - a <= interval for a, b in zip(sch.prune_steps, sch.prune_steps[1:]))
  # the step split's events are far from it (the paper's steps 25%..75% spend about 12% of the compute dense at 0.8)
  steps_split = S.make_schedule(steps, target, schedule, start_fraction=0.25, end_fraction=0.75, interval=interval)
  assert _spent(steps_split)[0] > 0.3


def test_the_main_commands_events():
  """``MaxText/train.py configs/sparse_base.yml target_sparsity=0.8`` (400 steps, P = 100) pruned at steps 40, 140
  and 202 (its sparsity_summary.json's ``prune_steps``)."""
  assert S.make_schedule(400, 0.8).prune_steps == (40, 140, 202)


TRAINER_KEYS = [["steps=400", "target_sparsity=0.8"],
                ["steps=1000", "target_sparsity=0.5", "sparsity_schedule=cubic", "pruning_interval=37"],
                ["steps=300", "target_sparsity=0.9", "sparsity_schedule=linear", "pruning_interval=25"],
                ["steps=250", "target_sparsity=0.7", "sparsity_schedule=one_shot", "pruning_interval=10"],
                ["steps=600", "target_sparsity=0.6", "pruning_interval=50", "dense_compute_fraction=0.4",
                 "pruning_compute_fraction=0.4"],
                ["steps=500", "target_sparsity=0.75", "pruning_interval=20", "prune_start_fraction=0.1"]]


def test_the_library_default_is_the_trainers():
  """``make_schedule`` of the same keys gives the schedule the trainer builds from its MaxText config
  (``configs/sparse_base.yml``, read by MaxText's pyconfig; the plan the optimizer hook makes)."""
  from sparsity.core import pruner  # pylint: disable=import-outside-toplevel
  from sparsity.maxtext.config import load_config  # pylint: disable=import-outside-toplevel

  for keys in TRAINER_KEYS:
    with contextlib.redirect_stdout(io.StringIO()):
      config = load_config([os.path.join(ROOT, "configs", "sparse_base.yml"), *keys])
    got = pruner.PrunePlan.from_config(config).schedule
    kw = dict(k.split("=") for k in keys)
    want = S.make_schedule(
        int(kw["steps"]), float(kw["target_sparsity"]), kw.get("sparsity_schedule", "geometric"),
        start_fraction=float(kw["prune_start_fraction"]) if "prune_start_fraction" in kw else None,
        interval=int(kw.get("pruning_interval", 100)), dense_fraction=float(kw.get("dense_compute_fraction", 0.25)),
        pruning_fraction=float(kw.get("pruning_compute_fraction", 0.5)))
    assert got == want and got.prune_steps, keys
