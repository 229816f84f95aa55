"""The compute split: step fractions derived from compute fractions, checked against a brute-force count of active
weights step by step; explicit step fractions win; bad values are clear errors; the shipped configs keep their
schedules."""

import glob
import os
import types

import pydantic
import pytest
import yaml

from conftest import ROOT
from sparsity.core import accounting, compute, recipe, schedules
from sparsity.core.config import SparsityKeys
from sparsity.experiments import sweep
from sparsity.maxtext import yaml_chain
from sparsity.science import planning

PRUNABLE = 1_000_000


def brute_force_fractions(steps, target, schedule, interval, start_fraction, end_fraction, prunable=PRUNABLE):
  """(dense, pruning, recovery) compute of a run, step by step from the schedule's stated rules (module docstring of
  sparsity.core.schedules), independent of the library's code: 6 x tokens is a common factor and cancels."""
  start = min(int(start_fraction * steps + 0.5), steps - 1)
  end = max(start, min(int(end_fraction * steps + 0.5), steps - 1))
  events = [start] if schedule == "one_shot" else list(range(start, end + 1, interval))
  if schedule != "one_shot" and events[-1] != end:
    events.append(end)
  n = len(events)
  spent, active, done = [0, 0, 0], prunable, 0
  for t in range(steps):
    if done < n and events[done] == t:
      done += 1
      f = done / n
      density = {"geometric": (1 - target) ** f, "cubic": 1 - target * (1 - (1 - f) ** 3),
                 "linear": 1 - target * f, "one_shot": 1 - target}[schedule]
      active = min(active, int((1 - target if done == n else density) * prunable + 0.5))
    spent[0 if t < events[0] else 1 if t < events[-1] else 2] += active
  return [x / sum(spent) for x in spent], events


@pytest.mark.parametrize("steps", [400, 1200, 2000, 26800])
def test_the_derived_split_at_80_percent_spends_25_50_25(steps):
  start, end = compute.derived_step_fractions(steps, 0.8, "geometric", 100, 0.25, 0.5)
  got, events = brute_force_fractions(steps, 0.8, "geometric", 100, start, end)
  assert got == pytest.approx([0.25, 0.5, 0.25], abs=0.01)
  assert len(events) >= 3 and events[1] - events[0] == 100
  # the step split the README used to call the paper's recipe spends about half of the compute dense at 80%
  steps_split, _ = brute_force_fractions(steps, 0.8, "geometric", 100, 0.25, 0.75)
  assert steps_split[0] > 0.44 and steps_split[2] < 0.12


@pytest.mark.parametrize("schedule", ["geometric", "cubic", "linear"])
@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("steps, interval", [(120, 10), (400, 100), (1000, 25), (3000, 100)])
@pytest.mark.parametrize("td, ts", [(0.25, 0.5), (0.5, 0.25), (0.0, 0.75), (0.25, 0.75)])
def test_derived_split_against_brute_force(schedule, target, steps, interval, td, ts):
  start, end = compute.derived_step_fractions(steps, target, schedule, interval, td, ts)
  got, _ = brute_force_fractions(steps, target, schedule, interval, start, end)
  # as close as whole steps allow: a step of the run is up to 1/(steps * (1 - target)) of its compute, an event
  # count a few percent while there are few events
  assert got == pytest.approx([td, ts, 1 - td - ts], abs=0.02)
  assert compute.measured_fractions(schedules.make_schedule(steps, target, schedule, start, end, interval)) == \
      pytest.approx(got, abs=1e-5)  # the library's measure agrees with the brute force (up to count rounding)
  # never worse than the continuous conversion (which ignores the interval and the run length)
  cont = compute.step_fractions(target, td, ts, schedule)
  ref, _ = brute_force_fractions(steps, target, schedule, interval, *cont)
  err = lambda f: max(abs(a - b) for a, b in zip(f, [td, ts, 1 - td - ts]))  # noqa: E731
  assert err(got) <= err(ref) + 1e-3


def test_one_shot_and_dense_splits():
  start, end = compute.derived_step_fractions(400, 0.8, "one_shot", 100)
  got, events = brute_force_fractions(400, 0.8, "one_shot", 100, start, end)
  assert len(events) == 1 and got[1] == 0 and got[0] == pytest.approx(0.25, abs=0.005)  # the event after 25%
  assert compute.derived_step_fractions(400, 0.0, "geometric", 100) == (0.25, 0.75)  # dense: nothing to derive


