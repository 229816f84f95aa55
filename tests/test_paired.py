"""The study's paired statistics (fast), against hand-computed cases."""

import math

import pandas as pd
import pytest

from sparsity.experiments import paired

T_975 = {2: 12.706204736, 3: 4.302652730, 5: 2.776445105}  # t quantiles (n - 1 degrees of freedom), from tables


def test_t_interval_by_hand():
  iv = paired.t_interval([0.1, 0.2, 0.3])
  sd = 0.1  # sqrt(((-.1)^2 + 0 + .1^2) / 2)
  assert iv.mean == pytest.approx(0.2) and iv.sd == pytest.approx(sd) and iv.n == 3
  assert iv.high - iv.mean == pytest.approx(T_975[3] * sd / math.sqrt(3))
  assert iv.low == pytest.approx(0.2 - 0.2484138, abs=1e-6)  # 0.2 +- 0.248: spans zero


def test_verdicts():
  assert paired.t_interval([0.1, 0.2, 0.3]).verdict == "not detected"  # the case above
  assert paired.t_interval([0.10, 0.11, 0.12, 0.10, 0.11]).verdict == "sparse worse"
  assert paired.t_interval([-0.10, -0.11, -0.12]).verdict == "sparse better"
  one = paired.t_interval([0.5])
  assert one.mean == 0.5 and math.isnan(one.low) and one.verdict == "not detected"  # one seed: no interval
  with pytest.raises(ValueError):
    paired.t_interval([])


def _run(name, kind, seed, width, prunable, avg_total, loss, target=0.0, budget="b1"):
  return {"run_name": name, "kind": kind, "budget": budget, "seed": seed, "base_emb_dim": width,
          "target_sparsity": target, "prunable_params": prunable, "non_prunable_params": 1000,
          "total_params": prunable + 1000, "avg_params": avg_total, "loss": loss, "tokens": 1e6}


def _study():
  rows = []
  for seed, shift in ((0, 0.0), (1, 0.1), (2, -0.1)):
    rows += [_run(f"fig1-b1-dense-w1-seed{seed}", "dense", seed, 1, 100, 1100, 5.0 + shift),
             _run(f"fig1-b1-dense-w2-seed{seed}", "dense", seed, 2, 200, 1200, 4.0 + shift),
             _run(f"fig1-b1-dense-w3-seed{seed}", "dense", seed, 3, 400, 1400, 3.0 + shift)]
  # an ablation's dense run of seed 0 would bracket differently: it must not join the family
  rows.append(_run("abl-lr-b1-dense-w2-seed0", "dense", 0, 2, 150, 1150, 9.0))
  # sparse runs: prunable count 200 from 150 average active (avg_params = 150 + 1000 non-prunable)
  for seed, loss in ((0, 4.6), (1, 4.8), (2, 4.3)):
    rows.append(_run(f"paired-b1-sparse-w2-s0.5-seed{seed}", "sparse", seed, 2, 200, 1150, loss, 0.5))
  return pd.DataFrame(rows)


def test_each_seed_against_its_own_dense_family_under_both_matchings():
  diffs = paired.differences(_study())
  assert len(diffs) == 3 * 2
  by = diffs.set_index(["seed", "matching"])
  # prunable: 150 between widths 1 (100) and 2 (200) halfway -> 4.5 + shift; total: 1150 between 1100 and 1200 -> same
  for seed, shift, loss in ((0, 0.0, 4.6), (1, 0.1, 4.8), (2, -0.1, 4.3)):
    for matching in ("prunable", "total"):
      row = by.loc[(seed, matching)]
      assert row["dense_loss"] == pytest.approx(4.5 + shift)
      assert row["difference"] == pytest.approx(loss - 4.5 - shift)
      assert (row["lower"], row["upper"]) == (f"fig1-b1-dense-w1-seed{seed}", f"fig1-b1-dense-w2-seed{seed}")
  table = paired.summary(diffs).set_index("matching")
  d = [0.1, 0.2, -0.1]
  mean, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
  assert table.loc["prunable", "difference"] == pytest.approx(mean)
  assert table.loc["prunable", "high"] == pytest.approx(mean + T_975[3] * sd / math.sqrt(3))
  assert table.loc["prunable", "seeds"] == 3 and table.loc["prunable", "verdict"] == "not detected"


def test_the_two_matchings_differ_when_the_non_prunable_share_differs():
  df = _study()
  df.loc[df["kind"] == "sparse", "avg_params"] = 1300  # total count now between widths 2 (1200) and 3 (1400)
  diffs = paired.differences(df).set_index(["seed", "matching"])
  assert diffs.loc[(0, "total"), "dense_loss"] == pytest.approx(3.5)  # halfway between 4.0 and 3.0
  assert diffs.loc[(0, "prunable"), "dense_loss"] == pytest.approx(3.5)  # 300 prunable: also halfway, w2..w3
  df.loc[df["kind"] == "sparse", "non_prunable_params"] = 1150  # prunable 150 now, total still 1300
  diffs = paired.differences(df).set_index(["seed", "matching"])
  assert diffs.loc[(0, "prunable"), "dense_loss"] == pytest.approx(4.5)
  assert diffs.loc[(0, "total"), "dense_loss"] == pytest.approx(3.5)


def test_an_unbracketed_seed_is_left_out_and_listed():
  df = _study()
  df = df[~((df["seed"] == 2) & (df["base_emb_dim"] == 1))]  # seed 2 has no dense run below the sparse count
  table = paired.summary(paired.differences(df)).set_index("matching")
  assert table.loc["prunable", "seeds"] == 2 and table.loc["prunable", "unbracketed"] == [2]


def test_fixed_compute_schedule_table():
  rows = []
  for (td, ts), losses, steps in (((0.25, 0.5), (4.9, 4.8), 600), ((0.5, 0.25), (5.0,), 539),
                                  ((0.0, 0.5), (4.85, 4.95), 839)):
    for seed, loss in enumerate(losses):
      rows.append({"run_name": f"fig4-b1-d{td}-p{ts}-seed{seed}", "dense_compute_fraction": td,
                   "pruning_compute_fraction": ts, "steps": steps, "seed": seed, "loss": loss,
                   "dense_fraction": td, "pruning_fraction": ts, "effective_flops": 1e12 * (1 + 0.001 * steps / 600)})
  rows.append({"run_name": "fig4-b1-d0.0-p0.25", "loss": 7.0})  # an earlier fixed-steps run: not this table's
  table = paired.fixed_compute_schedule(pd.DataFrame(rows))
  assert list(zip(table["dense"], table["pruning"])) == [(0.0, 0.5), (0.25, 0.5), (0.5, 0.25)]  # by seed 0's loss
  assert list(table["seeds"]) == [2, 2, 1] and table["loss"].iloc[1] == pytest.approx(4.85)
  assert table.set_index("steps").loc[600, "flops_ratio"] == pytest.approx(1.0)
  assert paired.fixed_compute_schedule(pd.DataFrame([{"run_name": "fig4-b1-d0.0-p0.25", "loss": 7.0}])).empty
