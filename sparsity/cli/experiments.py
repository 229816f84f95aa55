"""Experiment commands of ``python -m sparsity`` (see ``sparsity.cli`` for the common style).

  sweep               SPEC [SPEC ...] [key=value ...] [--dry-run] [--launcher local|xpk [--compile-first]] [--out DIR] [--select REGEX] [--rerun STATUS] [--json]
  collect             DIR --out CSV|- [--manifest FILE ...] [--trajectories] [--select REGEX] [--include-incomplete] [--json]
  report              CSV --out DIR [--law-file law.json] [--json]
  dense-sweep         --out YAML|- [--divisor N] [--sparsities S ...]
  schedule-fractions  --target-sparsity S [--dense F] [--pruning F] [--schedule NAME] [--steps N [--interval P]] [--json]
  tokenizer           DATA --vocab-size N --out FILE.model [--dataset-name NAME] [--count-split S] [--json]
  study               CSV [--trajectories CSV] --out DIR [--json]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys

from sparsity.cli import (Runner, UsageError, add_data, add_json, add_out, check_out, command, data_path, emit,
                          json_text, write_text)
from sparsity.core import recipe


def _default_xpk_bin() -> str:
  from sparsity.repo import ROOT  # pylint: disable=import-outside-toplevel

  local = os.path.join(ROOT, ".venv-xpk", "bin", "xpk")
  return shutil.which("xpk") or (local if os.path.isfile(local) else "xpk")


@command("sweep", "run (or print) every run of a sweep file", overrides=True)
def _sweep(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("spec", nargs="+", metavar="SPEC",
                 help="sweep YAML files (configs/sweeps/*.yml), run one after another into --out; key=value words "
                 "override every run")
  p.add_argument("--dry-run", action="store_true", help="print each run's command instead of running it")
  p.add_argument("--launcher", choices=("local", "xpk"), default="local")
  p.add_argument("--out", "--output-dir", dest="out",
                 help="local: base_output_directory of the runs and the sweep's bookkeeping, resumable (default "
                 "outputs/sweeps/<name>); xpk: where to write the manifest (optional)")
  p.add_argument("--limit", type=int, help="only the first N runs")
  p.add_argument("--select", help="only the runs whose name matches this regex (re.search)")
  p.add_argument("--timeout", type=float, help="local: seconds per run before it is killed and counted failed")
  p.add_argument("--rerun", action="append", default=[], metavar="STATUS",
                 choices=("all", "diverged", "failed", "data_exhausted", "target_eval_loss"),
                 help="local: also run again the runs that ended so (repeatable); by default only runs without a "
                 "summary, preempted or interrupted run again")
  add_json(p)
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
  x.add_argument("--compile-first", action="store_true",
                 help="before submitting, compile every run for --tpu-type x --num-slices on this host "
                 "(MaxText/train_compile.py; needs the TPU runtime setup.sh installs) and submit nothing if any run "
                 "does not fit in HBM or does not compile")

  def run(args: argparse.Namespace) -> int:
    from sparsity.experiments import sweep  # pylint: disable=import-outside-toplevel

    plans = _sweep_plans(args)
    if args.launcher == "xpk":
      return _sweep_xpk(args, *plans[0])
    default_out = os.path.join("outputs", "sweeps", plans[0][0].name)
    out = os.path.abspath(args.out or default_out)
    if args.dry_run:
      pairs = [(r, c) for _, runs in plans for r, c in zip(runs, sweep.local_commands(runs, out))]
      emit(args, [{"run_name": r.name, "command": c} for r, c in pairs],
           lambda: "\n".join(f"# {r.name}\n{shlex.join(c)}" for r, c in pairs))
      print(f"# {len(pairs)} runs", file=sys.stderr)
      return 0
    results, code = [], 0
    for spec, runs in plans:  # one after another, each resumable
      sweep.write_manifest(out, sweep.manifest(spec, runs, {"launcher": "local", "output_dir": out}))
      outcome = sweep.run_local(runs, out, timeout=args.timeout, rerun=args.rerun)
      code = max(code, outcome.exit_code)
      results.append({"sweep": spec.name, "output_dir": out, "ok": outcome.ok, "skipped": outcome.skipped,
                      "failed": outcome.failed, "left": outcome.left, "status": outcome.table,
                      "text": f"{sweep.format_status_table(outcome.table)}\nsweep {spec.name}: {outcome.describe()}; "
                              f"outputs in {out}"})
    emit(args, [{k: v for k, v in r.items() if k != "text"} for r in results] if len(results) > 1
         else {k: v for k, v in results[0].items() if k != "text"}, "\n".join(r["text"] for r in results))
    return code

  return run


def _sweep_plans(args: argparse.Namespace) -> list:
  """``[(spec, runs)]`` of ``sweep``'s SPEC files with their overrides, ``--select`` and ``--limit``; a UsageError for
  a selection of no run."""
  from sparsity.experiments import sweep  # pylint: disable=import-outside-toplevel

  if args.limit is not None and args.limit < 1:
    raise UsageError(f"--limit must be >= 1 (--limit {args.limit} selects no run)")
  paths = [w for w in args.spec if "=" not in w]
  overrides = [w for w in args.spec if "=" in w] + args.overrides
  if not paths:
    raise UsageError("sweep needs at least one SPEC file")
  if args.launcher == "xpk" and len(paths) > 1:
    raise UsageError("--launcher xpk takes one SPEC (one workload set per sweep name)")
  plans = [(spec, sweep.expand(spec, overrides)) for spec in map(sweep.load_spec, paths)]
  empty = [spec for spec, runs in plans if not runs]
  if empty:
    raise UsageError("; ".join(f"sweep {s.name} ({s.path}) has no run: its constraints keep none of its "
                               f"{_grid_size(s)} combinations" for s in empty))
  if args.select:
    pattern = _select_pattern(args.select)
    plans = [(spec, [r for r in runs if pattern.search(r.name)]) for spec, runs in plans]
    if not any(runs for _, runs in plans):
      raise UsageError(f"--select {args.select!r} matches no run of {', '.join(s.name for s, _ in plans)}")
  if args.limit is not None:
    left = args.limit
    for i, (spec, runs) in enumerate(plans):
      plans[i] = (spec, runs[:left])
      left -= len(plans[i][1])
  return [(spec, runs) for spec, runs in plans if runs]


def _grid_size(spec) -> int:
  size = 1
  for axis in spec.axes:
    size *= len(axis.values)
  return size


def _sweep_xpk(args: argparse.Namespace, spec, runs) -> int:
  """``sweep --launcher xpk``: one ``xpk workload create`` per run (printed with ``--dry-run``)."""
  from sparsity.experiments import sweep, xpk  # pylint: disable=import-outside-toplevel

  missing = [f"--{k.replace('_', '-')}" for k in ("cluster", "tpu_type", "docker_image", "output_bucket")
             if not getattr(args, k)]
  if missing:
    raise UsageError(f"--launcher xpk needs {', '.join(missing)}")
  opts = xpk.XpkOptions(cluster=args.cluster or "", tpu_type=args.tpu_type or "", docker_image=args.docker_image or "",
                        output_bucket=args.output_bucket or "", num_slices=args.num_slices, project=args.project,
                        zone=args.zone, extra_args=tuple(args.xpk_arg), max_name_length=args.max_workload_name,
                        xpk_bin=args.xpk_bin or _default_xpk_bin())
  cmds = xpk.commands(runs, spec.name, opts)
  names = {r.name: xpk.workload_name(r.name, spec.name, opts.max_name_length) for r in runs}
  if args.compile_first:
    import tempfile  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as tmp:
      rows = xpk.compile_check(runs, opts.tpu_type, opts.num_slices, tmp)
    for r in rows:
      state = ("fits" if r["fits"] else "DOES NOT FIT: " + ", ".join(r["over_hbm"])) if r["fits"] is not None \
          else "DID NOT COMPILE: " + r["error"].replace("\n", " | ")
      peak = "" if r["peak_bytes"] is None else f" (peak {r['peak_bytes'] / 1e9:.2f} GB per chip)"
      print(f"compile {r['run_name']} for {opts.tpu_type} x {opts.num_slices}: {state}{peak}", file=sys.stderr)
    bad = [r["run_name"] for r in rows if not r["fits"]]
    if bad:
      print(f"sweep {spec.name}: nothing submitted; {len(bad)} of {len(rows)} runs would not fit or did not compile "
            f"on {opts.tpu_type}: {', '.join(bad)}", file=sys.stderr)
      return 3
  if args.dry_run:
    emit(args, [{"run_name": r.name, "workload": names[r.name], "command": c} for r, c in zip(runs, cmds)],
         lambda: "\n".join(f"# {r.name} -> workload {names[r.name]}\n{shlex.join(c)}" for r, c in zip(runs, cmds)))
    print(f"# {len(runs)} workloads", file=sys.stderr)
    return 0
  if args.out:
    extra = {"launcher": "xpk", "output_dir": xpk.output_directory(opts.output_bucket, spec.name), "workloads": names}
    sweep.write_manifest(args.out, sweep.manifest(spec, runs, extra))
  outcome = xpk.submit(runs, cmds)
  for f in outcome.failed:
    print(f"xpk failed for {f['run_name']} (rc {f['returncode']}):\n{f['tail']}", file=sys.stderr)
  emit(args, {"sweep": spec.name, "created": outcome.ok, "failed": outcome.failed},
       f"sweep {spec.name}: {len(outcome.ok)} workloads created, {len(outcome.failed)} failed")
  return outcome.exit_code


def _select_pattern(regex: str) -> "re.Pattern[str]":
  """``--select``'s regex (sweep and collect), or a usage error."""
  try:
    return re.compile(regex)
  except re.error as e:
    raise UsageError(f"--select is not a valid regular expression: {e}") from None


