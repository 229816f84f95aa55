"""``python -m sparsity inspect``: sparsity of a MaxText checkpoint, read on the host without building the trainer.

Per tensor: shape, size, whether it is prunable, its zeros and (with masks) its pruned count. Totals: all
parameters, prunable ones, pruned ones, active ones (all minus pruned, as ``sparsity_summary.json`` counts
them). Pruning state: the pruner's update count, whether masks are present (a sparse run) or not (a dense
checkpoint), and, when the run's ``sparsity_summary.json`` is beside it, the schedule's events done.

N:M structure: with ``structure='N:M'`` (or, by default, the ``pruning_structure`` the run's summary records), each
prunable tensor is checked independently of the masks: every group of M consecutive weights along its
contraction axis must hold at most N non-zeros. The axis comes from the family description
(``sparsity.maxtext.families``) of the run's ``decoder_block``, which the summary records (without a summary, every
family describing a path must agree on its axis).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from sparsity.core.config import UNSTRUCTURED, parse_structure
from sparsity.maxtext import checkpoint as ckpt
from sparsity.maxtext import families, layout

DEFAULT_PRUNABLE = families.default_prunable()


def report(path: str, step: int | None = None, prunable: str | None = None,
           structure: str | None = None, decoder_block: str | None = None) -> dict[str, Any]:
  """The inspection of one checkpoint step as a JSON-ready dict.

  Args:
    path: run directory, its checkpoints directory, a step's directory or its items directory.
    step: the step to read (default: the latest).
    prunable: regex of prunable parameter paths, used only for a checkpoint without masks.
    structure: 'N:M' to check every prunable tensor for (default: the run summary's ``pruning_structure``).
    decoder_block: the model's family, for the contraction axes (default: the run summary's).
  """
  where = ckpt.locate(path, step)
  state = ckpt.load(where.items_dir)
  return build_report(where, state, prunable, structure, decoder_block)


def max_nonzeros_per_group(w: np.ndarray, axis: int, m: int) -> int:
  """The most non-zeros in any group of ``m`` consecutive entries of ``w`` along ``axis``."""
  if w.shape[axis] % m:
    raise ValueError(f"axis {axis} of shape {w.shape} is not a multiple of {m}")
  x = np.moveaxis(w != 0, axis, -1)
  return int(x.reshape(*x.shape[:-1], x.shape[-1] // m, m).sum(-1).max()) if x.size else 0


def build_report(where: ckpt.Located, state: ckpt.ModelState, prunable: str | None = None,
                 structure: str | None = None, decoder_block: str | None = None):
  """The report of ``report`` for a checkpoint already loaded (``where`` says which)."""
  has_masks = bool(state.masks)
  unknown = sorted(set(state.masks) - set(state.params))
  if unknown:
    raise ValueError(f"masks without a parameter in {where.items_dir}: {', '.join(unknown)}")
  summary = ckpt.read_summary(where.run_dir)
  if structure is None and summary and summary.get("pruning_structure", UNSTRUCTURED) != UNSTRUCTURED:
    structure = summary["pruning_structure"]
  nm = parse_structure(structure) if structure else None
  model = (summary or {}).get("model") or {}
  decoder_block = decoder_block or model.get("decoder_block")
  scan_axis = int(model.get("param_scan_axis", 1))
  prunable = DEFAULT_PRUNABLE if prunable is None else prunable
  tensors = []
  for name in sorted(state.params):
    is_prunable = name in state.masks if has_masks else bool(re.search(prunable, name))
    row = _tensor_row(name, state.params[name], state.masks.get(name), is_prunable)
    if nm is not None and is_prunable:
      row["structure"] = _structure_row(name, state.params[name], nm, decoder_block, scan_axis)
    tensors.append(row)
  return {
      "items_dir": where.items_dir,
      "run_dir": where.run_dir,
      "step": where.step,
      "state_step": state.state_step,
      "pruner": {
          "count": state.pruner_count,
          "masks": has_masks,
          "dense_checkpoint": not has_masks,
          "masked_tensors": len(state.masks),
          "mask_violations": sum(t.get("pruned_nonzero", 0) for t in tensors),
      },
      "schedule": _schedule_state(summary, state.pruner_count),
      "decoder_block": decoder_block,
      "structure": None if nm is None else {
          "n_of_m": f"{nm[0]}:{nm[1]}", "tensors_checked": sum("structure" in t for t in tensors),
          "ok": all(t["structure"]["ok"] for t in tensors if "structure" in t)},
      "totals": _totals(tensors),
      "tensors": tensors,
  }


def _tensor_row(name: str, w: np.ndarray, mask: np.ndarray | None, is_prunable: bool) -> dict[str, Any]:
  """One tensor's counts: zeros, and pruned (the mask's, else the exact zeros of a prunable tensor)."""
  zeros = int(np.count_nonzero(w == 0))
  row: dict[str, Any] = {"path": name, "shape": list(w.shape), "dtype": str(w.dtype), "size": int(w.size),
                         "prunable": is_prunable, "zeros": zeros}
  if mask is not None:
    if mask.shape != w.shape:
      raise ValueError(f"mask of {name} has shape {mask.shape}, the parameter {w.shape}")
    row["pruned"] = int(np.count_nonzero(~mask))
    row["pruned_nonzero"] = int(np.count_nonzero(w[~mask]))  # must be 0: a pruned weight that is not zero
  else:
    # No mask (dense checkpoint, or parameters saved without the optimizer state): exact zeros count.
    row["pruned"] = zeros if is_prunable else 0
  row["active"] = row["size"] - row["pruned"]
  row["sparsity"] = row["pruned"] / w.size if w.size else 0.0
  return row


def _structure_row(name: str, w: np.ndarray, nm: tuple[int, int], decoder_block, scan_axis: int) -> dict[str, Any]:
  axis = layout.contraction_axis(name, w.shape, decoder_block, scan_axis)
  most = max_nonzeros_per_group(w, axis, nm[1])
  return {"n_of_m": f"{nm[0]}:{nm[1]}", "axis": axis, "max_nonzeros_per_group": most, "ok": most <= nm[0]}


def _totals(tensors: list[dict[str, Any]]) -> dict[str, Any]:
  total = sum(t["size"] for t in tensors)
  prunable_n = sum(t["size"] for t in tensors if t["prunable"])
  pruned = sum(t["pruned"] for t in tensors)
  return {
      "params": total,
      "prunable": prunable_n,
      "non_prunable": total - prunable_n,
      "pruned": pruned,
      "prunable_zeros": sum(t["zeros"] for t in tensors if t["prunable"]),
      "active": total - pruned,
      "sparsity": pruned / prunable_n if prunable_n else 0.0,
      "overall_sparsity": pruned / total if total else 0.0,
      "zeros": sum(t["zeros"] for t in tensors),
  }


def _schedule_state(summary: dict | None, count: int | None) -> dict[str, Any] | None:
  if not summary or "prune_steps" not in summary:
    return None
  events = list(summary["prune_steps"])
  out = {
      "source": layout.SUMMARY_FILE,
      "sparsity_schedule": summary.get("sparsity_schedule"),
      "target_sparsity": summary.get("target_sparsity"),
      "steps": summary.get("steps"),
      "prune_steps": events,
  }
  if count is not None:
    out["events_done"] = sum(1 for s in events if s < count)
    later = [s for s in events if s >= count]
    out["next_event"] = later[0] if later else None
  return out


def _fmt_shape(shape) -> str:
  return "x".join(map(str, shape)) or "scalar"


def format_report(r: dict[str, Any]) -> str:
  """The report as a table for people."""
  p, t = r["pruner"], r["totals"]
  lines = [f"checkpoint: {r['items_dir']}", f"step: {r['step']} (train state step {r['state_step']})"]
  if p["masks"]:
    lines.append(f"pruner: count {p['count']}, masks present for {p['masked_tensors']} tensors"
                 + (f"; WARNING: {p['mask_violations']} pruned weights are not zero" if p["mask_violations"] else ""))
  else:
    lines.append("pruner: no masks (dense checkpoint" + ("" if p["count"] is None else f", count {p['count']}") +
                 "); prunable = default linear-layer kernels, sparsity = exact zeros")
  s = r["schedule"]
  if s:
    done = f"; {s['events_done']} of {len(s['prune_steps'])} events done" if "events_done" in s else ""
    nxt = f", next at step {s['next_event']}" if s.get("next_event") is not None else ""
    steps = ", ".join(map(str, s["prune_steps"])) or "none"
    lines.append(f"schedule: {s['sparsity_schedule']} to {s['target_sparsity']} over {s['steps']} steps, events at "
                 f"steps {steps}{done}{nxt}")
  st = r.get("structure")
  if st:
    bad = [x["path"] for x in r["tensors"] if "structure" in x and not x["structure"]["ok"]]
    lines.append(f"structure {st['n_of_m']} along each kernel's contraction axis: "
                 + (f"every one of {st['tensors_checked']} prunable tensors satisfies it" if st["ok"] else
                    f"NOT satisfied by {', '.join(bad)}"))
  width = max(len(x["path"]) for x in r["tensors"])
  lines.append("")
  lines.append(f"{'tensor':<{width}}  {'shape':>14}  {'params':>11}  prunable  {'pruned':>11}  {'active':>11}  sparsity")
  for x in r["tensors"]:
    lines.append(f"{x['path']:<{width}}  {_fmt_shape(x['shape']):>14}  {x['size']:>11,}  {'yes' if x['prunable'] else 'no':>8}  "
                 f"{x['pruned']:>11,}  {x['active']:>11,}  {x['sparsity']:.4f}")
  lines.append("")
  lines.append(f"total params {t['params']:,}  prunable {t['prunable']:,}  non-prunable {t['non_prunable']:,}")
  lines.append(f"{'pruned' if p['masks'] else 'zero'} {t['pruned']:,}: sparsity {t['sparsity']:.4f} of prunable "
               f"({t['overall_sparsity']:.4f} of all); active params {t['active']:,}")
  return "\n".join(lines)
