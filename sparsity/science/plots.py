"""Figures for scaling-law fits (matplotlib, Agg canvas; no pyplot global state).

* ``predicted_vs_actual``: predicted against actual final loss, coloured by sparsity, with the identity
  line (the paper's Figure 3).
* ``loss_vs_avg_params``: final loss against average active parameters, sparse runs (sparsity > 0) and
  dense runs as separate series.
* ``recovery_curves``: loss against recovery tokens of prune-and-recover runs, one panel per model size N0, one
  colour per pruning rate, points measured and lines fitted by the P2 law (dotted: L0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


def save(fig: Figure, path: str) -> str:
  """Draws ``fig`` on an Agg canvas, lays it out tightly and writes it to ``path`` (PNG, 120 dpi); returns ``path``."""
  FigureCanvasAgg(fig)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def predicted_vs_actual(actual: Any, predicted: Any, sparsity: Any, path: str, title: str = "") -> str:
  """Scatter of predicted vs actual loss coloured by sparsity, with ``y = x``; writes ``path``, returns it."""
  a, p, s = (np.asarray(v, float) for v in (actual, predicted, sparsity))
  fig = Figure(figsize=(5, 4.5))
  ax = fig.add_subplot()
  sc = ax.scatter(a, p, c=s, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(np.max(s))), edgecolors="k")
  lo, hi = float(min(a.min(), p.min())), float(max(a.max(), p.max()))
  pad = 0.05 * (hi - lo or 1.0)
  ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="y = x")
  ax.set_xlabel("actual final loss")
  ax.set_ylabel("predicted final loss")
  ax.set_title(title or f"MAE {np.mean(np.abs(p - a)):.4f}")
  ax.legend(loc="upper left")
  fig.colorbar(sc, ax=ax, label="sparsity")
  return save(fig, path)


def loss_vs_avg_params(avg_params: Any, loss: Any, sparsity: Any, path: str, tokens: Any = None) -> str:
  """Loss against average active parameters (log x); sparse and dense runs as two series; writes ``path``."""
  n, l, s = (np.asarray(v, float) for v in (avg_params, loss, sparsity))
  fig = Figure(figsize=(5, 4.5))
  ax = fig.add_subplot()
  dense = s <= 0
  ax.scatter(n[dense], l[dense], marker="o", label="dense", edgecolors="k")
  sc = ax.scatter(n[~dense], l[~dense], c=s[~dense], cmap="viridis", vmin=0.0, vmax=1.0, marker="^",
                  label="sparse", edgecolors="k")
  if tokens is not None:
    for d in np.unique(np.asarray(tokens, float)):
      m = np.asarray(tokens, float) == d
      order = np.argsort(n[m])
      ax.plot(n[m][order], l[m][order], lw=0.5, color="grey")
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(NullFormatter())
  ax.set_xlabel("average active parameters")
  ax.set_ylabel("final loss")
  ax.legend()
  if np.any(~dense):
    fig.colorbar(sc, ax=ax, label="sparsity")
  return save(fig, path)


def recovery_curves(df: Any, fit: Any, path: str, held_out: Any = ()) -> str:
  """Loss against recovery tokens per run (see the module docstring); runs whose ``N0`` is in ``held_out`` are
  marked as predicted (not fitted). Writes ``path``, returns it."""
  import pandas as pd  # pylint: disable=import-outside-toplevel

  sizes = sorted(df["N0"].unique())
  fig = Figure(figsize=(4.2 * len(sizes), 4.0))
  rates = sorted({(float(r), str(s)) for r, s in zip(df["rho"], df.get("structure", ["unstructured"] * len(df)))})
  colors = {r: f"C{i % 10}" for i, r in enumerate(rates)}
  for i, n0 in enumerate(sizes):
    ax = fig.add_subplot(1, len(sizes), i + 1)
    part = df[df["N0"] == n0]
    for name, run in part.groupby("run_name", sort=True):
      key = (float(run["rho"].iloc[0]), str(run["structure"].iloc[0]) if "structure" in run else "unstructured")
      d = np.asarray(run["D"], float)
      ax.plot(d, run["loss"], "o", ms=3, color=colors[key])
      grid = np.geomspace(d.min(), d.max(), 50)
      curve = pd.DataFrame({"N0": n0, "rho": key[0], "L0": float(run["L0"].iloc[0]), "D": grid})
      ax.plot(grid, fit.predict(curve), "-", color=colors[key], lw=1.2,
              label=f"rho {key[0]:g}" + ("" if key[1] == "unstructured" else f" ({key[1]})"))
      ax.axhline(float(run["L0"].iloc[0]), color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("recovery tokens D")
    ax.set_ylabel("eval loss")
    ax.set_title(f"N0 = {n0:,.0f}" + (" (held out: predicted)" if n0 in set(held_out) else ""), fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
  return save(fig, path)


__all__ = ["save", "predicted_vs_actual", "loss_vs_avg_params", "recovery_curves"]