def _select_runs(df, regex: str | None):
  """The rows of ``df`` whose ``run_name`` matches ``regex`` (re.search); all rows without one."""
  if not regex:
    return df
  pattern = _select_pattern(regex)
  keep = df[[bool(pattern.search(str(n))) for n in df["run_name"]]] if len(df) else df
  if keep.empty:
    raise ValueError(f"--select {regex!r} matches no collected run")
  return keep.reset_index(drop=True)


@command("collect", "one CSV row per run from the run summaries under a directory")
def _collect(p: argparse.ArgumentParser) -> Runner:
  add_data(p, "a sweep's output directory (searched recursively)", positional=True)
  add_out(p, "CSV to write", stdout=True)
  p.add_argument("--manifest", action="append", default=[], help="more manifest.json files to join")
  p.add_argument("--trajectories", action="store_true",
                 help="prune-and-recover runs: one row per evaluation (run_name, N0, rho, D, L0, loss), for fit --law p2")
  p.add_argument("--select", help="only the runs whose name matches this regex (re.search), as in sweep --select")
  p.add_argument("--include-incomplete", action="store_true",
                 help="also list the runs that did not complete their schedule (data exhausted, target_eval_loss, "
                 "preempted, failed), marked by the end_status column; they are not results (fit refuses them)")
  add_json(p)

  def run(args: argparse.Namespace) -> int:
    from sparsity.experiments import collect  # pylint: disable=import-outside-toplevel

    check_out(args.out, args.force)
    if args.trajectories:
      df = _select_runs(collect.trajectories(data_path(args), args.include_incomplete), args.select)
      if args.out != "-":
        write_text(df.to_csv(index=False), args.out)
      if args.json or args.out == "-":
        emit(args, df.to_dict(orient="records"), lambda: df.to_csv(index=False))
      else:
        print(f"{df['run_name'].nunique()} runs, {len(df)} points -> {args.out}")
      return 0
    table = collect.collect(data_path(args), args.manifest, args.include_incomplete)
    df = _select_runs(table, args.select)
    if args.out != "-":
      write_text(df.to_csv(index=False), args.out)
    incomplete = {n: e for n, e in table.attrs.get("incomplete", {}).items()
                  if not args.select or _select_pattern(args.select).search(str(n))}
    if incomplete:
      listed = ", ".join(f"{n} ({e})" for n, e in sorted(incomplete.items()))
      print(f"warning: {len(incomplete)} runs did not complete their schedule and are not results: {listed}; "
            + ("kept and marked by the end_status column" if args.include_incomplete
               else "left out (--include-incomplete lists them)"), file=sys.stderr)
    missing = collect.missing_schedule_keys(df)
    if missing:
      print(f"warning: {missing} unknown for some sparse runs (not in their summaries nor a manifest)", file=sys.stderr)
    if args.json:
      print(json_text(df.to_dict(orient="records")))
    elif args.out == "-":
      write_text(df.to_csv(index=False), "-")
    else:
      print(f"{len(df)} runs -> {args.out}")
    return 0

  return run


