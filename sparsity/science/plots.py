"""Figures for scaling-law fits (matplotlib, Agg canvas; no pyplot global state).

* ``predicted_vs_actual``: predicted against actual final loss, coloured by sparsity, with the identity
  line (the paper's Figure 3).
* ``loss_vs_avg_params``: final loss against average active parameters, sparse runs (sparsity > 0) and
  dense runs as separate series.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


def _save(fig: Figure, path: str) -> str:
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
  return _save(fig, path)


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
  return _save(fig, path)


__all__ = ["predicted_vs_actual", "loss_vs_avg_params"]
