"""Planning sparse pre-training runs: LLaMA-2 parameter counts, compute, dense matching, law-based choices.

Conventions (the paper's section 4 and Table 1):

* LLaMA-2 decoder, no biases, SwiGLU MLP (three matrices ``wi_0``, ``wi_1``, ``wo``).
* Prunable = every linear-layer kernel: attention ``query``, ``key``, ``value``, ``out`` and MLP ``wi_0``,
  ``wi_1``, ``wo`` in every layer, plus the output projection ``logits_dense`` when embeddings are untied.
* Non-prunable = the token embedding and the RMSNorm scales (2 per layer + the final norm).
* Counted from MaxText's parameter table (``sparsity.maxtext.layout.llama_param_shapes``): prunable is what the
  default ``prunable_params`` of MaxText runs matches (``sparsity.maxtext.families.default_prunable``; for LLaMA the
  same set as the core's ``DEFAULT_PRUNABLE``), the parts are the families' kinds of weight.
* Active parameters during a step = exact kept prunable count (``Schedule.keep_counts``) + non-prunable.
* Effective training compute = ``sum over steps of 6 * active prunable params * tokens per step`` (the paper's
  "effective compute", linear in density as in Frantar et al. 2023; the one definition, ``sparsity.core.compute``).
* Inference FLOPs per token = ``2 * final active params``.

``PAPER_MODELS`` are the three shapes of Table 1 (vocab 32000, untied, MLP = 4 x width, head_dim 64):

=====  =====  ======  ===  ======  ==============  ===========
name   width  layers  MLP  heads   prunable        total
=====  =====  ======  ===  ======  ==============  ===========
58M    512    6       2048  8      41,549,824      57,940,480
162M   768    12      3072  12     137,822,208     162,417,408
468M   1024   24      4096  16     435,421,184     468,239,360
=====  =====  ======  ===  ======  ==============  ===========

e.g. 162M: per layer ``4 * 768**2 + 3 * 768 * 3072 = 9,437,184``, times 12, plus ``logits_dense``
``768 * 32000`` = 137,822,208 prunable; plus embedding ``32000 * 768`` and ``25 * 768`` norm scales.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from typing import Any, Iterable, Mapping, Sequence

from sparsity.core import compute, recipe, timeline
from sparsity.core.config import schedule_from_config
from sparsity.maxtext import families, layout

# Hidden sizes of matched dense shapes are multiples of lcm(heads, WIDTH_DIVISOR): brackets about 15% apart in
# parameters at the paper's sizes. One default for every command (plan --match-dense, dense-sweep).
WIDTH_DIVISOR = 64


@dataclasses.dataclass(frozen=True)
class ModelShape:
  """Shape of a LLaMA-2 decoder (MaxText names in parentheses).

  Attributes:
    emb: hidden size (``base_emb_dim``).
    num_query_heads: attention query heads (``base_num_query_heads``).
    num_kv_heads: key/value heads (``base_num_kv_heads``).
    head_dim: per-head dimension (``head_dim``).
    mlp_dim: SwiGLU hidden size (``base_mlp_dim``).
    num_layers: decoder layers (``base_num_decoder_layers``).
    vocab: vocabulary size (``vocab_size``).
    tied_embeddings: output projection shares the token embedding (``logits_via_embedding``).
    num_experts: routed experts per layer (``num_experts``); 1: a dense MLP (LLaMA). With more, every layer's MLP is
      a Mixtral-style mixture of experts: ``num_experts`` SwiGLU experts of width ``moe_mlp_dim`` and a router.
    experts_per_token: experts each token is routed to (``num_experts_per_tok``).
    moe_mlp_dim: an expert's hidden size (``base_moe_mlp_dim``); 0: ``mlp_dim``.
  """

  emb: int
  num_query_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  num_layers: int
  vocab: int = 32000
  tied_embeddings: bool = False
  num_experts: int = 1
  experts_per_token: int = 1
  moe_mlp_dim: int = 0


PAPER_MODELS: dict[str, ModelShape] = {
    "58M": ModelShape(512, 8, 8, 64, 2048, 6, 32000, False),
    "162M": ModelShape(768, 12, 12, 64, 3072, 12, 32000, False),
    "468M": ModelShape(1024, 16, 16, 64, 4096, 24, 32000, False),
}


def param_counts(shape: ModelShape) -> dict[str, int]:
  """Exact parameter counts of ``shape``.

  Returns:
    ``total``, ``prunable``, ``non_prunable`` and the parts ``attention`` (all layers), ``mlp`` (all
    layers: the dense MLPs, or every routed expert), ``logits_dense`` (0 when tied), ``embedding``, ``norms``,
    ``router`` (the MoE routers, not pruned; 0 when dense), ``experts`` (the routed experts' weights, = ``mlp``
    for a mixture of experts, else 0) and ``active_per_token`` / ``active_prunable_per_token``: the parameters one
    token's forward pass uses (all but the ``num_experts - experts_per_token`` experts it is not routed to; = the
    totals when dense).
  """
  moe = int(shape.num_experts) > 1
  sizes = {p: math.prod(dims) for p, dims in layout.llama_param_shapes(
      shape.emb, shape.num_layers, shape.num_query_heads, shape.num_kv_heads, shape.head_dim, shape.mlp_dim,
      shape.vocab, tied=shape.tied_embeddings, experts=int(shape.num_experts), moe_mlp=shape.moe_mlp_dim).items()}
  prunable_re = re.compile(families.default_prunable())  # the prunable set MaxText runs default to
  prunable = sum(n for p, n in sizes.items() if prunable_re.search(p))
  non_prunable = sum(sizes.values()) - prunable
  kinds = families.kind_counts(None, sizes)
  attention, router = kinds.get(families.ATTENTION, 0), kinds.get(families.ROUTER, 0)
  experts = kinds.get(families.EXPERTS, 0)
  mlp = kinds.get(families.MLP, 0) + experts
  logits, embedding, norms = (kinds.get(k, 0) for k in (families.OUTPUT, families.EMBEDDING, families.NORM))
  idle = experts - experts * int(shape.experts_per_token) // int(shape.num_experts) if moe else 0
  return {"total": prunable + non_prunable, "prunable": prunable, "non_prunable": non_prunable,
          "attention": attention, "mlp": mlp, "logits_dense": logits, "embedding": embedding, "norms": norms,
          "router": router, "experts": experts, "active_per_token": prunable + non_prunable - idle,
          "active_prunable_per_token": prunable - idle}


def _per_token(counts: Mapping[str, int], shape: ModelShape, final_prunable: int) -> dict[str, Any]:
  """A mixture of experts' per-token counts of a plan: the law's N counts every expert (``total_params``, the
  parameters stored and pruned), a token's forward pass only its experts' share. After pruning, the per-token
  figure assumes the experts keep the prunable weights' average density (global pruning does not promise that)."""
  if not counts["experts"]:
    return {}
  share = int(shape.experts_per_token) / int(shape.num_experts)
  density = final_prunable / counts["prunable"]
  return {"moe": {"num_experts": int(shape.num_experts), "experts_per_token": int(shape.experts_per_token),
                  "routed_expert_params": counts["experts"], "router_params": counts["router"],
                  "active_params_per_token": counts["active_per_token"],
                  "experts_share_per_token": share,
                  "final_active_params_per_token": counts["non_prunable"] + density * counts["active_prunable_per_token"],
                  "law_params": "total_params (every expert; the per-token counts are for FLOPs per token)"}}


