"""``python -m sparsity <command>``: see ``sparsity.cli``."""

import os

# The scaling-law fits make thousands of tiny L-BFGS-B calls; OpenBLAS threads only add spinning CPU load
# there. Respect an explicit setting; must happen before numpy/scipy are imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from sparsity.maxtext.host import cpu_platform  # noqa: E402  (no JAX or MaxText import)

cpu_platform()

from sparsity.cli import main  # noqa: E402

if __name__ == "__main__":
  raise SystemExit(main())
