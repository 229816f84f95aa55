"""The sparsity keys: one pydantic model, validated wherever they are given, and the schedule they give.

Every key is flat, so in MaxText it is set in YAML or as ``key=value`` on the command line like any MaxText
key (``sparsity.maxtext.config`` joins this model to MaxText's own). ``sparsity.core.pruner.PrunePlan`` takes
the same names, so a plan can be built from these keys or from any MaxText config that holds them; both check
their values with the same functions (``check_regex``, ``check_target``). ``schedule_from_config`` is the one
function that gives a config's schedule (the trainer's, the planner's and ``PrunePlan.from_config``'s).
"""

from __future__ import annotations

import re
from typing import Literal

import pydantic

from sparsity.core import compute, recipe, schedules, timeline
from sparsity.core.timeline import SCHEDULES

# Dense kernels named like MaxText's LLaMA decoder (attention q/k/v/out, MLP wi/wo, the untied output projection):
# the default of the core (``PrunePlan``). MaxText runs default to every model family's linear layers, experts
# included (``sparsity.maxtext.families``, set in ``sparsity.maxtext.config``). Embeddings and norm scales are not
# matched (paper, section 4).
DEFAULT_PRUNABLE = r"(^|/)(query|key|value|out|wi|wi_0|wi_1|wo|logits_dense)/kernel$"
SCOPES = ("global", "per_tensor")
SCORES = ("magnitude", "random")
UNSTRUCTURED = "unstructured"
# ``target_sparsity: auto``: the structure's own target (1 - N/M for N:M), else this (configs/sparse_base.yml's).
AUTO_TARGET = 0.8


def parse_structure(structure: str) -> tuple[int, int] | None:
  """``None`` for 'unstructured', ``(N, M)`` for 'N:M' (e.g. '2:4'); ValueError for anything else or N >= M."""
  if structure == UNSTRUCTURED:
    return None
  n, sep, m = str(structure).partition(":")
  if not sep or not n.strip().isdigit() or not m.strip().isdigit():
    raise ValueError(f"pruning_structure must be 'unstructured' or 'N:M' such as '2:4', got {structure!r}")
  n, m = int(n), int(m)
  if not 0 < n < m:
    raise ValueError(f"pruning_structure={structure!r}: need 0 < N < M (N weights kept in every group of M)")
  return n, m


def check_target(structure: str, target_sparsity: float) -> None:
  """ValueError if ``target_sparsity`` is above what ``structure`` allows (1 - N/M for N:M)."""
  nm = parse_structure(structure)
  if nm is not None and target_sparsity > 1.0 - nm[0] / nm[1] + 1e-12:
    raise ValueError(f"target_sparsity={target_sparsity:g} is above 1 - N/M = {1 - nm[0] / nm[1]:g} for "
                     f"pruning_structure={structure} (target_sparsity=auto is 1 - N/M)")


def check_regex(name: str, value) -> str:
  """``value`` if it compiles as a regular expression, else a ValueError naming the key ``name``."""
  try:
    re.compile(value)
  except (re.error, TypeError) as e:
    raise ValueError(f"{name} is not a valid regular expression ({e}): {value!r}") from None
  return value


def structure_target(structure: str) -> float:
  """The target sparsity of ``target_sparsity: auto`` for a structure: 1 - N/M, or ``AUTO_TARGET``."""
  nm = parse_structure(structure)
  return AUTO_TARGET if nm is None else 1.0 - nm[0] / nm[1]


