"""Launching sweep runs on Cloud TPU with xpk (``xpk workload create``), one workload per run.

Each run becomes the argument list ``xpk workload create --cluster=... --workload=<name> --tpu-type=...
--num-slices=... --docker-image=... --command=<command> [--project=...] [--zone=...] [extra ...]``, run
without a shell (a list of arguments) and printed with ``shlex.join``. The container command is::

  DEVICE=tpu bash setup.sh && .venv/bin/python MaxText/train.py <config> <overrides> run_name=<run> \\
      base_output_directory=<bucket>/<sweep>

with every word after ``&&`` quoted by ``shlex.quote``, so values with spaces, quotes or ``$(...)`` reach
MaxText verbatim. xpk 1.16 pastes the command into a line of a YAML block scalar (``bash -c |``), so values
with newlines are refused. The config path is relative to the repository, which the docker image must hold as its
working directory (xpk runs the command there).

Workload names follow xpk 1.16's ``name_type`` rule (``[a-z]([-a-z0-9]*[a-z0-9])?``, at most 40
characters): the run name lower-cased, other characters turned into ``-``, cut to fit, plus ``-`` and 8
hex digits of the SHA-1 of ``<sweep>/<run>`` so that names stay unique after cutting. xpk refuses names
longer than 28 characters for super-slicing workloads; pass ``max_length=28`` there.

xpk itself pins versions that conflict with this project's training environment (e.g. ``pyyaml==6.0.2``,
``packaging==24.2``, ``protobuf<6`` through ``google-api-core==2.24.1``), so it is installed in its own
environment (``XPK_REQUIREMENT``; e.g. ``python3.12 -m venv .venv-xpk && .venv-xpk/bin/pip install
xpk==1.16.0``) and called as an executable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Sequence

from sparsity.experiments.sweep import Outcome, Run
from sparsity.maxtext import layout
from sparsity.repo import ROOT

XPK_REQUIREMENT = "xpk==1.16.0"
NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # xpk/parser/validators.py: name_type
MAX_NAME_LENGTH = 40  # xpk's name_type limit
SUPER_SLICING_MAX_NAME_LENGTH = 28  # xpk/commands/workload.py: _SUPER_SLICING_WORKLOAD_NAME_LIMIT
HASH_DIGITS = 8
SETUP_COMMAND = "DEVICE=tpu bash setup.sh"
PYTHON = ".venv/bin/python"
TRAIN = "MaxText/train.py"


def valid_name(name: str, max_length: int = MAX_NAME_LENGTH) -> bool:
  """True when xpk accepts ``name`` as a workload or cluster name."""
  return bool(NAME_PATTERN.fullmatch(name)) and len(name) <= max_length


def workload_name(run_name: str, sweep_name: str = "", max_length: int = MAX_NAME_LENGTH) -> str:
  """A valid, deterministic xpk workload name for ``run_name`` (see the module docstring)."""
  if max_length < HASH_DIGITS + 3:
    raise ValueError(f"max_length must be at least {HASH_DIGITS + 3}, got {max_length}")
  digest = hashlib.sha1(f"{sweep_name}/{run_name}".encode()).hexdigest()[:HASH_DIGITS]
  stem = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")
  stem = re.sub(r"^[^a-z]+", "", stem)  # must start with a letter
  stem = stem[: max_length - HASH_DIGITS - 1].rstrip("-") or "run"
  name = f"{stem}-{digest}"
  assert valid_name(name, max_length), name
  return name


def output_directory(bucket: str, sweep_name: str) -> str:
  """``<bucket>/<sweep_name>``: MaxText's ``base_output_directory`` for every run of the sweep."""
  if not bucket.startswith("gs://") or len(bucket.rstrip("/")) <= len("gs://"):
    raise ValueError(f"--output-bucket must be a gs:// path, got {bucket!r}")
  return f"{bucket.rstrip('/')}/{sweep_name}"