@command("report", "figures and a markdown table from collect's CSV")
def _report(p: argparse.ArgumentParser) -> Runner:
  add_data(p, "CSV written by collect", positional=True)
  add_out(p, "directory for the PNGs and report.md")
  p.add_argument("--law-file", help="law.json (python -m sparsity fit) for predicted losses; default: fit avg_param")
  add_json(p)

  def run(args: argparse.Namespace) -> int:
    import pandas as pd  # pylint: disable=import-outside-toplevel

    from sparsity.experiments import report  # pylint: disable=import-outside-toplevel

    check_out(args.out, args.force, is_dir=True)
    rep = report.write_report(pd.read_csv(data_path(args)), args.out, args.law_file)
    result = {"figures": rep.figures, "shown": rep.shown, "skipped": rep.skipped, "table": rep.table}
    lines = [f"{key}: {path} ({len(rep.shown.get(key, []))} runs)" for key, path in rep.figures.items()]
    lines += [f"{key}: skipped: {why}" for key, why in rep.skipped.items()] + [f"table: {rep.table}"]
    emit(args, result, "\n".join(lines))
    return 0

  return run


@command("dense-sweep", "write the sweep of dense runs matched to the paper's sparse runs by N_avg")
def _dense_sweep(p: argparse.ArgumentParser) -> Runner:
  add_out(p, "YAML to write (configs/sweeps/dense_matched.yml)", stdout=True)
  p.add_argument("--divisor", type=int, default=None,
                 help="hidden sizes are multiples of lcm(heads, divisor) (default: 64, as plan --match-dense)")
  p.add_argument("--sparsities", type=float, nargs="+", default=None)

  def run(args: argparse.Namespace) -> int:
    from sparsity.experiments import dense_sweep  # pylint: disable=import-outside-toplevel

    check_out(args.out, args.force)
    spec = dense_sweep.dense_matched_spec(args.sparsities or dense_sweep.SPARSITIES,
                                          args.divisor or dense_sweep.DIVISOR)
    write_text(dense_sweep.render(spec), args.out)
    if args.out != "-":
      print(f"{len(spec['axes']['dense'])} dense runs -> {args.out}")
    return 0

  return run


