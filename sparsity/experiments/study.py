"""The reproduction study's analysis: the tables and figures of the study (docs/results/study.md).

Input: ``collect``'s CSVs of the study's runs (``configs/study/fig1.yml``, ``paired.yml``, ``epoch1.yml``,
``width32.yml``, ``query.yml``, ``ablations.yml``, ``fig4.yml``, ``fig4tokens.yml``, ``pilot.yml``; run-name prefixes
and the manifest columns ``kind``, ``budget``, ``seed``, ``ablation``, ``tag``, ``dense_compute_fraction`` tell them
apart) and, optionally, ``collect --trajectories``'s CSV of
``recovery.yml``. Output (``write``):

* ``study.md``: every table below;
* ``fig1_pairs.png``: final eval loss against average active prunable parameters, per budget, sparse runs and the
  dense family, each seed a point;
* ``laws.png``: predicted against actual loss for the four laws;
* ``recovery.png``: the P2 law's fit on the smaller models and its prediction of the largest.

Tables:

* The runs per spec and the regime (``regime_section``): real tokens, epochs, tokens per prunable weight, depth,
  against the paper's Table 1.
* Figure 1 (``figure1_section``): per spec, budget, sparsity and matching (prunable or total counts), the paired
  difference sparse minus dense at equal average active count, mean over seeds with a 95% t interval and p-value
  (``sparsity.experiments.paired``); for paired.yml, epoch1.yml, width32.yml and query.yml (3-7 seeds, the default
  schedule) and for fig1.yml's 20..80% runs (2 seeds). Verdicts from Holm's correction over every interval of the
  report (``corrected_tables``).
* The dense family: mean loss per width and the step between neighbouring widths.
* Laws: ``avg_param`` (N = average active parameters, all of them or the prunable ones), ``chinchilla`` with N = the initial dense count and with
  N = the final non-zero count, and ``frantar``, fitted on every fig1 run; parameters, MAE and leave-one-group-out
  MAE (a configuration's seeds held out together).
* Schedule (Figure 4): loss per (dense %, pruning %) split of compute at a fixed effective compute and at fixed
  tokens, each split paired by seed with the paper's split.
* Ablations: each against its reference run(s) of fig1 with the same seeds.
* Prune and recover: the P2 law fitted on all runs (leave-one-run-out) and on the smaller models, predicting the
  largest; R^2, Huber, ASD, MAE; each run's final loss against the unpruned control's (``recovery_table``: the
  same checkpoint trained the same steps unpruned, ``rho == 0`` in the trajectories, never in the fits).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sparsity.experiments import paired
from sparsity.experiments.markdown import frame_table
from sparsity.science import planning, plots, scaling_laws

LAWS = (("avg_param", "avg_params", "average active parameters (the paper's law)"),
        ("avg_param", "avg_prunable", "average active prunable parameters (the paper's law on # Prunable)"),
        ("chinchilla", "params", "Chinchilla, N = initial dense count"),
        ("chinchilla", "nonzero_params", "Chinchilla, N = final non-zero count"),
        ("frantar", "nonzero_params", "Frantar et al., N = final non-zero count, S = final sparsity"))


def _mean_sd(values) -> tuple[float, float]:
  v = np.asarray(list(values), float)
  return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def _fmt(mean: float, sd: float, digits: int = 3) -> str:
  return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")


def dense_at(dense: pd.DataFrame, target: float) -> tuple[float, dict[str, Any]] | None:
  """The loss of a dense model of ``target`` prunable parameters, interpolated linearly between the two dense runs
  (one seed, one budget) whose prunable counts bracket it; None if none brackets it."""
  found = paired.interpolate(dense, "prunable_params", target)
  return None if found is None else (found[0], {"lower": found[1], "upper": found[2], "weight": found[3]})


def fig1_pairs(df: pd.DataFrame, specs: tuple[str, ...] = ("fig1-",), matching: str = "prunable") -> pd.DataFrame:
  """One row per (budget, target sparsity) of the sparse runs of ``specs``: the paired difference (each seed's
  sparse run minus its own seed's dense interpolation, ``sparsity.experiments.paired``) under ``matching``."""
  diffs = paired.differences(df, specs)
  if diffs.empty:
    return pd.DataFrame()
  diffs = diffs[diffs["matching"] == matching]
  out = paired.summary(diffs)
  first = diffs.drop_duplicates(subset=["budget", "target_sparsity"]).set_index(["budget", "target_sparsity"])
  out["avg_prunable"] = out["count"]  # the prunable matching's count: the average active prunable weights
  out["dense_bracket"] = [f"{first.loc[(b, t), 'lower']} .. {first.loc[(b, t), 'upper']} "
                          f"(w {first.loc[(b, t), 'weight']:.2f})" if first.loc[(b, t), "lower"] else ""
                          for b, t in zip(out["budget"], out["target_sparsity"])]
  return out


def seed_noise(df: pd.DataFrame) -> float:
  """The mean standard deviation over seeds of fig1's runs that have two or more seeds (same config)."""
  fig1 = df[df["run_name"].str.startswith("fig1-")]
  sds = [np.std(g["loss"], ddof=1) for _, g in fig1.groupby(["budget", "kind", "base_emb_dim", "target_sparsity"])
         if len(g) > 1]
  return float(np.mean(sds)) if sds else float("nan")


@dataclasses.dataclass
class LawRow:
  label: str
  law: str
  fit: Any


def seed_groups(df: pd.DataFrame) -> pd.Series:
  """Each run's configuration without its seed (its run name without ``-seed<k>``): the groups of leave-one-group-out,
  so that a run's seed twins leave the fit with it."""
  return df["run_name"].astype(str).str.replace(r"-seed\d+$", "", regex=True)


def law_fits(df: pd.DataFrame) -> tuple[list[LawRow], list[str]]:
  """The four laws fitted on every fig1 run (with leave-one-group-out: a configuration's seeds are held out
  together, ``seed_groups``), and why any could not be fitted."""
  fig1 = df[df["run_name"].str.startswith("fig1-")].reset_index(drop=True)
  out, skipped = [], []
  for law, n_column, label in LAWS:
    data = fig1.copy()
    data["avg_prunable"] = paired.avg_prunable(data)
    if law == "chinchilla" and n_column != "params":
      data["params"] = data[n_column]  # the Chinchilla form with another N
    if law == "avg_param" and n_column != "avg_params":
      data["avg_params"] = data[n_column]  # the paper's law with another average count
    try:
      out.append(LawRow(label, law, scaling_laws.fit(law, data, groups=seed_groups(data))))
    except ValueError as e:
      skipped.append(f"{label}: not fitted: {e}")
  return out, skipped


def ablation_table(df: pd.DataFrame) -> pd.DataFrame:
  """Each ablation's runs (mean over seeds) against the fig1 runs of the same model, budget, sparsity and seeds."""
  abl = df[df["run_name"].str.startswith("abl-")]
  if abl.empty:  # no ablation run collected (the spec's labels are then absent from the table too)
    return pd.DataFrame()
  rows = []
  for (ablation, tag, budget), g in abl.groupby(["ablation", "tag", "budget"], sort=False):
    kind, width, target = g["kind"].iloc[0], int(g["base_emb_dim"].iloc[0]), float(g["target_sparsity"].iloc[0])
    ref = df[df["run_name"].str.startswith("fig1-") & (df["budget"] == budget) & (df["kind"] == kind)
             & (df["base_emb_dim"] == width) & (df["target_sparsity"] == target) & df["seed"].isin(g["seed"])]
    a_mean, a_sd = _mean_sd(g["loss"])
    r_mean, r_sd = _mean_sd(ref["loss"]) if not ref.empty else (float("nan"), float("nan"))
    rows.append({"ablation": ablation, "run": tag, "budget": budget, "seeds": len(g), "loss": a_mean, "loss_sd": a_sd,
                 "reference": r_mean, "reference_sd": r_sd, "difference": a_mean - r_mean})
  return pd.DataFrame(rows)


def ablation_pairs(df: pd.DataFrame) -> pd.DataFrame:
  """The learning-rate and schedule ablations as sparse-vs-dense pairs: the 80% run against its dense bracket."""
  if "ablation" not in df:
    return pd.DataFrame()
  abl = df[df["run_name"].str.startswith("abl-") & df["ablation"].isin(["lr", "schedule"])]
  rows = []
  for ablation, g in abl.groupby("ablation"):
    sparse = g[g["kind"] == "sparse"]
    dense = g[g["kind"] == "dense"]
    for _, run in sparse.iterrows():
      found = dense_at(dense, float(paired.avg_prunable(run.to_frame().T).iloc[0]))
      if found:
        rows.append({"ablation": ablation, "sparse_loss": float(run["loss"]), "dense_loss": found[0],
                     "difference": float(run["loss"]) - found[0]})
  return pd.DataFrame(rows)


def p2_fits(traj: pd.DataFrame) -> dict[str, Any]:
  """The P2 law on all runs (leave one run out) and on the smaller models predicting the largest."""
  all_fit = scaling_laws.fit("p2", traj, groups=traj["run_name"])
  biggest = traj["N0"].max()
  small, big = traj[traj["N0"] < biggest], traj[traj["N0"] == biggest]
  ext = scaling_laws.fit("p2", small, loo=False)
  pred = ext.predict(big)

  quality = scaling_laws.p2_quality
  return {"all": all_fit, "all_quality": quality(traj, all_fit.predictions, all_fit),
          "extrapolation": ext, "fit_quality": quality(small, ext.predictions),
          "held_out_quality": quality(big, pred), "held_out_n0": float(biggest)}


P2_EXPONENTS = ("alpha", "beta", "gamma", "delta")  # the P2 law's last four optimised coordinates (scaling_laws)


def bound_parameters(fit: Any) -> list[str]:
  """The P2 fit's exponents that sit at a bound of the optimiser: there the fit is not identified."""
  bounds = dict(zip(P2_EXPONENTS, scaling_laws.get_law("p2").bounds[3:]))
  return [f"{k} = {fit.params[k]:g} (bounds {lo:g}..{hi:g})" for k, (lo, hi) in bounds.items()
          if min(abs(fit.params[k] - lo), abs(fit.params[k] - hi)) < 1e-6]


def recovery_table(traj: pd.DataFrame, control: pd.DataFrame | None = None) -> pd.DataFrame:
  """One row per prune-and-recover run: N0, rho, structure, L0, the loss right after pruning and after recovery,
  the recovery tokens; with ``control`` (the trajectories of unpruned runs from the same checkpoints, ``rho == 0``)
  also the control's final loss at the same N0 (``control``), the run's final loss minus it (``gap``) and the
  control's final loss minus L0 (``gain``)."""
  first = traj.sort_values("D").groupby("run_name").first()
  last = traj.sort_values("D").groupby("run_name").last()
  rec = pd.DataFrame({"N0": first["N0"], "rho": first["rho"], "structure": first["structure"], "L0": first["L0"],
                      "after": first["loss_after_pruning"], "last": last["loss"],
                      "D": last["D"]}).reset_index().sort_values(["N0", "structure", "rho"])
  if control is not None and not control.empty:
    c = control.sort_values("D").groupby("N0").last()
    rec["control"] = rec["N0"].map(c["loss"])
    rec["control_D"] = rec["N0"].map(c["D"])
    if (rec["control_D"].notna() & (rec["control_D"] != rec["D"])).any():
      raise ValueError("the unpruned control and a pruned run of the same N0 trained different tokens")
    rec["gap"] = rec["last"] - rec["control"]
    rec["gain"] = rec["control"] - rec["L0"]
  return rec


def recovery_section(traj: pd.DataFrame, control: pd.DataFrame, out_dir: str, files: dict[str, str]) -> list[str]:
  """The report's prune-and-recover section: the P2 law's fits (when the runs allow them; ``recovery.png`` into
  ``files``) and every run's ``recovery_table`` row, against the unpruned control when there is one."""
  parts = ["## Prune and recover: the P2 law", ""]
  try:
    p2 = p2_fits(traj)
  except ValueError as e:
    p2 = None
    parts += [f"- not fitted: {e}", ""]
  if p2 is not None:
    files["recovery"] = plots.recovery_curves(traj, p2["extrapolation"], os.path.join(out_dir, "recovery.png"),
                                              held_out=[p2["held_out_n0"]])
    q, fq, hq = p2["all_quality"], p2["fit_quality"], p2["held_out_quality"]
    parts += [f"All runs ({traj['run_name'].nunique()} runs, {len(traj)} points): R^2 {q['r2']:.4f}, MAE "
              f"{q['mae']:.4f}, ASD {q['asd']:.4f}, Huber {q['huber']:.4g}, leave-one-run-out MAE "
              f"{q['leave_one_run_out_mae']:.4f}; {p2['all'].describe()}", "",
              f"Fitted on N0 < {p2['held_out_n0']:,.0f} (R^2 {fq['r2']:.4f}, MAE {fq['mae']:.4f}, ASD {fq['asd']:.4f}), "
              f"predicting N0 = {p2['held_out_n0']:,.0f}: R^2 {hq['r2']:.4f}, MAE {hq['mae']:.4f}, ASD {hq['asd']:.4f}; "
              f"{p2['extrapolation'].describe()}", ""]
    for name, fit in (("all runs", p2["all"]), ("smaller models", p2["extrapolation"])):
      at = bound_parameters(fit)
      parts += [f"The fit on the {name} sits at a bound: {', '.join(at)}; its parameters are not identified "
                "there, and the numbers above are that constrained fit's." , ""] if at else []
  if traj.empty:
    return parts
  rec = recovery_table(traj, control)
  columns = [("run_name", "run", "{}"), ("N0", "N0", "{:,.0f}"), ("rho", "rho", "{:.2f}"),
             ("structure", "structure", "{}"), ("L0", "L0 (before pruning)", "{:.4f}"),
             ("after", "right after pruning", "{:.4f}"), ("last", "after recovery", "{:.4f}"),
             ("D", "recovery tokens", "{:,.0f}")]
  if "control" in rec:
    parts += ["The unpruned control: the same checkpoint trained the same steps without pruning "
              "(`configs/study/recovery.yml`, tag ctrl). \"gap to control\" is a pruned run's final loss minus the "
              "control's, \"control gain\" the control's final loss minus L0 (what the extra steps alone do).", ""]
    columns += [("control", "control after the same steps", "{:.4f}"), ("gap", "gap to control", "{:+.4f}"),
                ("gain", "control gain", "{:+.4f}")]
  return parts + [frame_table(rec, columns), ""]


def plot_fig1(df: pd.DataFrame, path: str) -> str:
  fig1 = df[df["run_name"].str.startswith("fig1-")]
  budgets = sorted(fig1["budget"].unique())
  fig = Figure(figsize=(5.2 * len(budgets), 4.2))
  for i, budget in enumerate(budgets):
    ax = fig.add_subplot(1, len(budgets), i + 1)
    part = fig1[fig1["budget"] == budget]
    dense = part[part["kind"] == "dense"].sort_values("prunable_params")
    for seed, g in dense.groupby("seed"):
      ax.plot(g["prunable_params"], g["loss"], "o-", color="grey", ms=4, lw=0.8, alpha=0.8,
              label="dense (width 16..128)" if seed == 0 else None)
    sparse = part[part["kind"] == "sparse"]
    sc = ax.scatter(paired.avg_prunable(sparse), sparse["loss"], c=sparse["target_sparsity"], cmap="viridis", vmin=0,
                    vmax=1, marker="^", s=45, edgecolors="k", label="sparse (width 64), at its N_avg", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("average active prunable parameters")
    ax.set_ylabel("final eval loss (whole validation split)")
    ax.set_title(f"budget {budget}: {part['steps'].iloc[0]:.0f} steps", fontsize=9)
    ax.legend(fontsize=7)
    fig.colorbar(sc, ax=ax, label="target sparsity")
  return plots.save(fig, path)


def plot_laws(df: pd.DataFrame, fits: list[LawRow], path: str) -> str:
  fig1 = df[df["run_name"].str.startswith("fig1-")].reset_index(drop=True)
  fig = Figure(figsize=(4.2 * len(fits), 4.0))
  for i, row in enumerate(fits):
    ax = fig.add_subplot(1, len(fits), i + 1)
    a, p = fig1["loss"].to_numpy(float), np.asarray(row.fit.predictions, float)
    sc = ax.scatter(a, p, c=fig1["sparsity"], cmap="viridis", vmin=0, vmax=1, edgecolors="k", s=25)
    lo, hi = float(min(a.min(), p.min())), float(max(a.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_title(f"{row.label}\nMAE {row.fit.mae:.4f}, LOO {row.fit.loo_mae:.4f}", fontsize=8)
    ax.set_xlabel("actual loss")
    ax.set_ylabel("predicted loss")
  fig.colorbar(sc, ax=ax, label="final sparsity")
  return plots.save(fig, path)


def _interval(mean: float, low: float, high: float, signed: bool = False) -> str:
  sign = "+" if signed else ""
  if math.isnan(mean):
    return ""
  return f"{mean:{sign}.4f}" + ("" if math.isnan(low) else f" [{low:{sign}.4f}, {high:{sign}.4f}]")


def _with_intervals(table: pd.DataFrame) -> pd.DataFrame:
  table = table.copy()
  table["diff"] = [_interval(m, lo, hi, True) for m, lo, hi in zip(table["difference"], table["low"], table["high"])]
  return table


MIN_SEEDS = 3  # an interval and a test need two degrees of freedom: a 2-seed row shows its mean difference only
TEST_COLUMNS = [("p", "p", "{:.2g}"), ("p_holm", "Holm p", "{:.2g}"), ("verdict", "verdict (Holm)", "{}")]


def interval_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
  """Every table of paired differences the report shows, Holm-corrected as one family (``paired.corrected``):
  ``paired`` (paired.yml, epoch1.yml, width32.yml, query.yml), ``fig1`` (fig1.yml, 2 seeds), ``fig4_compute``
  and ``fig4_tokens`` (each split against the paper's, by seed); empty tables are left out. Rows of fewer than
  ``MIN_SEEDS`` seeds get no interval and no test (so they do not enter the family)."""
  diffs = paired.differences(df)
  tables = {"paired": paired.summary(diffs) if not diffs.empty else pd.DataFrame(),
            "fig1": pd.concat([fig1_pairs(df, matching=m) for m in paired.MATCHINGS]),
            "fig4_compute": paired.schedule_table(df, "fig4-"), "fig4_tokens": paired.schedule_table(df, "fig4t-")}
  tables = {k: v.reset_index(drop=True) for k, v in tables.items() if not v.empty}
  for t in tables.values():
    t.loc[t["seeds"] < MIN_SEEDS, ["low", "high", "p"]] = float("nan")
  return dict(zip(tables, paired.corrected(list(tables.values()))))


def family_size(tables: dict[str, pd.DataFrame]) -> int:
  """The number of intervals Holm's correction runs over (those with a p-value: ``MIN_SEEDS`` seeds or more)."""
  return int(sum(t["p"].notna().sum() for t in tables.values()))


def figure1_section(df: pd.DataFrame, tables: dict[str, pd.DataFrame] | None = None) -> list[str]:
  """Figure 1's markdown: the paired differences (``paired``) of paired.yml, epoch1.yml, width32.yml and query.yml,
  then of fig1.yml's 20..80% runs (2 seeds, the laws' data), each under both matchings, with Holm's verdicts."""
  tables = interval_tables(df) if tables is None else tables
  parts = ["## Figure 1: sparse minus dense at equal average active parameters, paired by seed", "",
           "Each seed's sparse run minus its own seed's dense loss at the sparse run's average active count "
           "(interpolated between the two bracketing dense widths); mean over seeds with a 95% t interval "
           "(n - 1 degrees of freedom) and the p-value of no difference from the same t statistic. `prunable`: "
           "counts of prunable (linear-layer) weights, the paper's \"# Prunable\"; `total`: all parameters, "
           "embeddings included (the law's N). The verdict is Holm's: the p-values of all "
           f"{family_size(tables)} intervals of this report (the tables below and Figure 4's) are adjusted together, "
           "and a difference is detected when its adjusted p is below 0.05; the intervals themselves are per "
           "comparison (95% each), so one can exclude zero while its verdict is \"not detected\". A row of fewer "
           f"than {MIN_SEEDS} seeds shows its mean difference only (\"no test\": a 2-seed interval has one degree of "
           "freedom).", "",
           "Specs: `paired` (width 64, the default schedule), `epoch1` (width 32, within one epoch), `width32` "
           "(width 32 at b1's 600 steps, about 2.7 epochs), `query` (width 64 at 80% with the query kernels never "
           "pruned and counted as active linear weights).", ""]
  cols = [("spec", "spec", "{}"), ("budget", "budget", "{}"), ("target_sparsity", "sparsity", "{:.0%}"),
          ("matching", "matching", "{}"), ("seeds", "seeds", "{}"), ("count", "N_avg", "{:,.0f}"),
          ("sparse_loss", "sparse loss", "{:.4f}"), ("dense_loss", "dense at N_avg", "{:.4f}"),
          ("diff", "sparse - dense [95% interval]", "{}"), *TEST_COLUMNS]
  if "paired" in tables:
    table = _with_intervals(tables["paired"])
    parts += [frame_table(table, cols), ""]
    missing = table[table["unbracketed"].map(len) > 0]
    parts += [f"- {r.spec} {r.budget} {r.target_sparsity:.0%} ({r.matching}): seeds {r.unbracketed} not bracketed "
              "by their dense runs, left out" for r in missing.itertuples()] + ([""] if len(missing) else [])
  if "fig1" in tables:
    old = _with_intervals(tables["fig1"]).sort_values(["budget", "target_sparsity", "matching"], kind="stable")
    parts += ["fig1.yml (the laws' runs: 20..80%, 2 seeds, step fractions from `prune_start_for`; mean differences "
              "only):", "",
              f"Seed noise (mean standard deviation over the seeds of the same run): {seed_noise(df):.4f}.", "",
              frame_table(old, cols + [("dense_bracket", "dense bracket (first seed)", "{}")]), ""]
  return parts


def dense_steps(df: pd.DataFrame) -> pd.DataFrame:
  """The dense family per budget (fig1.yml's and paired.yml's runs, widths with two seeds or more): mean loss over
  seeds per width and the loss step down to the next wider model."""
  dense = df[(df["kind"] == "dense") & df["run_name"].astype(str).str.startswith(("fig1-", "paired-"))]
  rows = []
  for budget, g in dense.groupby("budget"):
    means = g.groupby("base_emb_dim")["loss"].agg(["mean", "count"])
    means = means[means["count"] >= 2]
    for (w, r), (w2, r2) in zip(means.iterrows(), list(means.iterrows())[1:]):
      rows.append({"budget": budget, "widths": f"{w:.0f} -> {w2:.0f}", "seeds": f"{r['count']:.0f}, {r2['count']:.0f}",
                   "loss": r["mean"], "next": r2["mean"], "step": r["mean"] - r2["mean"]})
  return pd.DataFrame(rows)


def schedule_section(tables: dict[str, pd.DataFrame]) -> list[str]:
  """Figure 4 at fixed effective compute and at fixed tokens, each split paired by seed with the paper's split."""
  parts = []
  cols = [("dense", "dense % of compute", "{:.0%}"), ("pruning", "pruning %", "{:.0%}"), ("steps", "steps", "{}"),
          ("measured_dense", "measured dense %", "{:.1%}"), ("measured_pruning", "measured pruning %", "{:.1%}"),
          ("flops_ratio", "compute / (25, 50)'s", "{:.4f}"), ("seeds", "seeds", "{}"), ("loss", "mean loss", "{:.4f}"),
          ("diff", "minus (25, 50), same seed [95% interval]", "{}"), *TEST_COLUMNS]
  reference = f"`{paired.SCHEDULE_REFERENCE.format(seed='<k>')}` (the paper's (25, 50) split at 600 steps)"
  tables = {k: v.assign(verdict=["reference" if (d, t) == (0.25, 0.5) else x
                                 for d, t, x in zip(v["dense"], v["pruning"], v["verdict"])])
            for k, v in tables.items() if k.startswith("fig4")}
  if "fig4_compute" in tables:
    parts += ["## Figure 4: schedule at a fixed effective compute (80%, width 64, the compute of b1's 600 steps)", "",
              "Each split trains the steps that give it the same effective compute (6 x tokens x active prunable "
              "weights) as the paper's split at 600 steps (`configs/study/fig4.yml`), so a split with less dense "
              f"compute trains more tokens; each seed's run minus {reference} of the same seed; sorted by mean loss.",
              "", frame_table(_with_intervals(tables["fig4_compute"]), cols), ""]
  if "fig4_tokens" in tables:
    parts += ["## Figure 4 at fixed tokens (80%, width 64, b1's 600 steps for every split)", "",
              "Every split trains the same 600 steps (`configs/study/fig4tokens.yml`), so a split with less dense "
              f"compute spends less compute; each seed's run minus {reference} of the same seed; sorted by mean loss.",
              "", frame_table(_with_intervals(tables["fig4_tokens"]), cols), ""]
  return parts


# The data and model facts the regime section reads from the study's base config (configs/study/c4_tiny.yml).
BASE_CONFIG = os.path.join("configs", "study", "c4_tiny.yml")
EPOCH_TOKENS = 381_636  # train tokens of the C4 slice at max_target_length 512 (c4_tiny.yml; `tokenizer` counts them)
# real (non-padding) tokens per step: the summary's target_tokens (MaxText's total_weights summed) over the 600 steps of
# width32-b1-sparse-w32-s0.8-seed0: 1,025,958 (the packing and data order, not the model, set it)
REAL_TOKENS_PER_STEP = 1710
# the paper's Table 1: (name, width, layers, # Prunable, tokens, its stated tokens per prunable parameter); C4 'en'
# holds 197.71B tokens with the LLaMA 2 tokenizer (its section 4), so every run is a single pass
PAPER_TABLE1 = (("58M-10x", 512, 6, 42e6, 14.7e9, 205), ("58M-20x", 512, 6, 42e6, 29.4e9, 409),
                ("162M-10x", 768, 12, 138e6, 33.5e9, 207), ("162M-20x", 768, 12, 138e6, 67.1e9, 414),
                ("468M-10x", 1024, 24, 435e6, 94.4e9, 217), ("468M-20x", 1024, 24, 435e6, 188.8e9, 434))
PAPER_C4_TOKENS = 197.71e9
SPECS = ("fig1", "paired", "epoch1", "width32", "query", "fig4", "fig4t", "abl", "pilot", "rec")


def run_counts(df: pd.DataFrame, traj: pd.DataFrame | None) -> pd.DataFrame:
  """Distinct runs per spec (run-name prefix) in the runs' CSVs and the trajectories' (a recovery run is in both)."""
  names = pd.concat([df["run_name"].astype(str)]
                    + ([traj["run_name"].astype(str)] if traj is not None else [])).drop_duplicates()
  spec = names.str.split("-", n=1).str[0]
  counts = spec.value_counts()
  return pd.DataFrame({"spec": counts.index, "runs": counts.to_numpy()}).sort_values("spec").reset_index(drop=True)


def _shape(width: int, layers: int, vocab: int) -> dict[str, int]:
  """``planning.param_counts`` of the study's LLaMA shape (MLP 4 x width, untied output) at any width."""
  return planning.param_counts(planning.ModelShape(emb=width, num_query_heads=4, num_kv_heads=4, head_dim=width // 4,
                                                   mlp_dim=4 * width, num_layers=layers, vocab=vocab))


def regime(df: pd.DataFrame, base: dict[str, Any]) -> pd.DataFrame:
  """Per budget and width of the sparse runs (fig1, paired, epoch1, width32; the specs listed): steps, positions, real tokens
  (``REAL_TOKENS_PER_STEP``), epochs of the slice (``EPOCH_TOKENS``), the sparse model's width, prunable weights,
  the output layer's share of them, and real tokens per prunable weight."""
  sparse = df[(df["kind"] == "sparse") & df["run_name"].astype(str).str.startswith(("fig1-", "paired-", "epoch1-",
                                                                                     "width32-"))]
  rows = []
  specs = sparse["run_name"].str.split("-").str[0]
  for (budget, width), g in sparse.groupby(["budget", "base_emb_dim"], sort=False):
    steps, prunable = int(g["steps"].iloc[0]), int(g["prunable_params"].iloc[0])
    counts = _shape(int(width), int(base["base_num_decoder_layers"]), int(base["vocab_size"]))
    if counts["prunable"] != prunable:
      raise ValueError(f"{budget}: the runs' prunable count {prunable} is not the shape's {counts['prunable']}")
    real = steps * REAL_TOKENS_PER_STEP
    rows.append({"spec": ", ".join(dict.fromkeys(specs[g.index])), "budget": budget, "steps": steps,
                 "positions": float(g["tokens"].iloc[0]), "real": real, "epochs": real / EPOCH_TOKENS,
                 "width": int(width), "prunable": prunable, "output_share": counts["logits_dense"] / prunable,
                 "per_prunable": real / prunable})
  return pd.DataFrame(rows)


def regime_section(df: pd.DataFrame) -> list[str]:
  """The study's regime against the paper's: tokens per prunable weight, epochs, depth, output layer's share."""
  import yaml  # pylint: disable=import-outside-toplevel

  from sparsity.repo import ROOT  # pylint: disable=import-outside-toplevel

  with open(os.path.join(ROOT, BASE_CONFIG), encoding="utf-8") as f:
    base = yaml.safe_load(f)
  table = regime(df, base)
  if table.empty:
    return []
  paper = pd.DataFrame([{"name": n, "layers": layers, "prunable": p, "tokens": t, "stated": r, "ratio": t / p,
                         "output_share": _shape(w, layers, 32000)["logits_dense"] / p, "epochs": t / PAPER_C4_TOKENS}
                        for n, w, layers, p, t, r in PAPER_TABLE1])
  layers = int(base["base_num_decoder_layers"])
  return ["## The regime: tokens per prunable weight, epochs, depth", "",
          f"Every run here has {layers} decoder layers, vocabulary {int(base['vocab_size']):,} and sequences of "
          f"{int(base['max_target_length'])} ({int(base['per_device_batch_size'])} a step: "
          f"{int(base['max_target_length']) * int(base['per_device_batch_size']):,} positions, of which "
          f"{REAL_TOKENS_PER_STEP:,} are real tokens on average, MaxText's `total_weights`); one epoch of the slice "
          f"is {EPOCH_TOKENS:,} real tokens ({EPOCH_TOKENS / 196608:.2f} per prunable weight of the width-64 model). "
          "Real tokens per prunable weight of the sparse model (its dense count, as the paper's Table 1):", "",
          frame_table(table, [("spec", "spec", "{}"), ("budget", "budget", "{}"), ("steps", "steps", "{}"),
                              ("positions", "positions", "{:,.0f}"), ("real", "real tokens", "{:,.0f}"),
                              ("epochs", "epochs", "{:.2f}"), ("width", "width", "{}"),
                              ("prunable", "prunable weights", "{:,}"),
                              ("output_share", "output layer's share", "{:.0%}"),
                              ("per_prunable", "real tokens per prunable weight", "{:.1f}")]), "",
          "The paper's Table 1 (LLaMA-2 shapes, vocabulary 32,000, C4 'en' of "
          f"{PAPER_C4_TOKENS / 1e9:.2f}B tokens: every run is a single pass); its stated ratio and the ratio of its "
          "own token and prunable columns differ for four of the six rows:", "",
          frame_table(paper, [("name", "model", "{}"), ("layers", "layers", "{}"), ("prunable", "# Prunable", "{:,.0f}"),
                              ("tokens", "tokens", "{:,.3g}"), ("stated", "stated tokens per prunable", "{}"),
                              ("ratio", "tokens / # Prunable", "{:.0f}"), ("epochs", "epochs", "{:.2f}"),
                              ("output_share", "output layer's share", "{:.1%}")]), ""]


def laws_section(df: pd.DataFrame, out_dir: str, files: dict[str, str]) -> list[str]:
  fits, skipped = law_fits(df)
  parts = ["## Figure 3: laws fitted on every fig1 run", ""]
  if fits:
    files["laws"] = plot_laws(df, fits, os.path.join(out_dir, "laws.png"))
    law_rows = pd.DataFrame([{"law": r.label, "params": ", ".join(f"{k}={v:.4g}" for k, v in r.fit.params.items()),
                              "mae": r.fit.mae, "loo": r.fit.loo_mae, "n": r.fit.n_points} for r in fits])
    parts += [frame_table(law_rows, [("law", "law", "{}"), ("n", "runs", "{}"), ("mae", "MAE", "{:.4f}"),
                                     ("loo", "leave-one-group-out MAE", "{:.4f}"), ("params", "parameters", "{}")]), ""]
  return parts + [f"- {why}" for why in skipped] + ([""] if skipped else [])


def write(df: pd.DataFrame, out_dir: str, traj: pd.DataFrame | None = None) -> dict[str, str]:
  """Writes ``study.md`` and the figures into ``out_dir``; returns {name: path}."""
  os.makedirs(out_dir, exist_ok=True)
  files = {"fig1_pairs": plot_fig1(df, os.path.join(out_dir, "fig1_pairs.png"))}
  counts = run_counts(df, traj)
  parts = [f"# Reproduction study: {int(counts['runs'].sum())} runs", "",
           "Generated by `python -m sparsity study` from the committed CSVs (results/study/README.md). Runs per spec "
           "(run-name prefix; `rec`: the prune-and-recover runs and their unpruned controls, from the trajectories):",
           "", frame_table(counts, [("spec", "spec", "{}"), ("runs", "runs", "{}")]), ""]
  parts += regime_section(df)
  tables = interval_tables(df)
  parts += figure1_section(df, tables)
  steps = dense_steps(df)
  if not steps.empty:
    parts += ["## The dense family: loss step between neighbouring widths", "",
              "Mean final eval loss over seeds (fig1.yml and paired.yml, widths with two seeds or more) and its drop "
              "to the next wider model:", "",
              frame_table(steps, [("budget", "budget", "{}"), ("widths", "widths", "{}"), ("seeds", "seeds", "{}"),
                                  ("loss", "loss", "{:.4f}"), ("next", "next width's loss", "{:.4f}"),
                                  ("step", "step", "{:.4f}")]), ""]
  parts += laws_section(df, out_dir, files)
  parts += schedule_section(tables)
  abl = ablation_table(df)
  if not abl.empty:
    abl["ablated"] = [_fmt(m, s) for m, s in zip(abl["loss"], abl["loss_sd"])]
    abl["ref"] = [_fmt(m, s) for m, s in zip(abl["reference"], abl["reference_sd"])]
    parts += ["## Ablations (against fig1's run of the same model, budget and seeds; no intervals, no verdicts)", "",
              frame_table(abl, [("ablation", "ablation", "{}"), ("run", "run", "{}"), ("budget", "budget", "{}"),
                                ("seeds", "seeds", "{}"), ("ablated", "loss", "{}"), ("ref", "fig1 reference", "{}"),
                                ("difference", "difference", "{:+.4f}")]), ""]
    pairs2 = ablation_pairs(df)
    if not pairs2.empty:
      parts += ["Sparse 80% against its dense bracket under the same learning-rate change (seed 0 only):", "",
                frame_table(pairs2, [("ablation", "ablation", "{}"), ("sparse_loss", "sparse", "{:.4f}"),
                                     ("dense_loss", "dense at N_avg", "{:.4f}"),
                                     ("difference", "sparse - dense", "{:+.4f}")]), ""]
  if traj is not None and not traj.empty:
    parts += recovery_section(traj[traj["rho"] > 0], traj[traj["rho"] == 0], out_dir, files)
  parts += [f"![{k}]({os.path.basename(v)})" for k, v in files.items()]
  files["study"] = os.path.join(out_dir, "study.md")
  with open(files["study"], "w", encoding="utf-8") as f:
    f.write("\n".join(parts) + "\n")
  return files


__all__ = ["fig1_pairs", "figure1_section", "interval_tables", "family_size", "dense_steps", "schedule_section",
           "run_counts", "regime", "regime_section", "laws_section", "seed_groups", "dense_at", "seed_noise", "law_fits",
           "ablation_table", "ablation_pairs", "p2_fits", "bound_parameters", "recovery_table", "recovery_section",
           "write"]
