"""Training-time accounting: active parameters, their running average (the paper's N_avg), effective FLOPs.

Pruning is exact, so the number of active weights at every step is known from the pruning events and the
counts they keep (``sparsity.core.pruner.kept_after_events``: global or per-tensor rounding); the per-step
metrics are table look-ups (no mask is counted per step), and the end-of-run summary is exact integer
arithmetic. The trainer checks the final masks against these numbers when it writes the summary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from sparsity.core import compute


@dataclasses.dataclass(frozen=True)
class Accounting:
  """Parameter and compute accounting of one run.

  Attributes:
    steps: training steps the run is configured for.
    prune_steps: steps at which the masks change (pruning events; step 0 for a mask fixed from the start).
    kept: prunable weights kept after each of those events (same length, non-increasing).
    prunable: prunable weights.
    non_prunable: trainable weights never pruned (embeddings, norms, exempted kernels).
    tokens_per_step: tokens in one global batch (batch x sequence length).
  """

  steps: int
  prune_steps: tuple[int, ...]
  kept: tuple[int, ...]
  prunable: int
  non_prunable: int
  tokens_per_step: int

  def __post_init__(self):
    if len(self.prune_steps) != len(self.kept):
      raise ValueError(f"{len(self.prune_steps)} events but {len(self.kept)} kept counts")

  @property
  def total(self) -> int:
    return self.prunable + self.non_prunable

  def active_at(self, step: int) -> int:
    """Active (non-zero, trainable) parameters during ``step`` (after any event at ``step``)."""
    keep = self.prunable
    for s, k in zip(self.prune_steps, self.kept):
      if s <= step:
        keep = k
    return keep + self.non_prunable

  def cumulative_active(self, last_step: int) -> int:
    """Sum of active parameters over steps 0..last_step (exact)."""
    if last_step < 0:
      return 0
    bounds = [0] + [s for s in self.prune_steps if 0 < s <= last_step] + [last_step + 1]
    return sum((b - a) * self.active_at(a) for a, b in zip(bounds[:-1], bounds[1:]))

  def _segments(self):
    """Segment starts, active count in each segment, and the cumulative active count before each start."""
    starts = [0] + [s for s in self.prune_steps if s > 0]
    active = [self.active_at(s) for s in starts]
    before = [self.cumulative_active(s - 1) for s in starts]
    return starts, active, before

  def step_metrics(self, step) -> dict[str, Any]:
    """MaxText scalar metrics for training step ``step`` (a traced int): float32 table look-ups."""
    starts, active, before = self._segments()
    starts_a = jnp.asarray(starts, jnp.int32)
    j = jnp.sum((starts_a <= step).astype(jnp.int32)) - 1
    act = jnp.asarray(np.array(active, np.float64), jnp.float32)[j]
    cum = jnp.asarray(np.array(before, np.float64), jnp.float32)[j] + (step - starts_a[j] + 1).astype(jnp.float32) * act
    n = (step + 1).astype(jnp.float32)
    return {
        # Counts enter as Python floats: an int past 2**31 cannot meet a traced value (JAX's 32-bit integers).
        "sparsity/density": (act - float(self.non_prunable)) / float(max(self.prunable, 1)),
        "sparsity/active_params": act,
        "sparsity/avg_active_params": cum / n,
        "sparsity/effective_flops": compute.flops(cum - n * float(self.non_prunable), float(self.tokens_per_step)),
    }

  def summary(self, steps_trained: int | None = None, final_kept: int | None = None) -> dict[str, Any]:
    """The counts of a run that trained ``steps_trained`` steps (default: all), as the summary names them.

    ``final_kept`` is the prunable weights the final masks keep (counted by the trainer); by default the
    accounting's own count at the last trained step.
    """
    trained = self.steps if steps_trained is None else int(steps_trained)
    last = trained - 1
    kept = self.active_at(last) - self.non_prunable if final_kept is None else int(final_kept)
    cum = self.cumulative_active(last)
    avg = cum / trained if trained else float("nan")
    phases = compute.phase_param_steps(trained, self.prune_steps, self.kept, self.prunable)
    return {
        "steps": self.steps,
        "steps_trained": trained,
        "tokens": trained * self.tokens_per_step,
        "tokens_per_step": self.tokens_per_step,
        "final_sparsity": 1.0 - kept / self.prunable if self.prunable else 0.0,
        "prune_steps": list(self.prune_steps),
        "kept_after_events": list(self.kept),
        "prunable_params": self.prunable,
        "non_prunable_params": self.non_prunable,
        "total_params": self.total,
        "final_active_params": kept + self.non_prunable,
        "avg_active_params": avg,
        "avg_active_prunable_params": avg - self.non_prunable,
        "effective_flops": compute.flops(sum(phases), self.tokens_per_step),
        "dense_flops": compute.flops(trained * self.prunable, self.tokens_per_step),
        "compute_fractions": dict(zip(compute.PHASES, compute.fractions(phases))),
    }


def from_schedule(schedule, prunable: int, non_prunable: int, tokens_per_step: int,
                  kept: Sequence[int] | None = None) -> Accounting:
  """The accounting of a run on ``schedule`` (``kept``: counts per event; default: one global threshold)."""
  kept = schedule.keep_counts(prunable) if kept is None else tuple(kept)
  return Accounting(schedule.steps, tuple(schedule.prune_steps), tuple(kept), prunable, non_prunable, tokens_per_step)


__all__ = ["Accounting", "from_schedule"]
