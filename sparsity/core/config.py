"""The sparsity keys: one pydantic model, validated wherever they are given.

Every key is flat, so in MaxText it is set in YAML or as ``key=value`` on the command line like any MaxText
key (``sparsity.maxtext.config`` joins this model to MaxText's own). ``sparsity.core.pruner.PrunePlan`` takes
the same names, so a plan can be built from these keys or from any MaxText config that holds them.
"""

from __future__ import annotations

import re
from typing import Literal

import pydantic

from sparsity.core.schedules import SCHEDULES

# Linear-layer kernels of MaxText's decoders: attention q/k/v/out, MLP wi/wo, and the untied output
# projection. Embeddings and norm scales are not matched (paper, section 4).
DEFAULT_PRUNABLE = r"(^|/)(query|key|value|out|wi|wi_0|wi_1|wo|logits_dense)/kernel$"
SCOPES = ("global", "per_tensor")
SCORES = ("magnitude", "random")


class SparsityKeys(pydantic.BaseModel):
  """Sparse pre-training keys (paper: dense 25%, gradual pruning every 100 steps until 75%, then fixed mask)."""

  target_sparsity: float = pydantic.Field(
      0.0, ge=0.0, lt=1.0, description="Final fraction of prunable weights set to zero; 0 trains densely."
  )
  sparsity_schedule: Literal[SCHEDULES] = pydantic.Field(  # type: ignore[valid-type]
      "geometric", description="Density after each pruning event: geometric (paper), cubic, linear, one_shot."
  )
  prune_start_fraction: float = pydantic.Field(0.25, ge=0.0, le=1.0, description="First event at this fraction of steps.")
  prune_end_fraction: float = pydantic.Field(0.75, ge=0.0, le=1.0, description="Last event at this fraction of steps.")
  pruning_interval: int = pydantic.Field(100, gt=0, description="Steps between pruning events (the paper's P).")
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
  init_mask_from_zeros: bool = pydantic.Field(
      False,
      description="Sparse fine-tuning: at the first step, mask every prunable weight that is exactly zero (e.g. "
      "loaded from a sparse checkpoint with load_parameters_path) and hold that mask fixed.",
  )

  @pydantic.field_validator("prunable_params", "non_prunable_params")
  @classmethod
  def _valid_regex(cls, v: str) -> str:
    try:
      re.compile(v)
    except re.error as e:
      raise ValueError(f"not a valid regular expression ({e}): {v!r}") from e
    return v

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
    if self.prune_start_fraction > self.prune_end_fraction:
      raise ValueError(
          f"prune_start_fraction ({self.prune_start_fraction}) must be <= prune_end_fraction "
          f"({self.prune_end_fraction})"
      )
    return self


SPARSITY_KEYS = tuple(SparsityKeys.model_fields)
