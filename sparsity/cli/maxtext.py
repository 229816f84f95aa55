"""MaxText commands of ``python -m sparsity`` (see ``sparsity.cli`` for the style).

  launch  CONFIG [key=value ...] --processes N [--devices-per-process D] [--grace S] [--timeout S] [--json]
"""

from __future__ import annotations

import argparse
import os

from sparsity.cli import Runner, UsageError, add_json, command, emit


@command("launch", "run MaxText/train.py as N processes on this machine (MaxText's multi-process CPU path)",
         overrides=True)
def _launch(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("config", help="MaxText YAML, then key=value overrides (as MaxText/train.py takes them)")
  p.add_argument("--processes", type=int, required=True, help="number of processes (JAX_PROCESS_COUNT)")
  p.add_argument("--devices-per-process", type=int, default=1, help="simulated CPU devices in each process")
  p.add_argument("--grace", type=float, default=20.0,
                 help="seconds the other processes get to end after one fails, before they are stopped")
  p.add_argument("--timeout", type=float, help="seconds before every process is stopped")
  add_json(p)

  def run(args: argparse.Namespace) -> int:
    from sparsity.maxtext import launch  # pylint: disable=import-outside-toplevel

    if args.processes < 1 or args.devices_per_process < 1:
      raise UsageError("--processes and --devices-per-process must be at least 1")
    if not os.path.isfile(args.config):
      raise FileNotFoundError(f"no such config file: {args.config}")
    result = launch.launch([args.config, *args.overrides], args.processes, args.devices_per_process,
                           grace=args.grace, timeout=args.timeout)
    emit(args, {"returncodes": result.returncodes, "failed_first": result.failed_first, "seconds": result.seconds},
         f"[launch] {args.processes} processes ended with codes {result.returncodes} in {result.seconds:.0f} s")
    return result.exit_code

  return run
