"""Where this repository's own files are (the package runs from a checkout, beside ``MaxText/train.py``)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(ROOT, "MaxText", "train.py")
CONFIGS = os.path.join(ROOT, "configs")
SWEEPS = os.path.join(CONFIGS, "sweeps")
