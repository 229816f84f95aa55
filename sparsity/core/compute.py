"""Training compute: the one definition, the split of a run's compute into phases, and the steps of a split.

The paper (section 3, "Effective compute"): "we approximate the total compute for a training run as 6 times the
number of parameters multiplied by the number of training tokens. We adjust for sparsity by scaling this value
linearly with respect to sparsity". The parameters counted here are the **prunable** ones (by default every
linear-layer kernel, the paper's "# Prunable" of Table 1, to which it relates its token counts), each counted while
it is active (kept)::

  compute = 6 x tokens per step x (sum over the steps trained of the active prunable weights)      (``flops``)

Embeddings, norm scales and weights exempted from pruning (``non_prunable_params``) are not counted (as in Kaplan et
al.'s 6ND, whose N has no embeddings). With this count the authors' own schedules (``llama2-70m``: sparsity 0.6,
events from step 4100 to 16600 of 26800; the ~1B pairs: 0.5, 12500 to 47200 of 72200) are the paper's 25% dense /
50% pruning / 25% recovery split to within 0.3%; counting every parameter they would be about 21/49/30.

Every compute number of the project comes from here: the split of the default schedule
(``derived_step_fractions``), the summary's ``effective_flops``, ``dense_flops`` and ``compute_fractions``
(``sparsity.core.accounting``), the plan's ``training_flops`` (``sparsity.science.planning``), the
``dense_fraction`` / ``pruning_fraction`` that ``collect`` measures, and the sweep expressions ``prune_start_for`` /
``prune_end_for`` (``step_fractions``, the continuous conversion the paper configs and the study use).

Phases of a run (section 3 of the paper): dense = the steps before the first pruning event; pruning = from the
first event up to (not including) the last; recovery = from the last event on.

The split of a config (``step_split``): when neither ``prune_start_fraction`` nor ``prune_end_fraction`` is set,
they are derived from ``dense_compute_fraction`` and ``pruning_compute_fraction`` (the paper's, ``sparsity.core.recipe``)
for the run's steps, target sparsity, schedule and pruning interval (``schedule_split = "compute"``); when either is
set, the step fractions are used as given, a missing one taking its step default (``STEP_FRACTIONS``), and
``schedule_split = "steps"``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

from sparsity.core import timeline
# The paper's split and step defaults (``sparsity.core.recipe``), named here too as part of this module's API.
from sparsity.core.recipe import DENSE_COMPUTE_FRACTION, PRUNING_COMPUTE_FRACTION, PRUNING_INTERVAL, STEP_FRACTIONS

FLOPS_PER_PARAM_TOKEN = 6.0  # forward + backward: 6 FLOPs per parameter and token
PHASES = ("dense", "pruning", "recovery")
SPLITS = ("compute", "steps")
DIGITS = 6  # ``step_fractions`` rounds to this many decimals (plenty for any run length used here)
_EVENT_WINDOW = 3  # ``derived_step_fractions`` tries event counts within this many of the continuous solution's
_LOCAL_ROUNDS = 20  # ... and then moves its steps by up to 2 at most this many times


def flops(param_steps, tokens_per_step):
  """The compute of ``param_steps`` (a sum over steps of active prunable weights) at ``tokens_per_step`` tokens."""
  return FLOPS_PER_PARAM_TOKEN * tokens_per_step * param_steps


def phase_param_steps(steps: int, prune_steps: Sequence[int], kept: Sequence[float],
                      prunable: float) -> tuple[float, float, float]:
  """Active prunable weights summed over steps ``0 .. steps - 1``, split into ``(dense, pruning, recovery)``.

  Args:
    steps: steps trained (events at or after it are not reached).
    prune_steps: the schedule's event steps, increasing (they define the phases, reached or not).
    kept: prunable weights kept after each event (or densities, with ``prunable = 1``).
    prunable: prunable weights before the first event.

  Exact (integers in, integers out) when the counts are integers.
  """
  if len(prune_steps) != len(kept):
    raise ValueError(f"{len(prune_steps)} events but {len(kept)} kept counts")
  parts = [0, 0, 0]
  if not prune_steps:
    parts[0] = steps * prunable
    return tuple(parts)  # type: ignore[return-value]
  first, last = prune_steps[0], prune_steps[-1]
  # Segments between events: [0, e_1), [e_1, e_2), ..., [e_n, steps), cut at ``steps``; events at one step: the last.
  starts, active = [0, *prune_steps], [prunable, *kept]
  for i, (a, count) in enumerate(zip(starts, active)):
    b = min(steps, starts[i + 1]) if i + 1 < len(starts) else steps
    if b > a:
      parts[0 if a < first else 1 if a < last else 2] += (b - a) * count
  return tuple(parts)  # type: ignore[return-value]


def fractions(parts: Sequence[float]) -> tuple[float, float, float]:
  """``parts`` divided by their sum (all zero when nothing was spent)."""
  total = sum(parts)
  return tuple(p / total if total else 0.0 for p in parts)  # type: ignore[return-value]


def measured_fractions(schedule: timeline.Schedule) -> tuple[float, float, float]:
  """Compute fractions ``(dense, pruning, recovery)`` of a schedule (its densities; a run's own counts differ from
  them by the rounding of counts to whole weights). A schedule without events is all dense."""
  return fractions(phase_param_steps(schedule.steps, schedule.prune_steps, schedule.densities, 1.0))


def check_split(dense_fraction: float, pruning_fraction: float) -> tuple[float, float]:
  """``(t_d, t_s)`` as floats. ValueError unless both are in [0, 1] with a sum <= 1 (the rest is recovery)."""
  td, ts = float(dense_fraction), float(pruning_fraction)
  if not (0.0 <= td <= 1.0 and 0.0 <= ts <= 1.0 and td + ts <= 1.0 + 1e-12):
    raise ValueError("need dense_compute_fraction and pruning_compute_fraction in [0, 1] with a sum <= 1 (the rest "
                     f"is recovery), got {td} and {ts}")
  return td, ts


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
  raise ValueError(f"unknown sparsity_schedule {schedule!r}; choose one of {timeline.SCHEDULES}")


def step_fractions(target_sparsity: float, dense_fraction: float = DENSE_COMPUTE_FRACTION,
                   pruning_fraction: float = PRUNING_COMPUTE_FRACTION,
                   schedule: str = "geometric") -> tuple[float, float]:
  """``(prune_start_fraction, prune_end_fraction)`` of compute fractions ``(t_d, t_s)`` for a continuous schedule.

  With final density ``d = 1 - S`` and ``m`` the mean density while pruning (``mean_pruning_density``), a run
  with ``a`` dense, ``b`` pruning and ``c`` recovery steps spends ``a + m b + d c``; so ``start = t_d / K`` and
  ``end = (t_d + t_s / m) / K`` with ``K = t_d + t_s / m + (1 - t_d - t_s) / d``. Independent of the run's length
  and pruning interval (``derived_step_fractions`` accounts for both). Dense runs and ``one_shot`` get
  ``(t_d, t_d + t_s)``. Rounded to ``DIGITS`` decimals. The sweep expressions' conversion.
  """
  td, ts = check_split(dense_fraction, pruning_fraction)
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


def _candidates(steps: int, s: float, schedule: str, interval: int, td: float, ts: float, n: int):
  """Integer ``(start, end)`` steps near the exact solution with ``n`` events (see ``derived_step_fractions``)."""
  last = steps - 1

  def around(x: float, lo: int, hi: int) -> set[int]:
    return {min(hi, max(lo, v)) for v in (math.floor(x), math.ceil(x))} if hi >= lo else set()

  d_final = 1.0 - s
  if n == 1:  # one event: dense steps a with a = t_d * (a + (T - a) d)
    denom = 1.0 - td * (1.0 - d_final)
    return {(a, a) for a in around(td * steps * d_final / denom if denom > 0 else steps, 0, last)}
  dens = timeline.event_densities(n, s, schedule)
  q, d_last, base = interval * sum(dens[: n - 2]), dens[n - 2], (n - 2) * interval
  # Unknowns a (dense steps) and g (steps between the last two events, 1..P): the pruning phase has b = base + g
  # steps and spends q + g d_last; a = t_d C, q + g d_last = t_s C, (T - a - b) d = (1 - t_d - t_s) C.
  r = (td + (1.0 - td - ts) / d_final) / ts if ts > 0 else math.inf
  g_star = (steps - base - q * r) / (1.0 + d_last * r) if ts > 0 else 1.0
  out = set()
  for g in around(g_star, 1, interval):
    b = base + g
    a_star = td * (q + g * d_last) / ts if ts > 0 else 0.0
    out |= {(a, a + b) for a in around(a_star, 0, last - b)}
  return out


@functools.lru_cache(maxsize=1024)
def derived_step_fractions(steps: int, target_sparsity: float, schedule: str = "geometric",
                           interval: int = PRUNING_INTERVAL, dense_fraction: float = DENSE_COMPUTE_FRACTION,
                           pruning_fraction: float = PRUNING_COMPUTE_FRACTION) -> tuple[float, float]:
  """``(prune_start_fraction, prune_end_fraction)`` whose discrete schedule spends its compute closest to the split.

  The run's own schedule (``steps`` events every ``interval``, densities of ``schedule`` at ``target_sparsity``) is
  measured exactly (``measured_fractions``). For each event count ``n`` within ``_EVENT_WINDOW`` of the continuous
  solution's (``step_fractions``), the two compute equations are solved for the dense length and the last gap,
  and the integer steps around that solution are tried; the continuous solution is a candidate too. The result is
  the candidate with the least largest error over (dense, pruning, recovery) (ties: least squared error, then
  earlier steps), improved by moving its start and end by up to 2 steps while that lowers the error; returned as
  exact step fractions (``start / steps``, ``end / steps``).

  ``one_shot`` has no pruning phase: its event comes after ``dense_fraction`` of the compute (the rest is
  recovery). Dense runs (``target_sparsity == 0``) get ``step_fractions``' ``(t_d, t_d + t_s)``.

  Raises:
    ValueError: steps or interval not positive, target outside [0, 1), unknown schedule, bad split.
  """
  td, ts = check_split(dense_fraction, pruning_fraction)
  steps, interval, s = int(steps), int(interval), float(target_sparsity)
  if steps <= 0 or interval <= 0:
    raise ValueError(f"need steps > 0 and pruning_interval > 0, got {steps} and {interval}")
  start0, end0 = step_fractions(s, td, ts, schedule)
  if s == 0.0:
    return start0, end0
  want = (td, 0.0, 1.0 - td) if schedule == "one_shot" else (td, ts, 1.0 - td - ts)
  first = timeline.at_step_fractions(steps, s, schedule, start0, end0, interval)
  cands = {(first.prune_steps[0], first.prune_steps[-1])}
  n0 = len(first.prune_steps)
  counts = [1] if schedule == "one_shot" else range(max(1, n0 - _EVENT_WINDOW), n0 + _EVENT_WINDOW + 1)
  for n in counts:
    cands |= _candidates(steps, s, schedule, interval, td, ts, n)

  @functools.cache
  def error(c):
    got = measured_fractions(timeline.at_step_fractions(steps, s, schedule, c[0] / steps, c[1] / steps, interval))
    diffs = [g - w for g, w in zip(got, want)]
    return max(abs(x) for x in diffs), sum(x * x for x in diffs), c

  best = min(cands, key=error)
  for _ in range(_LOCAL_ROUNDS):  # then the best of its neighbours, while that improves
    a, e = best
    near = {(a + i, e + j) for i in range(-2, 3) for j in range(-2, 3)}
    near = {(x, y) for x, y in near if 0 <= x <= y <= steps - 1}
    step = min(near, key=error)
    if error(step) >= error(best):
      break
    best = step
  return best[0] / steps, best[1] / steps


def interval_for(steps: int, ratio: float = PRUNING_INTERVAL / 26800) -> int:
  """The pruning interval of a ``steps``-step run scaled like the paper's (100 of 26,800 steps), at least 1."""
  return max(1, int(round(int(steps) * float(ratio))))


