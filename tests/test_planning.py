"""Tests for sparsity.science.planning and the plan command (with a stand-in config loader)."""

import dataclasses
import json
import math
import os
import re
import types

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # set before numpy

import numpy as np
import pytest

from sparsity import cli
from sparsity.core import schedules
from sparsity.core.config import DEFAULT_PRUNABLE
from references import mean_active_by_simulation
from sparsity.maxtext import families, layout
from sparsity.science import planning as pl, scaling_laws as sl

SMALL = pl.ModelShape(emb=64, num_query_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=256, num_layers=2, vocab=1000)
CHIN = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}


def law(name="avg_param", params=CHIN):
  return sl.FitResult(law=name, params=dict(params), objective=0.0, predictions=np.zeros(0), residuals=np.zeros(0),
                      mae=0.0, loo_predictions=np.zeros(0), loo_mae=float("nan"), n_points=0, n_starts=0)


@pytest.mark.parametrize("name, prunable, total", [("58M", 42e6, 58e6), ("162M", 138e6, 162e6), ("468M", 435e6, 468e6)])
def test_table1_counts(name, prunable, total):
  c = pl.param_counts(pl.PAPER_MODELS[name])
  # Table 1 rounds to whole millions (58M's 41.55M prunable is 1.07% below "42M")
  assert round(c["prunable"] / 1e6) == prunable / 1e6 and c["prunable"] == pytest.approx(prunable, rel=0.011)
  assert round(c["total"] / 1e6) == total / 1e6 and c["total"] == pytest.approx(total, rel=0.01)
  assert c["total"] == c["prunable"] + c["non_prunable"]


def test_exact_counts_58m():
  c = pl.param_counts(pl.PAPER_MODELS["58M"])
  assert c["prunable"] == 6 * (4 * 512 * 512 + 3 * 512 * 2048) + 512 * 32000 == 41_549_824
  assert c["non_prunable"] == 32000 * 512 + 13 * 512
  assert c["total"] == 57_940_480


def test_tied_embeddings_and_gqa():
  tied = pl.param_counts(dataclasses.replace(SMALL, tied_embeddings=True))
  untied = pl.param_counts(SMALL)
  assert tied["logits_dense"] == 0 and untied["logits_dense"] == 64 * 1000
  assert untied["prunable"] - tied["prunable"] == 64 * 1000 and tied["non_prunable"] == untied["non_prunable"]
  # q and o: 64 x 64; k and v: 64 x (2 heads x 16)
  assert untied["attention"] == 2 * (2 * 64 * 64 + 2 * 64 * 32)
  assert untied["mlp"] == 2 * 3 * 64 * 256 and untied["norms"] == 5 * 64


@pytest.mark.parametrize(
    "steps, sparsity, schedule, start, end, interval",
    [
        (1000, 0.8, "geometric", 0.25, 0.75, 100),
        (997, 0.6, "cubic", 0.1, 0.9, 37),
        (500, 0.5, "linear", 0.0, 1.0, 64),
        (800, 0.9, "one_shot", 0.5, 0.5, 100),
        (300, 0.0, "geometric", 0.25, 0.75, 10),
    ],
)
def test_avg_active_matches_simulation(steps, sparsity, schedule, start, end, interval):
  p = pl.plan(pl.PAPER_MODELS["58M"], steps, 4096, sparsity, schedule, start, end, interval)
  c = pl.param_counts(pl.PAPER_MODELS["58M"])
  sched = schedules.make_schedule(steps, sparsity, schedule, start, end, interval)
  sim = mean_active_by_simulation(sched, c["prunable"], c["non_prunable"])
  assert p["avg_active_params"] == pytest.approx(sim, rel=1e-12)
  assert p["avg_active_prunable_params"] == pytest.approx(sim - c["non_prunable"], rel=1e-12)
  active = [sched.active_at(t, c["prunable"], c["non_prunable"]) for t in range(steps)]
  # Compute counts the active prunable weights (sparsity.core.compute), not embeddings and norms.
  assert p["training_flops"] == pytest.approx(6 * 4096 * sum(a - c["non_prunable"] for a in active), rel=1e-12)
  assert p["dense_training_flops"] == 6 * c["prunable"] * steps * 4096
  assert p["schedule_split"] == "steps" and (p["prune_start_fraction"], p["prune_end_fraction"]) == (start, end)
  assert p["final_params"] == active[-1] and p["inference_flops_per_token"] == 2 * active[-1]
  assert p["final_sparsity"] == pytest.approx(sparsity, abs=1e-7)
  assert p["prune_steps"] == list(sched.prune_steps)
  assert p["tokens"] == steps * 4096 and p["chinchilla_multiple"] == pytest.approx(p["tokens"] / (20 * c["prunable"]))
  json.dumps(p)


