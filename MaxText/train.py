"""Sparse pre-training with MaxText: ``python MaxText/train.py configs/sparse_base.yml target_sparsity=0.8``.

Takes MaxText's own argv (a YAML file, then ``key=value`` overrides), installs the pruner at MaxText's
extension points (``sparsity/maxtext_hook.py``) and runs MaxText's own pre-training loop.

On a machine without an accelerator it sets the few things MaxText needs to run on the CPU (unless given):
``JAX_PLATFORMS=cpu``, ``DECOUPLE_GCLOUD=TRUE``, ``skip_jax_distributed_system=true`` and
``attention=dot_product``. On TPU/GPU nothing is forced.
"""

import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _has_accelerator() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0] not in ("cpu", "")
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or glob.glob("/dev/nvidia[0-9]*"))


def cpu_defaults(argv: list[str]) -> list[str]:
  """argv with the CPU-only settings appended where the user did not set them (environment is updated)."""
  os.environ.setdefault("DECOUPLE_GCLOUD", "TRUE")
  if _has_accelerator():
    return argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  given = {a.split("=", 1)[0] for a in argv if "=" in a}
  extra = [f"{k}={v}" for k, v in (("skip_jax_distributed_system", "true"), ("attention", "dot_product")) if k not in given]
  return argv + extra


def main() -> None:
  argv = cpu_defaults(sys.argv)
  from absl import app  # pylint: disable=import-outside-toplevel
  from sparsity import maxtext_hook  # pylint: disable=import-outside-toplevel

  app.run(maxtext_hook.main, argv=argv)


if __name__ == "__main__":
  main()
