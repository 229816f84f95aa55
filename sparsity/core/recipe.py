"""The paper's recipe: the default values of the schedule's sparsity keys, stated once (no imports).

Every Python default of these keys comes from here: ``sparsity.core.config.SparsityKeys`` (the keys as MaxText runs
take them), ``sparsity.core.schedules.make_schedule``, ``sparsity.core.compute`` (the compute split and its step
fractions), ``sparsity.science.planning`` and the command line. ``configs/sparse_base.yml`` states the same values
for its readers (a test checks that they agree).

* ``DENSE_COMPUTE_FRACTION``, ``PRUNING_COMPUTE_FRACTION``: the paper's split of the training compute, 25% dense,
  50% pruning, the rest (25%) recovery with a fixed mask (``dense_compute_fraction``, ``pruning_compute_fraction``).
* ``STEP_FRACTIONS``: ``(prune_start_fraction, prune_end_fraction)`` when the schedule is split by steps: the value
  of the one not set when only the other is (``sparsity.core.compute.split``, for configs and ``make_schedule``).
* ``PRUNING_INTERVAL``: steps between pruning events (the paper's P, ``pruning_interval``).
"""

DENSE_COMPUTE_FRACTION = 0.25
PRUNING_COMPUTE_FRACTION = 0.5
STEP_FRACTIONS = (0.25, 0.75)
PRUNING_INTERVAL = 100

__all__ = ["DENSE_COMPUTE_FRACTION", "PRUNING_COMPUTE_FRACTION", "STEP_FRACTIONS", "PRUNING_INTERVAL"]
