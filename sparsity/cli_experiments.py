"""Experiment commands of ``python -m sparsity`` (registered with ``sparsity.cli.command``).

Commands:
  sweep               expand a sweep file and run it locally, submit it with xpk, or print it (--dry-run)
  collect             one CSV row per run from the summaries under a directory (+ the sweep manifest)
  report              figures and a markdown table from collect's CSV
  dense-sweep         write the dense-matched sweep file (configs/sweeps/dense_matched.yml)
  schedule-fractions  step fractions of the paper's compute split for a target sparsity
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

from sparsity.cli import Runner, command


def _default_xpk_bin() -> str:
  from sparsity.sweep import ROOT  # pylint: disable=import-outside-toplevel

  local = os.path.join(ROOT, ".venv-xpk", "bin", "xpk")
  return shutil.which("xpk") or (local if os.path.isfile(local) else "xpk")


@command("sweep", "run (or print) every run of a sweep file", overrides=True)
def _sweep(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("spec", help="sweep YAML (configs/sweeps/*.yml); key=value words override every run")
  p.add_argument("--dry-run", action="store_true", help="print each run's command instead of running it")
  p.add_argument("--launcher", choices=("local", "xpk"), default="local")
  p.add_argument("--output-dir", help="local: base_output_directory and sweep log (default outputs/sweeps/<name>); "
                 "xpk: where to write the manifest (optional)")
  p.add_argument("--limit", type=int, help="only the first N runs")
  p.add_argument("--timeout", type=float, help="local: seconds per run before it is killed and counted failed")
  x = p.add_argument_group("xpk launcher")
  x.add_argument("--cluster")
  x.add_argument("--tpu-type", help="e.g. v5p-128")
  x.add_argument("--num-slices", type=int, default=1)
  x.add_argument("--docker-image", help="image with the repository (and setup.sh) as working directory")
  x.add_argument("--output-bucket", help="gs://bucket/path; runs write to <bucket>/<sweep name>/<run name>")
  x.add_argument("--project")
  x.add_argument("--zone")
  x.add_argument("--xpk-bin", default=None, help="xpk executable (default: xpk on PATH, else .venv-xpk/bin/xpk)")
  x.add_argument("--xpk-arg", action="append", default=[], help="extra xpk argument, e.g. --xpk-arg=--priority=high")
  x.add_argument("--max-workload-name", type=int, default=40, help="workload name length limit (28 for super-slicing)")

  def run(args: argparse.Namespace) -> int:
    from sparsity import sweep, xpk  # pylint: disable=import-outside-toplevel

    spec = sweep.load_spec(args.spec)
    runs = sweep.expand(spec, args.overrides)
    if args.limit is not None:
      if args.limit < 0:
        raise ValueError("--limit must be >= 0")
      runs = runs[: args.limit]
    if args.launcher == "local":
      out = os.path.abspath(args.output_dir or os.path.join("outputs", "sweeps", spec.name))
      if args.dry_run:
        for r, cmd in zip(runs, sweep.local_commands(runs, out)):
          print(f"# {r.name}\n{shlex.join(cmd)}")
        print(f"# {len(runs)} runs", file=sys.stderr)
        return 0
      sweep.write_manifest(out, sweep.manifest(spec, runs, {"launcher": "local", "output_dir": out}))
      outcome = sweep.run_local(runs, out, timeout=args.timeout)
      print(f"sweep {spec.name}: {outcome.describe()}; outputs in {out}")
      return outcome.exit_code
    opts = xpk.XpkOptions(cluster=args.cluster or "", tpu_type=args.tpu_type or "", docker_image=args.docker_image or "",
                          output_bucket=args.output_bucket or "", num_slices=args.num_slices, project=args.project,
                          zone=args.zone, extra_args=tuple(args.xpk_arg), max_name_length=args.max_workload_name,
                          xpk_bin=args.xpk_bin or _default_xpk_bin())
    cmds = xpk.commands(runs, spec.name, opts)
    if args.dry_run:
      for r, cmd in zip(runs, cmds):
        print(f"# {r.name} -> workload {xpk.workload_name(r.name, spec.name, opts.max_name_length)}\n{shlex.join(cmd)}")
      print(f"# {len(runs)} workloads", file=sys.stderr)
      return 0
    if args.output_dir:
      extra = {"launcher": "xpk", "output_dir": xpk.output_directory(opts.output_bucket, spec.name),
               "workloads": {r.name: xpk.workload_name(r.name, spec.name, opts.max_name_length) for r in runs}}
      sweep.write_manifest(args.output_dir, sweep.manifest(spec, runs, extra))
    outcome = xpk.submit(runs, cmds)
    for f in outcome.failed:
      print(f"xpk failed for {f['run_name']} (rc {f['returncode']}):\n{f['tail']}", file=sys.stderr)
    print(f"sweep {spec.name}: {len(outcome.ok)} workloads created, {len(outcome.failed)} failed")
    return outcome.exit_code

  return run


@command("collect", "one CSV row per run from the sparsity summaries under a directory")
def _collect(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("directory", help="a sweep's output directory (searched recursively)")
  p.add_argument("--out", required=True, help="CSV to write")
  p.add_argument("--manifest", action="append", default=[], help="more manifest.json files to join")

  def run(args: argparse.Namespace) -> int:
    from sparsity import collect  # pylint: disable=import-outside-toplevel

    df = collect.collect(args.directory, args.manifest)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    df.to_csv(args.out, index=False)
    print(f"{len(df)} runs -> {args.out}")
    missing = collect.missing_schedule_keys(df)
    if missing:
      print(f"warning: {missing} unknown for some sparse runs (not in their summaries nor a manifest)", file=sys.stderr)
    return 0

  return run


@command("report", "figures and a markdown table from collect's CSV")
def _report(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("results", help="CSV written by collect")
  p.add_argument("--out", required=True, help="directory for the PNGs and report.md")
  p.add_argument("--law-file", help="law.json (python -m sparsity fit) for predicted losses; default: fit avg_param")

  def run(args: argparse.Namespace) -> int:
    import pandas as pd  # pylint: disable=import-outside-toplevel

    from sparsity import report  # pylint: disable=import-outside-toplevel

    rep = report.write_report(pd.read_csv(args.results), args.out, args.law_file)
    for key, path in rep.figures.items():
      print(f"{key}: {path} ({len(rep.shown.get(key, []))} runs)")
    for key, why in rep.skipped.items():
      print(f"{key}: skipped: {why}")
    print(f"table: {rep.table}")
    return 0

  return run


@command("dense-sweep", "write the sweep of dense runs matched to the paper's sparse runs by N_avg")
def _dense_sweep(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("--out", required=True, help="YAML to write (configs/sweeps/dense_matched.yml)")
  p.add_argument("--divisor", type=int, default=None, help="hidden sizes are multiples of lcm(heads, divisor)")
  p.add_argument("--sparsities", type=float, nargs="+", default=None)

  def run(args: argparse.Namespace) -> int:
    from sparsity import dense_sweep  # pylint: disable=import-outside-toplevel

    spec = dense_sweep.dense_matched_spec(args.sparsities or dense_sweep.SPARSITIES,
                                          args.divisor or dense_sweep.DIVISOR)
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(dense_sweep.render(spec))
    print(f"{len(spec['axes']['dense'])} dense runs -> {args.out}")
    return 0

  return run


@command("schedule-fractions", "prune_start/end_fraction (steps) of the paper's compute split for a sparsity")
def _schedule_fractions(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("--target-sparsity", type=float, required=True)
  p.add_argument("--dense", type=float, default=0.25, help="fraction of compute trained dense (paper: 0.25)")
  p.add_argument("--pruning", type=float, default=0.5, help="fraction of compute spent pruning (paper: 0.5)")
  p.add_argument("--schedule", default="geometric")

  def run(args: argparse.Namespace) -> int:
    from sparsity import compute_fractions  # pylint: disable=import-outside-toplevel

    start, end = compute_fractions.step_fractions(args.target_sparsity, args.dense, args.pruning, args.schedule)
    print(f"target_sparsity={args.target_sparsity:g} sparsity_schedule={args.schedule} "
          f"prune_start_fraction={start} prune_end_fraction={end}")
    return 0

  return run