def plan(
    shape: ModelShape,
    steps: int,
    tokens_per_step: int,
    target_sparsity: float = 0.0,
    sparsity_schedule: str = "geometric",
    prune_start_fraction: float | None = None,
    prune_end_fraction: float | None = None,
    pruning_interval: int = recipe.PRUNING_INTERVAL,
    dense_compute_fraction: float = recipe.DENSE_COMPUTE_FRACTION,
    pruning_compute_fraction: float = recipe.PRUNING_COMPUTE_FRACTION,
) -> dict[str, Any]:
  """Parameter and compute accounting of one run, from the same schedule code the trainer uses.

  Args:
    shape: model shape.
    steps: training steps.
    tokens_per_step: global batch size x sequence length.
    target_sparsity, sparsity_schedule, prune_start_fraction, prune_end_fraction, pruning_interval,
      dense_compute_fraction, pruning_compute_fraction: the trainer's sparsity keys (the step fractions: None
      derives them from the compute fractions, ``sparsity.core.compute.step_split``).

  Returns:
    A JSON-serialisable dict: ``total_params``, ``prunable_params``, ``non_prunable_params``,
    ``final_params`` (active at the end), ``final_prunable_params``, ``avg_active_params``,
    ``avg_active_prunable_params``, ``compression_rate`` (avg / final), ``tokens``, ``steps``,
    ``tokens_per_step``, ``training_flops`` and ``dense_training_flops`` (``sparsity.core.compute.flops``: 6 x
    tokens x active prunable weights, summed over steps; dense: all prunable weights), ``compute_fraction`` (their
    ratio), ``compute_fractions`` (dense / pruning / recovery), ``schedule_split``, ``prune_steps``, ``num_prune_events``, ``final_sparsity``
    (of the prunable weights, exact), ``final_total_sparsity`` (of all weights),
    ``inference_flops_per_token`` (``2 * final_params``), ``dense_inference_flops_per_token``,
    ``tokens_per_prunable_param``, ``chinchilla_multiple`` (tokens / (20 * prunable)), the schedule keys,
    and ``shape`` (as a dict).
  """
  if int(tokens_per_step) <= 0:
    raise ValueError(f"tokens_per_step must be positive, got {tokens_per_step}")
  counts = param_counts(shape)
  keys = types.SimpleNamespace(
      steps=steps, target_sparsity=target_sparsity, sparsity_schedule=sparsity_schedule,
      pruning_interval=pruning_interval, prune_start_fraction=prune_start_fraction,
      prune_end_fraction=prune_end_fraction, dense_compute_fraction=dense_compute_fraction,
      pruning_compute_fraction=pruning_compute_fraction)
  split, sched = compute.step_split(keys), schedule_from_config(keys)  # the trainer's
  figures = _schedule_figures(counts, sched, int(tokens_per_step))
  return {
      **figures,
      "target_sparsity": float(target_sparsity),
      "sparsity_schedule": str(sparsity_schedule),
      **split._asdict(),
      "pruning_interval": int(pruning_interval),
      "shape": dataclasses.asdict(shape),
      **_per_token(counts, shape, figures["final_prunable_params"]),
  }


