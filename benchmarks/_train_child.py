"""Runs MaxText/train.py with argv, recording XLA backend compile times to $COMPILE_LOG (one JSON list)."""

import atexit
import json
import os
import runpy
import sys

import jax

_durations = []


def _listener(event, duration, **_):
  if event == "/jax/core/compile/backend_compile_duration":
    _durations.append(duration)


jax.monitoring.register_event_duration_secs_listener(_listener)


@atexit.register
def _dump():
  with open(os.environ["COMPILE_LOG"], "w", encoding="utf-8") as f:
    json.dump(_durations, f)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.argv = [os.path.join(ROOT, "MaxText", "train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
