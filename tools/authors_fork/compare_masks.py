"""Same weights, same masks: one of our checkpoints at a pruning event, pruned by our code and by the authors' fork.

  .venv/bin/python tools/authors_fork/compare_masks.py --checkpoint <run dir> --step <checkpoint step> \\
      --fork <checkout> --fork-python <fork venv python> [--out results/fidelity]

The checkpoint of step ``k`` holds the weights after ``k + 1`` updates, i.e. the weights the event at update
``k + 1`` prunes, and the masks of the events before it. Both codes prune those weights:

* ours: ``sparsity.core.pruner.compute_masks`` (global magnitude, ``sparsity.core.threshold``) keeping exactly
  our schedule's count for that event;
* the fork's ``prune()`` from its ``MaxText/train.py``, run by ``fork_prune.py`` in the fork's environment, given
  the keep fraction ``count / prunable`` (comparison "same count"), and its own schedule's fraction for the same
  event (comparison "own schedules").

Every mask entry on which they differ is counted per tensor and classified: a tie at the fork's threshold (it
keeps ``|w| >= threshold``), a weight between the two codes' smallest kept magnitudes (one keeps more weights
than the other: the fork's ``int(fraction * total)`` truncation, or its own schedule's count), or unexplained.
Writes ``masks.md`` and ``masks.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import types
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import run_cell  # pylint: disable=wrong-import-position
from sparsity.files import write_json  # pylint: disable=wrong-import-position
from sparsity.maxtext import checkpoint  # pylint: disable=wrong-import-position


def our_masks(values: list[np.ndarray], masks: list[np.ndarray], keep: int, schedule) -> list[np.ndarray]:
  """Our pruner's masks keeping exactly ``keep`` weights (global magnitude, never reviving an entry)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from sparsity.core import pruner, threshold  # pylint: disable=import-outside-toplevel

  plan = pruner.PrunePlan(schedule)  # the run's: global scope, magnitude score
  new = pruner.compute_masks([jnp.asarray(v) for v in values], [jnp.asarray(m) for m in masks],
                             (threshold.wide_const(keep),), plan, jnp.int32(0))
  return [np.asarray(m) for m in new]