def test_dense_plan_has_no_events():
  p = pl.plan(SMALL, 100, 64)
  assert p["prune_steps"] == [] and p["avg_active_params"] == p["total_params"] == p["final_params"]
  assert p["training_flops"] == p["dense_training_flops"] and p["final_sparsity"] == 0.0


def test_scale_shape_keeps_ratios():
  s = pl.scale_shape(pl.PAPER_MODELS["162M"], 1536)
  assert (s.emb, s.head_dim, s.mlp_dim, s.num_layers, s.num_query_heads) == (1536, 128, 6144, 12, 12)
  with pytest.raises(ValueError, match="multiple of 12 heads"):
    pl.scale_shape(pl.PAPER_MODELS["162M"], 1000)


@pytest.mark.parametrize("name, sparsity, divisor", [("58M", 0.4, 128), ("162M", 0.8, 96), ("468M", 0.6, 64)])
def test_match_dense_brackets(name, sparsity, divisor):
  shape = pl.PAPER_MODELS[name]
  target = pl.plan(shape, 1000, 1024, sparsity)["avg_active_params"]
  m = pl.match_dense(target, shape, divisor)
  step = pl.width_step(shape, divisor)
  assert not m["exact"] and m["upper"].emb - m["lower"].emb == step
  for s in (m["lower"], m["upper"]):
    assert s.emb % divisor == 0 and s.emb % shape.num_query_heads == 0 and s.num_layers == shape.num_layers
    assert s.mlp_dim == 4 * s.emb and s.head_dim * s.num_query_heads == s.emb
  assert m["lower_params"] < target < m["upper_params"]
  assert m["lower_params"] == pl.param_counts(m["lower"])["total"]
  assert (1 - m["weight"]) * m["lower_params"] + m["weight"] * m["upper_params"] == pytest.approx(target)


def test_match_dense_exact_and_too_small():
  shape = pl.PAPER_MODELS["162M"]
  m = pl.match_dense(pl.param_counts(shape)["total"], shape, 128)
  assert m["exact"] and m["lower"] == m["upper"] == shape and m["weight"] == 0.0
  with pytest.raises(ValueError, match="below the smallest width"):
    pl.match_dense(1000, shape, 128)


def test_compare_with_dense_brackets_predicted_loss():
  p = pl.plan(pl.PAPER_MODELS["162M"], 1000, 262144, 0.6)
  out = pl.compare_with_dense(law(), p, 128)
  assert out["dense_lower_loss"] > out["sparse_loss"] > out["dense_upper_loss"]
  assert out["dense_match"]["upper"]["emb"] - out["dense_match"]["lower"]["emb"] == 384  # lcm(12, 128)
  fine = pl.compare_with_dense(law(), p, 12)  # width step 12: the interpolation is nearly exact
  assert fine["dense_match"]["upper"]["emb"] - fine["dense_match"]["lower"]["emb"] == 12
  assert fine["dense_loss"] == pytest.approx(fine["sparse_loss"], abs=2e-4)  # avg_param law: same N_avg and D
  frantar = law("frantar", {"a_S": 60.0, "b_S": 1.0, "c_S": 20.0, "b_N": 0.3, "a_D": 3e7, "b_D": 0.3, "c": 1.6})
  assert pl.predict_loss(frantar, p) != pytest.approx(pl.predict_loss(law(), p))


