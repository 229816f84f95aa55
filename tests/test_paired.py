"""The study's paired statistics (fast), against hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sparsity.experiments import paired

T_975 = {2: 12.706204736, 3: 4.302652730, 5: 2.776445105}  # t quantiles (n - 1 degrees of freedom), from tables


def test_t_interval_by_hand():
  iv = paired.t_interval([0.1, 0.2, 0.3])
  sd = 0.1  # sqrt(((-.1)^2 + 0 + .1^2) / 2)
  assert iv.mean == pytest.approx(0.2) and iv.sd == pytest.approx(sd) and iv.n == 3
  assert iv.high - iv.mean == pytest.approx(T_975[3] * sd / math.sqrt(3))
  assert iv.low == pytest.approx(0.2 - 0.2484138, abs=1e-6)  # 0.2 +- 0.248: spans zero


def test_p_value_is_scipys_one_sample_t_test():
  for values in ([0.1, 0.2, 0.3], [0.10, 0.11, 0.12, 0.10, 0.11], [-0.10, -0.11, -0.12], [0.3, -0.1]):
    assert paired.t_interval(values).p == pytest.approx(stats.ttest_1samp(values, 0.0).pvalue, rel=1e-9)
  one = paired.t_interval([0.5])
  assert one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.p)  # one seed: no interval, no test
  with pytest.raises(ValueError):
    paired.t_interval([])


def _holm_by_procedure(p, alpha):
  """Holm's sequential procedure at level ``alpha``: the indices it rejects (the reference for the adjusted p)."""
  order = sorted(range(len(p)), key=lambda i: p[i])
  rejected = set()
  for k, i in enumerate(order):
    if p[i] > alpha / (len(p) - k):
      break
    rejected.add(i)
  return rejected


@pytest.mark.parametrize("p", [[0.01, 0.04, 0.03, 0.005], [0.2, 0.001, 0.04, 0.04, 0.5], [0.03], [0.9, 0.8]])
def test_holm_adjusted_p_is_the_smallest_level_that_rejects(p):
  adjusted = paired.holm(p)
  # brute force: at every level a < 1 the procedure rejects exactly the hypotheses whose adjusted p <= a
  for a in sorted(set(np.round(np.linspace(0.0005, 0.9995, 2000), 6)) | {0.05}):
    assert _holm_by_procedure(p, a) == {i for i, q in enumerate(adjusted) if q <= a + 1e-12}, a


def test_holm_leaves_missing_p_values_out_of_the_family():
  adjusted = paired.holm([0.01, float("nan"), 0.02])
  assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_verdicts_come_from_the_corrected_p():
  a = pd.DataFrame({"difference": [0.1, -0.2, 0.05], "p": [0.02, 0.01, float("nan")]})
  b = pd.DataFrame({"difference": [0.3], "p": [0.03], "worse": ["split worse"], "better": ["split better"]})
  ta, tb = paired.corrected([a, b])
  # family of 3 p-values: 0.01 -> 0.03, 0.02 -> 0.04, 0.03 -> 0.04 (monotone)
  assert list(ta["p_holm"][:2]) == pytest.approx([0.04, 0.03]) and tb["p_holm"][0] == pytest.approx(0.04)
  assert list(ta["verdict"]) == ["sparse worse", "sparse better", "no test"] and tb["verdict"][0] == "split worse"
  alone = paired.corrected([pd.DataFrame({"difference": [0.1] * 4, "p": [0.02] * 4})])[0]
  assert set(alone["verdict"]) == {"not detected"}  # 4 x 0.02 = 0.08: none survives


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
  assert table.loc["prunable", "p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)


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


def test_exempt_linear_weights_count_as_active_prunable_weights():
  df = _study()
  df["exempt_params"] = float("nan")
  df.loc[df["kind"] == "sparse", ["non_prunable_params", "exempt_params"]] = [1050, 50]  # 50 linear weights kept dense
  diffs = paired.differences(df).set_index(["seed", "matching"])
  assert diffs.loc[(0, "prunable"), "count"] == 1150 - 1050 + 50  # avg_params - non-prunable + exempt
  assert diffs.loc[(0, "total"), "count"] == 1150


def test_an_unbracketed_seed_is_left_out_and_listed():
  df = _study()
  df = df[~((df["seed"] == 2) & (df["base_emb_dim"] == 1))]  # seed 2 has no dense run below the sparse count
  table = paired.summary(paired.differences(df)).set_index("matching")
  assert table.loc["prunable", "seeds"] == 2 and table.loc["prunable", "unbracketed"] == [2]


def test_schedule_table_pairs_each_split_with_the_papers_split_of_its_seed():
  rows = [{"run_name": f"paired-b1-sparse-w64-s0.8-seed{seed}", "loss": loss, "seed": seed, "steps": 600,
           "effective_flops": 1e12} for seed, loss in ((0, 4.9), (1, 4.8), (2, 4.7))]
  for (td, ts), losses, steps in (((0.25, 0.5), (4.9,), 600), ((0.5, 0.25), (5.0,), 539),
                                  ((0.0, 0.5), (4.85, 4.70, 4.66), 839)):
    for seed, loss in enumerate(losses):
      rows.append({"run_name": f"fig4-b1-d{td}-p{ts}-seed{seed}", "dense_compute_fraction": td,
                   "pruning_compute_fraction": ts, "steps": steps, "seed": seed, "loss": loss,
                   "dense_fraction": td, "pruning_fraction": ts, "effective_flops": 1e12 * steps / 600})
  rows.append({"run_name": "fig4t-b1-d0.0-p0.5-seed0", "dense_compute_fraction": 0.0, "pruning_compute_fraction": 0.5,
               "steps": 600, "seed": 0, "loss": 4.8, "dense_fraction": 0.0, "pruning_fraction": 0.5,
               "effective_flops": 0.9e12})
  table = paired.schedule_table(pd.DataFrame(rows)).set_index(["dense", "pruning"])
  assert list(table.index) == [(0.0, 0.5), (0.25, 0.5), (0.5, 0.25)]  # by mean loss; fig4t's run is not fig4's
  row = table.loc[(0.0, 0.5)]
  d = [4.85 - 4.9, 4.70 - 4.8, 4.66 - 4.7]
  assert row["difference"] == pytest.approx(np.mean(d)) and row["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
  assert row["flops_ratio"] == pytest.approx(839 / 600) and row["seeds"] == 3
  assert math.isnan(table.loc[(0.25, 0.5), "difference"])  # the reference itself
  assert table.loc[(0.5, 0.25), "difference"] == pytest.approx(0.1) and math.isnan(table.loc[(0.5, 0.25), "p"])
  tokens = paired.schedule_table(pd.DataFrame(rows), "fig4t-")
  assert len(tokens) == 1 and tokens["difference"].iloc[0] == pytest.approx(4.8 - 4.9)
  assert paired.schedule_table(pd.DataFrame([{"run_name": "fig4-b1-d0.0-p0.25", "loss": 7.0}])).empty
