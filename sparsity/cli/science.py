"""Science commands of ``python -m sparsity``: ``fit``, ``predict``, ``plan`` (see ``sparsity.cli`` for the style).

  fit      --law LAW --data CSV|DIR --out law.json|- [--plot PNG] [--plot-params PNG] [--no-loo] [--json]
  predict  --law-file law.json --data CSV [--out CSV|-] [--json]
  recovery --law-file p2.json --n0 N --rho R --l0 L (--target-loss X | --margin M) [--json]
  plan     CONFIG [key=value ...] [--law-file law.json] [--match-dense] [--sparse-equivalent] [--divisor N] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from sparsity.cli import (Runner, UsageError, add_data, add_json, add_out, check_out, command, data_path, emit, json_text,
                          load_maxtext_config, write_text)


def load_fit(path: str):
  """A fitted law from ``fit``'s JSON file."""
  from sparsity.science import scaling_laws  # pylint: disable=import-outside-toplevel

  with open(path, encoding="utf-8") as f:
    return scaling_laws.FitResult.from_json(json.load(f))


@command("fit", "fit a scaling law to runs and write law.json")
def _fit(p: argparse.ArgumentParser) -> Runner:
  from sparsity.science.scaling_laws import LAWS  # pylint: disable=import-outside-toplevel

  p.add_argument("--law", required=True, choices=sorted(LAWS))
  add_data(p, "CSV of runs (loss, tokens, params, avg_params, nonzero_params, sparsity) or a directory searched "
           "for run summaries")
  add_out(p, "law.json to write", stdout=True)
  p.add_argument("--plot", help="PNG of predicted vs actual loss, coloured by sparsity")
  p.add_argument("--plot-params", help="PNG of loss vs average active params (needs avg_params)")
  p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out refits")
  add_json(p)

  def run(args: argparse.Namespace) -> int:
    from sparsity.experiments import results  # pylint: disable=import-outside-toplevel
    from sparsity.science import plots, scaling_laws  # pylint: disable=import-outside-toplevel

    for path in (args.out, args.plot, args.plot_params):
      check_out(path, args.force)
    if args.law == "p2":
      df = _p2_data(data_path(args))
      res = scaling_laws.fit("p2", df, loo=not args.no_loo, groups=df["run_name"] if "run_name" in df else None)
    else:
      df = _without_diverged(results.load_runs(data_path(args)))
      results.require_completed(df, data_path(args))
      res = scaling_laws.fit(args.law, df, loo=not args.no_loo)
    out = res.to_json()
    if "run_name" in df:
      out["run_names"] = [str(v) for v in df["run_name"]]
    if args.law == "p2":
      out["quality"] = scaling_laws.p2_quality(df, res.predictions, res)
    if args.out != "-":
      write_text(json_text(out), args.out)
    sparsity = df["sparsity"] if "sparsity" in df else [0.0] * len(df)
    if args.plot and args.law == "p2":
      plots.recovery_curves(df, res, args.plot)
    elif args.plot:
      plots.predicted_vs_actual(df["loss"], res.predictions, sparsity, args.plot, f"{args.law}: MAE {res.mae:.4f}")
    if args.plot_params:
      if "avg_params" not in df:
        raise ValueError("--plot-params needs column 'avg_params'")
      plots.loss_vs_avg_params(df["avg_params"], df["loss"], sparsity, args.plot_params, df.get("tokens"))
    if args.out == "-" or args.json:
      print(json_text(out))
    else:
      print(res.describe())
      print(f"points {res.n_points}  starts {res.n_starts}  objective {res.objective:.6g}  MAE {res.mae:.5f}  "
            f"LOO MAE {res.loo_mae:.5f}" + ("  (leave one run out)" if args.law == "p2" else ""))
      if args.law == "p2":
        q = out["quality"]
        print(f"R^2 {q['r2']:.4f}  Huber {q['huber']:.4g}  ASD {q['asd']:.5f}")
    return 0

  return run


def _p2_data(path: str):
  """The P2 law's points: a trajectory CSV, or the prune-and-recover runs under a directory."""
  import os  # pylint: disable=import-outside-toplevel

  import pandas as pd  # pylint: disable=import-outside-toplevel

  from sparsity.experiments import collect, results  # pylint: disable=import-outside-toplevel

  if not os.path.exists(path):
    raise FileNotFoundError(path)
  df = _without_diverged(collect.trajectories(path) if os.path.isdir(path) else pd.read_csv(path))
  results.require_completed(df, path)
  return df


def _without_diverged(df):
  """``df`` without the rows of diverged runs (a loss that went to NaN is no point of a law), said on stderr; any
  other run that did not complete is still refused (``results.require_completed``)."""
  import sys  # pylint: disable=import-outside-toplevel

  from sparsity.maxtext import status  # pylint: disable=import-outside-toplevel

  if "end_status" not in df:
    return df
  diverged = df["end_status"].astype(str) == status.DIVERGED
  if diverged.any():
    names = df["run_name"][diverged] if "run_name" in df else df.index[diverged]
    print(f"fit: left out {int(diverged.sum())} diverged run(s): {', '.join(map(str, names))}", file=sys.stderr)
  return df[~diverged].reset_index(drop=True)