def _schedule_figures(counts: Mapping[str, int], sched: timeline.Schedule, tokens_per_step: int) -> dict[str, Any]:
  """``plan``'s counts, compute and inference FLOPs of a model of ``counts`` (``param_counts``) trained on
  ``sched`` with ``tokens_per_step``."""
  prunable, non_prunable, total, steps = counts["prunable"], counts["non_prunable"], counts["total"], sched.steps
  keep = sched.keep_counts(prunable)
  phases = compute.phase_param_steps(steps, sched.prune_steps, keep, prunable)
  final_prunable = keep[-1] if keep else prunable
  avg = sched.average_active(prunable, non_prunable)
  avg_prunable = sched.average_active(prunable, 0)
  tokens = steps * tokens_per_step
  final = final_prunable + non_prunable
  return {
      "total_params": total,
      "prunable_params": prunable,
      "non_prunable_params": non_prunable,
      "final_params": final,
      "final_prunable_params": final_prunable,
      "avg_active_params": avg,
      "avg_active_prunable_params": avg_prunable,
      "compression_rate": avg / final,
      "tokens": tokens,
      "steps": steps,
      "tokens_per_step": tokens_per_step,
      "training_flops": compute.flops(sum(phases), tokens_per_step),
      "dense_training_flops": compute.flops(steps * prunable, tokens_per_step),
      "compute_fraction": sum(phases) / (steps * prunable),
      "compute_fractions": dict(zip(compute.PHASES, compute.fractions(phases))),
      "prune_steps": list(sched.prune_steps),
      "num_prune_events": len(sched.prune_steps),
      "final_sparsity": 1.0 - final_prunable / prunable,
      "final_total_sparsity": 1.0 - final / total,
      "inference_flops_per_token": 2 * final,
      "dense_inference_flops_per_token": 2 * total,
      "tokens_per_prunable_param": tokens / prunable,
      "chinchilla_multiple": tokens / (20.0 * prunable),
  }


