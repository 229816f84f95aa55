"""Ahead-of-time compile of a sparse run for a TPU topology, on this host (no TPU needed).

``python MaxText/train_compile.py configs/sparse_base.yml compile_topology=v5p-128 compile_topology_num_slices=1
[key=value ...]``: the argv of ``MaxText/train.py`` plus MaxText's train_compile keys. Compiles every program the
run executes (train step, pruning event, final mask count, eval step) with the pruner installed as in training,
prints per-chip memory and XLA's estimated seconds, and writes
``<base_output_directory>/<run_name>/compile_summary.json`` (``sparsity/maxtext/aot.py``). Exits 2 on a
configuration that cannot be compiled for the topology, 3 when a program would not fit in the chips' HBM.

Needs the TPU runtime (``libtpu``), which ``setup.sh`` installs. On a host without an accelerator it sets
``JAX_PLATFORMS=cpu`` and ``DECOUPLE_GCLOUD=TRUE`` unless given; no MaxText key is forced (the program compiled is
the one the TPU would run).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def main() -> None:
  from sparsity.maxtext.host import cpu_platform  # pylint: disable=import-outside-toplevel

  os.environ.setdefault("DECOUPLE_GCLOUD", "TRUE")
  cpu_platform()
  # The compile only describes the target chips: it may run while another process holds the TPU runtime's lock.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from absl import app  # pylint: disable=import-outside-toplevel

  from sparsity.maxtext import aot  # pylint: disable=import-outside-toplevel

  app.run(aot.main, argv=sys.argv)


if __name__ == "__main__":
  main()
