"""Shared test helpers: run MaxText/train.py, plain MaxText or ``python -m sparsity`` in a subprocess on CPU devices.

Markers: ``slow`` marks tests that train through MaxText, start subprocesses (``python -m sparsity``, several
devices) or install packages; ``pytest -m "not slow"`` runs the rest offline in about 40 s on 2 cores (``cli`` runs
the command line in this process). CI runs everything.

Tests run in parallel (pytest-xdist, ``pytest.ini``): one worker per core, at most one per 3 GiB of memory (an
end-to-end run takes up to 1.5 GB), and each test file on one worker (``--dist loadfile``: the module fixtures that
share one training run between several tests run once); files with end-to-end runs are scheduled first.
"""

import contextlib
import fcntl
import glob
import io
import json
import os
import subprocess
import sys
import traceback

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as ``python -m sparsity`` sets it, before numpy is imported

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
C4 = os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "c4_en_minimal"))

from sparsity.maxtext import layout  # noqa: E402  (after the path is set)
from sparsity.maxtext.host import cpu_platform  # noqa: E402

cpu_platform()  # in-process JAX on the CPU (the TPU runtime, installed for ahead-of-time compiles, stays unloaded)

# A tiny LLaMA-2 (2 layers, width 64) for end-to-end runs.
TINY = [
    "base_emb_dim=64",
    "base_num_query_heads=4",
    "base_num_kv_heads=4",
    "head_dim=16",
    "base_mlp_dim=256",
    "base_num_decoder_layers=2",
    "max_target_length=64",
]
C4_TFDS = ["dataset_type=tfds", f"dataset_path={C4}", "dataset_name=c4/en:3.1.0", "eval_dataset_name=c4/en:3.1.0"]


def cpu_env(devices=1, xla_flags=""):
  """The environment of a CPU subprocess with ``devices`` simulated devices."""
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", DECOUPLE_GCLOUD="TRUE", PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {xla_flags}".strip())
  return env


def run_train(args, tmp_path, devices=1, module=None, check=True, timeout=900, xla_flags=""):
  """Runs ``MaxText/train.py`` (or ``python -m module``) with args; returns the CompletedProcess."""
  cmd = [sys.executable, "-m", module] if module else [sys.executable, os.path.join(ROOT, "MaxText", "train.py")]
  out = subprocess.run(
      cmd + list(args) + [f"base_output_directory={tmp_path}"],
      cwd=ROOT, env=cpu_env(devices, xla_flags), capture_output=True, text=True, timeout=timeout, check=False,
  )
  if check and out.returncode != 0:
    raise AssertionError(f"train failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
  return out


def run_configs(cases, tmp_path, entry="train", devices=1, timeout=900, env=None):
  """Runs configurations that must fail before compiling, all in one process (``tests/many_configs.py``: MaxText
  imported once): ``cases`` are argv lists of ``MaxText/train.py`` (``entry="train"``) or ``MaxText/train_compile.py``
  (``"compile"``), each given ``base_output_directory=tmp_path``. Returns one ``(exit code, output)`` per case."""
  import re  # pylint: disable=import-outside-toplevel

  cases = [[*map(str, c), f"base_output_directory={tmp_path}"] for c in cases]
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "many_configs.py"), entry, json.dumps(cases)],
                       cwd=ROOT, env=env or cpu_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout, check=False)
  found = re.findall(r"^@@case (\d+)@@\n(.*?)^@@end \1 (-?\d+)@@$", out.stdout, flags=re.M | re.S)
  assert out.returncode == 0 and len(found) == len(cases), out.stdout[-6000:]
  return [(int(code), text) for _, text, code in found]


def run_cli(args, timeout=900, cwd=ROOT):
  """``python -m sparsity ARGS`` in a subprocess: (returncode, stdout, stderr)."""
  out = subprocess.run([sys.executable, "-m", "sparsity", *map(str, args)], cwd=cwd, env=cpu_env(),
                       capture_output=True, text=True, timeout=timeout, check=False)
  return out.returncode, out.stdout, out.stderr


def cli(args, cwd=ROOT):
  """``python -m sparsity ARGS`` in this process: (returncode, stdout, stderr), as ``run_cli`` returns them (an
  exception escaping the command is exit code 1 with its traceback on stderr, as in a subprocess)."""
  from sparsity.cli import main  # pylint: disable=import-outside-toplevel

  out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
  os.chdir(cwd)
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = main([str(a) for a in args])
      except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if isinstance(e.code, str):
          print(e.code, file=sys.stderr)
      except Exception:  # pylint: disable=broad-exception-caught
        traceback.print_exc()
        code = 1
  finally:
    os.chdir(here)
  return code, out.getvalue(), err.getvalue()


