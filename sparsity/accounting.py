"""Training-time accounting: active parameters, their running average (the paper's N_avg), effective FLOPs.

Pruning is exact, so the number of active weights at every step is known from the schedule alone; the
per-step metrics are table look-ups (no mask is counted per step), and the end-of-run summary is exact
integer arithmetic. The trainer checks the final masks against these numbers when it writes the summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from sparsity.schedules import Schedule

SUMMARY_FILE = "sparsity_summary.json"


@dataclasses.dataclass(frozen=True)
class Accounting:
  """Parameter and compute accounting of one run.

  Attributes:
    schedule: the run's schedule.
    prunable: prunable weights.
    non_prunable: trainable weights never pruned (embeddings, norms, exempted kernels).
    tokens_per_step: tokens in one global batch (batch x sequence length).
  """

  schedule: Schedule
  prunable: int
  non_prunable: int
  tokens_per_step: int

  @property
  def total(self) -> int:
    return self.prunable + self.non_prunable

  def keep_counts(self) -> tuple[int, ...]:
    return self.schedule.keep_counts(self.prunable)

  def active_at(self, step: int) -> int:
    return self.schedule.active_at(step, self.prunable, self.non_prunable)

  def cumulative_active(self, last_step: int) -> int:
    """Sum of active parameters over steps 0..last_step (exact)."""
    return self.schedule.sum_active(self.prunable, self.non_prunable, 0, last_step)

  def _segments(self):
    """Segment starts, active count in each segment, and the cumulative active count before each start."""
    starts = [0] + list(self.schedule.prune_steps)
    active = [self.total] + [k + self.non_prunable for k in self.keep_counts()]
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
        "sparsity/density": (act - self.non_prunable) / max(self.prunable, 1),
        "sparsity/active_params": act,
        "sparsity/avg_active_params": cum / n,
        "sparsity/effective_flops": 6.0 * self.tokens_per_step * cum,
    }

  def summary(self, run_name: str, target_sparsity: float, schedule_name: str, final_kept: int | None = None,
              final_train_loss: float | None = None, final_eval_loss: float | None = None) -> dict[str, Any]:
    """The run's summary (the names later tools read; see README)."""
    steps = self.schedule.steps
    kept = self.keep_counts()[-1] if self.keep_counts() else self.prunable
    if final_kept is not None:
      kept = int(final_kept)
    cum = self.cumulative_active(steps - 1)
    avg = cum / steps
    return {
        "run_name": run_name,
        "steps": steps,
        "tokens": steps * self.tokens_per_step,
        "tokens_per_step": self.tokens_per_step,
        "target_sparsity": float(target_sparsity),
        "final_sparsity": 1.0 - kept / self.prunable if self.prunable else 0.0,
        "sparsity_schedule": schedule_name,
        "prune_steps": list(self.schedule.prune_steps),
        "prunable_params": self.prunable,
        "non_prunable_params": self.non_prunable,
        "total_params": self.total,
        "final_active_params": kept + self.non_prunable,
        "avg_active_params": avg,
        "avg_active_prunable_params": avg - self.non_prunable,
        "effective_flops": 6.0 * self.tokens_per_step * cum,
        "dense_flops": 6.0 * self.tokens_per_step * steps * self.total,
        "final_train_loss": final_train_loss,
        "final_eval_loss": final_eval_loss,
    }


def write_summary(directory: str, summary: dict[str, Any]) -> str:
  """Writes ``sparsity_summary.json`` atomically; returns its path."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, SUMMARY_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  os.replace(tmp, path)
  return path