def fork_masks(params: dict[str, np.ndarray], masks: dict[str, np.ndarray], fraction: float,
               args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """The fork's ``prune()`` on these weights (in its environment): its new masks by kernel path, its metrics."""
  with tempfile.TemporaryDirectory() as tmp:
    src, dst = os.path.join(tmp, "weights.npz"), os.path.join(tmp, "masks.npz")
    arrays = dict(params)
    arrays.update({p[:-len("kernel")] + "mask": m.astype(np.float32) for p, m in masks.items()})
    np.savez(src, **arrays)
    subprocess.run([args.fork_python, os.path.join(HERE, "fork_prune.py"), "--fork", args.fork, "--weights", src,
                    "--keep-fraction", repr(fraction), "--out", dst], check=True, env={**os.environ,
                                                                                         "JAX_PLATFORMS": "cpu"})
    with np.load(dst) as d:
      new = {k[:-len("mask")] + "kernel": d[k] > 0 for k in d.files if not k.startswith("metric:")}
      metrics = {k.split("/", 1)[1]: float(d[k]) for k in d.files if k.startswith("metric:")}
  return new, metrics


def classify(values: list[np.ndarray], ours: list[np.ndarray], fork: list[np.ndarray], names: list[str],
             thr: float) -> list[dict[str, Any]]:
  """Per tensor: kept counts and every differing entry, as a tie (``|w|`` equal to the fork's threshold, which it
  keeps), boundary (``|w|`` between the two codes' smallest kept magnitudes: one code keeps more weights than the
  other) or unexplained."""
  smallest = sorted(min(float(np.abs(v[m]).min()) for v, m in zip(values, masks) if m.any()) for masks in (ours, fork))
  rows = []
  for name, v, o, f in zip(names, values, ours, fork):
    a = np.abs(v)
    diff = o != f
    tie = diff & (a == np.float32(thr))
    boundary = diff & ~tie & (a >= smallest[0]) & (a <= smallest[1])
    rows.append({"tensor": name, "size": int(v.size), "kept_ours": int(o.sum()), "kept_fork": int(f.sum()),
                 "differ": int(diff.sum()), "fork_only": int((f & ~o).sum()), "ours_only": int((o & ~f).sum()),
                 "ties": int(tie.sum()), "boundary": int(boundary.sum()),
                 "unexplained": int((diff & ~tie & ~boundary).sum())})
  return rows


def comparison(label: str, values, before, names, keep_ours: int, fraction: float, params, masks,
               args) -> dict[str, Any]:
  ours = our_masks(values, before, keep_ours, args.schedule)
  fork_new, metrics = fork_masks(params, masks, fraction, args)
  fork = [fork_new[n] for n in names]
  rows = classify(values, ours, fork, names, metrics["global_threshold"])
  total = sum(r["size"] for r in rows)
  return {"comparison": label, "keep_fraction_given_to_fork": fraction, "kept_ours": keep_ours,
          "fork_target": total - int(metrics["threshold_idx"]), "kept_fork": sum(r["kept_fork"] for r in rows),
          "fork_threshold": metrics["global_threshold"], "differ": sum(r["differ"] for r in rows),
          "ties": sum(r["ties"] for r in rows), "boundary": sum(r["boundary"] for r in rows),
          "unexplained": sum(r["unexplained"] for r in rows), "tensors": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
  located = checkpoint.locate(args.checkpoint, args.step)
  state = checkpoint.load(located.items_dir)
  names = sorted(state.masks)
  kernels = sorted(p for p in state.params if p.endswith("/kernel"))
  if names != kernels:
    raise ValueError(f"our prunable set {names} is not the set of kernels {kernels}")
  event = int(state.state_step)
  runs = {r.name: r for r in run_cell.cell_runs(run_cell.SPEC, seeds=range(5))}
  cfg = run_cell.run_config(runs[args.run])
  sched = args.schedule = run_cell.our_schedule(cfg)
  if event not in sched.prune_steps:
    raise ValueError(f"checkpoint step {located.step} holds the weights of update {event}: not an event of "
                     f"{sched.prune_steps}")
  values = [np.asarray(state.params[n], np.float32) for n in names]
  before = [np.asarray(state.masks[n], bool) for n in names]
  total = sum(v.size for v in values)
  i = sched.prune_steps.index(event)
  keep = sched.keep_counts(total)[i]
  gmp = run_cell.fork_pruning(sched, int(cfg["pruning_interval"]))
  n_fork = len(run_cell.fork_events(gmp, int(cfg["steps"])))
  per_step = 1.0 - (1.0 - float(cfg["target_sparsity"])) ** (1.0 / n_fork)
  j = (event - gmp["gmp_start_step"]) // gmp["gmp_pruning_frequency"]
  own_fraction = (1.0 - per_step) ** (j + 1)
  params = {p: np.asarray(v, np.float32) for p, v in state.params.items()}
  masks = dict(zip(names, before))
  return {"checkpoint": os.path.relpath(located.items_dir, args.checkpoint), "run": args.run, "event_step": event,
          "event_index": i + 1, "events": len(sched.prune_steps), "prunable": total,
          "alive_before": int(sum(m.sum() for m in before)),
          "comparisons": [comparison("same count", values, before, names, keep, keep / total, params, masks, args),
                          comparison("own schedules", values, before, names, keep, own_fraction, params, masks,
                                     args)]}


def markdown(res: dict[str, Any], command: str) -> str:
  lines = ["# Same weights, same masks: our pruner and the authors' fork's `prune()`", "",
           f"Generated by `{command}`.", "",
           f"Weights: our run `{res['run']}` at update {res['event_step']} (pruning event {res['event_index']} of "
           f"{res['events']}), {res['prunable']:,} prunable weights, {res['alive_before']:,} alive before the event.",
           "", "| comparison | fraction given to the fork | kept (ours) | fork's target | kept (fork) | "
           "fork threshold | entries that differ | ties at threshold | boundary | unexplained |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for c in res["comparisons"]:
    lines.append(f"| {c['comparison']} | {c['keep_fraction_given_to_fork']!r} | {c['kept_ours']:,} | "
                 f"{c['fork_target']:,} | {c['kept_fork']:,} | {c['fork_threshold']:.6g} | {c['differ']} | "
                 f"{c['ties']} | {c['boundary']} | {c['unexplained']} |")
  for c in res["comparisons"]:
    lines += ["", f"Per tensor ({c['comparison']}):", "",
              "| tensor | size | kept (ours) | kept (fork) | differ | fork only | ours only | ties | boundary | "
              "unexplained |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in c["tensors"]:
      lines.append(f"| `{r['tensor']}` | {r['size']:,} | {r['kept_ours']:,} | {r['kept_fork']:,} | {r['differ']} | "
                   f"{r['fork_only']} | {r['ours_only']} | {r['ties']} | {r['boundary']} | {r['unexplained']} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True, help="our run directory (with checkpoints/<step>/items)")
  parser.add_argument("--step", type=int, required=True, help="checkpoint step (its weights: update step + 1)")
  parser.add_argument("--run", default="paired-b1-sparse-w64-s0.8-seed0", help="the spec run it is a checkpoint of")
  parser.add_argument("--fork", required=True)
  parser.add_argument("--fork-python", required=True)
  parser.add_argument("--out", default=run_cell.RESULTS)
  args = parser.parse_args()
  res = run(args)
  os.makedirs(args.out, exist_ok=True)
  write_json(os.path.join(args.out, "masks.json"), res)
  command = ("tools/authors_fork/compare_masks.py --checkpoint <run dir> --step " f"{args.step} --fork <checkout> "
             "--fork-python <fork python>")
  with open(os.path.join(args.out, "masks.md"), "w", encoding="utf-8") as f:
    f.write(markdown(res, ".venv/bin/python " + command))
  for c in res["comparisons"]:
    print({k: v for k, v in c.items() if k != "tensors"})


if __name__ == "__main__":
  main()
