"""The pruner on weights sharded over 4 simulated devices: same masks as on one device, nothing gathered."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, cpu_env


@pytest.mark.slow  # a subprocess with 4 simulated devices
@pytest.mark.parametrize("max_chunk", [None, 3000], ids=["whole", "chunked"])
def test_sharded_selection_equals_single_device_and_gathers_nothing(max_chunk):
  """``chunked``: every weight is counted in chunks of rows whose boundaries are not the shards' (as an array past
  2**31 entries is); the chunks are counted in place, so nothing moves between devices either."""
  env = cpu_env(devices=4)
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharded_pruning_script.py")]
                       + ([str(max_chunk)] if max_chunk else []), env=env,
                       capture_output=True, text=True, timeout=600, check=True)
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["equal"] and r["kept"] == r["k"] == r["counted"]
  assert (min(r["chunks"].values()) > 1) == bool(max_chunk), r["chunks"]
  # The collective parser finds a gather where there must be one (a sharded weight replicated), and the asynchronous
  # form TPU programs print (``all-gather-start(`` with a tuple result): the checks below can fail.
  assert any(c["op"] == "all-gather" and c["elements"] == r["control_elements"] for c in r["control_gather"]), r
  assert r["control_async"] == [{"op": "all-gather", "async": "-start", "dtype": "f32", "elements": 64 * 512}], r
  # No gather or all-to-all at all; the only cross-device traffic is histogram/count reductions,
  # far smaller than any weight shard.
  assert not [c for c in r["collectives"] if c["op"] in ("all-gather", "all-to-all", "collective-permute")], r
  assert r["collectives"], "expected all-reduces of per-shard counts"
  assert max(c["elements"] for c in r["collectives"]) <= 256 < r["largest_weight_shard"]
