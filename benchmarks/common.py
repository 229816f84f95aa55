"""Shared benchmark helpers: machine description and result files."""

import os
import platform
import subprocess

from sparsity import files
from sparsity.maxtext.host import cpu_platform
from sparsity.repo import ROOT

cpu_platform()  # a benchmark's own JAX on a CPU-only host stays on the CPU (the TPU runtime is installed, not used)

RESULTS = os.path.join(ROOT, "benchmarks", "results")


def machine() -> dict:
  import jax  # pylint: disable=import-outside-toplevel

  cpu = ""
  try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo", encoding="utf-8") if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
  return {
      "cpu": cpu,
      "cores": os.cpu_count(),
      "memory_gib": round(mem, 1),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "commit": commit,
  }


def write(name: str, payload: dict) -> str:
  """``benchmarks/results/<name>.json``: ``payload`` with the machine it ran on."""
  return files.write_json(os.path.join(RESULTS, f"{name}.json"), {"machine": machine(), **payload})
