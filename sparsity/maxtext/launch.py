"""N training processes on one machine, through MaxText's own multi-process CPU path (as XPK starts them on a pod).

MaxText's ``hardware=cpu`` path calls ``jax.distributed.initialize`` with the coordinator at
``$JAX_COORDINATOR_ADDRESS:1234`` (the port is fixed), process id ``JOB_INDEX * PROCESSES_IN_JOB +
JOB_COMPLETION_INDEX`` and ``JAX_PROCESS_COUNT`` processes. ``launch`` sets those variables for each process,
with the coordinator on a loopback address of its own whose port 1234 is free (``free_coordinator``; JAX binds it
there through ``JAX_COORDINATOR_BIND_ADDRESS``), so that several multi-process runs can go on at once on one machine,
plus ``XLA_FLAGS=--xla_force_host_platform_device_count=<devices per process>``, starts every process of
``MaxText/train.py``, prefixes each line of their output with ``[p<i>]``, and returns the first non-zero exit
code. When one process fails, the others would otherwise wait in a collective (or at JAX's shutdown barrier)
for minutes: they are stopped after ``grace`` seconds and the failure is named.

On a TPU pod, XPK and the TPU runtime set the distributed variables themselves: run ``MaxText/train.py`` there
directly (``sparsity sweep --launcher xpk``).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO

from sparsity import repo
from sparsity.maxtext.host import given_keys

COORDINATOR_PORT = 1234  # maxtext.utils.max_utils.initialize_jax_for_cpu
MULTI_PROCESS_KEYS = ("hardware=cpu", "skip_jax_distributed_system=false")


def port_in_use(port: int = COORDINATOR_PORT, host: str = "localhost") -> bool:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind((host, port))
    except OSError:
      return True
  return False


def free_coordinator(port: int = COORDINATOR_PORT, tries: int = 64) -> str:
  """A loopback address ``127.x.y.z`` (Linux routes all of 127/8 to the loopback device) whose ``port`` is free,
  drawn at random so that launches started at the same moment rarely draw the same one."""
  rng = random.Random()
  for _ in range(tries):
    host = f"127.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    if not port_in_use(port, host):
      return host
  raise RuntimeError(f"no loopback address with port {port} free after {tries} tries: MaxText fixes its coordinator "
                     "port there")


def process_env(index: int, processes: int, devices: int, base: dict | None = None,
                coordinator: str = "localhost") -> dict[str, str]:
  """The environment of process ``index`` of ``processes`` with the coordinator at ``coordinator`` (see the module
  docstring)."""
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(
      JAX_COORDINATOR_ADDRESS=coordinator, JAX_COORDINATOR_BIND_ADDRESS=f"{coordinator}:{COORDINATOR_PORT}",
      JOB_INDEX="0", JOB_COMPLETION_INDEX=str(index),
      PROCESSES_IN_JOB=str(processes), JAX_PROCESS_COUNT=str(processes), JAX_PLATFORMS="cpu",
      XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
  )
  env.setdefault("DECOUPLE_GCLOUD", "TRUE")
  return env


def train_argv(argv: Sequence[str]) -> list[str]:
  """``MaxText/train.py``'s argv for one process: the user's, plus MaxText's multi-process CPU keys not given."""
  given = given_keys(argv)
  return [*argv, *(k for k in MULTI_PROCESS_KEYS if k.split("=", 1)[0] not in given)]


@dataclasses.dataclass
class Result:
  returncodes: list[int]
  failed_first: int | None  # the process whose failure stopped the others
  seconds: float

  @property
  def exit_code(self) -> int:
    """0 if every process succeeded; else the code of the process that failed first (1 if it was a signal)."""
    bad = [c for c in self.returncodes if c != 0]
    if not bad:
      return 0
    code = self.returncodes[self.failed_first] if self.failed_first is not None else bad[0]
    return code if code > 0 else 1


def _pump(stream, prefix: str, out: TextIO, lock: threading.Lock) -> None:
  for line in iter(stream.readline, ""):
    with lock:
      out.write(prefix + line)
      out.flush()
  stream.close()


def launch(argv: Sequence[str], processes: int, devices: int = 1, *, python: str = sys.executable,
           script: str = repo.TRAIN_SCRIPT, grace: float = 20.0, timeout: float | None = None,
           out: TextIO = sys.stdout) -> Result:
  """Runs ``processes`` processes of ``script argv`` (see the module docstring) and waits for all of them."""
  if processes < 1 or devices < 1:
    raise ValueError(f"need at least one process and one device per process, got {processes} and {devices}")
  coordinator = free_coordinator()
  start = time.monotonic()
  lock = threading.Lock()
  procs, pumps = [], []
  for i in range(processes):
    p = subprocess.Popen([python, script, *train_argv(argv)], cwd=repo.ROOT, env=process_env(i, processes, devices, coordinator=coordinator),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                         start_new_session=True)
    procs.append(p)
    t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", out, lock), daemon=True)
    t.start()
    pumps.append(t)
  failed_first, deadline = None, None
  # Stopping the launcher (SIGTERM, Ctrl-C) stops every process it started (each runs in its own session).
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
  try:
    while any(p.poll() is None for p in procs):
      now = time.monotonic()
      if failed_first is None:
        bad = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if bad:
          failed_first, deadline = bad[0], now + grace
          _say(out, lock, f"[launch] process {bad[0]} exited with code {procs[bad[0]].returncode}; stopping the "
                          f"others in {grace:.0f} s unless they end")
      if timeout is not None and now - start > timeout and deadline is None:
        _say(out, lock, f"[launch] timed out after {timeout:.0f} s; stopping every process")
        deadline = now
      if deadline is not None and now >= deadline:
        _stop(procs)
      time.sleep(0.2)
  except KeyboardInterrupt:
    _stop(procs)
    raise
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous)
  for t in pumps:
    t.join(timeout=5)
  codes = [p.returncode for p in procs]
  for i, c in enumerate(codes):
    if c != 0:
      _say(out, lock, f"[launch] process {i} exited with code {c}")
  return Result(codes, failed_first, time.monotonic() - start)


def _interrupt(*_):
  raise KeyboardInterrupt


def _say(out: TextIO, lock: threading.Lock, text: str) -> None:
  with lock:
    out.write(text + "\n")
    out.flush()


def _stop(procs) -> None:
  """SIGTERM to each live process group, SIGKILL 5 s later."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    live = [p for p in procs if p.poll() is None]
    for p in live:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
    end = time.monotonic() + 5
    while time.monotonic() < end and any(p.poll() is None for p in live):
      time.sleep(0.1)


__all__ = ["COORDINATOR_PORT", "free_coordinator", "launch", "process_env", "train_argv", "port_in_use", "Result"]