@command("recovery", "recovery tokens a pruned model needs to reach a loss, under a fitted P2 law")
def _recovery(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("--law-file", required=True, help="p2 law.json written by fit --law p2")
  p.add_argument("--n0", type=float, required=True, help="parameters before pruning")
  p.add_argument("--rho", type=float, required=True, help="pruning rate: the fraction of prunable weights removed")
  p.add_argument("--l0", type=float, required=True, help="loss before pruning")
  goal = p.add_mutually_exclusive_group(required=True)
  goal.add_argument("--target-loss", type=float, help="the loss to reach")
  goal.add_argument("--margin", type=float, help="reach L0 + margin")
  add_json(p)

  def run(args: argparse.Namespace) -> int:
    from sparsity.science import scaling_laws  # pylint: disable=import-outside-toplevel

    fit = load_fit(args.law_file)
    if fit.law != "p2":
      raise ValueError(f"{args.law_file} holds a {fit.law} law; recovery needs fit --law p2")
    target = args.target_loss if args.target_loss is not None else args.l0 + args.margin
    tokens = scaling_laws.recovery_tokens(fit.params, args.n0, args.rho, args.l0, target)
    floor = scaling_laws.p2_floor(fit.params, args.n0, args.rho, args.l0)
    result = {"n0": args.n0, "rho": args.rho, "l0": args.l0, "target_loss": target,
              "recovery_tokens": None if tokens == float("inf") else tokens, "reachable": tokens != float("inf"),
              "loss_floor": floor}
    emit(args, result, lambda: (f"{tokens:,.0f} recovery tokens to reach loss {target:.4f}" if result["reachable"]
                                else f"unreachable: the law's floor for this model and rate is {floor:.4f} > "
                                f"{target:.4f}") + f" (floor {floor:.4f} after unlimited tokens)")
    return 0

  return run


@command("predict", "predicted loss for a CSV of inputs under a fitted law")
def _predict(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("--law-file", required=True, help="law.json written by fit")
  add_data(p, "CSV with the law's input columns")
  add_out(p, "CSV to write", required=False, stdout=True, default="-")
  add_json(p)

  def run(args: argparse.Namespace) -> int:
    import pandas as pd  # pylint: disable=import-outside-toplevel

    check_out(args.out, args.force)
    fit = load_fit(args.law_file)
    df = pd.read_csv(data_path(args))
    df["predicted_loss"] = fit.predict(df)
    if args.json:
      print(json_text(df.to_dict(orient="records")))
    if args.out != "-" or not args.json:
      write_text(df.to_csv(index=False), args.out)
    return 0

  return run


def plan_report(config: Any, law_file: str | None = None, match_dense: bool = False, divisor: int | None = None,
                sparse_equivalent: bool = False, match_on: str = "total") -> dict[str, Any]:
  """The ``plan`` command's result for a config object: ``planning.plan`` plus, optionally,
  ``predicted_loss`` (with a law file), ``dense_match`` (with ``match_dense``; dense losses too with a law) and
  ``sparse_equivalent`` (with a law: the config's model as a dense baseline, and the sparse run of the same
  training compute and no worse predicted loss with the smallest final model; ``planning.find_sparse_equivalent``)."""
  from sparsity.science import planning  # pylint: disable=import-outside-toplevel

  divisor = planning.WIDTH_DIVISOR if divisor is None else divisor
  inputs = planning.config_to_plan_inputs(config)
  p = planning.plan(**inputs)
  fit = load_fit(law_file) if law_file else None
  if sparse_equivalent:
    if fit is None:
      raise ValueError("--sparse-equivalent needs --law-file (a fitted avg_param or chinchilla law)")
    found = planning.find_sparse_equivalent(
        fit, inputs["shape"], inputs["steps"], inputs["tokens_per_step"], divisor=divisor,
        sparsity_schedule=inputs["sparsity_schedule"], pruning_interval=inputs["pruning_interval"],
        **{k: inputs[k] for k in ("prune_start_fraction", "prune_end_fraction", "dense_compute_fraction",
                                  "pruning_compute_fraction")},
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
      p["dense_match"] = planning.compare_with_dense(fit, p, divisor, match_on)
    else:
      m = planning.match_dense(planning.matched_average(p, match_on), planning.ModelShape(**p["shape"]), divisor,
                               match_on)
      p["dense_match"] = {"dense_match": {**m, "lower": dataclasses.asdict(m["lower"]),
                                          "upper": dataclasses.asdict(m["upper"])}}
    p["dense_match"]["match_on"] = match_on
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
      + (f"(steps {p['prune_steps'][0]}..{p['prune_steps'][-1]}); compute {p['compute_fractions']['dense']:.1%} dense, "
         f"{p['compute_fractions']['pruning']:.1%} pruning, {p['compute_fractions']['recovery']:.1%} recovery "
         f"({p['schedule_split']} split)" if p["prune_steps"] else "(dense)"),
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
    lines.append(f"dense match for N_avg ({d.get('match_on', 'total')}): emb {m['lower']['emb']} ({m['lower_params']:,}) .. emb {m['upper']['emb']} "
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
  p.add_argument("config", help="MaxText YAML, then key=value overrides")
  add_json(p)
  p.add_argument("--law-file", help="law.json for a predicted loss")
  p.add_argument("--match-dense", action="store_true", help="dense shapes with the same average active params")
  p.add_argument("--divisor", type=int, default=None,
                 help="hidden sizes of dense matches are multiples of lcm(heads, divisor) (default: 64)")
  p.add_argument("--match-on", choices=("total", "prunable"), default="total",
                 help="the count --match-dense matches: all parameters (the avg_param law's N) or the prunable ones")
  p.add_argument("--sparse-equivalent", action="store_true",
                 help="with --law-file: the smallest final sparse model of the same compute and predicted loss")

  def run(args: argparse.Namespace) -> int:
    if args.sparse_equivalent and not args.law_file:
      raise UsageError("--sparse-equivalent needs --law-file (a fitted avg_param or chinchilla law)")
    config = load_maxtext_config([args.config, *args.overrides])
    result = plan_report(config, args.law_file, args.match_dense, args.divisor, args.sparse_equivalent, args.match_on)
    emit(args, result, lambda: format_plan(result))
    return 0

  return run


__all__ = ["plan_report", "format_plan", "load_fit"]
