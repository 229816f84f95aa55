"""The pruner core: no MaxText, only JAX and optax.

  recipe      the paper's defaults of the schedule keys (compute split, step fractions, interval), stated once
  schedules   when pruning happens and how dense the model is after each event (pure Python)
  threshold   exact top-k over many (sharded) arrays by radix selection on per-shard histograms
  paths       parameter names ('decoder/layers/mlp/wi_0/kernel') and nesting by them
  config      the sparsity keys (pydantic), the names every layer uses
  pruner      ``pruned(inner, plan)``: the optax transformation holding the masks; events as pure functions
  accounting  active parameters, N_avg and effective FLOPs per step, exact from the events' counts
  compute     the one definition of training compute; the paper's compute split as the run's step fractions
"""
