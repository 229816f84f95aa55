"""The authors' fork of MaxText on the study's Figure 1 b1 cell, beside our runs of the same cell.

  .venv/bin/python tools/authors_fork/run_cell.py --fork /path/to/sparse-llm-code \\
      --fork-python /path/to/fork-venv/bin/python [--out /tmp/fork_runs] [--seeds 0 1 2] [--collect-only]

The cell is read from our sweep spec (``configs/study/paired.yml``, budget b1: the width-64 model at 80%
sparsity and the dense widths that bracket its average count, seeds 0..2), expanded by
``sparsity.experiments.sweep``; every setting of the fork's runs is derived from those run configs (steps,
batch, sequence length, learning-rate schedule, model shape, seeds, data, tokenizer, and the pruning events
of our schedule). Per run the script writes the fork's YAML (``<out>/<run>/fork.yml``), runs the fork's
``MaxText/train.py`` through ``fork_train.py`` under the fork's Python, one run at a time, ``nice -n 5``
(a run with ``<out>/<run>/result.json`` is skipped: re-running resumes), and reads the fork's per-step
metrics (its ``metrics_file``): the final eval loss, the non-zero prunable count of every step (its N_avg).
Our runs are not retrained: they are the rows of ``results/study/stats.csv`` / ``runs.csv``.

Outputs: ``results/fidelity/cell.csv`` (one row per run and code), ``results/fidelity/cell_gaps.csv`` (the
paired gap per code and matching, by ``sparsity.experiments.paired``) and ``results/fidelity/cell.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import types
from typing import Any, Sequence

import pandas as pd
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

try:  # the config's schedule: sparsity.core.config in the current tree, sparsity.core.schedules before it
  from sparsity.core.config import schedule_from_config  # pylint: disable=wrong-import-position
except ImportError:  # pragma: no cover
  from sparsity.core.schedules import schedule_from_config  # pylint: disable=wrong-import-position
from sparsity.experiments import paired, sweep  # pylint: disable=wrong-import-position
from sparsity.maxtext import yaml_chain  # pylint: disable=wrong-import-position

SPEC = os.path.join(REPO, "configs", "study", "paired.yml")
RESULTS = os.path.join(REPO, "results", "fidelity")
STUDY = os.path.join(REPO, "results", "study")
XLA_FLAGS = "--xla_cpu_use_thunk_runtime=false"
BUDGET, SPARSITY, SPARSE_WIDTH, DENSE_WIDTHS = "b1", 0.8, 64, (32, 40, 48, 56)
CSV_COLUMNS = ["code", "run_name", "kind", "budget", "base_emb_dim", "target_sparsity", "seed", "steps", "loss",
               "avg_params", "avg_prunable", "prunable_params", "non_prunable_params", "total_params",
               "final_sparsity", "n_events", "first_event", "last_event", "pruning_interval", "step0_loss",
               "tokens", "xla_flags", "source"]


# --- The cell, from our spec -------------------------------------------------------------------------------------

def cell_runs(spec_path: str = SPEC, seeds: Sequence[int] = (0, 1, 2)) -> list[sweep.Run]:
  """The cell's runs, expanded from our spec with its constraints replaced by the cell's (dense seeds 0 and 1
  are fig1.yml's runs in the study: the same configs, so the same runs)."""
  with open(spec_path, encoding="utf-8") as f:
    data = yaml.safe_load(f)
  data["constraints"] = [f"budget == {BUDGET!r}", f"seed in {list(seeds)!r}",
                         f"(kind == 'sparse' and target_sparsity == {SPARSITY} and base_emb_dim == {SPARSE_WIDTH})"
                         f" or (kind == 'dense' and base_emb_dim in {list(DENSE_WIDTHS)!r})"]
  return sweep.expand(sweep.parse_spec(data, spec_path))


def run_config(run: sweep.Run) -> dict[str, Any]:
  """The run's config as MaxText reads it before derivation: its YAML chain, then the run's overrides."""
  cfg = dict(yaml_chain.load(run.base))
  for word in run.overrides:
    key, value = sweep.parse_override(word)
    cfg[key] = sweep.parse_value(value)
  return cfg


def our_schedule(cfg: dict[str, Any]):
  """Our trainer's schedule of a run config (the step split derived from the compute split)."""
  keys = {"prune_start_fraction": None, "prune_end_fraction": None, **cfg}
  return schedule_from_config(types.SimpleNamespace(**keys))


# --- The fork's schedule ---------------------------------------------------------------------------------------------

def fork_pruning(schedule, interval: int) -> dict[str, int]:
  """The fork's keys (``gmp_start_step``, ``gmp_end_step``, ``gmp_pruning_frequency``) closest to ``schedule``.

  The fork prunes at every step ``s`` with ``start <= s <= end`` and ``s % frequency == 0`` (absolute, not from
  ``start``). Ours prunes at ``start, start + P, ...`` and adds ``end`` when it is off that grid; the fork cannot
  express that last off-grid event, so its last event is ours before it. A dense run gets no event."""
  if not schedule.prune_steps:
    return {"gmp_start_step": schedule.steps, "gmp_end_step": schedule.steps, "gmp_pruning_frequency": interval}
  start = schedule.prune_steps[0]
  if start % interval:
    raise ValueError(f"first event {start} is not a multiple of the interval {interval}: the fork's grid "
                     f"(step % frequency == 0) cannot start there")
  on_grid = [s for s in schedule.prune_steps if (s - start) % interval == 0]
  return {"gmp_start_step": start, "gmp_end_step": on_grid[-1], "gmp_pruning_frequency": interval}


def fork_events(keys: dict[str, int], steps: int) -> list[int]:
  """The steps at which the fork's train loop prunes (its condition in ``train_loop``)."""
  a, b, p = keys["gmp_start_step"], keys["gmp_end_step"], keys["gmp_pruning_frequency"]
  return [s for s in range(steps) if a <= s <= b and s % p == 0]


def fork_keep_counts(n_events: int, sparsity: float, prunable: int) -> list[int]:
  """Weights the fork keeps after each event, ties aside: ``int(keep_fraction * prunable)`` with its
  ``keep_fraction = (1 - per_step) ** (i + 1)``, ``per_step = 1 - (1 - S) ** (1 / n)`` (Python floats)."""
  per_step = 1.0 - (1.0 - sparsity) ** (1.0 / n_events)
  return [int((1.0 - per_step) ** (i + 1) * prunable) for i in range(n_events)]


def scheduled_average(events: Sequence[int], kept: Sequence[int], prunable: int, steps: int) -> float:
  """Mean active prunable count over ``steps`` when the count drops to ``kept[i]`` at step ``events[i]``."""
  bounds = [0, *events, steps]
  counts = [prunable, *kept]
  return sum((b - a) * c for a, b, c in zip(bounds[:-1], bounds[1:], counts)) / steps


# --- The fork's YAML -----------------------------------------------------------------------------------------------

MODEL_KEYS = ("decoder_block", "base_emb_dim", "base_num_query_heads", "base_num_kv_heads", "head_dim",
              "base_mlp_dim", "base_num_decoder_layers", "mlp_activations", "logits_via_embedding",
              "normalization_layer_epsilon", "vocab_size", "dtype", "weight_dtype", "enable_dropout", "dropout_rate",
              "scan_layers")
TRAIN_KEYS = ("steps", "per_device_batch_size", "max_target_length", "learning_rate", "warmup_steps_fraction",
              "adam_b1", "adam_b2", "adam_eps", "adam_weight_decay", "gradient_clipping_threshold", "opt_type",
              "init_weights_seed", "data_shuffle_seed", "enable_data_shuffling", "dataset_type", "dataset_name",
              "eval_dataset_name", "add_bos", "add_eos", "eval_steps")


def fork_yaml(cfg: dict[str, Any], run_name: str, fork: str, out: str) -> dict[str, Any]:
  """The fork's config of one run: its base.yml, then our run's values under the fork's key names."""
  schedule = our_schedule(cfg)
  y: dict[str, Any] = {"base_config": os.path.join(os.path.abspath(fork), "MaxText", "configs", "base.yml"),
                       "run_name": run_name, "base_output_directory": os.path.abspath(out)}
  y.update({k: cfg[k] for k in MODEL_KEYS + TRAIN_KEYS})
  y["dataset_path"] = os.path.abspath(os.path.join(REPO, cfg["dataset_path"]))
  y["tokenizer_path"] = os.path.abspath(os.path.join(REPO, cfg["tokenizer_path"]))
  y["cosine_learning_rate_final_fraction"] = cfg["learning_rate_final_fraction"]  # the fork's name of the key
  y["attention"] = "dot_product"  # ours runs dot_product on CPU too (MaxText's autoselected on CPU)
  # one evaluation, of the final weights, on the whole validation split (ours: eval_start_step = steps - 1)
  y["eval_interval"] = int(cfg["steps"])
  y.update({"sparsity": float(cfg["target_sparsity"]), "pruning_method": "global_gradual", "pruning_structure": "none",
            "pruning_score": "magnitude", "do_not_prune_kw": "",
            **fork_pruning(schedule, int(cfg["pruning_interval"]))})
  y.update({"enable_checkpointing": False, "monitor_goodput": False, "enable_goodput_recording": False,
            "log_period": int(cfg["log_period"]), "metrics_file": os.path.join(os.path.abspath(out), run_name,
                                                                               "metrics.jsonl")})
  return y


# --- Running and reading the fork ------------------------------------------------------------------------------------

def read_metrics(path: str) -> dict[str, Any]:
  """The fork's metrics file: final eval loss, step-0 train loss, per-step non-zero prunable counts."""
  train, eval_loss = {}, None
  with open(path, encoding="utf-8") as f:
    for line in f:
      m = json.loads(line)
      if "eval/avg_loss" in m:
        eval_loss = float(m["eval/avg_loss"])
      elif "learning/loss" in m:
        train[int(m["step"])] = m
  steps = sorted(train)
  if eval_loss is None or not steps:
    raise ValueError(f"{path}: no eval loss or no train step")
  last = train[steps[-1]]
  return {"loss": eval_loss, "step0_loss": float(train[steps[0]]["learning/loss"]), "steps_logged": len(steps),
          "nonzero_prunable": [float(train[s]["pruning/nonzero_prunable"]) for s in steps],
          "prunable_params": int(last["pruning/prunable"]), "total_params": int(last["pruning/num_param"]),
          "final_density": float(last["pruning/density"])}


def run_fork(run: sweep.Run, cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
  """Runs one of the cell's runs in the fork and returns its result; a run with a result, or whose metrics file is
  complete (every step and the eval loss), is not run again."""
  run_dir = os.path.join(args.out, run.name)
  result_path = os.path.join(run_dir, "result.json")
  if os.path.exists(result_path):
    with open(result_path, encoding="utf-8") as f:
      return json.load(f)
  os.makedirs(run_dir, exist_ok=True)
  y = fork_yaml(cfg, run.name, args.fork, args.out)
  gmp = {k: y[k] for k in ("gmp_start_step", "gmp_end_step", "gmp_pruning_frequency")}
  complete, seconds = _complete(y["metrics_file"], int(cfg["steps"])), None
  if not complete:
    yml = os.path.join(run_dir, "fork.yml")
    with open(yml, "w", encoding="utf-8") as f:
      yaml.safe_dump(y, f, sort_keys=False)
    if os.path.exists(y["metrics_file"]):
      os.remove(y["metrics_file"])
    cmd = ["nice", "-n", "5", args.fork_python, os.path.join(HERE, "fork_train.py"), "--fork", args.fork,
           "--num-epochs", str(int(cfg["num_epoch"])), "--", yml]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": args.xla_flags}
    with open(os.path.join(run_dir, "xla_flags.txt"), "w", encoding="utf-8") as f:
      f.write(args.xla_flags)
    t0 = time.time()
    with open(os.path.join(run_dir, "train.log"), "w", encoding="utf-8") as log:
      rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                           cwd=os.path.join(args.fork, "MaxText"))
    if rc:
      raise RuntimeError(f"fork run {run.name} exited {rc}: see {run_dir}/train.log")
    seconds = time.time() - t0
  flags = os.path.join(run_dir, "xla_flags.txt")
  result = {**read_metrics(y["metrics_file"]), "seconds": seconds, "gmp": gmp,
            "xla_flags": open(flags, encoding="utf-8").read() if os.path.exists(flags) else ""}
  with open(result_path, "w", encoding="utf-8") as f:
    json.dump(result, f)
  print(f"{run.name}: fork loss {result['loss']:.4f}", flush=True)
  return result


def _complete(metrics_file: str, steps: int) -> bool:
  try:
    return len(read_metrics(metrics_file)["nonzero_prunable"]) == steps
  except (OSError, ValueError, KeyError):
    return False


# --- Rows of both codes -------------------------------------------------------------------------------------------

def labels(run: sweep.Run, cfg: dict[str, Any]) -> dict[str, Any]:
  return {"run_name": run.name, "kind": run.values["kind"], "budget": run.values["budget"],
          "base_emb_dim": int(cfg["base_emb_dim"]), "target_sparsity": float(cfg["target_sparsity"]),
          "seed": int(run.values["seed"]), "steps": int(cfg["steps"]), "pruning_interval": int(cfg["pruning_interval"])}


def fork_row(run: sweep.Run, cfg: dict[str, Any], res: dict[str, Any], out: str = "") -> dict[str, Any]:
  """The fork's run as a row: N_avg from its own per-step non-zero counts (its metrics), the events from its keys."""
  counts = res["nonzero_prunable"]
  steps = int(cfg["steps"])
  if len(counts) != steps:
    raise ValueError(f"{run.name}: {len(counts)} train steps logged, expected {steps}")
  prunable, total = res["prunable_params"], res["total_params"]
  avg_prunable = sum(counts) / steps
  events = fork_events(res["gmp"], steps) if float(cfg["target_sparsity"]) else []
  return {**labels(run, cfg), "code": "fork", "loss": res["loss"], "avg_prunable": avg_prunable,
          "avg_params": avg_prunable + total - prunable, "prunable_params": prunable,
          "non_prunable_params": total - prunable, "total_params": total, "final_sparsity": 1 - res["final_density"],
          "n_events": len(events), "first_event": events[0] if events else None,
          "last_event": events[-1] if events else None, "step0_loss": res["step0_loss"],
          "tokens": steps * int(cfg["per_device_batch_size"]) * int(cfg["max_target_length"]),
          "xla_flags": res.get("xla_flags", ""), "source": f"<--out>/{run.name}/metrics.jsonl"}


def our_rows(runs: Sequence[sweep.Run], study: str = STUDY) -> list[dict[str, Any]]:
  """Our runs of the cell, from the study's CSVs (paired-* rows, else fig1's run of the same config)."""
  table = pd.concat([pd.read_csv(os.path.join(study, "stats.csv")), pd.read_csv(os.path.join(study, "runs.csv"))])
  table = table.drop_duplicates("run_name").set_index("run_name")
  rows = []
  for run in runs:
    cfg = run_config(run)
    name = run.name if run.name in table.index else "fig1-" + run.name.split("-", 1)[1]
    if name not in table.index:
      raise KeyError(f"{run.name}: neither it nor {name} is in {study}")
    r = table.loc[name]
    events = json.loads(r["prune_steps"])
    if run.values["kind"] == "sparse" and events != list(our_schedule(cfg).prune_steps):
      raise ValueError(f"{name}: its prune_steps differ from the schedule of our spec")
    rows.append({**labels(run, cfg), "code": "ours", "loss": float(r["loss"]), "avg_params": float(r["avg_params"]),
                 "avg_prunable": float(r["avg_params"]) - float(r["non_prunable_params"]),
                 "prunable_params": int(r["prunable_params"]), "non_prunable_params": int(r["non_prunable_params"]),
                 "total_params": int(r["total_params"]), "final_sparsity": float(r["final_sparsity"]),
                 "n_events": len(events), "first_event": events[0] if events else None,
                 "last_event": events[-1] if events else None, "step0_loss": math.nan, "tokens": float(r["tokens"]),
                 "xla_flags": "", "source": f"results/study/{'stats' if name == run.name else 'runs'}.csv:{name}"})
  return rows


# --- Analysis: the same paired analysis for both codes ----------------------------------------------------------

def gaps(cell: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
  """Per code: ``sparsity.experiments.paired``'s per-seed differences and its summary (mean, 95% t interval) of
  sparse minus dense interpolated at equal N_avg, prunable and total matching."""
  diffs, sums = [], []
  for code, rows in cell.groupby("code", sort=False):
    d = paired.differences(rows.drop(columns="code").reset_index(drop=True), specs=("paired-",))
    d.insert(0, "code", code)
    s = paired.summary(d.drop(columns="code"))
    s.insert(0, "code", code)
    diffs.append(d)
    sums.append(s)
  return pd.concat(diffs, ignore_index=True), pd.concat(sums, ignore_index=True)


def _f(x: float, digits: int = 3) -> str:
  return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(cell: pd.DataFrame, summary: pd.DataFrame, diffs: pd.DataFrame) -> str:
  """``cell.md``: dense losses per width, the sparse runs, and the paired gaps, both codes side by side."""
  codes = list(dict.fromkeys(cell["code"]))
  lines = ["# Figure 1 b1 cell: our code and the authors' fork", "",
           "Generated by `.venv/bin/python tools/authors_fork/run_cell.py --fork <checkout> --fork-python <python>`"
           " from `results/fidelity/cell.csv`. Losses are final eval losses (whole validation split); mean over "
           "seeds (n).", "", "## Dense runs", "",
           "| width | prunable | total | " + " | ".join(f"{c} loss (n)" for c in codes) + " |",
           "|---|---|---|" + "---|" * len(codes)]
  dense = cell[cell["kind"] == "dense"]
  for w, g in dense.groupby("base_emb_dim"):
    cells = []
    for c in codes:
      gc = g[g["code"] == c]
      cells.append(f"{gc['loss'].mean():.4f} ({len(gc)})" if len(gc) else "")
    lines.append(f"| {w} | {int(g['prunable_params'].iloc[0]):,} | {int(g['total_params'].iloc[0]):,} | "
                 + " | ".join(cells) + " |")
  lines += ["", "## Sparse runs (width 64, 80%)", "",
            "| code | seeds | loss | N_avg prunable | N_avg total | events | first | last | final sparsity |",
            "|---|---|---|---|---|---|---|---|---|"]
  for c in codes:
    g = cell[(cell["code"] == c) & (cell["kind"] == "sparse")]
    if g.empty:
      continue
    lines.append(f"| {c} | {len(g)} | {g['loss'].mean():.4f} | {g['avg_prunable'].mean():,.1f} | "
                 f"{g['avg_params'].mean():,.1f} | {int(g['n_events'].iloc[0])} | {int(g['first_event'].iloc[0])} | "
                 f"{int(g['last_event'].iloc[0])} | {g['final_sparsity'].mean():.6f} |")
  lines += ["", "## Paired gap: sparse minus dense at equal N_avg (95% t interval over seeds)", "",
            "| code | matching | seeds | sparse loss | dense loss at N_avg | gap | 95% interval | verdict |",
            "|---|---|---|---|---|---|---|---|"]
  for _, r in summary.iterrows():
    lines.append(f"| {r['code']} | {r['matching']} | {r['seeds']} | {_f(r['sparse_loss'], 4)} | "
                 f"{_f(r['dense_loss'], 4)} | {_f(r['difference'])} | [{_f(r['low'])}, {_f(r['high'])}] | "
                 f"{r['verdict']} |")
  lines += ["", "Per seed:", "", "| code | matching | seed | sparse | dense at N_avg | gap | between |",
            "|---|---|---|---|---|---|---|"]
  for _, r in diffs.iterrows():
    between = f"w{r['lower'].split('-w')[1].split('-')[0]}..{r['upper'].split('-w')[1].split('-')[0]}" \
        if r["lower"] else "not bracketed"
    lines.append(f"| {r['code']} | {r['matching']} | {r['seed']} | {r['sparse_loss']:.4f} | {_f(r['dense_loss'], 4)} "
                 f"| {_f(r['difference'])} | {between} |")
  return "\n".join(lines) + "\n"


def write_results(cell: pd.DataFrame, results: str = RESULTS) -> pd.DataFrame:
  os.makedirs(results, exist_ok=True)
  cell = cell[CSV_COLUMNS]
  cell.to_csv(os.path.join(results, "cell.csv"), index=False)
  diffs, summary = gaps(cell)
  summary.to_csv(os.path.join(results, "cell_gaps.csv"), index=False)
  with open(os.path.join(results, "cell.md"), "w", encoding="utf-8") as f:
    f.write(markdown(cell, summary, diffs))
  return summary


def order(runs: Sequence[sweep.Run]) -> list[sweep.Run]:
  """Run order when time is short: seed by seed, the sparse run and the dense widths that bracket its N_avg under
  prunable matching (40, 32); then, seed by seed, width 48 (with 40, the bracket under total matching); then 56."""
  group = {64: 0, 40: 0, 32: 0, 48: 1, 56: 2}
  rank = {64: 0, 40: 1, 32: 2, 48: 3, 56: 4}
  return sorted(runs, key=lambda r: (group[int(r.values["base_emb_dim"])], int(r.values["seed"]),
                                     rank[int(r.values["base_emb_dim"])]))


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fork", required=True, help="checkout of tjingrant/sparse-llm-code at 78688d4")
  parser.add_argument("--fork-python", required=True, help="the fork's interpreter (tools/authors_fork/setup_env.sh)")
  parser.add_argument("--out", default="/tmp/fork_runs", help="the fork's run directories (outside the repository)")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--collect-only", action="store_true", help="train nothing: collect the finished runs")
  parser.add_argument("--results", default=RESULTS)
  parser.add_argument("--xla-flags", default=XLA_FLAGS,
                      help="XLA_FLAGS of the fork's runs (default: jaxlib 0.4.35's older, non-thunk CPU runtime, "
                           "the one its release notes name for CPU slowdowns of the new one; the same computation)")
  args = parser.parse_args(argv)
  if not os.path.isfile(os.path.join(args.fork, "MaxText", "train.py")):
    sys.exit(f"{args.fork}: not a checkout of the fork (no MaxText/train.py)")
  args.out = os.path.abspath(args.out)
  runs = cell_runs(SPEC, args.seeds)
  rows = our_rows(runs)
  for run in order(runs):
    cfg = run_config(run)
    done = os.path.exists(os.path.join(args.out, run.name, "result.json"))
    if args.collect_only and not done:
      print(f"{run.name}: no fork result yet", flush=True)
      continue
    rows.append(fork_row(run, cfg, run_fork(run, cfg, args), args.out))
  summary = write_results(pd.DataFrame(rows), args.results)
  print(summary.to_string(index=False))


if __name__ == "__main__":
  main()