def density_steps(steps: int, target_sparsity: float, schedule: str = "geometric",
                  interval: int | None = None, dense_fraction: float = DENSE_COMPUTE_FRACTION,
                  pruning_fraction: float = PRUNING_COMPUTE_FRACTION) -> float:
  """Prunable density summed over the steps of a run with the default (compute) split: its compute in units of one
  dense step's (``interval`` None: ``interval_for(steps)``)."""
  interval = interval_for(steps) if interval is None else int(interval)
  start, end = derived_step_fractions(int(steps), float(target_sparsity), schedule, interval, dense_fraction,
                                      pruning_fraction)
  sched = timeline.at_step_fractions(int(steps), float(target_sparsity), schedule, start, end, interval)
  return float(sum(phase_param_steps(sched.steps, sched.prune_steps, sched.densities, 1.0)))


def steps_for_compute(reference_steps: int, target_sparsity: float, dense_fraction: float, pruning_fraction: float,
                      schedule: str = "geometric", tolerance: float = 0.02) -> int:
  """The steps of a run with split ``(dense_fraction, pruning_fraction)`` whose compute equals that of a
  ``reference_steps``-step run with the paper's split (same target and schedule; intervals ``interval_for``).

  Figure 4 of the paper compares schedules at a fixed effective compute: a split with more dense compute needs
  fewer steps. The steps are the integer nearest the continuous solution (``reference_steps x K / K_ref``,
  ``K = t_d + t_s / m + t_r / d``) whose discrete schedule's compute (``density_steps``) is closest to the
  reference's. ValueError if that is not within ``tolerance`` (relative).
  """
  s = float(target_sparsity)
  want = density_steps(reference_steps, s, schedule)

  def k(td: float, ts: float) -> float:
    d, m = 1.0 - s, mean_pruning_density(s, schedule)
    return td + ts / m + max(0.0, 1.0 - td - ts) / d

  guess = int(round(reference_steps * k(dense_fraction, pruning_fraction)
                    / k(DENSE_COMPUTE_FRACTION, PRUNING_COMPUTE_FRACTION)))
  cands = range(max(1, guess - 10), guess + 11)
  best = min(cands, key=lambda t: (abs(density_steps(t, s, schedule, None, dense_fraction, pruning_fraction) - want),
                                   t))
  got = density_steps(best, s, schedule, None, dense_fraction, pruning_fraction)
  if abs(got / want - 1.0) > tolerance:
    raise ValueError(f"no step count gives the compute of {reference_steps} steps at split ({dense_fraction}, "
                     f"{pruning_fraction}) within {tolerance:.0%}: best {best} steps, {got / want - 1.0:+.2%}")
  return best


