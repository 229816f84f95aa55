"""Scaling laws for the final loss of dense and sparse pre-training runs: fit, predict, describe.

Three laws, looked up by name in ``LAWS``:

* ``chinchilla`` (Hoffmann et al. 2022): ``L = E + A / N**alpha + B / D**beta`` with ``N`` the dense
  (initial) parameter count, column ``params``; ``D`` is training tokens, column ``tokens``.
* ``avg_param`` (the paper, eq. 2): the same form with ``N`` the average number of active parameters over
  training, column ``avg_params``.
* ``frantar`` (Frantar et al. 2023, the paper's Appendix A):
  ``L = (a_S (1 - S)**b_S + c_S) * (1 / N)**b_N + (a_D / D)**b_D + c`` with ``N`` the non-zero parameters
  at the end (column ``nonzero_params``) and ``S`` the final sparsity (column ``sparsity``, in [0, 1)).
* ``p2`` (Chen et al. 2025, "P2 Law", the loss after recovery training of a pruned model):
  ``L = L0 + (1 / rho)**gamma * (1 / N0)**delta * (N_C / N0**alpha + D_C / D**beta + E)`` with ``N0`` the
  parameters before pruning (column ``N0``), ``rho`` the pruning rate, the fraction of the prunable weights
  removed (column ``rho``, in (0, 1)), ``D`` the recovery tokens so far (column ``D``) and ``L0`` the loss before
  pruning (column ``L0``). ``gamma`` and ``delta`` are not constrained in sign (a loss that grows with the pruning
  rate needs ``gamma < 0`` with this ``rho``); ``alpha, beta >= 0``; ``N_C, D_C, E > 0``. Its data are the points
  of loss trajectories (``sparsity.experiments.collect.trajectories``); ``p2_quality`` gives R^2, the
  average slope difference and the leave-one-run-out error it is judged by.

Fitting follows Hoffmann et al. 2022 and the paper's section 5.3:

* objective: ``sum_i huber_delta(log L_pred_i - log L_i)`` with ``delta = 1e-3``;
* optimiser: ``scipy.optimize.minimize(method="L-BFGS-B", options={"maxiter": 1000})`` with analytic
  gradients, run from every point of a fixed grid of starts (``ScalingLaw.grid``); the best objective wins
  (ties: the first start in grid order). Everything is deterministic.
* units: ``N`` and ``D`` are divided by their geometric means before fitting and the parameters are mapped
  back, so multiplying ``N`` (or ``D``) by a constant leaves exponents and predictions unchanged and only
  rescales ``A`` (``a_S``, ``c_S``) by ``constant**alpha`` (``B``, ``a_D`` accordingly).
* parametrisation: coefficients are optimised as logs (``A = exp(a)``, ...), exponents directly, with
  bounds ``alpha, beta, b_N, b_D in [0, 10]`` and ``b_S in [-10, 10]``; logs in ``[-50, 50]`` (in the
  normalised units).

Grid of starts (in normalised units, where ``N = D = 1`` at the geometric mean of the data):

* chinchilla / avg_param, parameters ``(a, b, e, alpha, beta)``: ``e in {-1, 0, 1}`` (Chinchilla's
  ``{-1, -.5, 0, .5, 1}`` thinned), ``alpha, beta in {0, .5, 1, 2}`` (Chinchilla's values, 1.5 dropped),
  ``a, b in {-3, 0}`` (after normalisation a term of ``exp(a)`` at the data's centre; Chinchilla's
  ``{0, 5, ..., 25}`` spans raw-unit offsets that normalisation removes): 3 * 4 * 4 * 2 * 2 = 192 starts.
* frantar, parameters ``(log a_S, b_S, log c_S, b_N, log a_D, b_D, log c)``: ``log a_S in {-3, 0}``,
  ``b_S in {0.5, 2}``, ``log c_S in {-3, 0}``, ``b_N in {0.25, 1}``, ``log a_D in {-2, 2}``,
  ``b_D in {0.25, 1}``, ``log c in {-1, 0, 1}``: 2**6 * 3 = 192 starts.

Leave-one-out: each point is dropped in turn, the law refitted on the rest and the dropped point
predicted; ``loo_mae`` is the mean absolute loss error. To keep this cheap, a refit by default starts from
the full-data optimum and the ``LOO_WARM_STARTS`` grid starts whose full-data runs ended best (dropping
one point barely moves the landscape); ``loo_starts="grid"`` refits from the whole grid instead.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.optimize

HUBER_DELTA = 1e-3
MAXITER = 1000
LOO_WARM_STARTS = 8


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
  """Elementwise Huber loss and its derivative: ``r**2 / 2`` for ``|r| <= delta``, else ``delta (|r| - delta / 2)``."""
  a = np.abs(r)
  small = a <= delta
  value = np.where(small, 0.5 * r * r, delta * (a - 0.5 * delta))
  grad = np.where(small, r, delta * np.sign(r))
  return value, grad


@dataclasses.dataclass(frozen=True)
class _Inputs:
  """Log inputs of a law: ``ln N``, ``ln D``, ``ln(1 - S)`` (zeros when the law has no ``S``), and for ``p2``
  ``ln rho`` and ``ln L0`` (zeros otherwise)."""

  ln_n: np.ndarray
  ln_d: np.ndarray
  ln_1ms: np.ndarray
  ln_rho: np.ndarray | None = None
  ln_l0: np.ndarray | None = None

  def take(self, keep) -> "_Inputs":
    """The rows ``keep`` (a boolean mask or indices)."""
    return _Inputs(*(None if v is None else v[keep] for v in dataclasses.astuple(self)))


def _chinchilla_terms(th: np.ndarray, x: _Inputs) -> tuple[np.ndarray, np.ndarray]:
  """Log terms ``(a - alpha ln N, b - beta ln D, e)`` and their Jacobian ``(n, 3, 5)``."""
  a, b, e, alpha, beta = th
  n = x.ln_n.shape[0]
  t = np.stack([a - alpha * x.ln_n, b - beta * x.ln_d, np.full(n, e)], axis=1)
  jac = np.zeros((n, 3, 5))
  jac[:, 0, 0] = 1.0
  jac[:, 0, 3] = -x.ln_n
  jac[:, 1, 1] = 1.0
  jac[:, 1, 4] = -x.ln_d
  jac[:, 2, 2] = 1.0
  return t, jac


def _chinchilla_natural(th: np.ndarray, ln_n_ref: float, ln_d_ref: float) -> dict[str, float]:
  a, b, e, alpha, beta = (float(v) for v in th)
  return {"A": math.exp(a + alpha * ln_n_ref), "B": math.exp(b + beta * ln_d_ref), "E": math.exp(e),
          "alpha": alpha, "beta": beta}


def _chinchilla_theta(p: Mapping[str, float]) -> np.ndarray:
  return np.array([math.log(p["A"]), math.log(p["B"]), math.log(p["E"]), p["alpha"], p["beta"]], float)


def _frantar_terms(th: np.ndarray, x: _Inputs) -> tuple[np.ndarray, np.ndarray]:
  """Log terms ``(log(a_S (1-S)^b_S + c_S) - b_N ln N, b_D (log a_D - ln D), log c)`` and Jacobian ``(n, 3, 7)``."""
  la_s, b_s, lc_s, b_n, la_d, b_d, lc = th
  n = x.ln_n.shape[0]
  u1 = la_s + b_s * x.ln_1ms
  u = np.logaddexp(u1, lc_s)
  p = np.exp(u1 - u)  # share of a_S (1-S)^b_S in the sparsity factor
  t = np.stack([u - b_n * x.ln_n, b_d * (la_d - x.ln_d), np.full(n, lc)], axis=1)
  jac = np.zeros((n, 3, 7))
  jac[:, 0, 0] = p
  jac[:, 0, 1] = p * x.ln_1ms
  jac[:, 0, 2] = 1.0 - p
  jac[:, 0, 3] = -x.ln_n
  jac[:, 1, 4] = b_d
  jac[:, 1, 5] = la_d - x.ln_d
  jac[:, 2, 6] = 1.0
  return t, jac


def _frantar_natural(th: np.ndarray, ln_n_ref: float, ln_d_ref: float) -> dict[str, float]:
  la_s, b_s, lc_s, b_n, la_d, b_d, lc = (float(v) for v in th)
  return {"a_S": math.exp(la_s + b_n * ln_n_ref), "b_S": b_s, "c_S": math.exp(lc_s + b_n * ln_n_ref),
          "b_N": b_n, "a_D": math.exp(la_d + ln_d_ref), "b_D": b_d, "c": math.exp(lc)}


def _frantar_theta(p: Mapping[str, float]) -> np.ndarray:
  return np.array([math.log(p["a_S"]), p["b_S"], math.log(p["c_S"]), p["b_N"], math.log(p["a_D"]), p["b_D"],
                   math.log(p["c"])], float)


def _p2_terms(th: np.ndarray, x: _Inputs) -> tuple[np.ndarray, np.ndarray]:
  """Log terms ``(ln L0, g + a1 - alpha ln N0, g + a2 - beta ln D, g + a3)`` with ``g = -gamma ln rho - delta ln N0``
  and their Jacobian ``(n, 4, 7)`` over ``(a1, a2, a3, alpha, beta, gamma, delta)``."""
  a1, a2, a3, alpha, beta, gamma, delta = th
  n = x.ln_n.shape[0]
  g = -gamma * x.ln_rho - delta * x.ln_n
  t = np.stack([x.ln_l0, g + a1 - alpha * x.ln_n, g + a2 - beta * x.ln_d, g + a3], axis=1)
  jac = np.zeros((n, 4, 7))
  for k in (1, 2, 3):
    jac[:, k, k - 1] = 1.0
    jac[:, k, 5] = -x.ln_rho
    jac[:, k, 6] = -x.ln_n
  jac[:, 1, 3] = -x.ln_n
  jac[:, 2, 4] = -x.ln_d
  return t, jac


def _p2_natural(th: np.ndarray, ln_n_ref: float, ln_d_ref: float) -> dict[str, float]:
  a1, a2, a3, alpha, beta, gamma, delta = (float(v) for v in th)
  return {"gamma": gamma, "delta": delta, "N_C": math.exp(a1 + (delta + alpha) * ln_n_ref), "alpha": alpha,
          "D_C": math.exp(a2 + delta * ln_n_ref + beta * ln_d_ref), "beta": beta, "E": math.exp(a3 + delta * ln_n_ref)}


def _p2_theta(p: Mapping[str, float]) -> np.ndarray:
  return np.array([math.log(p["N_C"]), math.log(p["D_C"]), math.log(p["E"]), p["alpha"], p["beta"], p["gamma"],
                   p["delta"]], float)


def _grid(*axes: Sequence[float]) -> np.ndarray:
  return np.array(list(itertools.product(*axes)), dtype=float)


_LOG_BOUND = (-50.0, 50.0)
_EXP_BOUND = (0.0, 10.0)


@dataclasses.dataclass(frozen=True)
class ScalingLaw:
  """One functional form of the final loss.

  Attributes:
    name: key in ``LAWS``.
    n_column: the column used as ``N``.
    columns: input columns the law reads (``loss`` excluded).
    param_names: names of the natural parameters, in the order of ``describe``.
    formula: the law as text.
    grid: starting points ``(G, P)`` in normalised units (see the module docstring).
    bounds: L-BFGS-B bounds per optimised coordinate.
  """

  name: str
  n_column: str
  columns: tuple[str, ...]
  param_names: tuple[str, ...]
  formula: str
  grid: np.ndarray = dataclasses.field(repr=False)
  bounds: tuple[tuple[float, float], ...] = dataclasses.field(repr=False)
  _terms: Callable[[np.ndarray, _Inputs], tuple[np.ndarray, np.ndarray]] = dataclasses.field(repr=False)
  _natural: Callable[[np.ndarray, float, float], dict[str, float]] = dataclasses.field(repr=False)
  _theta: Callable[[Mapping[str, float]], np.ndarray] = dataclasses.field(repr=False)
  d_column: str = "tokens"

  @property
  def n_params(self) -> int:
    """Number of free parameters (the minimum number of data points for a fit)."""
    return len(self.param_names)

  def inputs(self, data: Any) -> _Inputs:
    """Validated log inputs from a DataFrame or mapping of columns; raises ``ValueError`` on bad data."""
    cols = {c: _column(data, c) for c in self.columns}
    for c in (self.n_column, self.d_column, *(["L0"] if "L0" in cols else [])):
      if not np.all(cols[c] > 0):
        raise ValueError(f"column {c!r} must be positive, got {cols[c][~(cols[c] > 0)][:3].tolist()}")
    ln_1ms = np.zeros_like(cols[self.d_column])
    if "sparsity" in cols:
      s = cols["sparsity"]
      if not np.all((s >= 0) & (s < 1)):
        raise ValueError(f"column 'sparsity' must be in [0, 1), got {s[~((s >= 0) & (s < 1))][:3].tolist()}")
      ln_1ms = np.log1p(-s)
    ln_rho = ln_l0 = None
    if "rho" in cols:
      r = cols["rho"]
      if not np.all((r > 0) & (r < 1)):
        raise ValueError(f"column 'rho' (the fraction of prunable weights removed) must be in (0, 1), got "
                         f"{r[~((r > 0) & (r < 1))][:3].tolist()}" + (" (rho 0: an unpruned control run, which is "
                         "no point of the law: leave it out, e.g. collect --select)" if np.any(r == 0) else ""))
      ln_rho, ln_l0 = np.log(r), np.log(cols["L0"])
    return _Inputs(np.log(cols[self.n_column]), np.log(cols[self.d_column]), ln_1ms, ln_rho, ln_l0)

  def predict(self, params: Mapping[str, float], data: Any) -> np.ndarray:
    """Predicted loss for every row of ``data`` (needs ``self.columns``)."""
    missing = [k for k in self.param_names if k not in params]
    if missing:
      raise ValueError(f"law {self.name!r} needs parameters {missing}")
    t, _ = self._terms(self._theta(params), self.inputs(data))
    return np.exp(_logsumexp(t))

  def describe(self, params: Mapping[str, float]) -> str:
    """One line: the formula followed by the parameter values."""
    vals = ", ".join(f"{k}={params[k]:.6g}" for k in self.param_names)
    return f"{self.name}: {self.formula}  with {vals}"

  def fit(
      self,
      data: Any,
      *,
      delta: float = HUBER_DELTA,
      maxiter: int = MAXITER,
      loo: bool = True,
      starts: np.ndarray | None = None,
      loo_starts: np.ndarray | str | None = None,
      groups: Any = None,
  ) -> "FitResult":
    """Fits the law to ``data`` (columns ``loss`` and ``self.columns``).

    Args:
      data: DataFrame or mapping of equal-length columns.
      delta: Huber threshold on log residuals.
      maxiter: L-BFGS-B iteration limit per start.
      loo: also compute the leave-one-out error (one refit per point).
      starts: override of ``self.grid`` (normalised units, ``(G, P)``).
      loo_starts: starts of the leave-one-out refits: ``None`` (default, "warm"): the full-data optimum plus
        the ``LOO_WARM_STARTS`` starts whose full-data runs ended best; ``"grid"``: all of ``starts``;
        or an explicit ``(G, P)`` array in normalised units.
      groups: a label per point (e.g. the run of each point of a trajectory): the leave-one-out refits then drop
        one group at a time and predict its points (leave-one-run-out).

    Returns:
      A ``FitResult``.

    Raises:
      ValueError: missing column, non-finite or non-positive loss/counts, sparsity outside [0, 1), or fewer
        points than ``self.n_params``.
    """
    x = self.inputs(data)
    loss = _column(data, "loss")
    if not np.all(loss > 0):
      raise ValueError(f"column 'loss' must be positive and finite, got {loss[~(loss > 0)][:3].tolist()}")
    n = loss.shape[0]
    if n < self.n_params:
      raise ValueError(f"law {self.name!r} has {self.n_params} free parameters but only {n} data points")
    starts = self.grid if starts is None else np.asarray(starts, float)
    params, objective, ranked = self._fit_raw(x, np.log(loss), delta, maxiter, starts)
    pred = self.predict(params, data)
    loo_pred = np.full(n, np.nan)
    labels = np.arange(n) if groups is None else np.asarray(groups)
    if len(labels) != n:
      raise ValueError(f"groups has {len(labels)} labels for {n} points")
    unique = list(dict.fromkeys(labels.tolist()))
    if loo and len(unique) > 1 and n - int(np.max([np.sum(labels == g) for g in unique])) >= self.n_params:
      for g in unique:
        keep = labels != g
        sub = x.take(keep)
        if isinstance(loo_starts, str) and loo_starts == "grid":
          ls = starts
        elif loo_starts is None:  # warm: the full-data optimum (in this subset's units) + the best grid starts
          ref = (-float(np.mean(sub.ln_n)), -float(np.mean(sub.ln_d)))
          ls = np.vstack([self._theta(self._natural(self._theta(params), *ref)), ranked[:LOO_WARM_STARTS]])
        else:
          ls = np.asarray(loo_starts, float)
        p_i, _, _ = self._fit_raw(sub, np.log(loss[keep]), delta, maxiter, ls)
        held = x.take(~keep)
        loo_pred[~keep] = np.exp(_logsumexp(self._terms(self._theta(p_i), held)[0]))
    return FitResult(
        law=self.name,
        params=params,
        objective=objective,
        predictions=pred,
        residuals=np.log(pred) - np.log(loss),
        mae=float(np.mean(np.abs(pred - loss))),
        loo_predictions=loo_pred,
        loo_mae=float(np.mean(np.abs(loo_pred - loss))) if np.all(np.isfinite(loo_pred)) else float("nan"),
        n_points=n,
        n_starts=int(starts.shape[0]),
    )

  def _fit_raw(self, x: _Inputs, log_loss: np.ndarray, delta: float, maxiter: int,
               starts: np.ndarray) -> tuple[dict[str, float], float, np.ndarray]:
    """Best natural parameters, Huber objective, and ``starts`` ranked by final objective (best first)."""
    ln_n_ref, ln_d_ref = float(np.mean(x.ln_n)), float(np.mean(x.ln_d))
    xn = dataclasses.replace(x, ln_n=x.ln_n - ln_n_ref, ln_d=x.ln_d - ln_d_ref)

    def objective(th: np.ndarray) -> tuple[float, np.ndarray]:
      t, jac = self._terms(th, xn)
      m = t.max(axis=1, keepdims=True)
      w = np.exp(t - m)
      s = w.sum(axis=1)
      r = m[:, 0] + np.log(s) - log_loss
      h, dh = huber(r, delta)
      # elementwise products and sums only: BLAS calls on these tiny arrays spawn threads for nothing
      grad = ((dh[:, None] / s[:, None]) * w)[:, :, None] * jac
      return float(h.sum() / delta), grad.sum(axis=(0, 1)) / delta  # scaled by 1/delta for conditioning

    ends, values = [], []
    for th0 in starts:
      res = scipy.optimize.minimize(objective, th0, jac=True, method="L-BFGS-B", bounds=self.bounds,
                                    options={"maxiter": maxiter})
      ends.append(res.x)
      values.append(float(res.fun) if np.isfinite(res.fun) else math.inf)
    order = np.argsort(np.array(values), kind="stable")  # ties: first start in grid order
    if not math.isfinite(values[order[0]]):
      raise RuntimeError(f"law {self.name!r}: no start gave a finite objective")
    best = int(order[0])
    return self._natural(ends[best], ln_n_ref, ln_d_ref), values[best] * delta, starts[order]


@dataclasses.dataclass(frozen=True)
class FitResult:
  """Outcome of ``ScalingLaw.fit``.

  Attributes:
    law: name of the law.
    params: fitted natural parameters (raw units of the data).
    objective: summed Huber loss of log residuals at the optimum.
    predictions: fitted loss per point.
    residuals: ``log predicted - log actual`` per point.
    mae: mean absolute error of the loss.
    loo_predictions: leave-one-out prediction per point (NaN when not computed).
    loo_mae: mean absolute leave-one-out loss error (NaN when not computed).
    n_points: data points used.
    n_starts: grid starts used.
  """

  law: str
  params: dict[str, float]
  objective: float
  predictions: np.ndarray
  residuals: np.ndarray
  mae: float
  loo_predictions: np.ndarray
  loo_mae: float
  n_points: int
  n_starts: int

  def predict(self, data: Any) -> np.ndarray:
    """Predicted loss for ``data`` under the fitted parameters."""
    return LAWS[self.law].predict(self.params, data)

  def describe(self) -> str:
    return LAWS[self.law].describe(self.params)

  def to_json(self) -> dict[str, Any]:
    """JSON-serialisable dict (NaN written as ``None``)."""
    def clean(v):
      return [None if not math.isfinite(float(e)) else float(e) for e in v]

    return {
        "law": self.law, "formula": LAWS[self.law].formula, "params": dict(self.params),
        "objective": self.objective, "mae": self.mae,
        "loo_mae": self.loo_mae if math.isfinite(self.loo_mae) else None,
        "n_points": self.n_points, "n_starts": self.n_starts, "huber_delta": HUBER_DELTA,
        "residuals": clean(self.residuals), "predictions": clean(self.predictions),
        "loo_predictions": clean(self.loo_predictions),
    }

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "FitResult":
    """Inverse of ``to_json``; raises ``ValueError`` for an unknown law."""
    if d.get("law") not in LAWS:
      raise ValueError(f"unknown law {d.get('law')!r}; choose one of {sorted(LAWS)}")

    def arr(k):
      return np.array([np.nan if v is None else v for v in d.get(k, [])], float)

    loo = d.get("loo_mae")
    return cls(law=d["law"], params={k: float(v) for k, v in d["params"].items()},
               objective=float(d.get("objective", np.nan)), predictions=arr("predictions"),
               residuals=arr("residuals"), mae=float(d.get("mae", np.nan)), loo_predictions=arr("loo_predictions"),
               loo_mae=float("nan") if loo is None else float(loo), n_points=int(d.get("n_points", 0)),
               n_starts=int(d.get("n_starts", 0)))


def _logsumexp(t: np.ndarray) -> np.ndarray:
  m = t.max(axis=1)
  return m + np.log(np.exp(t - m[:, None]).sum(axis=1))


def _column(data: Any, name: str) -> np.ndarray:
  """Column ``name`` of a DataFrame/mapping as finite float64; ``ValueError`` naming what is wrong."""
  try:
    present = name in data
  except TypeError:
    present = False
  if not present:
    raise ValueError(f"missing column {name!r}")
  try:
    v = np.asarray(data[name], dtype=float).reshape(-1)
  except (TypeError, ValueError) as e:
    raise ValueError(f"column {name!r} is not numeric: {e}") from None
  if not np.all(np.isfinite(v)):
    raise ValueError(f"column {name!r} has non-finite values (NaN or inf)")
  return v


_CHINCHILLA_GRID = _grid([-3.0, 0.0], [-3.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 0.5, 1.0, 2.0], [0.0, 0.5, 1.0, 2.0])
_CHINCHILLA_BOUNDS = (_LOG_BOUND, _LOG_BOUND, _LOG_BOUND, _EXP_BOUND, _EXP_BOUND)


def _chinchilla_like(name: str, n_column: str, n_symbol: str) -> ScalingLaw:
  return ScalingLaw(
      name=name, n_column=n_column, columns=(n_column, "tokens"), param_names=("E", "A", "alpha", "B", "beta"),
      formula=f"L = E + A / {n_symbol}^alpha + B / D^beta", grid=_CHINCHILLA_GRID, bounds=_CHINCHILLA_BOUNDS,
      _terms=_chinchilla_terms, _natural=_chinchilla_natural, _theta=_chinchilla_theta)


LAWS: dict[str, ScalingLaw] = {
    "chinchilla": _chinchilla_like("chinchilla", "params", "N"),
    "avg_param": _chinchilla_like("avg_param", "avg_params", "N_avg"),
    "frantar": ScalingLaw(
        name="frantar", n_column="nonzero_params", columns=("nonzero_params", "tokens", "sparsity"),
        param_names=("a_S", "b_S", "c_S", "b_N", "a_D", "b_D", "c"),
        formula="L = (a_S (1 - S)^b_S + c_S) (1 / N_nz)^b_N + (a_D / D)^b_D + c",
        grid=_grid([-3.0, 0.0], [0.5, 2.0], [-3.0, 0.0], [0.25, 1.0], [-2.0, 2.0], [0.25, 1.0], [-1.0, 0.0, 1.0]),
        bounds=(_LOG_BOUND, (-10.0, 10.0), _LOG_BOUND, _EXP_BOUND, _LOG_BOUND, _EXP_BOUND, _LOG_BOUND),
        _terms=_frantar_terms, _natural=_frantar_natural, _theta=_frantar_theta),
    "p2": ScalingLaw(
        name="p2", n_column="N0", columns=("N0", "D", "rho", "L0"),
        param_names=("gamma", "delta", "N_C", "alpha", "D_C", "beta", "E"),
        formula="L = L0 + (1 / rho)^gamma (1 / N0)^delta (N_C / N0^alpha + D_C / D^beta + E)",
        # (a1, a2, a3, alpha, beta, gamma, delta) in normalised units; the excess over L0 is a fraction of a nat
        grid=_grid([-4.0, -1.0], [-4.0, -1.0], [-4.0, -1.0], [0.25, 1.0], [0.25, 1.0], [-2.0, 0.0, 2.0], [0.0, 1.0]),
        bounds=(_LOG_BOUND, _LOG_BOUND, _LOG_BOUND, _EXP_BOUND, _EXP_BOUND, (-10.0, 10.0), (-10.0, 10.0)),
        _terms=_p2_terms, _natural=_p2_natural, _theta=_p2_theta, d_column="D"),
}


def r_squared(actual: Any, predicted: Any) -> float:
  """Coefficient of determination of ``predicted`` for ``actual`` (1 is a perfect fit)."""
  a, p = np.asarray(actual, float), np.asarray(predicted, float)
  total = float(np.sum((a - a.mean()) ** 2))
  return 1.0 - float(np.sum((a - p) ** 2)) / total if total > 0 else float("nan")


def average_slope_difference(actual: Any, predicted: Any, tokens: Any, groups: Any) -> float:
  """Mean absolute difference between the predicted and the actual slope of loss against ``ln D`` between
  consecutive points (by ``D``) of each group (run), over all such pairs: how well a law follows the shape of the
  recovery curves rather than their level (our reading of the P2 paper's ASD; see docs/howto/prune_and_recover.md)."""
  a, p, d, g = (np.asarray(v) for v in (actual, predicted, tokens, groups))
  diffs = []
  for label in dict.fromkeys(g.tolist()):
    idx = np.flatnonzero(g == label)
    idx = idx[np.argsort(d[idx].astype(float), kind="stable")]
    ln_d = np.log(d[idx].astype(float))
    step = np.diff(ln_d)
    ok = step > 0
    if not np.any(ok):
      continue
    sa = np.diff(a[idx].astype(float))[ok] / step[ok]
    sp = np.diff(p[idx].astype(float))[ok] / step[ok]
    diffs.extend(np.abs(sp - sa).tolist())
  return float(np.mean(diffs)) if diffs else float("nan")


def p2_quality(data: Any, predicted: Any, fit: FitResult | None = None) -> dict[str, float]:
  """How well P2 law predictions follow trajectory points ``data`` (columns ``loss``, ``D`` and, when present,
  ``run_name``; without it every point is its own run): ``r2`` (``r_squared``), ``asd``
  (``average_slope_difference`` per run) and ``mae`` (mean absolute loss error). With ``fit``, the fit to ``data``
  whose predictions these are, also its ``huber`` objective (summed Huber loss of log residuals) and
  ``leave_one_run_out_mae`` (its ``loo_mae``: NaN unless fitted with ``loo`` and ``groups``). Keys in the order
  r2, huber, asd, mae, leave_one_run_out_mae."""
  groups = data["run_name"] if "run_name" in data else range(len(data))
  out = {"r2": r_squared(data["loss"], predicted)}
  if fit is not None:
    out["huber"] = fit.objective
  out["asd"] = average_slope_difference(data["loss"], predicted, data["D"], groups)
  out["mae"] = float(np.mean(np.abs(np.asarray(predicted, float) - np.asarray(data["loss"], float))))
  if fit is not None:
    out["leave_one_run_out_mae"] = fit.loo_mae
  return out


def recovery_tokens(params: Mapping[str, float], n0: float, rho: float, l0: float, target_loss: float) -> float:
  """Recovery tokens after which the ``p2`` law predicts ``target_loss`` for a model of ``n0`` parameters pruned at
  rate ``rho`` from loss ``l0``: ``inf`` when the law's floor (its limit at infinite data) is above the target."""
  if not 0 < rho < 1:
    raise ValueError(f"rho (the fraction of prunable weights removed) must be in (0, 1), got {rho}")
  if not (n0 > 0 and l0 > 0):
    raise ValueError("n0 and l0 must be positive")
  k = (1.0 / rho) ** params["gamma"] * (1.0 / n0) ** params["delta"]
  room = (target_loss - l0) / k - params["N_C"] / n0 ** params["alpha"] - params["E"]
  if room <= 0:
    return math.inf
  return (params["D_C"] / room) ** (1.0 / params["beta"])


def p2_floor(params: Mapping[str, float], n0: float, rho: float, l0: float) -> float:
  """The ``p2`` law's loss after unlimited recovery tokens."""
  k = (1.0 / rho) ** params["gamma"] * (1.0 / n0) ** params["delta"]
  return l0 + k * (params["N_C"] / n0 ** params["alpha"] + params["E"])


def get_law(name: str) -> ScalingLaw:
  """The law called ``name``; ``ValueError`` listing the choices otherwise."""
  if name not in LAWS:
    raise ValueError(f"unknown law {name!r}; choose one of {sorted(LAWS)}")
  return LAWS[name]


def fit(law: str, data: Any, **kwargs: Any) -> FitResult:
  """``get_law(law).fit(data, **kwargs)``."""
  return get_law(law).fit(data, **kwargs)


def predict(law: str, params: Mapping[str, float], data: Any) -> np.ndarray:
  """``get_law(law).predict(params, data)``."""
  return get_law(law).predict(params, data)


def describe(law: str, params: Mapping[str, float]) -> str:
  """``get_law(law).describe(params)``."""
  return get_law(law).describe(params)


__all__ = ["HUBER_DELTA", "MAXITER", "LAWS", "ScalingLaw", "FitResult", "huber", "get_law", "fit", "predict",
           "describe", "r_squared", "average_slope_difference", "p2_quality", "recovery_tokens", "p2_floor"]
