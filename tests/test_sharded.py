"""The pruner on weights sharded over 4 simulated devices: same masks as on one device, nothing gathered."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, cpu_env


@pytest.mark.slow  # a subprocess with 4 simulated devices
def test_sharded_selection_equals_single_device_and_gathers_nothing():
  env = cpu_env(devices=4)
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharded_pruning_script.py")], env=env,
                       capture_output=True, text=True, timeout=600, check=True)
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["equal"] and r["kept"] == r["k"]
  # The collective parser finds a gather where there must be one (a sharded weight replicated), and the asynchronous
  # form TPU programs print (``all-gather-start(`` with a tuple result): the checks below can fail.
  assert any(c["op"] == "all-gather" and c["elements"] == r["control_elements"] for c in r["control_gather"]), r
  assert r["control_async"] == [{"op": "all-gather", "async": "-start", "dtype": "f32", "elements": 64 * 512}], r
  # No gather or all-to-all at all; the only cross-device traffic is histogram/count reductions,
  # far smaller than any weight shard.
  assert not [c for c in r["collectives"] if c["op"] in ("all-gather", "all-to-all", "collective-permute")], r
  assert r["collectives"], "expected all-reduces of per-shard counts"
  assert max(c["elements"] for c in r["collectives"]) <= 256 < r["largest_weight_shard"]