class StepSplit(NamedTuple):
  """The step fractions a run uses and where they came from (``schedule_split``: 'compute' or 'steps')."""

  prune_start_fraction: float
  prune_end_fraction: float
  schedule_split: str


def split(steps: int, target_sparsity: float, schedule: str = "geometric", interval: int = PRUNING_INTERVAL,
          start_fraction: float | None = None, end_fraction: float | None = None,
          dense_fraction: float = DENSE_COMPUTE_FRACTION,
          pruning_fraction: float = PRUNING_COMPUTE_FRACTION) -> StepSplit:
  """The step fractions a run uses (see the module docstring): ``derived_step_fractions`` of the compute split when
  neither step fraction is given ('compute'), else the given ones, a missing one taking its ``STEP_FRACTIONS``
  default ('steps')."""
  if start_fraction is not None or end_fraction is not None:
    return StepSplit(STEP_FRACTIONS[0] if start_fraction is None else float(start_fraction),
                     STEP_FRACTIONS[1] if end_fraction is None else float(end_fraction), "steps")
  start, end = derived_step_fractions(int(steps), float(target_sparsity), str(schedule), int(interval),
                                      float(dense_fraction), float(pruning_fraction))
  return StepSplit(start, end, "compute")


def step_split(config: Any) -> StepSplit:
  """``split`` of a config (attributes ``steps``, ``target_sparsity``, ``sparsity_schedule``, ``pruning_interval``,
  and optionally ``prune_start_fraction`` / ``prune_end_fraction`` (None: unset) and ``dense_compute_fraction`` /
  ``pruning_compute_fraction``); the first four are read only when the split is derived."""
  start, end = getattr(config, "prune_start_fraction", None), getattr(config, "prune_end_fraction", None)
  if start is not None or end is not None:
    return split(0, 0.0, start_fraction=start, end_fraction=end)  # given: steps and target are not read
  return split(config.steps, config.target_sparsity, config.sparsity_schedule, config.pruning_interval, None, None,
               getattr(config, "dense_compute_fraction", DENSE_COMPUTE_FRACTION),
               getattr(config, "pruning_compute_fraction", PRUNING_COMPUTE_FRACTION))


__all__ = ["FLOPS_PER_PARAM_TOKEN", "DENSE_COMPUTE_FRACTION", "PRUNING_COMPUTE_FRACTION", "STEP_FRACTIONS",
           "PRUNING_INTERVAL", "PHASES",
           "SPLITS", "flops", "phase_param_steps", "fractions", "measured_fractions", "check_split",
           "mean_pruning_density", "step_fractions", "prune_start_for", "prune_end_for", "derived_step_fractions",
           "interval_for", "density_steps", "steps_for_compute",
           "StepSplit", "split", "step_split"]
