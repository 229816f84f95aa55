"""The pruner core: no MaxText, only JAX and optax.

  recipe      the paper's defaults of the schedule keys (compute split, step fractions, interval), stated once
  timeline    a schedule's event steps and densities for given step fractions: ``Schedule`` (pure Python)
  compute     the one definition of training compute; the paper's compute split as the run's step fractions
  schedules   ``make_schedule``: a run's schedule, the paper's compute split unless step fractions are given
  threshold   exact top-k over many (sharded) arrays by radix selection on per-shard histograms
  paths       parameter names ('decoder/layers/mlp/wi_0/kernel') and nesting by them
  config      the sparsity keys (pydantic), the names every layer uses; ``schedule_from_config``
  pruner      ``pruned(inner, plan)``: the optax transformation holding the masks; events as pure functions
  accounting  active parameters, N_avg and effective FLOPs per step, exact from the events' counts
"""