def container_command(run: Run, output_dir: str, root: str = ROOT, setup: str = SETUP_COMMAND,
                      python: str = PYTHON, train: str = TRAIN) -> str:
  """The shell command run in the container: ``<setup> && <python> <train> <config> <overrides> ...``.

  ``setup`` is inserted as written (it is this module's constant, not user data); every other word is
  quoted. The config path is made relative to ``root`` (the repository, the container's working directory).

  Raises:
    ValueError: the run's config file is not inside ``root``.
  """
  rel = os.path.relpath(run.base, root)
  if rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
    raise ValueError(f"config {run.base} is outside the repository {root}: the container cannot see it")
  words = [python, train, *run.argv(output_dir, base=rel)]
  bad = [w for w in words if any(c in w for c in "\n\r\0")]
  if bad:  # xpk pastes the command into one line of a YAML block scalar (core/docker_container.py)
    raise ValueError(f"run {run.name}: newlines or NUL characters cannot be passed through xpk: {bad[0]!r}")
  return f"{setup} && " + shlex.join(words)


@dataclasses.dataclass(frozen=True)
class XpkOptions:
  """Cluster-side settings shared by every workload of a sweep.

  Attributes:
    cluster: xpk cluster name.
    tpu_type: e.g. ``v5p-128`` (xpk checks it against its list of systems).
    docker_image: image holding the repository (with ``setup.sh``) as its working directory.
    output_bucket: ``gs://bucket/path``; runs write to ``<bucket>/<sweep name>/<run name>``.
    num_slices: TPU slices per workload.
    project, zone: optional GCP project and zone (xpk falls back to gcloud's defaults).
    extra_args: more ``xpk workload create`` arguments, passed as given (e.g. ``--priority=high``).
    max_name_length: workload name limit (40; 28 for super-slicing).
    xpk_bin: the xpk executable.
  """

  cluster: str
  tpu_type: str
  docker_image: str
  output_bucket: str
  num_slices: int = 1
  project: str | None = None
  zone: str | None = None
  extra_args: tuple[str, ...] = ()
  max_name_length: int = MAX_NAME_LENGTH
  xpk_bin: str = "xpk"

  def validate(self) -> None:
    """``ValueError`` for settings xpk would refuse or that would misplace outputs."""
    if not valid_name(self.cluster):
      raise ValueError(f"cluster name {self.cluster!r} must match {NAME_PATTERN.pattern} and have <= 40 characters")
    for field in ("tpu_type", "docker_image"):
      if not getattr(self, field):
        raise ValueError(f"--{field.replace('_', '-')} is required for the xpk launcher")
    if int(self.num_slices) < 1:
      raise ValueError(f"--num-slices must be >= 1, got {self.num_slices}")
    output_directory(self.output_bucket, "x")


def workload_args(run: Run, sweep_name: str, opts: XpkOptions, root: str = ROOT) -> list[str]:
  """Arguments after the ``xpk`` executable creating ``run``'s workload (see the module docstring)."""
  args = [
      "workload", "create",
      f"--cluster={opts.cluster}",
      f"--workload={workload_name(run.name, sweep_name, opts.max_name_length)}",
      f"--tpu-type={opts.tpu_type}",
      f"--num-slices={int(opts.num_slices)}",
      f"--docker-image={opts.docker_image}",
      f"--command={container_command(run, output_directory(opts.output_bucket, sweep_name), root)}",
  ]
  if opts.project:
    args.append(f"--project={opts.project}")
  if opts.zone:
    args.append(f"--zone={opts.zone}")
  return args + list(opts.extra_args)


def commands(runs: Sequence[Run], sweep_name: str, opts: XpkOptions, root: str = ROOT) -> list[list[str]]:
  """One full command (``[xpk_bin, ...]``) per run; ``ValueError`` if two runs map to one workload name."""
  opts.validate()
  out = [[opts.xpk_bin, *workload_args(r, sweep_name, opts, root)] for r in runs]
  names = [workload_name(r.name, sweep_name, opts.max_name_length) for r in runs]
  if len(set(names)) != len(names):
    raise ValueError("two runs map to the same xpk workload name; rename them")
  return out


