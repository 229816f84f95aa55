"""Runs several configurations that must fail before compiling through one entry point, in one process.

``python tests/many_configs.py train|compile CASES_JSON``: CASES_JSON is a list of argv lists (each the arguments of
``MaxText/train.py`` or ``MaxText/train_compile.py`` after the script name). Each case runs what that script runs
(``MaxText/train.py``: ``sparsity.maxtext.host.cpu_defaults`` then ``sparsity.maxtext.hook.main``;
``MaxText/train_compile.py``: ``sparsity.maxtext.aot.main``), its output between the lines ``@@case I@@`` and
``@@end I CODE@@`` (CODE: 0 when it returned, the ``SystemExit`` code, or 1 when it raised, with the traceback
printed as the scripts print it). Importing MaxText once for all cases is what makes this cheaper than one
process per case (``conftest.run_configs``); each case installs the hooks afresh, with a run state of its own.
"""

import json
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _one(entry, argv):
  from sparsity.maxtext import aot, hook  # pylint: disable=import-outside-toplevel
  from sparsity.maxtext.host import cpu_defaults  # pylint: disable=import-outside-toplevel

  try:
    if entry == "train":
      hook.main(cpu_defaults(argv))
    else:
      aot.main(argv)
    return 0
  except SystemExit as e:
    if e.code not in (None, 0) and not isinstance(e.code, int):
      print(e.code, file=sys.stderr)
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    return 1


def main():
  entry, cases = sys.argv[1], json.loads(sys.argv[2])
  if entry not in ("train", "compile"):
    raise SystemExit(f"unknown entry {entry!r}")
  script = os.path.join(ROOT, "MaxText", "train.py" if entry == "train" else "train_compile.py")
  if entry == "compile":
    from sparsity.maxtext.host import cpu_platform  # pylint: disable=import-outside-toplevel

    os.environ.setdefault("DECOUPLE_GCLOUD", "TRUE")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    cpu_platform()
  from absl import app  # pylint: disable=import-outside-toplevel

  def run(_):
    for i, args in enumerate(cases):
      print(f"@@case {i}@@", flush=True)
      code = _one(entry, [script, *args])
      sys.stdout.flush()
      sys.stderr.flush()
      print(f"@@end {i} {code}@@", flush=True)
    # as MaxText/train.py does: leave without the interpreter's teardown, which can abort the process after
    # TensorFlow's data threads ran (exit -6 after everything was written)
    os._exit(0)  # pylint: disable=protected-access

  app.run(run, argv=[script])


if __name__ == "__main__":
  main()
