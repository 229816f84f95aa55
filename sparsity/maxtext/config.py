"""MaxText's pydantic config joined with the sparsity keys, and loading it from MaxText argv without training."""

from __future__ import annotations

import functools
import os

import pydantic

from sparsity.core.config import SparsityKeys, schedule_from_config
from sparsity.maxtext import families, modules


@functools.cache
def config_class():
  """MaxText's ``types.MaxTextConfig`` extended with ``sparsity.core.config.SparsityKeys``."""

  class SparseMaxTextConfig(modules.types().MaxTextConfig, SparsityKeys):
    """MaxText config + sparse pre-training keys."""

    # The default follows sparsity.maxtext.families: every MaxText family's linear layers, experts included.
    prunable_params: str = pydantic.Field(
        families.default_prunable(), description="Regex (re.search) over parameter paths like "
        "'decoder/layers/mlp/wi_0/kernel'; default: the linear layers of every family in sparsity/maxtext/families.py; "
        "'+REGEX': that default and REGEX (e.g. '+(^|/)gate/kernel$' adds the MoE routers).")

    @pydantic.field_validator("prunable_params", mode="before")
    @classmethod
    def _plus_default(cls, v):
      return families.extend_default(v) if isinstance(v, str) else v

    @pydantic.field_validator("load_parameters_path", "load_full_state_path", mode="before")
    @classmethod
    def _absolute(cls, v):
      return absolute_local_path(v)

    @pydantic.model_validator(mode="after")
    def _schedule_fits_run(self):
      if self.target_sparsity > 0:
        try:
          schedule_from_config(self)
        except ValueError as e:
          raise ValueError(f"sparsity schedule: {e}") from e
      return self

  return SparseMaxTextConfig


def absolute_local_path(path):
  """A local checkpoint path made absolute against the working directory (Orbax restores only absolute paths, and
  says so deep inside the restore); URLs (``gs://...``) and empty values unchanged."""
  if isinstance(path, str) and path and "://" not in path and not os.path.isabs(path):
    return os.path.abspath(os.path.expanduser(path))
  return path


def load_config(argv):
  """MaxText's config from ``[yaml, key=value, ...]`` with the sparsity keys validated (no training)."""
  return modules.pyconfig().initialize(["", *argv], config_class=config_class())


__all__ = ["absolute_local_path", "config_class", "load_config"]
