"""Command line: ``python -m sparsity <command> ...``.

Each subcommand is one function registered with ``@command(name, help)``: it receives its
``argparse.ArgumentParser``, adds its arguments and returns the function that runs it (``args -> exit
code``). Commands registered with ``overrides=True`` also receive unparsed ``key=value`` words in
``args.overrides`` (so options and overrides may be mixed in any order).

Commands:
  fit      fit a scaling law to runs (CSV or a directory of ``sparsity_summary.json``) -> law.json
  predict  predicted loss for a CSV of inputs under a fitted law
  plan     parameter / compute plan of a MaxText config (+ optional law prediction and dense match)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from typing import Any, Callable, Sequence

Runner = Callable[[argparse.Namespace], int]


@dataclasses.dataclass(frozen=True)
class Command:
  name: str
  help: str
  build: Callable[[argparse.ArgumentParser], Runner]
  overrides: bool = False


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, overrides: bool = False) -> Callable[[Callable[[argparse.ArgumentParser], Runner]], Callable]:
  """Registers ``build(parser) -> runner`` as subcommand ``name``."""

  def register(build: Callable[[argparse.ArgumentParser], Runner]) -> Callable:
    if name in COMMANDS:
      raise ValueError(f"command {name!r} registered twice")
    COMMANDS[name] = Command(name, help, build, overrides)
    return build

  return register


def _write_json(obj: Any, path: str | None) -> None:
  text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
  if path:
    with open(path, "w") as f:
      f.write(text + "\n")
  else:
    print(text)


def _json_default(o: Any) -> Any:
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  if hasattr(o, "tolist"):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _load_fit(path: str):
  from sparsity import scaling_laws

  with open(path) as f:
    return scaling_laws.FitResult.from_json(json.load(f))


@command("fit", "fit a scaling law to runs and write law.json")
def _fit(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("--law", required=True, choices=("chinchilla", "avg_param", "frantar"))
  p.add_argument("--data", required=True, help="CSV (loss, tokens, params, avg_params, nonzero_params, "
                 "sparsity) or a directory searched for sparsity_summary.json")
  p.add_argument("--out", required=True, help="law.json to write")
  p.add_argument("--plot", help="PNG of predicted vs actual loss, coloured by sparsity")
  p.add_argument("--plot-params", help="PNG of loss vs average active params (needs avg_params)")
  p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out refits")

  def run(args: argparse.Namespace) -> int:
    from sparsity import runs, scaling_laws

    df = runs.load_runs(args.data)
    res = scaling_laws.fit(args.law, df, loo=not args.no_loo)
    out = res.to_json()
    if "run_name" in df:
      out["run_names"] = [str(v) for v in df["run_name"]]
    _write_json(out, args.out)
    print(res.describe())
    print(f"points {res.n_points}  starts {res.n_starts}  objective {res.objective:.6g}  MAE {res.mae:.5f}  "
          f"LOO MAE {res.loo_mae:.5f}")
    if args.plot or args.plot_params:
      from sparsity import plots

      sparsity = df["sparsity"] if "sparsity" in df else [0.0] * len(df)
      if args.plot:
        plots.predicted_vs_actual(df["loss"], res.predictions, sparsity, args.plot, f"{args.law}: MAE {res.mae:.4f}")
      if args.plot_params:
        if "avg_params" not in df:
          raise ValueError("--plot-params needs column 'avg_params'")
        plots.loss_vs_avg_params(df["avg_params"], df["loss"], sparsity, args.plot_params, df.get("tokens"))
    return 0

  return run


@command("predict", "predicted loss for a CSV of inputs under a fitted law")
def _predict(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("--law-file", required=True)
  p.add_argument("--data", required=True, help="CSV with the law's input columns")
  p.add_argument("--out", help="CSV to write (default: stdout)")

  def run(args: argparse.Namespace) -> int:
    from sparsity import runs

    fit = _load_fit(args.law_file)
    df = runs.load_runs(args.data)
    df["predicted_loss"] = fit.predict(df)
    if args.out:
      df.to_csv(args.out, index=False)
    else:
      df.to_csv(sys.stdout, index=False)
    return 0

  return run


def plan_report(config: Any, law_file: str | None = None, match_dense: bool = False, divisor: int = 128,
                sparse_equivalent: bool = False) -> dict[str, Any]:
  """The ``plan`` command's result for a config object: ``planning.plan`` plus, optionally,
  ``predicted_loss`` (with a law file), ``dense_match`` (with ``match_dense``; dense losses too with a law) and
  ``sparse_equivalent`` (with a law: the config's model as a dense baseline, and the sparse run of the same
  training compute and no worse predicted loss with the smallest final model; ``planning.find_sparse_equivalent``)."""
  from sparsity import planning

  inputs = planning.config_to_plan_inputs(config)
  p = planning.plan(**inputs)
  fit = _load_fit(law_file) if law_file else None
  if sparse_equivalent:
    if fit is None:
      raise ValueError("--sparse-equivalent needs --law-file (a fitted avg_param or chinchilla law)")
    found = planning.find_sparse_equivalent(
        fit, inputs["shape"], inputs["steps"], inputs["tokens_per_step"], divisor=divisor,
        sparsity_schedule=inputs["sparsity_schedule"], prune_start_fraction=inputs["prune_start_fraction"],
        prune_end_fraction=inputs["prune_end_fraction"], pruning_interval=inputs["pruning_interval"],
    )
    best = found["best"]
    p["sparse_equivalent"] = {
        "dense_predicted_loss": found["dense"]["predicted_loss"],
        "best": None if best is None else {k: best[k] for k in ("width", "target_sparsity", "predicted_loss",
                                                                 "compute_ratio")}
        | {"final_params": best["plan"]["final_params"], "total_params": best["plan"]["total_params"]},
        "candidates": len(found["candidates"]),
    }
  if fit is not None:
    p["predicted_loss"] = planning.predict_loss(fit, p)
    p["law"] = fit.law
  if match_dense:
    if fit is not None:
      p["dense_match"] = planning.compare_with_dense(fit, p, divisor)
    else:
      m = planning.match_dense(p["avg_active_params"], planning.ModelShape(**p["shape"]), divisor)
      p["dense_match"] = {"dense_match": {**m, "lower": dataclasses.asdict(m["lower"]),
                                          "upper": dataclasses.asdict(m["upper"])}}
  return p


def format_plan(p: dict[str, Any]) -> str:
  """Human-readable summary of ``plan_report``'s dict."""
  s = p["shape"]
  lines = [
      f"model: emb {s['emb']}, {s['num_layers']} layers, {s['num_query_heads']}q/{s['num_kv_heads']}kv heads x "
      f"{s['head_dim']}, mlp {s['mlp_dim']}, vocab {s['vocab']}, {'tied' if s['tied_embeddings'] else 'untied'}",
      f"params: total {p['total_params']:,}  prunable {p['prunable_params']:,}  "
      f"non-prunable {p['non_prunable_params']:,}",
      f"schedule: {p['sparsity_schedule']} to {p['target_sparsity']:.3g} sparsity, {p['num_prune_events']} events "
      + (f"(steps {p['prune_steps'][0]}..{p['prune_steps'][-1]})" if p["prune_steps"] else "(dense)"),
      f"final active params {p['final_params']:,} (prunable sparsity {p['final_sparsity']:.4f})",
      f"average active params {p['avg_active_params']:,.0f} (prunable {p['avg_active_prunable_params']:,.0f}); "
      f"compression avg/final {p['compression_rate']:.3f}",
      f"tokens {p['tokens']:,} ({p['steps']} steps x {p['tokens_per_step']:,}); "
      f"{p['tokens_per_prunable_param']:.1f} tokens/prunable param = {p['chinchilla_multiple']:.2f}x Chinchilla",
      f"training FLOPs {p['training_flops']:.4g} (dense {p['dense_training_flops']:.4g}, "
      f"{p['compute_fraction']:.3f}x); inference FLOPs/token {p['inference_flops_per_token']:.4g}",
  ]
  if "predicted_loss" in p:
    lines.append(f"predicted final loss ({p['law']}): {p['predicted_loss']:.4f}")
  if "dense_match" in p:
    d = p["dense_match"]
    m = d["dense_match"]
    lines.append(f"dense match for N_avg: emb {m['lower']['emb']} ({m['lower_params']:,}) .. emb {m['upper']['emb']} "
                 f"({m['upper_params']:,}), weight {m['weight']:.3f}" + (" (exact)" if m["exact"] else ""))
    if "dense_loss" in d:
      lines.append(f"predicted dense loss {d['dense_loss']:.4f} (lower {d['dense_lower_loss']:.4f}, "
                   f"upper {d['dense_upper_loss']:.4f})")
  if "sparse_equivalent" in p:
    e = p["sparse_equivalent"]
    b = e["best"]
    lines.append(
        f"dense baseline predicted loss {e['dense_predicted_loss']:.4f}; "
        + ("no sparse run of equal compute predicts a loss as low" if b is None else
           f"sparse equivalent: width {b['width']} at sparsity {b['target_sparsity']:.2f} "
           f"({b['total_params']:,} -> {b['final_params']:,} params), predicted loss {b['predicted_loss']:.4f}, "
           f"compute {b['compute_ratio']:.3f}x")
        + f" ({e['candidates']} candidates)")
  return "\n".join(lines)


