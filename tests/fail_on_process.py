"""MaxText/train.py, except that process 1 of a multi-process job fails at once (exit code 3) before joining JAX's
distributed start-up, as a crashed host would: the others would wait for it for minutes."""

import os
import runpy
import sys

if os.environ.get("JOB_COMPLETION_INDEX") == "1":
  print("process 1: simulated failure", flush=True)
  sys.exit(3)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.argv = [os.path.join(ROOT, "MaxText", "train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
