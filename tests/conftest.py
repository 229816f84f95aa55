"""Shared test helpers: run MaxText/train.py (and plain MaxText) in a subprocess on simulated CPU devices."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
C4 = os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "c4_en_minimal"))

# A tiny LLaMA-2 (2 layers, width 64, vocab 1024 for synthetic data) for end-to-end runs.
TINY = [
    "base_emb_dim=64",
    "base_num_query_heads=4",
    "base_num_kv_heads=4",
    "head_dim=16",
    "base_mlp_dim=256",
    "base_num_decoder_layers=2",
    "max_target_length=64",
]


def run_train(args, tmp_path, devices=1, module=None, check=True, timeout=900, xla_flags=""):
  """Runs ``MaxText/train.py`` (or ``python -m module``) with args; returns the CompletedProcess."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["DECOUPLE_GCLOUD"] = "TRUE"
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {xla_flags}".strip()
  env["PYTHONPATH"] = ROOT
  cmd = [sys.executable, "-m", module] if module else [sys.executable, os.path.join(ROOT, "MaxText", "train.py")]
  out = subprocess.run(
      cmd + list(args) + [f"base_output_directory={tmp_path}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
  )
  if check and out.returncode != 0:
    raise AssertionError(f"train failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
  return out


def read_metrics(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def read_tensorboard(run_dir):
  """{tag: {step: value}} of the scalars in the TensorBoard event files under ``run_dir``."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel

  out = {}
  for events in sorted(glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True)):
    acc = event_accumulator.EventAccumulator(events, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    for tag in acc.Tags()["scalars"]:
      out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
  return out


def read_summary(tmp_path, run_name):
  with open(os.path.join(tmp_path, run_name, "sparsity_summary.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture
def c4_path():
  if not os.path.isdir(C4):
    pytest.fail(f"the C4 slice is missing at {C4} (../shared/data beside the repository)")
  return C4