@command("plan", "parameter and compute plan of a MaxText config", overrides=True)
def _plan(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("config", help="MaxText YAML")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  p.add_argument("--law-file", help="law.json for a predicted loss")
  p.add_argument("--match-dense", action="store_true", help="dense shapes with the same average active params")
  p.add_argument("--divisor", type=int, default=128, help="hidden sizes of dense matches divide by this and the heads")
  p.add_argument("--sparse-equivalent", action="store_true",
                 help="with --law-file: the smallest final sparse model of the same compute and predicted loss")

  def run(args: argparse.Namespace) -> int:
    from sparsity.maxtext_hook import load_config  # provided by the trainer

    with contextlib.redirect_stdout(sys.stderr):  # MaxText prints while loading; keep stdout for the plan
      config = load_config([args.config, *args.overrides])
    p = plan_report(config, args.law_file, args.match_dense, args.divisor, args.sparse_equivalent)
    if args.json:
      print(json.dumps(p, default=_json_default))
    else:
      print(format_plan(p))
    return 0

  return run


# Modules that register more commands with ``@command`` when imported (experiments: sweep/collect/report;
# model: inspect/export). Kept apart so that each family of commands lives in a file named for it.
COMMAND_MODULES = ("sparsity.cli_experiments", "sparsity.cli_model")


def build_parser() -> argparse.ArgumentParser:
  """The ``python -m sparsity`` parser with one subparser per entry of ``COMMANDS``."""
  import importlib  # pylint: disable=import-outside-toplevel

  for module in COMMAND_MODULES:
    importlib.import_module(module)
  parser = argparse.ArgumentParser(prog="python -m sparsity", description="Sparse pre-training tools.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for c in COMMANDS.values():
    sp = sub.add_parser(c.name, help=c.help, description=c.help)
    sp.set_defaults(_run=c.build(sp), _overrides=c.overrides)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Parses ``argv`` (default ``sys.argv[1:]``) and runs the command; ``ValueError``s exit with code 2."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra:
    bad = [w for w in extra if w.startswith("-") or "=" not in w]
    if not args._overrides or bad:
      parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
  args.overrides = list(extra)
  try:
    return args._run(args)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


__all__ = ["COMMANDS", "Command", "command", "build_parser", "main", "plan_report", "format_plan"]
