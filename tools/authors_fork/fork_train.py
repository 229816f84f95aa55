"""Runs the authors' fork's ``MaxText/train.py`` unmodified, under the fork's own Python (not ours).

  <fork venv>/bin/python tools/authors_fork/fork_train.py --fork <checkout> --num-epochs 100 -- <fork train.py argv>

One run-time setting is made, and only one: the fork's tfds training pipeline calls
``preprocessing_pipeline`` without an epoch count, so it reads the training split once and stops; our
MaxText reads it ``num_epoch`` times (the study's budgets are several epochs). The wrapper passes
``num_epochs`` to the training call only (the evaluation pipeline, ``shuffle=False``, still reads the
validation split once). Nothing of the fork's files is changed or copied.
"""

from __future__ import annotations

import argparse
import functools
import os
import runpy
import sys


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fork", required=True, help="checkout of tjingrant/sparse-llm-code")
  parser.add_argument("--num-epochs", type=int, default=1, help="epochs of the training split (ours: num_epoch)")
  parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then train.py's own arguments")
  args = parser.parse_args()
  argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
  maxtext = os.path.join(os.path.abspath(args.fork), "MaxText")
  script = os.path.join(maxtext, "train.py")
  if not os.path.isfile(script):
    sys.exit(f"no MaxText/train.py under {args.fork}: pass a checkout of the fork")
  sys.path.insert(0, maxtext)
  from input_pipeline import _tfds_data_processing as tfds_pipeline  # pylint: disable=import-outside-toplevel

  original = tfds_pipeline.preprocessing_pipeline

  @functools.wraps(original)
  def pipeline(*a, shuffle: bool = False, **kw):
    if shuffle and "num_epochs" not in kw:  # the training call (evaluation is never shuffled)
      kw["num_epochs"] = args.num_epochs
    return original(*a, shuffle=shuffle, **kw)

  tfds_pipeline.preprocessing_pipeline = pipeline
  sys.argv = [script, *argv]
  runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
  main()
