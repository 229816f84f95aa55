"""Sparse pre-training: an optax pruner with exact global magnitude selection, its schedules and accounting.

The public API is the pruner core (``sparsity.core``), usable with any optax optimizer and no MaxText::

  import optax, sparsity
  plan = sparsity.PrunePlan(sparsity.make_schedule(steps=1000, target_sparsity=0.8, interval=100))
  tx = sparsity.pruned(optax.adamw(1e-3), plan)   # masks live in tx's state; pruned weights stay exactly 0

Subpackages:
  core         the pruner: schedules, exact top-k threshold, the optax transformation, accounting (JAX + optax)
  maxtext      the one place that knows MaxText: config keys, training hooks, state/checkpoint layout, launcher
  science      scaling laws (fit, predict), planning, compute fractions, figures (NumPy/SciPy, no JAX)
  experiments  sweeps (local, XPK), results collection, reports, the reproduction study's tools
  model        a trained checkpoint: inspect, export to Hugging Face, generate
  cli          ``python -m sparsity <command>``

Names are imported lazily, so ``python -m sparsity`` commands that need no JAX do not load it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "PrunePlan": "sparsity.core.pruner",
    "PruningState": "sparsity.core.pruner",
    "Event": "sparsity.core.pruner",
    "pruned": "sparsity.core.pruner",
    "apply_due_event": "sparsity.core.pruner",
    "due_event": "sparsity.core.pruner",
    "mask_event": "sparsity.core.pruner",
    "zero_pruned": "sparsity.core.pruner",
    "prunable_paths": "sparsity.core.pruner",
    "Schedule": "sparsity.core.timeline",
    "make_schedule": "sparsity.core.schedules",
    "SCHEDULES": "sparsity.core.timeline",
    "top_k_masks": "sparsity.core.threshold",
    "count_true": "sparsity.core.threshold",
    "magnitude_keys": "sparsity.core.threshold",
    "Accounting": "sparsity.core.accounting",
    "SparsityKeys": "sparsity.core.config",
    "DEFAULT_PRUNABLE": "sparsity.core.config",
    "path_str": "sparsity.core.paths",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'sparsity' has no attribute {name!r}")


def __dir__() -> list[str]:
  return __all__
