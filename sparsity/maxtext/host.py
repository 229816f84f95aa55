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


def cpu_platform() -> None:
  """On a host without an accelerator, ``JAX_PLATFORMS=cpu`` unless set: JAX then never loads the TPU runtime
  (``libtpu``, installed for ahead-of-time compiles), which would print warnings and hold its one-process lock."""
  if not has_accelerator():
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def given_keys(argv: Sequence[str]) -> set[str]:
  """Keys set as ``key=value`` in ``argv``."""
  return {a.split("=", 1)[0] for a in argv if "=" in a}


def cpu_defaults(argv: list[str], extra: Sequence[str] = ()) -> list[str]:
  """``argv`` plus ``extra`` and the CPU settings that the user did not give; sets the environment MaxText needs.

  ``DECOUPLE_GCLOUD=TRUE`` (MaxText's switch that stubs Google Cloud clients) is the default everywhere, and so
  are ``extra``; on a host without an accelerator also ``JAX_PLATFORMS=cpu`` and ``CPU_OVERRIDES``. On TPU/GPU
  nothing else is forced.
  """
  os.environ.setdefault("DECOUPLE_GCLOUD", "TRUE")
  wanted = list(extra)
  cpu_platform()
  if not has_accelerator():
    wanted += CPU_OVERRIDES
  given = given_keys(argv)
  out = list(argv)
  for o in wanted:
    key = o.split("=", 1)[0]
    if key not in given:
      out.append(o)
      given.add(key)
  return out


def single_process(argv: list[str], extra: Sequence[str] = ()) -> list[str]:
  """``cpu_defaults`` for a tool that loads a model in this one process (export, generate): also
  ``skip_jax_distributed_system=true`` on any host, unless given (there is no job of several processes)."""
  return cpu_defaults(argv, extra=tuple(extra) + ("skip_jax_distributed_system=true",))
