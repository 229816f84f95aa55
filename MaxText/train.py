"""Sparse pre-training with MaxText: ``python MaxText/train.py configs/sparse_base.yml target_sparsity=0.8``.

Takes MaxText's own argv (a YAML file, then ``key=value`` overrides), installs the pruner at MaxText's
extension points (``sparsity/maxtext/hook.py``) and runs MaxText's own pre-training loop.

On a machine without an accelerator it sets the few things MaxText needs to run on the CPU (unless given):
``JAX_PLATFORMS=cpu``, ``DECOUPLE_GCLOUD=TRUE``, ``skip_jax_distributed_system=true`` and
``attention=dot_product``. On TPU/GPU nothing is forced.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def main() -> None:
  from sparsity.maxtext.host import cpu_defaults  # pylint: disable=import-outside-toplevel

  argv = cpu_defaults(sys.argv)
  from absl import app  # pylint: disable=import-outside-toplevel
  from sparsity.maxtext import hook  # pylint: disable=import-outside-toplevel

  app.run(hook.main, argv=argv)


if __name__ == "__main__":
  main()