def test_explicit_step_fractions_win():
  run = dict(steps=400, target_sparsity=0.8, sparsity_schedule="geometric", pruning_interval=100)
  derived = compute.step_split(types.SimpleNamespace(**run))
  assert derived.schedule_split == "compute"
  assert (derived.prune_start_fraction, derived.prune_end_fraction) == compute.derived_step_fractions(400, 0.8)
  both = compute.step_split(types.SimpleNamespace(**run, prune_start_fraction=0.3, prune_end_fraction=0.6,
                                                  dense_compute_fraction=0.5))
  assert both == (0.3, 0.6, "steps")
  assert compute.step_split(types.SimpleNamespace(**run, prune_start_fraction=0.0)) == (0.0, 0.75, "steps")
  assert compute.step_split(types.SimpleNamespace(**run, prune_end_fraction=0.5)) == (0.25, 0.5, "steps")
  other = compute.step_split(types.SimpleNamespace(**run, dense_compute_fraction=0.5, pruning_compute_fraction=0.25))
  got, _ = brute_force_fractions(400, 0.8, "geometric", 100, other.prune_start_fraction, other.prune_end_fraction)
  assert got == pytest.approx([0.5, 0.25, 0.25], abs=0.02)
  keys = SparsityKeys(target_sparsity=0.8)
  assert keys.prune_start_fraction is None and keys.prune_end_fraction is None  # unset: derived
  assert (keys.dense_compute_fraction, keys.pruning_compute_fraction) == (0.25, 0.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dense_compute_fraction=0.6, pruning_compute_fraction=0.5), "with a sum <= 1"),
    (dict(dense_compute_fraction=-0.1), "dense_compute_fraction"),
    (dict(pruning_compute_fraction=1.5), "pruning_compute_fraction"),
    (dict(prune_start_fraction=0.9), r"prune_start_fraction \(0.9\) must be <= prune_end_fraction \(0.75\) "
                                     r"\(prune_end_fraction is unset: its step default when the other one is set\)"),
    (dict(prune_end_fraction=0.1), r"prune_start_fraction \(0.25\) must be <= prune_end_fraction \(0.1\) "
                                   r"\(prune_start_fraction is unset"),
    (dict(prune_start_fraction=0.6, prune_end_fraction=0.5), r"prune_start_fraction \(0.6\) must be <= "),
])
def test_bad_values_are_clear_errors(kwargs, message):
  with pytest.raises(pydantic.ValidationError, match=message):
    SparsityKeys(target_sparsity=0.8, **kwargs)


def test_bad_arguments_of_the_derivation():
  with pytest.raises(ValueError, match="need steps > 0 and pruning_interval > 0"):
    compute.derived_step_fractions(0, 0.8)
  with pytest.raises(ValueError, match="need steps > 0 and pruning_interval > 0"):
    compute.derived_step_fractions(100, 0.8, "geometric", 0)
  with pytest.raises(ValueError, match="with a sum <= 1"):
    compute.derived_step_fractions(100, 0.8, "geometric", 10, 0.75, 0.5)
  with pytest.raises(ValueError, match="unknown sparsity_schedule"):
    compute.derived_step_fractions(100, 0.8, "exponential", 10)
  with pytest.raises(ValueError, match="target_sparsity"):
    compute.derived_step_fractions(100, 1.0, "geometric", 10)


def test_accounting_summary_spends_what_the_brute_force_counts():
  start, end = compute.derived_step_fractions(400, 0.8, "geometric", 100)
  sched = schedules.make_schedule(400, 0.8, "geometric", start, end, 100)
  acc = accounting.from_schedule(sched, PRUNABLE, 123_456, 2048)
  s = acc.summary()
  got, _ = brute_force_fractions(400, 0.8, "geometric", 100, start, end)
  assert [s["compute_fractions"][k] for k in ("dense", "pruning", "recovery")] == pytest.approx(got, rel=1e-12)
  active = [acc.active_at(t) - 123_456 for t in range(400)]  # the non-prunable weights are not counted
  assert s["effective_flops"] == 6 * 2048 * sum(active) and s["dense_flops"] == 6 * 2048 * 400 * PRUNABLE
  # stopped after 100 steps (during the pruning phase): fractions of what it spent
  short = acc.summary(steps_trained=100)
  assert short["compute_fractions"]["recovery"] == 0 and short["effective_flops"] == 6 * 2048 * sum(active[:100])


def test_the_paper_configs_spend_the_split_in_the_one_definition():
  # the planner's FLOPs (the fits'), the summary's and the split agree: 25/50/25 for the paper's 58M config
  cfg = yaml_chain.load(os.path.join(ROOT, "configs", "paper", "llama2_58m_10x.yml"))
  p = planning.plan(**planning.config_to_plan_inputs(types.SimpleNamespace(**cfg, global_batch_size_to_train_on=64)))
  assert p["schedule_split"] == "steps"  # the paper configs set their step fractions
  assert list(p["compute_fractions"].values()) == pytest.approx([0.25, 0.5, 0.25], abs=0.005)
  assert p["training_flops"] == pytest.approx(p["compute_fraction"] * p["dense_training_flops"], rel=1e-12)