@command("schedule-fractions", "prune_start/end_fraction (steps) of the paper's compute split for a sparsity")
def _schedule_fractions(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("--target-sparsity", type=float, required=True)
  p.add_argument("--dense", type=float, default=recipe.DENSE_COMPUTE_FRACTION,
                 help=f"fraction of compute trained dense (paper: {recipe.DENSE_COMPUTE_FRACTION:g})")
  p.add_argument("--pruning", type=float, default=recipe.PRUNING_COMPUTE_FRACTION,
                 help=f"fraction of compute spent pruning (paper: {recipe.PRUNING_COMPUTE_FRACTION:g})")
  p.add_argument("--schedule", default="geometric")
  p.add_argument("--steps", type=int, help="the run's steps: with --interval, the fractions the trainer derives for "
                 "this run (sparsity.core.compute.derived_step_fractions); without, the continuous conversion")
  p.add_argument("--interval", type=int, default=recipe.PRUNING_INTERVAL,
                 help=f"pruning_interval, with --steps (default {recipe.PRUNING_INTERVAL})")
  add_json(p)

  def run(args: argparse.Namespace) -> int:
    from sparsity.core import compute, schedules  # pylint: disable=import-outside-toplevel

    if args.steps is None:
      start, end = compute.step_fractions(args.target_sparsity, args.dense, args.pruning, args.schedule)
    else:
      start, end = compute.derived_step_fractions(args.steps, args.target_sparsity, args.schedule, args.interval,
                                                  args.dense, args.pruning)
    result = {"target_sparsity": args.target_sparsity, "sparsity_schedule": args.schedule,
              "prune_start_fraction": start, "prune_end_fraction": end}
    if args.steps is not None:
      sched = schedules.make_schedule(args.steps, args.target_sparsity, args.schedule, start, end, args.interval)
      result["compute_fractions"] = dict(zip(compute.PHASES, compute.measured_fractions(sched)))
    text = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
                    if k != "compute_fractions")
    if "compute_fractions" in result:
      text += "\ncompute: " + ", ".join(f"{v:.1%} {k}" for k, v in result["compute_fractions"].items())
    emit(args, result, text)
    return 0

  return run