class SparsityKeys(pydantic.BaseModel):
  """Sparse pre-training keys; the defaults are the paper's recipe (``sparsity.core.recipe``: dense for 25% of the
  compute, pruning every 100 steps over the next 50%, then a fixed mask)."""

  target_sparsity: float = pydantic.Field(
      0.0, ge=0.0, lt=1.0, description="Final fraction of prunable weights set to zero; 0 trains densely; 'auto': "
      "1 - N/M for an N:M structure, else 0.8."
  )
  sparsity_schedule: Literal[SCHEDULES] = pydantic.Field(  # type: ignore[valid-type]
      "geometric", description="Density after each pruning event: geometric (paper), cubic, linear, one_shot."
  )
  dense_compute_fraction: float = pydantic.Field(
      recipe.DENSE_COMPUTE_FRACTION, ge=0.0, le=1.0, description="Fraction of the training compute trained dense "
      f"(paper: {recipe.DENSE_COMPUTE_FRACTION:g}); with pruning_compute_fraction it sets the step fractions unless "
      "those are set.")
  pruning_compute_fraction: float = pydantic.Field(
      recipe.PRUNING_COMPUTE_FRACTION, ge=0.0, le=1.0, description="Fraction of the training compute spent pruning "
      f"(paper: {recipe.PRUNING_COMPUTE_FRACTION:g}); the rest is recovery with a fixed mask.")
  prune_start_fraction: float | None = pydantic.Field(
      None, ge=0.0, le=1.0, description="First event at this fraction of steps; unset: derived from the compute "
      "fractions (sparsity.core.compute.step_split).")
  prune_end_fraction: float | None = pydantic.Field(
      None, ge=0.0, le=1.0, description="Last event at this fraction of steps; unset: derived from the compute "
      f"fractions, or {recipe.STEP_FRACTIONS[1]:g} when only prune_start_fraction is set.")
  pruning_interval: int = pydantic.Field(recipe.PRUNING_INTERVAL, gt=0,
                                         description="Steps between pruning events (the paper's P).")
  pruning_scope: Literal[SCOPES] = pydantic.Field(  # type: ignore[valid-type]
      "global", description="One magnitude threshold over all prunable weights, or one per tensor."
  )
  pruning_score: Literal[SCORES] = pydantic.Field(  # type: ignore[valid-type]
      "magnitude", description="Weight importance: |w| (paper) or uniform random (baseline)."
  )
  prunable_params: str = pydantic.Field(
      DEFAULT_PRUNABLE, description="Regex (re.search) over parameter paths like 'decoder/layers/mlp/wi_0/kernel'."
  )
  non_prunable_params: str = pydantic.Field(
      "", description="Regex of parameter paths never pruned, applied after prunable_params; empty: none."
  )
  pruning_seed: int = pydantic.Field(0, description="Seed of the random score (pruning_score=random).")
  pruning_structure: str = pydantic.Field(
      UNSTRUCTURED, description="'unstructured', or 'N:M': at most N non-zeros in every group of M consecutive "
      "weights along each kernel's contraction (input) dimension; the top N of each group are never pruned.")
  init_mask_from_zeros: bool = pydantic.Field(
      False,
      description="Sparse fine-tuning: at the first step, mask every prunable weight that is exactly zero (e.g. "
      "loaded from a sparse checkpoint with load_parameters_path) and hold that mask fixed.",
  )

  @pydantic.model_validator(mode="before")
  @classmethod
  def _auto_target(cls, data):
    if isinstance(data, dict) and str(data.get("target_sparsity")) == "auto":
      data = dict(data)
      structure = data.get("pruning_structure", UNSTRUCTURED)
      data["target_sparsity"] = structure_target(cls._valid_structure(structure))
    return data

  @pydantic.field_validator("pruning_structure", mode="before")
  @classmethod
  def _valid_structure(cls, v):
    if isinstance(v, int) and not isinstance(v, bool) and v >= 60:
      # YAML 1.1 (MaxText's config files and key=value overrides) reads an unquoted 2:4 as the base-60 integer 124.
      v = f"{v // 60}:{v % 60}"
    parse_structure(str(v))
    return str(v)

  @pydantic.model_validator(mode="after")
  def _target_fits_the_structure(self):
    check_target(self.pruning_structure, self.target_sparsity)
    return self

  @pydantic.field_validator("prunable_params", "non_prunable_params")
  @classmethod
  def _valid_regex(cls, v: str, info: pydantic.ValidationInfo) -> str:
    return check_regex(info.field_name, v)

  @pydantic.model_validator(mode="after")
  def _finetune_holds_the_mask(self):
    if self.init_mask_from_zeros and self.target_sparsity > 0:
      raise ValueError(
          "init_mask_from_zeros=true holds the loaded zero pattern fixed; set target_sparsity=0 (got "
          f"{self.target_sparsity})"
      )
    return self

  @pydantic.model_validator(mode="after")
  def _ordered_fractions(self):
    if self.prune_start_fraction is None and self.prune_end_fraction is None:
      return self  # derived from the compute split: ordered by construction
    start, end, _ = compute.step_split(self)
    if start > end:
      unset = "prune_end_fraction" if self.prune_end_fraction is None else \
          "prune_start_fraction" if self.prune_start_fraction is None else None
      note = f" ({unset} is unset: its step default when the other one is set)" if unset else ""
      raise ValueError(f"prune_start_fraction ({start}) must be <= prune_end_fraction ({end}){note}")
    return self

  @pydantic.model_validator(mode="after")
  def _valid_compute_split(self):
    compute.check_split(self.dense_compute_fraction, self.pruning_compute_fraction)
    return self


SPARSITY_KEYS = tuple(SparsityKeys.model_fields)


def schedule_from_config(config) -> timeline.Schedule:
  """The schedule of a config: ``schedules.make_schedule`` of its keys (attributes ``steps``, ``target_sparsity``,
  ``sparsity_schedule``, ``pruning_interval``, and optionally ``prune_start_fraction`` / ``prune_end_fraction``
  (None: unset, so the compute split places the events) and ``dense_compute_fraction`` /
  ``pruning_compute_fraction``): a ``SparsityKeys``, a MaxText config, or any namespace."""
  return schedules.make_schedule(
      steps=int(config.steps), target_sparsity=float(config.target_sparsity),
      schedule=str(config.sparsity_schedule), interval=int(config.pruning_interval),
      start_fraction=getattr(config, "prune_start_fraction", None),
      end_fraction=getattr(config, "prune_end_fraction", None),
      dense_fraction=float(getattr(config, "dense_compute_fraction", recipe.DENSE_COMPUTE_FRACTION)),
      pruning_fraction=float(getattr(config, "pruning_compute_fraction", recipe.PRUNING_COMPUTE_FRACTION)))