def test_find_sparse_equivalent():
  dense = pl.PAPER_MODELS["58M"]
  out = pl.find_sparse_equivalent(law(), dense, 2000, 65536, sparsities=(0.2, 0.4, 0.6, 0.8), divisor=64,
                                  compute_rtol=0.03)
  best = out["best"]
  assert best is not None and best["feasible"]
  assert abs(best["compute_ratio"] - 1) <= 0.03 and best["predicted_loss"] <= out["dense"]["predicted_loss"]
  assert best["final_params"] < out["dense"]["total_params"]
  feasible = [c for c in out["candidates"] if c["feasible"]]
  assert best["final_params"] == min(c["final_params"] for c in feasible)
  assert best["width"] > dense.emb and best["target_sparsity"] > 0
  # no feasible candidate when the compute tolerance is impossible
  assert pl.find_sparse_equivalent(law(), dense, 2000, 65536, widths=[1024], compute_rtol=1e-6)["best"] is None


def config(**kw):
  base = dict(base_emb_dim=512, base_num_query_heads=8, base_num_kv_heads=8, head_dim=64, base_mlp_dim=2048,
              base_num_decoder_layers=6, vocab_size=32000, logits_via_embedding=False, steps=2000,
              global_batch_size_to_train_on=64, max_target_length=512, target_sparsity=0.6,
              sparsity_schedule="geometric", prune_start_fraction=0.25, prune_end_fraction=0.75, pruning_interval=100)
  base.update(kw)
  return types.SimpleNamespace(**base)


def test_config_to_plan_inputs():
  inp = pl.config_to_plan_inputs(config())
  assert inp["shape"] == pl.PAPER_MODELS["58M"] and inp["tokens_per_step"] == 64 * 512 and inp["steps"] == 2000
  p = pl.plan(**inp)
  assert p["final_sparsity"] == pytest.approx(0.6, abs=1e-7) and p["prune_steps"][0] == 500
  bad = config()
  del bad.max_target_length, bad.head_dim
  with pytest.raises(ValueError, match="head_dim.*max_target_length"):
    pl.config_to_plan_inputs(bad)


def _hand_plan_58m(target, steps, tokens_per_step):
  """The 58M model's plan computed here by hand: Table 1's counts and the geometric schedule step by step."""
  prunable, non_prunable = 6 * (4 * 512 * 512 + 3 * 512 * 2048) + 512 * 32000, 32000 * 512 + 13 * 512
  start, end = int(0.25 * steps + 0.5), int(0.75 * steps + 0.5)
  events = list(range(start, end + 1, 100))
  kept, active = prunable, []
  for t in range(steps):
    if t in events:
      kept = int((1 - target) ** ((events.index(t) + 1) / len(events)) * prunable + 0.5)
    active.append(kept + non_prunable)
  tokens = steps * tokens_per_step
  return {"total_params": 57_940_480, "prunable_params": 41_549_824, "final_params": active[-1],
          "avg_active_params": sum(active) / steps,
          "training_flops": 6 * sum(a - non_prunable for a in active) * tokens_per_step,
          "dense_training_flops": 6 * prunable * tokens, "tokens": tokens, "prune_steps": events}


def _stand_in(monkeypatch, seen=None, **fixed):
  """``plan``'s config loader replaced by ``config(...)`` with the overrides applied (no MaxText)."""

  def load(argv):
    if seen is not None:
      seen.append(list(argv))
    kw = dict(a.split("=", 1) for a in argv[1:])
    return config(**{**fixed, **{k: type(getattr(config(), k))(v) for k, v in kw.items()}})

  monkeypatch.setattr("sparsity.cli.science.load_maxtext_config", load)