def test_sparse_base_sets_no_step_fraction():
  base = yaml_chain.load(os.path.join(ROOT, "configs", "sparse_base.yml"))
  assert "prune_start_fraction" not in base and "prune_end_fraction" not in base
  assert (base["dense_compute_fraction"], base["pruning_compute_fraction"]) == (0.25, 0.5)


def test_sparse_base_states_the_recipe_the_code_defaults_to():
  # configs/sparse_base.yml spells the paper's recipe out for its readers; the Python defaults are sparsity.core.recipe
  base = yaml_chain.load(os.path.join(ROOT, "configs", "sparse_base.yml"))
  keys = SparsityKeys()
  for key, value in (("dense_compute_fraction", recipe.DENSE_COMPUTE_FRACTION),
                     ("pruning_compute_fraction", recipe.PRUNING_COMPUTE_FRACTION),
                     ("pruning_interval", recipe.PRUNING_INTERVAL)):
    assert base[key] == getattr(keys, key) == value, key
  # one step fraction given: the other's default, recipe.STEP_FRACTIONS
  for given in ({"start_fraction": 0.25}, {"end_fraction": 0.75}):
    sched = schedules.make_schedule(1000, 0.5, **given)
    assert (sched.prune_steps[0], sched.prune_steps[-1]) == (250, 750)


# The study specs that train with the default schedule: the trainer derives their step fractions from the split.
DEFAULT_SPLIT_SPECS = {"paired", "epoch1", "fig4", "fig4t", "query", "width32", "faults"}


def test_every_paper_config_and_sweep_run_sets_its_step_fractions_or_the_split():
  """The paper configs and every sparse run of the shipped sweep specs set both step fractions (they keep the schedules
  they had before the compute split became the default), except the study specs made for the default schedule,
  which set none, as does the faults sweep (fig4.yml and fig4tokens.yml set the split they study)."""
  for path in glob.glob(os.path.join(ROOT, "configs", "paper", "*.yml")):
    with open(path, encoding="utf-8") as f:
      cfg = yaml.safe_load(f)
    assert {"prune_start_fraction", "prune_end_fraction"} <= set(cfg), path
  specs = glob.glob(os.path.join(ROOT, "configs", "study", "*.yml")) + \
      glob.glob(os.path.join(ROOT, "configs", "sweeps", "*.yml"))
  checked, default = 0, set()
  for path in specs:
    with open(path, encoding="utf-8") as f:
      data = yaml.safe_load(f)
    if not isinstance(data, dict) or not ({"axes", "runs", "fixed"} & set(data)):
      continue  # a base config, not a sweep spec
    spec = sweep.parse_spec(data, path)
    for run in sweep.expand(spec):
      keys = {w.split("=", 1)[0] for w in run.overrides}
      values = dict(w.split("=", 1) for w in run.overrides)
      if float(values.get("target_sparsity", 0) or 0) > 0:
        if spec.name in DEFAULT_SPLIT_SPECS:
          assert not {"prune_start_fraction", "prune_end_fraction"} & keys, (path, run.name)
          default.add(spec.name)
        else:
          assert {"prune_start_fraction", "prune_end_fraction"} <= keys, (path, run.name)
        checked += 1
  assert checked > 50 and default == DEFAULT_SPLIT_SPECS


@pytest.mark.parametrize("split", [(0.0, 0.25), (0.0, 1.0), (0.25, 0.5), (0.5, 0.5), (0.75, 0.25)])
def test_steps_for_compute_match_the_reference_compute_by_brute_force(split):
  """Figure 4's fixed compute: the steps found for a split spend, counted event by event from the run's own schedule,
  the compute of the reference run (600 steps at the paper's split) within 2%, and no other step count is closer."""
  def spent(steps, td, ts):
    interval = max(1, round(steps * 100 / 26800))
    start, end = compute.derived_step_fractions(steps, 0.8, "geometric", interval, td, ts)
    sched = schedules.make_schedule(steps, 0.8, "geometric", start, end, interval)
    return sum(sched.density_at(t) for t in range(steps))  # density during each step, one by one

  want = spent(600, 0.25, 0.5)
  steps = compute.steps_for_compute(600, 0.8, *split)
  assert abs(spent(steps, *split) / want - 1) <= 0.02
  assert all(abs(spent(steps, *split) - want) <= abs(spent(t, *split) - want) for t in (steps - 1, steps + 1))
  if split == (0.25, 0.5):
    assert steps == 600
  more_dense = compute.steps_for_compute(600, 0.8, 0.5, 0.25)
  assert more_dense < 600 < compute.steps_for_compute(600, 0.8, 0.0, 0.5)  # denser splits train fewer steps


def test_steps_for_compute_says_when_no_step_count_is_close_enough():
  with pytest.raises(ValueError, match="within 2%"):
    compute.steps_for_compute(12, 0.8, 0.75, 0.25)