def submit(runs: Sequence[Run], cmds: Sequence[Sequence[str]], progress: bool = True) -> Outcome:
  """Runs each ``xpk workload create`` command in turn (no shell); a failure is recorded and the rest go on."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  outcome = Outcome()
  for run, cmd in tqdm(list(zip(runs, cmds)), desc="xpk", unit="workload", file=sys.stderr, disable=not progress):
    try:
      proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
      rc, text = proc.returncode, (proc.stdout or "") + (proc.stderr or "")
    except OSError as e:
      rc, text = 127, f"{type(e).__name__}: {e}"
    if rc == 0:
      outcome.ok.append(run.name)
    else:
      outcome.failed.append({"run_name": run.name, "returncode": rc, "reason": f"xpk exit code {rc}",
                             "tail": "\n".join(text.splitlines()[-40:])})
  return outcome


def compile_check(runs: Sequence[Run], tpu_type: str, num_slices: int, out_dir: str, root: str = ROOT,
                  python: str = sys.executable) -> list[dict[str, Any]]:
  """Compiles every run for ``tpu_type`` x ``num_slices`` on this host (``MaxText/train_compile.py``, one process
  per run, nothing submitted); one row per run: ``run_name``, ``fits`` (True, False, or None when it did not
  compile), the programs over HBM, the peak bytes per chip, and the error's last lines when it failed."""
  rows = []
  for run in runs:
    cmd = [python, os.path.join(root, "MaxText", "train_compile.py"), *run.argv(out_dir),
           f"compile_topology={tpu_type}", f"compile_topology_num_slices={int(num_slices)}"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    path = layout.compile_summary_path(layout.run_dir(out_dir, run.name))
    row: dict[str, Any] = {"run_name": run.name, "fits": None, "over_hbm": [], "peak_bytes": None}
    if os.path.exists(path) and proc.returncode in (0, 3):
      with open(path, encoding="utf-8") as f:
        summary = json.load(f)
      row.update(fits=bool(summary["fits"]), over_hbm=summary["programs_over_hbm"],
                 peak_bytes=max((p.get("peak_bytes", 0) for p in summary["programs"].values()), default=None))
    else:
      row["error"] = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    rows.append(row)
  return rows


# Parses argument lists with the installed xpk's own parser, in the interpreter that has xpk (see
# ``parse_with_xpk``): reads a JSON list of argument lists on stdin, prints one JSON result per list.
_PARSE_SCRIPT = r"""
import argparse, contextlib, io, json, sys
from xpk.parser.core import set_parser
parser = argparse.ArgumentParser(prog="xpk")
set_parser(parser)
out = []
for argv in json.load(sys.stdin):
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      ns = parser.parse_args(argv)
    out.append({"ok": True, "args": {k: v for k, v in vars(ns).items()
                                     if isinstance(v, (str, int, float, bool, list, type(None)))}})
  except SystemExit as e:
    out.append({"ok": False, "code": e.code, "error": err.getvalue()})
print(json.dumps(out))
"""


def parse_with_xpk(arg_lists: Sequence[Sequence[str]], python: str) -> list[dict[str, Any]]:
  """Parses each argument list (without the ``xpk`` executable) with xpk's own parser.

  Nothing is run and no cloud is contacted: only ``xpk.parser.core.set_parser`` is called, in ``python``
  (an interpreter with xpk installed).

  Returns:
    Per list: ``{"ok": True, "args": {dest: value}}`` or ``{"ok": False, "code": ..., "error": <message>}``.
  """
  proc = subprocess.run([python, "-c", _PARSE_SCRIPT], input=json.dumps([list(a) for a in arg_lists]),
                        capture_output=True, text=True, check=False, timeout=300)
  if proc.returncode != 0:
    raise RuntimeError(f"xpk's parser could not be loaded with {python}:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


__all__ = ["XPK_REQUIREMENT", "NAME_PATTERN", "MAX_NAME_LENGTH", "SUPER_SLICING_MAX_NAME_LENGTH", "XpkOptions",
           "valid_name", "workload_name", "output_directory", "container_command", "workload_args", "commands",
           "submit", "compile_check", "parse_with_xpk"]