def test_plan_command_with_stand_in_loader(monkeypatch, capsys, tmp_path):
  seen = []
  _stand_in(monkeypatch, seen)
  (tmp_path / "law.json").write_text(json.dumps(law().to_json()))
  rc = cli.main(["plan", "cfg.yml", "target_sparsity=0.8", "--json", "steps=1000", "--law-file",
                 str(tmp_path / "law.json"), "--match-dense", "--divisor", "64"])
  assert rc == 0 and seen == [["cfg.yml", "target_sparsity=0.8", "steps=1000"]]
  out = json.loads(capsys.readouterr().out)
  want = _hand_plan_58m(0.8, 1000, 64 * 512)
  assert out["prune_steps"] == [250, 350, 450, 550, 650, 750] and out["final_params"] == 8_309_965 + 16_390_656
  for k, v in want.items():
    assert out[k] == pytest.approx(v, rel=1e-12), k
  e = CHIN
  hand_loss = e["E"] + e["A"] / want["avg_active_params"] ** e["alpha"] + e["B"] / want["tokens"] ** e["beta"]
  assert out["predicted_loss"] == pytest.approx(hand_loss, rel=1e-12)
  m = out["dense_match"]["dense_match"]
  assert m["lower"]["emb"] % 64 == 0 and m["upper"]["emb"] - m["lower"]["emb"] == 64
  assert m["lower_params"] < want["avg_active_params"] < m["upper_params"]
  assert cli.main(["plan", "cfg.yml"]) == 0
  text = capsys.readouterr().out
  assert "prunable 41,549,824" in text and "average active params" in text
  with pytest.raises(SystemExit) as exit_:
    cli.main(["fit", "--law", "avg_param", "--data", "x.csv", "--out", "y.json", "extra=1"])
  assert exit_.value.code == 2


def test_commands_registered_in_dict():
  assert {"fit", "predict", "plan", "sweep", "collect", "report", "inspect", "export", "generate"} <= set(cli.COMMANDS)
  assert cli.COMMANDS["plan"].overrides and not cli.COMMANDS["fit"].overrides


def test_plan_command_sparse_equivalent(monkeypatch, capsys, tmp_path):
  _stand_in(monkeypatch, target_sparsity=0.0)
  (tmp_path / "law.json").write_text(json.dumps(law().to_json()))
  rc = cli.main(["plan", "cfg.yml", "--json", "--law-file", str(tmp_path / "law.json"), "--sparse-equivalent",
                 "--divisor", "16"])
  assert rc == 0
  out = json.loads(capsys.readouterr().out)
  eq = out["sparse_equivalent"]
  dense = _hand_plan_58m(0.0, 2000, 64 * 512)
  e = CHIN
  dense_loss = e["E"] + e["A"] / dense["total_params"] ** e["alpha"] + e["B"] / dense["tokens"] ** e["beta"]
  assert eq["dense_predicted_loss"] == pytest.approx(dense_loss, rel=1e-12)
  best = eq["best"]
  assert best is not None, eq  # this law rewards parameters: a wider sparse model of the same compute wins
  assert best["width"] > 512 and best["target_sparsity"] > 0 and best["predicted_loss"] <= dense_loss
  assert abs(best["compute_ratio"] - 1) <= 0.02 and best["final_params"] < dense["total_params"]
  assert eq["candidates"] == 4 * len(range(512, 4 * 512 + 1, 16))  # 4 sparsities x widths 512..2048
  with pytest.raises(SystemExit) as exit_:  # needs a law: bad usage, exit code 2
    cli.main(["plan", "cfg.yml", "--sparse-equivalent"])
  assert exit_.value.code == 2 and "needs --law-file" in capsys.readouterr().err


def test_param_counts_prune_what_the_default_prunable_params_match():
  # the core's DEFAULT_PRUNABLE (LLaMA names) and MaxText runs' default (every family) agree on a LLaMA decoder
  shapes = layout.llama_param_shapes(64, 2, 4, 2, 16, 128, 100)
  core = {p for p in shapes if re.search(DEFAULT_PRUNABLE, p)}
  assert core == {p for p in shapes if re.search(families.default_prunable(), p)}
  counts = pl.param_counts(pl.ModelShape(64, 4, 2, 16, 128, 2, 100))
  assert counts["prunable"] == sum(math.prod(shapes[p]) for p in core)
