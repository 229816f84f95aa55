"""Cost of the pruner inside MaxText training: sparse run vs the same run at target_sparsity=0, side by side.

For each model size, runs MaxText/train.py alternately dense, sparse, sparse, dense (so drift cancels) and
reports, from MaxText's own per-step times (``metrics_file``), pooled over ``ROUNDS`` rounds:

* step ratio: median step time of the sparse runs over non-pruning steps / the dense runs' median;
* event cost: extra wall time of a pruning event (the event step and the next, minus two median steps), in
  units of one ordinary step, and amortised over P = 100 steps;
* compile ratio: XLA compile time of the sparse training step / the dense one (largest backend compile), and
  of all the process's compiles (the sparse run's include the pruning-event program, compiled before step 0);
* memory: peak resident memory of the sparse process / the dense one, and sparsity state bytes per weight.

  .venv/bin/python benchmarks/train_overhead.py [--sizes tiny,paper58m] [--steps N] [--rounds N]
  .venv/bin/python benchmarks/train_overhead.py --structure 2:4     # the sparse runs at 2:4 (50%): N:M's rows
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from sparsity.maxtext import layout  # noqa: E402

SIZES = {
    "tiny": ["base_emb_dim=64", "base_num_query_heads=4", "base_num_kv_heads=4", "head_dim=16", "base_mlp_dim=256",
             "base_num_decoder_layers=2", "vocab_size=1024", "max_target_length=64", "per_device_batch_size=4"],
    # The paper's smallest shape (Table 1: 42M prunable / 58M total), at a length and batch this CPU runs.
    "paper58m": ["base_emb_dim=512", "base_num_query_heads=8", "base_num_kv_heads=8", "head_dim=64",
                 "base_mlp_dim=2048", "base_num_decoder_layers=6", "vocab_size=32000", "max_target_length=128",
                 "per_device_batch_size=2"],
}

# Rounds of (dense, sparse, sparse, dense) per size: the tiny model's 17 ms steps are noisy on a shared
# 2-core machine, so it gets more runs; one round of the 58M model takes about 7 minutes.
ROUNDS = {"tiny": 3, "paper58m": 2}
# Steps per run (pruning every --interval steps from 25% to 75% of them): the tiny model's steps are cheap, so
# its runs are longer too.
STEPS = {"tiny": 200, "paper58m": 40}


def run_once(size: str, sparsity: float, steps: int, interval: int, workdir: str, tag: str,
             structure: str = "unstructured") -> dict:
  metrics = os.path.join(workdir, f"{tag}.metrics")
  compile_log = os.path.join(workdir, f"{tag}.compile")
  args = ["configs/sparse_base.yml", *SIZES[size], f"steps={steps}", f"pruning_interval={interval}",
          f"target_sparsity={sparsity}", f"pruning_structure={structure}", f"run_name={tag}",
          f"base_output_directory={workdir}",
          f"metrics_file={metrics}", "log_period=1000", "enable_checkpointing=false",
          "jax_cache_dir="]  # no persistent compilation cache: every run compiles
  env = dict(os.environ, JAX_PLATFORMS="cpu", COMPILE_LOG=compile_log, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  log = os.path.join(workdir, f"{tag}.log")
  with open(log, "w", encoding="utf-8") as out:
    proc = subprocess.Popen([sys.executable, os.path.join(common.ROOT, "benchmarks", "_train_child.py"), *args],
                            cwd=common.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
  proc.returncode = status
  if status != 0:
    with open(log, encoding="utf-8") as f:
      raise RuntimeError(f"{tag} failed:\n{f.read()[-3000:]}")
  with open(metrics, encoding="utf-8") as f:
    rows = [json.loads(l) for l in f if l.strip()]
  with open(compile_log, encoding="utf-8") as f:
    compiles = json.load(f)
  with open(layout.summary_path(layout.run_dir(workdir, tag)), encoding="utf-8") as f:
    summary = json.load(f)
  return {
      "step_seconds": {int(r["step"]): r["perf/step_time_seconds"] for r in rows},
      "compile_seconds": max(compiles),
      "all_compiles_seconds": sum(compiles),
      "peak_rss_bytes": usage.ru_maxrss * 1024,
      "summary": summary,
  }


def analyse(dense: list[dict], sparse: list[dict], events: list[int], steps: int) -> dict:
  skip = {0, 1} | set(events) | {e + 1 for e in events}
  ordinary = [s for s in range(steps) if s not in skip]

  def med(runs):
    return statistics.median(r["step_seconds"][s] for r in runs for s in ordinary)

  dense_med, sparse_med = med(dense), med(sparse)
  extra = [
      (r["step_seconds"][e] + r["step_seconds"][e + 1] - 2 * sparse_med) / sparse_med
      for r in sparse for e in events if e + 1 < steps
  ]
  s = sparse[0]["summary"]
  return {
      "median_step_seconds": {"dense": dense_med, "sparse": sparse_med},
      "step_ratio_sparse_over_dense": sparse_med / dense_med,
      "event_extra_in_steps": statistics.median(extra),
      "event_extra_amortised_over_100_steps": statistics.median(extra) / 100,
      "compile_ratio_sparse_over_dense": statistics.median(r["compile_seconds"] for r in sparse)
      / statistics.median(r["compile_seconds"] for r in dense),
      "compile_seconds": {"dense": [r["compile_seconds"] for r in dense], "sparse": [r["compile_seconds"] for r in sparse]},
      "all_compiles_ratio_sparse_over_dense": statistics.median(r["all_compiles_seconds"] for r in sparse)
      / statistics.median(r["all_compiles_seconds"] for r in dense),
      "all_compiles_seconds": {"dense": [r["all_compiles_seconds"] for r in dense],
                               "sparse": [r["all_compiles_seconds"] for r in sparse]},
      "peak_rss_ratio_sparse_over_dense": max(r["peak_rss_bytes"] for r in sparse) / max(r["peak_rss_bytes"] for r in dense),
      "peak_rss_bytes": {"dense": [r["peak_rss_bytes"] for r in dense], "sparse": [r["peak_rss_bytes"] for r in sparse]},
      "prunable_params": s["prunable_params"],
      "total_params": s["total_params"],
      "sparsity_state_bytes_per_prunable_weight": 1.0,  # one bool mask entry; the schedule state is one int32
      "prune_steps": s["prune_steps"],
  }


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="tiny,paper58m")
  ap.add_argument("--steps", type=int, default=0, help="steps per run (0: STEPS)")
  ap.add_argument("--interval", type=int, default=10)
  ap.add_argument("--rounds", type=int, default=0, help="rounds of dense, sparse, sparse, dense (0: ROUNDS)")
  ap.add_argument("--structure", default="unstructured", help="pruning_structure of the sparse runs (N:M: target 1-N/M)")
  args = ap.parse_args()
  target = 0.8 if args.structure == "unstructured" else 1 - int(args.structure.split(":")[0]) / int(
      args.structure.split(":")[1])
  results = {}
  with tempfile.TemporaryDirectory() as work:
    for size in args.sizes.split(","):
      runs = {"dense": [], "sparse": []}
      rounds = args.rounds or ROUNDS.get(size, 1)
      steps = args.steps or STEPS.get(size, 40)
      for i, kind in enumerate(["dense", "sparse", "sparse", "dense"] * rounds):
        r = run_once(size, target if kind == "sparse" else 0.0, steps, args.interval, work, f"{size}_{kind}_{i}",
                     args.structure)
        runs[kind].append(r)
        print(f"{size} {kind}: median step {statistics.median(r['step_seconds'].values()):.4f}s, "
              f"compile {r['compile_seconds']:.1f}s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
      events = runs["sparse"][0]["summary"]["prune_steps"]
      results[size] = analyse(runs["dense"], runs["sparse"], events, steps)
      print(json.dumps({size: results[size]}, indent=2), flush=True)
  name = "train_overhead" + ("" if args.structure == "unstructured" else "_" + args.structure.replace(":", "of"))
  print("written to", common.write(name, {"pruning_interval": args.interval, "pruning_structure": args.structure,
                                                      "target_sparsity": target,
                                                      "steps": {k: args.steps or STEPS.get(k, 40) for k in results},
                                                      "rounds": {k: args.rounds or ROUNDS.get(k, 1) for k in results},
                                                      "sizes": {k: SIZES[k] for k in results}, "results": results}))


if __name__ == "__main__":
  main()
