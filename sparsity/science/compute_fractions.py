"""The paper's compute split as step fractions: the names the sweep expressions, ``collect`` and the CLI use.

The definitions live in ``sparsity.core.compute`` (one definition of compute for the trainer, the summary, the
planner and the sweeps); this module only re-exports them.
"""

from __future__ import annotations

from sparsity.core.compute import (DIGITS, derived_step_fractions, interval_for, mean_pruning_density,
                                   measured_fractions, prune_end_for, prune_start_for, step_fractions,
                                   steps_for_compute)

__all__ = ["DIGITS", "mean_pruning_density", "step_fractions", "prune_start_for", "prune_end_for",
           "measured_fractions", "derived_step_fractions", "interval_for", "steps_for_compute"]