@command("tokenizer", "train a SentencePiece tokenizer on the train split of a dataset MaxText reads")
def _tokenizer(p: argparse.ArgumentParser) -> Runner:
  add_data(p, "a TFDS data directory (MaxText's dataset_path), or a glob of .parquet or ArrayRecord files",
           positional=True)
  p.add_argument("--dataset-name", default="", help="TFDS name:version in the directory, e.g. c4/en:3.1.0")
  p.add_argument("--split", default="train", help="split to train on (default: train; never the eval split)")
  p.add_argument("--feature", default="text", help="text feature / column")
  p.add_argument("--vocab-size", type=int, required=True)
  p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
  add_out(p, "the .model file to write (MaxText's tokenizer_path)")
  p.add_argument("--count-split", action="append", default=[],
                 help="also count the tokens of this split (e.g. validation) under the new model")
  p.add_argument("--max-length", type=int, help="with --count-split: tokens MaxText's tfds pipeline keeps per "
                 "document at this max_target_length")
  add_json(p)

  def run(args: argparse.Namespace) -> int:
    import dataclasses  # pylint: disable=import-outside-toplevel

    from sparsity.experiments import tokenizer  # pylint: disable=import-outside-toplevel

    check_out(args.out, args.force)
    src = tokenizer.detect(data_path(args), args.dataset_name, args.split, args.feature)
    result = tokenizer.train(src, args.vocab_size, args.out, args.model_type)
    result["counts"] = [tokenizer.count_tokens(args.out, dataclasses.replace(src, split=s), args.max_length)
                        for s in [args.split, *args.count_split]]
    lines = [f"wrote {args.out}: {result['vocab_size']} pieces from {result['documents']} documents "
             f"({result['tokens']:,} tokens)"]
    lines += [f"{c['split']}: {c['documents']} documents, {c['tokens']:,} tokens"
              + (f", {c['tokens_kept']:,} kept at max length {args.max_length} ({c['documents_truncated']} truncated)"
                 if "tokens_kept" in c else "") for c in result["counts"]]
    emit(args, result, "\n".join(lines))
    return 0

  return run


@command("study", "the reproduction study's tables and figures (study.md) from collect's CSVs")
def _study(p: argparse.ArgumentParser) -> Runner:
  add_data(p, "collect's CSV of the study's runs (fig1, ablations, fig4, paired, epoch1)", positional=True)
  p.add_argument("more", nargs="*", metavar="CSV", help="more of collect's CSVs, read as one table with the first "
                 "(a run name in two of them is an error)")
  p.add_argument("--trajectories", help="collect --trajectories's CSV of the recovery runs (optional)")
  add_out(p, "directory for study.md and the figures")
  add_json(p)

  def run(args: argparse.Namespace) -> int:
    import pandas as pd  # pylint: disable=import-outside-toplevel

    from sparsity.experiments import results, study  # pylint: disable=import-outside-toplevel

    check_out(os.path.join(args.out, "study.md"), args.force)
    traj = pd.read_csv(args.trajectories) if args.trajectories else None
    tables = [(pd.read_csv(path), path) for path in [data_path(args), *args.more]]
    for table, path in [*tables, (traj, args.trajectories)]:
      if table is not None:
        results.require_completed(table, path)  # only completed runs are results (collect --include-incomplete)
    runs = pd.concat([t for t, _ in tables], ignore_index=True)
    twice = sorted(set(runs["run_name"][runs["run_name"].duplicated()]))
    if twice:
      raise UsageError(f"runs listed in more than one CSV: {', '.join(twice[:5])}")
    files = study.write(runs, args.out, traj)
    emit(args, files, "\n".join(f"{k}: {v}" for k, v in files.items()))
    return 0

  return run
