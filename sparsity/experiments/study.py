"""The reproduction study's analysis: the tables and figures of the README's "Reproducing the paper at CPU scale".

Input: ``collect``'s CSVs of the study's runs (``configs/study/fig1.yml``, ``paired.yml``, ``epoch1.yml``,
``ablations.yml``, ``fig4.yml``; run-name prefixes and the manifest columns ``kind``, ``budget``, ``seed``,
``ablation``, ``tag``, ``dense_compute_fraction`` tell them apart) and, optionally, ``collect --trajectories``'s CSV of
``recovery.yml``. Output (``write``):

* ``study.md``: every table below;
* ``fig1_pairs.png``: final eval loss against average active prunable parameters, per budget, sparse runs and the
  dense family, each seed a point;
* ``laws.png``: predicted against actual loss for the four laws;
* ``recovery.png``: the P2 law's fit on the smaller models and its prediction of the largest.

Tables:

* Figure 1 (``figure1_section``): per spec, budget, sparsity and matching (prunable or total counts), the paired
  difference sparse minus dense at equal average active count, mean over seeds with a 95% t interval
  (``sparsity.experiments.paired``); for paired.yml and epoch1.yml (3-5 seeds, the default schedule) and for
  fig1.yml's 20..80% runs (2 seeds).
* Laws: ``avg_param`` (N = average active parameters), ``chinchilla`` with N = the initial dense count and with
  N = the final non-zero count, and ``frantar``, fitted on every fig1 run; parameters, MAE and leave-one-group-out
  MAE (a configuration's seeds held out together).
* Schedule (Figure 4): loss per (dense %, pruning %) split of compute at a fixed effective compute.
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
from sparsity.science import plots, scaling_laws

LAWS = (("avg_param", "avg_params", "average active parameters (the paper's law)"),
        ("chinchilla", "params", "Chinchilla, N = initial dense count"),
        ("chinchilla", "nonzero_params", "Chinchilla, N = final non-zero count"),
        ("frantar", "nonzero_params", "Frantar et al., N = final non-zero count, S = final sparsity"))


def _mean_sd(values) -> tuple[float, float]:
  v = np.asarray(list(values), float)
  return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def _fmt(mean: float, sd: float, digits: int = 3) -> str:
  return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")


def avg_prunable(df: pd.DataFrame) -> pd.Series:
  """Average active prunable parameters of each run (avg_params minus the never-pruned ones)."""
  return df["avg_params"] - df["non_prunable_params"]


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
    if law == "chinchilla" and n_column != "params":
      data["params"] = data[n_column]  # the Chinchilla form with another N
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
      found = dense_at(dense, float(avg_prunable(run.to_frame().T).iloc[0]))
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
    sc = ax.scatter(avg_prunable(sparse), sparse["loss"], c=sparse["target_sparsity"], cmap="viridis", vmin=0,
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


def figure1_section(df: pd.DataFrame) -> list[str]:
  """Figure 1's markdown: the paired differences (``paired``) of paired.yml and epoch1.yml, then of fig1.yml's
  20..80% runs (2 seeds, the laws' data), each under both matchings."""
  parts = ["## Figure 1: sparse minus dense at equal average active parameters, paired by seed", "",
           "Each seed's sparse run minus its own seed's dense loss at the sparse run's average active count "
           "(interpolated between the two bracketing dense widths); mean over seeds with a 95% t interval "
           "(n - 1 degrees of freedom). `prunable`: counts of prunable (linear-layer) weights, the paper's "
           "\"# Prunable\"; `total`: all parameters, embeddings included (the law's N). \"not detected\": the "
           "interval spans zero.", ""]
  cols = [("spec", "spec", "{}"), ("budget", "budget", "{}"), ("target_sparsity", "sparsity", "{:.0%}"),
          ("matching", "matching", "{}"), ("seeds", "seeds", "{}"), ("count", "N_avg", "{:,.0f}"),
          ("sparse_loss", "sparse loss", "{:.4f}"), ("dense_loss", "dense at N_avg", "{:.4f}"),
          ("diff", "sparse - dense [95% interval]", "{}"), ("verdict", "", "{}")]
  diffs = paired.differences(df)
  if not diffs.empty:
    table = paired.summary(diffs)
    table["diff"] = [_interval(m, lo, hi, True) for m, lo, hi in zip(table["difference"], table["low"],
                                                                      table["high"])]
    parts += [frame_table(table, cols), ""]
    missing = table[table["unbracketed"].map(len) > 0]
    parts += [f"- {r.spec} {r.budget} {r.target_sparsity:.0%} ({r.matching}): seeds {r.unbracketed} not bracketed "
              "by their dense runs, left out" for r in missing.itertuples()] + ([""] if len(missing) else [])
  old = pd.concat([fig1_pairs(df, matching=m) for m in paired.MATCHINGS])
  if not old.empty:
    old = old.sort_values(["budget", "target_sparsity", "matching"], kind="stable")
    old["diff"] = [_interval(m, lo, hi, True) for m, lo, hi in zip(old["difference"], old["low"], old["high"])]
    parts += ["fig1.yml (the laws' runs: 20..80%, 2 seeds, step fractions from `prune_start_for`):", "",
              f"Seed noise (mean standard deviation over the seeds of the same run): {seed_noise(df):.4f}.", "",
              frame_table(old, cols + [("dense_bracket", "dense bracket (first seed)", "{}")]), ""]
  return parts


def write(df: pd.DataFrame, out_dir: str, traj: pd.DataFrame | None = None) -> dict[str, str]:
  """Writes ``study.md`` and the figures into ``out_dir``; returns {name: path}."""
  os.makedirs(out_dir, exist_ok=True)
  files = {"fig1_pairs": plot_fig1(df, os.path.join(out_dir, "fig1_pairs.png"))}
  parts = [f"# Reproduction study: {len(df)} runs", ""]
  parts += figure1_section(df)
  fits, skipped = law_fits(df)
  parts += ["## Figure 3: laws fitted on every fig1 run", ""]
  if fits:
    files["laws"] = plot_laws(df, fits, os.path.join(out_dir, "laws.png"))
    law_rows = pd.DataFrame([{"law": r.label, "params": ", ".join(f"{k}={v:.4g}" for k, v in r.fit.params.items()),
                              "mae": r.fit.mae, "loo": r.fit.loo_mae, "n": r.fit.n_points} for r in fits])
    parts += [frame_table(law_rows, [("law", "law", "{}"), ("n", "runs", "{}"), ("mae", "MAE", "{:.4f}"),
                                ("loo", "leave-one-group-out MAE", "{:.4f}"), ("params", "parameters", "{}")]), ""]
  parts += [f"- {why}" for why in skipped] + ([""] if skipped else [])
  sched = paired.fixed_compute_schedule(df)
  if not sched.empty:
    sched["interval"] = [_interval(m, lo, hi) for m, lo, hi in zip(sched["loss"], sched["low"], sched["high"])]
    parts += ["## Figure 4: schedule at a fixed effective compute (80%, width 64, the compute of b1's 600 steps)", "",
              "Each split trains the steps that give it the same effective compute (6 x tokens x active prunable "
              "weights) as the paper's split at 600 steps (`configs/study/fig4.yml`); sorted by seed 0's loss.", "",
              frame_table(sched, [("dense", "dense % of compute", "{:.0%}"), ("pruning", "pruning %", "{:.0%}"),
                             ("steps", "steps", "{}"), ("measured_dense", "measured dense %", "{:.1%}"),
                             ("measured_pruning", "measured pruning %", "{:.1%}"),
                             ("flops_ratio", "compute / (25, 50)'s", "{:.4f}"), ("seeds", "seeds", "{}"),
                             ("seed0_loss", "seed 0 loss", "{:.4f}"),
                             ("interval", "loss, mean [95% interval]", "{}")]), ""]
  abl = ablation_table(df)
  if not abl.empty:
    abl["ablated"] = [_fmt(m, s) for m, s in zip(abl["loss"], abl["loss_sd"])]
    abl["ref"] = [_fmt(m, s) for m, s in zip(abl["reference"], abl["reference_sd"])]
    parts += ["## Ablations (against fig1's run of the same model, budget and seeds)", "",
              frame_table(abl, [("ablation", "ablation", "{}"), ("run", "run", "{}"), ("budget", "budget", "{}"),
                           ("seeds", "seeds", "{}"), ("ablated", "loss", "{}"), ("ref", "fig1 reference", "{}"),
                           ("difference", "difference", "{:+.4f}")]), ""]
    pairs2 = ablation_pairs(df)
    if not pairs2.empty:
      parts += ["Sparse 80% against its dense bracket under the same learning-rate change (seed 0):", "",
                frame_table(pairs2, [("ablation", "ablation", "{}"), ("sparse_loss", "sparse", "{:.4f}"),
                                ("dense_loss", "dense at N_avg", "{:.4f}"), ("difference", "sparse - dense",
                                                                              "{:+.4f}")]), ""]
  if traj is not None and not traj.empty:
    parts += recovery_section(traj[traj["rho"] > 0], traj[traj["rho"] == 0], out_dir, files)
  parts += [f"![{k}]({os.path.basename(v)})" for k, v in files.items()]
  files["study"] = os.path.join(out_dir, "study.md")
  with open(files["study"], "w", encoding="utf-8") as f:
    f.write("\n".join(parts) + "\n")
  return files


__all__ = ["fig1_pairs", "figure1_section", "seed_groups", "dense_at", "seed_noise", "law_fits", "ablation_table", "ablation_pairs",
           "p2_fits", "recovery_table", "recovery_section", "write"]