def law_inputs(p: Mapping[str, Any]) -> dict[str, float]:
  """The scaling-law columns of a plan: ``tokens``, ``params``, ``avg_params``, ``nonzero_params``, ``sparsity``."""
  return {"tokens": float(p["tokens"]), "params": float(p["total_params"]),
          "avg_params": float(p["avg_active_params"]), "nonzero_params": float(p["final_params"]),
          "sparsity": float(p["final_sparsity"])}


def predict_loss(fit: Any, p: Mapping[str, Any]) -> float:
  """Predicted final loss of plan ``p`` under a fitted law (a ``scaling_laws.FitResult``)."""
  return float(fit.predict({k: [v] for k, v in law_inputs(p).items()})[0])


def scale_shape(shape: ModelShape, emb: int) -> ModelShape:
  """``shape`` at hidden size ``emb``: same depth, heads and kv heads, ``head_dim = emb / heads``,
  ``mlp_dim = round(emb * shape.mlp_dim / shape.emb)`` (halves up)."""
  if emb <= 0 or emb % shape.num_query_heads:
    raise ValueError(f"hidden size {emb} is not a positive multiple of {shape.num_query_heads} heads")
  mlp = timeline.round_half_up(emb * shape.mlp_dim / shape.emb)
  return dataclasses.replace(shape, emb=emb, head_dim=emb // shape.num_query_heads, mlp_dim=mlp)


def width_step(shape: ModelShape, divisor: int = WIDTH_DIVISOR) -> int:
  """Hidden-size step: the least common multiple of the number of heads and ``divisor``."""
  if divisor <= 0:
    raise ValueError(f"divisor must be positive, got {divisor}")
  return math.lcm(shape.num_query_heads, int(divisor))


MATCH_COUNTS = ("total", "prunable")


def match_dense(target_params: float, shape: ModelShape, divisor: int = WIDTH_DIVISOR,
                count: str = "total") -> dict[str, Any]:
  """Dense shapes whose parameter count matches ``target_params`` (the paper's Figure 1 footnote).

  ``count`` is the count matched: ``total`` (all trainable parameters, what the ``avg_param`` law's N_avg
  counts) or ``prunable`` (the linear layers only, as the paper's Figure 1 describes its pairs).

  Hidden sizes are multiples of ``width_step(shape, divisor)``; depth, heads and the MLP ratio come from
  ``shape`` (see ``scale_shape``). Total parameters increase with the hidden size, so the target is
  bracketed by two consecutive widths.

  Returns:
    ``exact`` (a width hits the target exactly), ``lower`` / ``upper`` (the bracketing shapes, equal when
    exact), ``lower_params`` / ``upper_params`` (their totals) and ``weight`` in [0, 1) such that
    ``(1 - weight) * lower_params + weight * upper_params == target_params``: interpolate any quantity of
    the two dense runs (e.g. their final loss) with the same weight.

  Raises:
    ValueError: the target is below the smallest width's count.
  """
  if count not in MATCH_COUNTS:
    raise ValueError(f"count must be one of {MATCH_COUNTS}, got {count!r}")
  step = width_step(shape, divisor)
  target = float(target_params)

  def total(k: int) -> int:
    return param_counts(scale_shape(shape, k * step))[count]

  if target < total(1):
    raise ValueError(f"target {target:.4g} params is below the smallest width {step} ({total(1)} params)")
  hi = 1
  while total(hi) < target:
    hi *= 2
  lo = hi // 2 if hi > 1 else 1  # total(lo) < target <= total(hi) unless hi == 1
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if total(mid) < target:
      lo = mid
    else:
      hi = mid
  if total(hi) == target or total(lo) == target:
    k = hi if total(hi) == target else lo
    s = scale_shape(shape, k * step)
    return {"exact": True, "lower": s, "upper": s, "lower_params": total(k), "upper_params": total(k), "weight": 0.0}
  lower, upper = scale_shape(shape, lo * step), scale_shape(shape, hi * step)
  lp, up = total(lo), total(hi)
  return {"exact": False, "lower": lower, "upper": upper, "lower_params": lp, "upper_params": up,
          "weight": (target - lp) / (up - lp)}


def compare_with_dense(fit: Any, sparse_plan: Mapping[str, Any], divisor: int = WIDTH_DIVISOR,
                       count: str = "total") -> dict[str, Any]:
  """Predicted loss of a sparse run and of its dense counterpart with the same ``N_avg`` and tokens.

  Args:
    fit: fitted law (``scaling_laws.FitResult``).
    sparse_plan: output of ``plan``.
    divisor: hidden-size divisor for ``match_dense``.

  Returns:
    ``sparse_loss``, ``dense_match`` (``match_dense`` with shapes as dicts), ``dense_lower_loss``,
    ``dense_upper_loss`` and ``dense_loss`` (their interpolation with ``weight``).
  """
  shape = ModelShape(**sparse_plan["shape"])
  m = match_dense(matched_average(sparse_plan, count), shape, divisor, count)
  steps, tps = sparse_plan["steps"], sparse_plan["tokens_per_step"]
  lo_loss = predict_loss(fit, plan(m["lower"], steps, tps))
  hi_loss = predict_loss(fit, plan(m["upper"], steps, tps))
  return {
      "sparse_loss": predict_loss(fit, sparse_plan),
      "dense_match": {**m, "lower": dataclasses.asdict(m["lower"]), "upper": dataclasses.asdict(m["upper"])},
      "dense_lower_loss": lo_loss,
      "dense_upper_loss": hi_loss,
      "dense_loss": (1.0 - m["weight"]) * lo_loss + m["weight"] * hi_loss,
  }


def matched_average(p: Mapping[str, Any], count: str = "total") -> float:
  """The average count of a plan that ``match_dense`` matches: all active parameters, or the prunable ones."""
  return float(p["avg_active_params"] if count == "total" else p["avg_active_prunable_params"])


def find_sparse_equivalent(
    fit: Any,
    dense_shape: ModelShape,
    steps: int,
    tokens_per_step: int,
    *,
    sparsities: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
    widths: Iterable[int] | None = None,
    divisor: int = WIDTH_DIVISOR,
    sparsity_schedule: str = "geometric",
    prune_start_fraction: float | None = None,
    prune_end_fraction: float | None = None,
    pruning_interval: int = recipe.PRUNING_INTERVAL,
    dense_compute_fraction: float = recipe.DENSE_COMPUTE_FRACTION,
    pruning_compute_fraction: float = recipe.PRUNING_COMPUTE_FRACTION,
    compute_rtol: float = 0.02,
    loss_tolerance: float = 0.0,
) -> dict[str, Any]:
  """The smallest final sparse model with the dense baseline's compute and no worse predicted loss.

  Candidates are every start width (default: multiples of ``width_step`` from the baseline width up to
  4x it; shapes via ``scale_shape``) times every target sparsity, with the same steps, tokens per step and
  schedule keys (``plan``'s: the step fractions derived per target from the compute split unless given). A candidate is feasible when ``|training_flops / dense_flops - 1| <= compute_rtol`` and its
  predicted loss is ``<= dense loss + loss_tolerance``. The best feasible one has the fewest final
  parameters (ties: lower predicted loss, then smaller width).

  Returns:
    ``dense`` (the baseline's plan with ``predicted_loss``), ``best`` (a candidate or ``None`` if none is
    feasible) and ``candidates`` (all, each with ``width``, ``target_sparsity``, ``predicted_loss``,
    ``compute_ratio``, ``feasible`` and its ``plan``).
  """
  base = plan(dense_shape, steps, tokens_per_step)
  base["predicted_loss"] = predict_loss(fit, base)
  step = width_step(dense_shape, divisor)
  if widths is None:
    k0 = max(1, -(-dense_shape.emb // step))
    widths = [k * step for k in range(k0, 4 * k0 + 1)]
  cands = []
  for w in widths:
    shape = scale_shape(dense_shape, int(w))
    for s in sparsities:
      p = plan(shape, steps, tokens_per_step, float(s), sparsity_schedule, prune_start_fraction,
               prune_end_fraction, pruning_interval, dense_compute_fraction, pruning_compute_fraction)
      loss = predict_loss(fit, p)
      ratio = p["training_flops"] / base["training_flops"]
      feasible = abs(ratio - 1.0) <= compute_rtol and loss <= base["predicted_loss"] + loss_tolerance
      cands.append({"width": int(w), "target_sparsity": float(s), "final_params": p["final_params"],
                    "avg_active_params": p["avg_active_params"], "predicted_loss": loss, "compute_ratio": ratio,
                    "feasible": bool(feasible), "plan": p})
  ok = [c for c in cands if c["feasible"]]
  best = min(ok, key=lambda c: (c["final_params"], c["predicted_loss"], c["width"])) if ok else None
  return {"dense": base, "best": best, "candidates": cands}


_CONFIG_KEYS = ("base_emb_dim", "base_num_query_heads", "base_num_kv_heads", "head_dim", "base_mlp_dim",
                "base_num_decoder_layers", "vocab_size", "logits_via_embedding", "steps",
                "global_batch_size_to_train_on", "max_target_length", "target_sparsity", "sparsity_schedule",
                "pruning_interval")
# Optional: unset step fractions (None or absent) are derived from the compute fractions (defaults: the paper's).
_SPLIT_KEYS = {"prune_start_fraction": None, "prune_end_fraction": None,
               "dense_compute_fraction": recipe.DENSE_COMPUTE_FRACTION,
               "pruning_compute_fraction": recipe.PRUNING_COMPUTE_FRACTION}


# The decoders ``param_counts`` describes: LLaMA's (Mistral's is the same; Mixtral's with ``num_experts`` experts).
PLAN_FAMILIES = ("llama2", "mistral", "mixtral")


def config_to_plan_inputs(config: Any) -> dict[str, Any]:
  """Keyword arguments of ``plan`` read from a MaxText-style config (attributes as in ``_CONFIG_KEYS``, and
  optionally ``_SPLIT_KEYS``).

  ``base_*`` values are used as given (MaxText's ``global_parameter_scale`` is not applied);
  ``tokens_per_step = global_batch_size_to_train_on * max_target_length``.

  Raises:
    ValueError: naming the missing attributes.
  """
  missing = [k for k in _CONFIG_KEYS if not hasattr(config, k)]
  if missing:
    raise ValueError(f"config lacks {missing}")
  c = config
  block = getattr(c, "decoder_block", "llama2")
  block = str(getattr(block, "value", block))
  if block not in PLAN_FAMILIES:
    raise ValueError(f"plan counts the parameters of LLaMA-shaped decoders (decoder_block {', '.join(PLAN_FAMILIES)}); "
                     f"decoder_block={block!r} has other layers (read a run's counts from its sparsity_summary.json)")
  experts = int(getattr(c, "num_experts", 1) or 1)
  shape = ModelShape(emb=int(c.base_emb_dim), num_query_heads=int(c.base_num_query_heads),
                     num_kv_heads=int(c.base_num_kv_heads), head_dim=int(c.head_dim), mlp_dim=int(c.base_mlp_dim),
                     num_layers=int(c.base_num_decoder_layers), vocab=int(c.vocab_size),
                     tied_embeddings=bool(c.logits_via_embedding), num_experts=experts,
                     experts_per_token=int(getattr(c, "num_experts_per_tok", 1) or 1) if experts > 1 else 1,
                     moe_mlp_dim=int(getattr(c, "base_moe_mlp_dim", 0) or 0) if experts > 1 else 0)
  return {"shape": shape, "steps": int(c.steps),
          "tokens_per_step": int(c.global_batch_size_to_train_on) * int(c.max_target_length),
          "target_sparsity": float(c.target_sparsity), "sparsity_schedule": str(c.sparsity_schedule),
          "pruning_interval": int(c.pruning_interval),
          **{k: getattr(c, k, default) for k, default in _SPLIT_KEYS.items()}}


__all__ = ["WIDTH_DIVISOR", "ModelShape", "PAPER_MODELS", "param_counts", "plan", "law_inputs", "predict_loss", "scale_shape",
           "width_step", "MATCH_COUNTS", "match_dense", "matched_average", "compare_with_dense", "find_sparse_equivalent", "config_to_plan_inputs"]