def kill_at_checkpoint(procs, run_dir, step, timeout=600):
  """Waits until the run in ``run_dir`` has its checkpoint of ``step``, then SIGKILLs ``procs`` (started with
  ``start_new_session=True``); asserts the checkpoint exists and the run did not finish first."""
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  marker = layout.items_dir(layout.checkpoints_dir(str(run_dir)), step)
  deadline = time.time() + timeout
  while not os.path.isdir(marker) and all(p.poll() is None for p in procs) and time.time() < deadline:
    time.sleep(0.05)
  for p in procs:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
  assert os.path.isdir(marker), f"the run never reached its step-{step} checkpoint"
  assert not os.path.exists(layout.summary_path(str(run_dir))), "the run finished before the kill"


def terminate_at_checkpoint(proc, run_dir, step, timeout=600):
  """Waits until the run in ``run_dir`` has its checkpoint of ``step``, then sends SIGTERM (a preemption notice) to
  ``proc``'s process group (started with ``start_new_session=True``) and waits for it to end; returns its exit code.
  Asserts the checkpoint exists and the run did not finish first."""
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  marker = layout.items_dir(layout.checkpoints_dir(str(run_dir)), step)
  deadline = time.time() + timeout
  while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  finished = proc.poll() is not None
  if not finished:
    os.killpg(proc.pid, signal.SIGTERM)
  try:
    code = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    raise
  assert os.path.isdir(marker), f"the run never reached its step-{step} checkpoint"
  assert not finished, f"the run ended (exit code {proc.returncode}) before the SIGTERM"
  return code


def start_train(args, env=None):
  """``MaxText/train.py args`` started in its own session (output discarded), for ``kill_at_checkpoint``."""
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "MaxText", "train.py"), *args], cwd=ROOT,
                          env=env or cpu_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)


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
  with open(layout.summary_path(layout.run_dir(str(tmp_path), run_name)), encoding="utf-8") as f:
    return json.load(f)


def final_state(run_dir):
  """Parameters and masks of a run's latest checkpoint (``sparsity.maxtext.checkpoint.ModelState``)."""
  from sparsity.maxtext import checkpoint  # pylint: disable=import-outside-toplevel

  return checkpoint.load(checkpoint.locate(str(run_dir)).items_dir)


@pytest.fixture
def c4_path():
  if not os.path.isdir(C4):
    pytest.fail(f"the C4 slice is missing at {C4} (../shared/data beside the repository)")
  return C4


@pytest.fixture(scope="session")
def hf_python():
  """The Python of .venv-hf (PyTorch, transformers, compressed-tensors), made by tools/setup_hf_env.sh (idempotent)."""
  with open(os.path.join(ROOT, ".venv-hf.lock"), "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one test worker installs it, the others wait
    _setup_hf_env()
  return os.path.join(ROOT, ".venv-hf", "bin", "python")


def _setup_hf_env():
  if not os.path.isfile(os.path.join(ROOT, ".venv-hf", ".setup-stamp")):
    out = subprocess.run(["bash", os.path.join(ROOT, "tools", "setup_hf_env.sh")], cwd=ROOT, capture_output=True,
                         text=True, timeout=1800, check=False)
    assert out.returncode == 0, f"tools/setup_hf_env.sh failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"


def pytest_xdist_auto_num_workers(config):  # pylint: disable=unused-argument
  """``-n auto``: one worker per core, at most one per 3 GiB of memory and at most 8."""
  cores = len(os.sched_getaffinity(0))
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return max(1, min(cores, int(memory // 3), 8))


# The test files with the longest end-to-end work, longest first (measured in CI: each takes 3-10 minutes of one
# worker). Starting them first keeps the workers busy to the end (the short files fill in behind them).
LONGEST_FIRST = ("test_study.py", "test_run_end.py", "test_e2e.py", "test_failures_e2e.py", "test_aot.py",
                 "test_model_tools.py",
                 "test_nm_e2e.py", "test_sweep.py", "test_families_e2e.py", "test_preemption_e2e.py",
                 "test_recover_e2e.py")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """The LONGEST_FIRST files first, in that order, then the other files with slow tests, then the rest (collection
  order otherwise; each file's tests keep their order)."""
  has_slow = {item.path for item in items if item.get_closest_marker("slow")}

  def rank(item):
    name = item.path.name
    return (LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST) + (item.path not in has_slow))

  items.sort(key=rank)
