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

  app.run(_run_then_exit, argv=argv)


def _run_then_exit(argv) -> None:
  """MaxText's main through the hook; then, in a single process, leave without the interpreter's teardown: exit
  code 0 after a run that ended without an exception, else the code of its end (``sparsity.maxtext.status``:
  143 preempted, 130 interrupted, 1 diverged or failed, or the code of a ``SystemExit`` inside MaxText's loop), with
  the traceback of a failure printed.

  Everything is written by then (checkpoints waited for, the summary, the logs flushed below). The teardown
  only destroys TensorFlow's data threads, and on this machine that intermittently aborts the process
  ("terminate called without an active exception", exit -6) after a run that succeeded. With several
  processes the normal exit is kept (JAX's distributed shutdown runs at exit; an exception exits non-zero, a
  preempted run with the same code as in one process).
  """
  import traceback  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel

  from sparsity.maxtext import hook, loop, status  # pylint: disable=import-outside-toplevel

  code = 0
  try:
    hook.main(argv)
  except (loop.RunPreempted, loop.RunInterrupted, loop.RunDiverged) as e:
    print(str(e), flush=True)
    code = e.exit_code
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() > 1:
      raise
    traceback.print_exc()
    code = e.exit_code if isinstance(e, loop.RunEnded) else status.FAILED_EXIT_CODE
  except KeyboardInterrupt:  # before or after the training loop (inside it, SIGINT stops after the step)
    print("interrupted (SIGINT) outside the training loop", flush=True)
    code = status.INTERRUPTED_EXIT_CODE

  if jax.process_count() == 1:
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  if code:
    sys.exit(code)


if __name__ == "__main__":
  main()
