"""What MaxText needs on a host without an accelerator (shared by MaxText/train.py and the model tools)."""

from __future__ import annotations

import glob
import os
from typing import Sequence

# MaxText keys set on a CPU-only host unless the user sets them.
CPU_OVERRIDES = ("skip_jax_distributed_system=true", "attention=dot_product")


def has_accelerator() -> bool:
  """``JAX_PLATFORMS`` if set, else whether TPU or GPU device files exist (JAX itself is not initialised)."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0] not in ("cpu", "")
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or glob.glob("/dev/nvidia[0-9]*"))


def given_keys(argv: Sequence[str]) -> set[str]:
  """Keys set as ``key=value`` in ``argv``."""
  return {a.split("=", 1)[0] for a in argv if "=" in a}


def cpu_defaults(argv: list[str], extra: Sequence[str] = ()) -> list[str]:
  """``argv`` plus the CPU settings (and ``extra``) the user did not give; sets the environment MaxText needs.

  ``DECOUPLE_GCLOUD=TRUE`` (MaxText's switch that stubs Google Cloud clients) is the default everywhere; on a
  host without an accelerator also ``JAX_PLATFORMS=cpu`` and ``CPU_OVERRIDES``. On TPU/GPU nothing is forced.
  """
  os.environ.setdefault("DECOUPLE_GCLOUD", "TRUE")
  if has_accelerator():
    return list(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  given = given_keys(argv)
  return list(argv) + [o for o in (*CPU_OVERRIDES, *extra) if o.split("=", 1)[0] not in given]
