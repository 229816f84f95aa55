"""Generating ``configs/sweeps/dense_matched.yml``: dense runs whose size brackets each sparse run's N_avg.

For every paper model and budget (``PAPER_CONFIGS``) and every target sparsity, the sparse run's average
active parameter count comes from ``sparsity.science.planning.plan`` with the config's steps and the paper's compute
split (``sparsity.core.compute.step_fractions``), and ``sparsity.science.planning.match_dense`` gives the two dense widths
whose total parameter counts bracket it (same depth, heads and MLP ratio; hidden sizes multiples of
``width_step``). Each distinct (model, budget, width) becomes one dense run; the bracketing and the
interpolation weight of every sparse run are kept in the spec's ``meta.matches`` (the dense loss at N_avg is
``(1 - weight) * loss(lower) + weight * loss(upper)``).

The committed YAML is this module's output (``python -m sparsity dense-sweep --out
configs/sweeps/dense_matched.yml``); a test checks that it is up to date.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import yaml

from sparsity import repo
from sparsity.core import compute, recipe
from sparsity.science import planning
from sparsity.maxtext import yaml_chain

# (model, budget) -> config file, relative to configs/sweeps/.
PAPER_CONFIGS = {
    ("58M", "10x"): "../paper/llama2_58m_10x.yml",
    ("58M", "20x"): "../paper/llama2_58m_20x.yml",
    ("162M", "10x"): "../paper/llama2_162m_10x.yml",
    ("162M", "20x"): "../paper/llama2_162m_20x.yml",
    ("468M", "10x"): "../paper/llama2_468m_10x.yml",
    ("468M", "20x"): "../paper/llama2_468m_20x.yml",
}
SPARSITIES = (0.2, 0.4, 0.6, 0.8)
DIVISOR = planning.WIDTH_DIVISOR
SWEEPS_DIR = repo.SWEEPS
HEADER = """\
# Dense runs matched to the paper's sparse runs by average active parameter count (N_avg): for each model and
# budget of Table 1 and target sparsity {sparsities}, the sparse run's N_avg (sparsity.science.planning.plan, the
# paper's 25% dense / 50% pruning compute split) is bracketed by two dense widths (sparsity.science.planning.match_dense,
# hidden sizes multiples of lcm(heads, {divisor})); each distinct width is one dense run. meta.matches gives,
# per sparse run, the two dense runs and the weight w: dense loss at N_avg = (1 - w) loss(lower) + w loss(upper).
#
# GENERATED: python -m sparsity dense-sweep --out configs/sweeps/dense_matched.yml (do not edit by hand).
"""


def _shape_of(cfg: dict[str, Any]) -> planning.ModelShape:
  return planning.ModelShape(
      emb=int(cfg["base_emb_dim"]), num_query_heads=int(cfg["base_num_query_heads"]),
      num_kv_heads=int(cfg["base_num_kv_heads"]), head_dim=int(cfg["head_dim"]), mlp_dim=int(cfg["base_mlp_dim"]),
      num_layers=int(cfg["base_num_decoder_layers"]), vocab=int(cfg["vocab_size"]),
      tied_embeddings=bool(cfg["logits_via_embedding"]))


def dense_matched_spec(sparsities: Sequence[float] = SPARSITIES, divisor: int = DIVISOR,
                       sweeps_dir: str = SWEEPS_DIR) -> dict[str, Any]:
  """The sweep spec as a dict (see the module docstring)."""
  entries: dict[tuple[str, str, int], dict[str, Any]] = {}
  matches = []
  for (model, budget), rel in PAPER_CONFIGS.items():
    cfg = yaml_chain.load(os.path.join(sweeps_dir, rel))
    shape = _shape_of(cfg)
    steps = int(cfg["steps"])
    for s in sparsities:
      start, end = compute.step_fractions(s, recipe.DENSE_COMPUTE_FRACTION, recipe.PRUNING_COMPUTE_FRACTION,
                                          str(cfg["sparsity_schedule"]))
      p = planning.plan(shape, steps, 1, float(s), str(cfg["sparsity_schedule"]), start, end,
                        int(cfg["pruning_interval"]))
      m = planning.match_dense(p["avg_active_params"], shape, divisor)
      names = []
      for side in ("lower", "upper"):
        dense = m[side]
        key = (model, budget, dense.emb)
        if key not in entries:
          entries[key] = {"model": model, "budget": budget, "base": rel, "base_emb_dim": dense.emb,
                          "head_dim": dense.head_dim, "base_mlp_dim": dense.mlp_dim,
                          "total_params": planning.param_counts(dense)["total"]}
        names.append(f"dense-{model}-{budget}-e{dense.emb}")
      matches.append({"model": model, "budget": budget, "target_sparsity": float(s),
                      "prune_start_fraction": start, "prune_end_fraction": end,
                      "avg_active_params": round(float(p["avg_active_params"]), 1), "lower": names[0],
                      "upper": names[1], "weight": round(float(m["weight"]), 6)})
  runs = [entries[k] for k in sorted(entries, key=lambda k: (list(PAPER_CONFIGS).index(k[:2]), k[2]))]
  return {
      "name": "dense_matched",
      "base": PAPER_CONFIGS[("162M", "10x")],
      "labels": ["model", "budget", "total_params"],
      "fixed": {"target_sparsity": 0.0},
      "axes": {"dense": runs},
      "run_name": "dense-{model}-{budget}-e{base_emb_dim}",
      "meta": {"divisor": divisor, "sparsities": [float(s) for s in sparsities], "matches": matches},
  }


def render(spec: dict[str, Any]) -> str:
  """The YAML text written to ``dense_matched.yml`` (header comment + the spec)."""
  meta = spec["meta"]
  head = HEADER.format(sparsities="/".join(f"{s:g}" for s in meta["sparsities"]), divisor=meta["divisor"])
  return head + yaml.safe_dump(spec, sort_keys=False, width=120)


__all__ = ["PAPER_CONFIGS", "SPARSITIES", "dense_matched_spec", "render"]
