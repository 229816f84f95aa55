"""Sweeps: expansion of the sweep files, the local launcher, xpk commands (shell safety, xpk's own parser),
and a small real sweep on C4 that is collected, reported and resumed."""

import importlib.util
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from typing import Sequence

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import C4, ROOT, TINY, cli, run_cli
from references import curve_average
from sparsity import repo
from sparsity.experiments import collect, dense_sweep, report, sweep, xpk
from sparsity.science import planning
from sparsity.core import compute, schedules
from sparsity.maxtext import layout, yaml_chain

SWEEPS = os.path.join(ROOT, "configs", "sweeps")
# A value that would create files (and nothing worse) if any shell interpreted it.
WEIRD = "gs://my bucket/\"x\" 'y' $(touch PWNED) `touch PWNED2` ; touch PWNED3 & \\n * ~ {a,b} > PWNED4"


def _spec(tmp_path, **data):
  data.setdefault("base", os.path.join(ROOT, "configs", "sparse_base.yml"))
  data.setdefault("run_name", "r")
  path = tmp_path / "spec.yml"
  path.write_text(yaml.safe_dump(data, sort_keys=False))
  return sweep.load_spec(str(path))


# --- The paper's sweep files -------------------------------------------------------------------------------


def test_paper_schedule_grid_is_80_unique_runs_on_the_10_valid_splits():
  spec = sweep.load_spec(os.path.join(SWEEPS, "paper_schedule_grid.yml"))
  runs = sweep.expand(spec)
  assert len(runs) == 80
  assert len({r.name for r in runs}) == 80
  assert len({(r.base, tuple(sorted(r.overrides))) for r in runs}) == 80
  valid = {(d, p) for d in (0.0, 0.25, 0.5, 0.75) for p in (0.25, 0.5, 0.75, 1.0) if d + p <= 1}
  assert len(valid) == 10
  groups = {}
  for r in runs:
    v = r.values
    groups.setdefault((v["budget"], v["target_sparsity"]), set()).add((v["dense_fraction"], v["pruning_fraction"]))
    assert not any(o.startswith(("budget=", "dense_fraction=", "pruning_fraction=", "base=")) for o in r.overrides)
  assert set(groups) == {(b, s) for b in ("10x", "20x") for s in (0.2, 0.4, 0.6, 0.8)}
  assert all(g == valid for g in groups.values())
  steps = {os.path.basename(p): yaml_chain.load(p)["steps"] for p in {r.base for r in runs}}
  assert steps == {"llama2_162m_10x.yml": 15975, "llama2_162m_20x.yml": 31996}
  # The derived step fractions give the run the (dense, pruning) split of compute it is labelled with.
  for r in runs:
    v = r.values
    sched = schedules.make_schedule(steps[os.path.basename(r.base)], v["target_sparsity"], v["sparsity_schedule"],
                                    v["prune_start_fraction"], v["prune_end_fraction"], v["pruning_interval"])
    dense, pruning, _ = compute.measured_fractions(sched)
    assert dense == pytest.approx(v["dense_fraction"], abs=0.01), r.name
    assert pruning == pytest.approx(v["pruning_fraction"], abs=0.01), r.name
    assert f"prune_start_fraction={v['prune_start_fraction']!r}" in r.overrides


def test_lr_batch_grid_keeps_each_budget_and_batch():
  runs = sweep.expand(sweep.load_spec(os.path.join(SWEEPS, "lr_batch_grid.yml")))
  assert len(runs) == 36
  seen = set()
  for r in runs:
    v = r.values
    assert v["per_device_batch_size"] * 2048 * v["devices"] == v["batch_tokens"]
    assert 0 <= v["steps"] * v["batch_tokens"] - v["budget_tokens"] < v["batch_tokens"]
    assert yaml_chain.load(r.base)["max_target_length"] == 2048
    seen.add((v["learning_rate"], v["batch_tokens"]))
  assert seen == {(lr, b) for lr in (0.0004, 0.0016, 0.0064) for b in (131072, 524288, 2097152)}


def test_dense_matched_file_is_generated_and_brackets_every_sparse_run():
  path = os.path.join(SWEEPS, "dense_matched.yml")
  spec_dict = dense_sweep.dense_matched_spec()
  with open(path, encoding="utf-8") as f:
    assert f.read() == dense_sweep.render(spec_dict), "regenerate: python -m sparsity dense-sweep --out " + path
  runs = {r.name: r for r in sweep.expand(sweep.load_spec(path))}
  assert all("target_sparsity=0.0" in r.overrides for r in runs.values())
  matches = spec_dict["meta"]["matches"]
  assert len(matches) == 6 * 4
  for m in matches:
    lo, hi = runs[m["lower"]].values, runs[m["upper"]].values
    assert lo["total_params"] <= m["avg_active_params"] <= hi["total_params"]
    assert 0.0 <= m["weight"] < 1.0
    interpolated = (1 - m["weight"]) * lo["total_params"] + m["weight"] * hi["total_params"]
    assert interpolated == pytest.approx(m["avg_active_params"], rel=1e-6)
    # the widths build the shapes the planner counted
    cfg = yaml_chain.load(runs[m["lower"]].base)
    shape = planning.ModelShape(lo["base_emb_dim"], cfg["base_num_query_heads"], cfg["base_num_kv_heads"],
                                lo["head_dim"], lo["base_mlp_dim"], cfg["base_num_decoder_layers"])
    assert planning.param_counts(shape)["total"] == lo["total_params"]


# --- Spec rules ---------------------------------------------------------------------------------------------


def test_grid_order_linked_and_zipped_axes_and_templates(tmp_path):
  spec = _spec(tmp_path, fixed={"steps": 8}, labels=["tag"],
               axes={"target_sparsity": [0.0, 0.5],
                     "pair": [{"tag": "a", "learning_rate": 0.001}, {"tag": "b", "learning_rate": 0.002}],
                     "zip": {"warmup_steps_fraction": [0.01, 0.02], "adam_b1": [0.8, 0.9]}},
               run_name="s{target_sparsity:.2f}-{tag}-w{warmup_steps_fraction:g}")
  runs = sweep.expand(spec)
  assert [r.name for r in runs] == ["s0.00-a-w0.01", "s0.00-a-w0.02", "s0.00-b-w0.01", "s0.00-b-w0.02",
                                    "s0.50-a-w0.01", "s0.50-a-w0.02", "s0.50-b-w0.01", "s0.50-b-w0.02"]
  assert runs[3].overrides == ("steps=8", "target_sparsity=0.0", "learning_rate=0.002",
                               "warmup_steps_fraction=0.02", "adam_b1=0.9")
  assert runs[0].argv("/o")[-2:] == ["run_name=s0.00-a-w0.01", "base_output_directory=/o"]


def test_constraints_filter_and_may_read_derived_keys(tmp_path):
  spec = _spec(tmp_path, labels=["d", "p"], axes={"d": [0.0, 0.25, 0.5, 0.75], "p": [0.25, 0.5, 0.75, 1.0]},
               derived={"prune_start_fraction": "d", "prune_end_fraction": "d + p"},
               constraints=["d + p <= 1", "prune_end_fraction - prune_start_fraction >= 0.5"],
               run_name="d{d}-p{p}")
  runs = sweep.expand(spec)
  pairs = {(r.values["d"], r.values["p"]) for r in runs}
  assert pairs == {(d, p) for d in (0.0, 0.25, 0.5, 0.75) for p in (0.5, 0.75, 1.0) if d + p <= 1}
  assert all("prune_end_fraction=" in " ".join(r.overrides) for r in runs)


@pytest.mark.parametrize("data,message", [
    ({"axes": {"steps": [1, 2]}, "run_name": "same"}, "not unique"),
    ({"axes": {"steps": [1, 1]}, "run_name": "r{steps}-{target_sparsity}", "fixed": {"target_sparsity": 0}},
     "not unique"),
    ({"labels": ["n"], "axes": {"n": [1, 2]}, "run_name": "r{n}"}, "same config and overrides"),
    ({"axes": {"steps": [1]}, "run_name": "r{nope}"}, "unknown field 'nope'"),
    ({"axes": {"steps": [1]}, "run_name": "../r{steps}"}, "must match"),
    ({"axes": {"steps": [1]}, "run_name": "r {steps}"}, "must match"),
    ({"fixed": {"steps": 1}, "axes": {"steps": [1]}}, "set by both"),
    ({"axes": {"z": {"steps": [1, 2], "lr": [1]}}}, "differ in length"),
    ({"axes": {"l": [{"steps": 1}, {"lr": 2}]}}, "same keys"),
    ({"axes": {"steps": []}}, "empty"),
    ({"constraints": ["__import__('os')"], "axes": {"steps": [1]}, "run_name": "r{steps}"}, "only calls"),
    ({"fixed": {"run_name": "x"}}, "set by the sweep"),
    ({"colours": 1}, "unknown keys"),
    ({"base": "no/such.yml"}, "not found"),
])
def test_bad_specs_are_rejected(tmp_path, data, message):
  with pytest.raises(ValueError, match=message):
    sweep.expand(_spec(tmp_path, **data))


def test_extra_overrides_replace_fixed_values_but_not_axes(tmp_path):
  spec = _spec(tmp_path, fixed={"steps": 8, "dataset_type": "synthetic"}, axes={"target_sparsity": [0.0, 0.5]},
               run_name="s{target_sparsity}")
  runs = sweep.expand(spec, ["dataset_type=tfds", "dataset_path=/d"])
  assert runs[0].overrides == ("steps=8", "dataset_type=tfds", "dataset_path=/d", "target_sparsity=0.0")
  with pytest.raises(ValueError, match="varies"):
    sweep.expand(spec, ["target_sparsity=0.3"])
  with pytest.raises(ValueError, match="key=value"):
    sweep.expand(spec, ["oops"])


def test_format_value():
  assert [sweep.format_value(v) for v in (True, False, 0.1, 1e-05, 3, "a b", ["silu", "linear"])] == [
      "true", "false", "0.1", "1e-05", "3", "a b", '["silu", "linear"]']
  with pytest.raises(ValueError):
    sweep.format_value(None)


# --- Local launcher (with a stand-in for MaxText/train.py) --------------------------------------------------

FAKE_TRAIN = f"SUMMARY_FILE = {layout.SUMMARY_FILE!r}" + r"""
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[2:])
out = os.path.join(args["base_output_directory"], args["run_name"])
print("fake train", args["run_name"])
if args.get("fail") == "1":
  print("Traceback: something broke in " + args["run_name"], file=sys.stderr)
  sys.exit(3)
if args.get("nosummary") != "1":
  os.makedirs(out, exist_ok=True)
  json.dump({"run_name": args["run_name"]}, open(os.path.join(out, SUMMARY_FILE), "w"))
"""


def test_local_launcher_records_failures_goes_on_and_resumes(tmp_path):
  script = tmp_path / "fake_train.py"
  script.write_text(FAKE_TRAIN)
  spec = _spec(tmp_path, axes={"k": [0, 1, 2, 3]},
               derived={"fail": "1 if k == 1 else 0", "nosummary": "1 if k == 2 else 0"}, run_name="run{k}")
  runs = sweep.expand(spec)
  out = str(tmp_path / "out")
  first = sweep.run_local(runs, out, train_script=str(script), progress=False)
  assert first.ok == ["run0", "run3"] and first.skipped == []
  assert [(f["run_name"], f["returncode"]) for f in first.failed] == [("run1", 3), ("run2", 0)]
  assert "something broke in run1" in first.failed[0]["tail"]
  assert "without writing" in first.failed[1]["reason"]
  assert first.exit_code == 1
  with open(os.path.join(out, sweep.FAILURES_FILE)) as f:
    assert [x["run_name"] for x in json.load(f)] == ["run1", "run2"]
  assert [e["status"] for e in sweep.read_log(out)] == ["start", "ok", "failed", "failed", "ok"]
  # Resume after deleting one finished run: only it and the failed ones run again.
  os.remove(sweep.summary_path(out, "run3"))
  second = sweep.run_local(runs, out, train_script=str(script), progress=False)
  assert second.skipped == ["run0"] and second.ok == ["run3"]
  assert [f["run_name"] for f in second.failed] == ["run1", "run2"]
  assert [(e["status"], e.get("run_name")) for e in sweep.read_log(out, last_invocation=True)] == [
      ("skipped", "run0"), ("failed", "run1"), ("failed", "run2"), ("ok", "run3")]


# A stand-in whose first attempt at a run ends as its ``first`` value says, and whose second attempt completes.
RESUMING_TRAIN = f"SUMMARY_FILE = {layout.SUMMARY_FILE!r}" + r"""
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[2:])
out = os.path.join(args["base_output_directory"], args["run_name"])
os.makedirs(out, exist_ok=True)
attempts = os.path.join(out, "attempts")
n = int(open(attempts).read()) + 1 if os.path.exists(attempts) else 1
open(attempts, "w").write(str(n))
first = args["first"] if n == 1 else "completed"
summary = {"run_name": args["run_name"], "end_status": first, "error": "OSError: bad shard" if first == "failed" else None}
if first == "old-data-ran-out":  # a summary written before end_status existed
  summary = {"run_name": args["run_name"], "stopped_early": True, "data_ran_out": True,
             "stop_reason": "You may have run out of training data. Received <class 'StopIteration'> exception: ()"}
json.dump(summary, open(os.path.join(out, SUMMARY_FILE), "w"))
sys.exit(1 if first == "failed" else 0)
"""


def test_local_launcher_resumes_stopped_runs_and_reruns_the_others_only_when_asked(tmp_path):
  script = tmp_path / "resuming_train.py"
  script.write_text(RESUMING_TRAIN)
  ends = ["completed", "data_exhausted", "target_eval_loss", "preempted", "failed", "old-data-ran-out", "interrupted",
          "diverged"]
  spec = _spec(tmp_path, axes={"first": ends}, run_name="{first}")
  runs = sweep.expand(spec)
  out = str(tmp_path / "out")
  first = sweep.run_local(runs, out, train_script=str(script), progress=False)
  assert first.ok == ["completed"] and first.exit_code == 1
  reasons = {f["run_name"]: f["reason"] for f in first.failed}
  assert reasons == {"data_exhausted": "ended data_exhausted", "target_eval_loss": "ended target_eval_loss",
                     "preempted": "ended preempted", "failed": "exit code 1, ended failed: OSError: bad shard",
                     "old-data-ran-out": "ended data_exhausted: You may have run out of training data. Received "
                                         "<class 'StopIteration'> exception: ()",
                     "interrupted": "ended interrupted", "diverged": "ended diverged"}
  table = {r["run_name"]: r["end_status"] for r in first.table}
  assert table == {n: "data_exhausted" if n == "old-data-ran-out" else n for n in ends}
  with open(os.path.join(out, sweep.STATUS_FILE)) as f:
    assert json.load(f) == first.table
  text = sweep.format_status_table(first.table).splitlines()
  assert len(text) == 1 + len(ends) and text[1].split()[:2] == ["completed", "completed"]
  # The same sweep again: the completed run is skipped, the stopped ones resume (and complete this time), the others
  # are left as they ended.
  second = sweep.run_local(runs, out, train_script=str(script), progress=False)
  assert second.skipped == ["completed"] and second.ok == ["preempted", "interrupted"] and not second.failed
  left = ["data_exhausted", "target_eval_loss", "failed", "old-data-ran-out", "diverged"]
  assert [x["run_name"] for x in second.left] == left and second.exit_code == 1
  # Asked to: the diverged one runs again, then every other one.
  third = sweep.run_local(runs, out, train_script=str(script), progress=False, rerun=("diverged",))
  assert third.ok == ["diverged"] and [x["run_name"] for x in third.left] == left[:-1]
  fourth = sweep.run_local(runs, out, train_script=str(script), progress=False, rerun=("all",))
  assert fourth.ok == left[:-1] and not fourth.left and fourth.exit_code == 0
  for name in ends:
    assert (tmp_path / "out" / name / "attempts").read_text() == ("1" if name == "completed" else "2"), name
  assert [sweep.end_status(out, n)[0] for n in ends] == ["completed"] * len(ends)


def test_a_sweep_that_selects_no_run_is_a_clear_usage_error(tmp_path):
  spec = tmp_path / "spec.yml"
  spec.write_text(yaml.safe_dump({"name": "few", "base": os.path.join(ROOT, "configs", "sparse_base.yml"),
                                  "axes": {"target_sparsity": [0.5, 0.8]}, "run_name": "s{target_sparsity}"}))
  code, _, err = cli(["sweep", spec, "--dry-run", "--limit", "0"])
  assert code == 2 and "--limit must be >= 1 (--limit 0 selects no run)" in err and "Traceback" not in err
  empty = tmp_path / "empty.yml"
  empty.write_text(yaml.safe_dump({"name": "none", "base": os.path.join(ROOT, "configs", "sparse_base.yml"),
                                   "axes": {"target_sparsity": [0.5, 0.8]}, "constraints": ["target_sparsity > 0.9"],
                                   "run_name": "s{target_sparsity}"}))
  for launcher in ("local", "xpk"):
    code, _, err = cli(["sweep", empty, "--dry-run", "--launcher", launcher])
    assert code == 2 and "sweep none" in err and "its constraints keep none of its 2 combinations" in err, err[-2000:]
    assert "Traceback" not in err


def test_manifest_merges_runs_of_earlier_invocations(tmp_path):
  spec = _spec(tmp_path, labels=["tag"], axes={"k": [0, 1]}, derived={"tag": "'t' + str(k)"}, run_name="run{k}")
  runs = sweep.expand(spec)
  sweep.write_manifest(str(tmp_path), sweep.manifest(spec, runs[:1]))
  path = sweep.write_manifest(str(tmp_path), sweep.manifest(spec, runs[1:]))
  with open(path) as f:
    m = json.load(f)
  assert sorted(m["runs"]) == ["run0", "run1"] and m["columns"] == ["k", "tag"]
  assert m["runs"]["run1"]["values"] == {"k": 1, "tag": "t1"} and m["runs"]["run1"]["base"] == runs[1].base
  assert m["runs"]["run1"]["overrides"] == ["k=1"]


# --- xpk ----------------------------------------------------------------------------------------------------


def _opts(**kw):
  base = dict(cluster="my-cluster", tpu_type="v5p-128", docker_image="gcr.io/proj/sparse:latest",
              output_bucket="gs://bucket/sweeps", zone="us-east5-a", project="proj")
  base.update(kw)
  return xpk.XpkOptions(**base)


def _weird_run(tmp_path):
  spec = _spec(tmp_path, base=os.path.join(ROOT, "configs", "paper", "llama2_162m_10x.yml"),
               fixed={"dataset_path": WEIRD}, axes={"target_sparsity": [0.5]}, run_name="Weird_Run.s{target_sparsity}")
  return sweep.expand(spec)[0]


@pytest.mark.parametrize("name", ["Weird_Run.s0.5", "0-starts-with-digit", "a" * 300, "___", "UPPER+case=1",
                                  "sched-162m-20x-s0.8-d0.75-p0.25"])
@pytest.mark.parametrize("limit", [xpk.MAX_NAME_LENGTH, xpk.SUPER_SLICING_MAX_NAME_LENGTH])
def test_workload_names_are_valid_and_deterministic(name, limit):
  w = xpk.workload_name(name, "sweep", limit)
  assert xpk.valid_name(w, limit) and len(w) <= limit
  assert w == xpk.workload_name(name, "sweep", limit)
  assert w != xpk.workload_name(name, "other-sweep", limit)


def test_workload_names_of_the_paper_grid_are_unique():
  runs = sweep.expand(sweep.load_spec(os.path.join(SWEEPS, "paper_schedule_grid.yml")))
  for limit in (40, 28):
    assert len({xpk.workload_name(r.name, "paper_schedule_grid", limit) for r in runs}) == 80


def test_container_command_reaches_train_verbatim_through_bash(tmp_path):
  run = _weird_run(tmp_path)
  dump = tmp_path / "dump.py"
  dump.write_text("import json, sys\njson.dump(sys.argv[1:], open('argv.json', 'w'))\n")
  out = "gs://bucket/sweeps/s w"
  cmd = xpk.container_command(run, out, setup="true", python=sys.executable, train=str(dump))
  subprocess.run(["bash", "-c", cmd], cwd=tmp_path, check=True)
  with open(tmp_path / "argv.json") as f:
    got = json.load(f)
  assert got == run.argv(out, base="configs/paper/llama2_162m_10x.yml")
  assert f"dataset_path={WEIRD}" in got
  assert not [p for p in os.listdir(tmp_path) if p.startswith("PWNED")]
  real = xpk.container_command(run, out)
  assert real.startswith("DEVICE=tpu bash setup.sh && .venv/bin/python MaxText/train.py configs/paper/")


def test_printed_xpk_command_is_shell_safe(tmp_path):
  run = _weird_run(tmp_path)
  fake = tmp_path / "xpk"
  fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  cmd = xpk.commands([run], "my sweep", _opts(xpk_bin=str(fake)))[0]
  line = shlex.join(cmd)
  out = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, check=True)
  assert json.loads(out.stdout) == cmd[1:]
  assert not [p for p in os.listdir(tmp_path) if p.startswith("PWNED")]


def test_xpk_options_are_validated(tmp_path):
  run = _weird_run(tmp_path)
  for bad in (dict(cluster="My_Cluster"), dict(output_bucket="/local/dir"), dict(tpu_type=""), dict(num_slices=0)):
    with pytest.raises(ValueError):
      xpk.commands([run], "s", _opts(**bad))
  outside = sweep.Run("r", "/tmp/elsewhere.yml", (), {})
  with pytest.raises(ValueError, match="outside the repository"):
    xpk.container_command(outside, "gs://b/s")
  multiline = sweep.Run("r", run.base, ("dataset_path=a\nb",), {})
  with pytest.raises(ValueError, match="newlines"):
    xpk.container_command(multiline, "gs://b/s")


_OPTIONS_SCRIPT = r"""
import argparse, json, sys
from xpk.parser.core import set_parser
parser = argparse.ArgumentParser(prog="xpk")
set_parser(parser)
for word in json.load(sys.stdin):
  sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
  parser = sub.choices[word]
print(json.dumps(sorted(parser._option_string_actions)))
"""


def xpk_option_strings(subcommand: Sequence[str], python: str) -> list[str]:
  """The option strings (e.g. ``--num-slices``) of an xpk subcommand such as ``["workload", "create"]``, read
  from xpk's parser in ``python`` (argparse accepts abbreviations, so parsing alone does not prove spelling)."""
  proc = subprocess.run([python, "-c", _OPTIONS_SCRIPT], input=json.dumps(list(subcommand)), capture_output=True,
                        text=True, check=False, timeout=300)
  if proc.returncode != 0:
    raise RuntimeError(f"xpk's parser could not be loaded with {python}:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def find_xpk_python() -> str | None:
  """An interpreter with xpk installed: ``$XPK_PYTHON``, ``<repo>/.venv-xpk/bin/python``, the interpreter
  of an ``xpk`` executable on PATH, or this one if it can import xpk; ``None`` if there is none."""
  candidates = [os.environ.get("XPK_PYTHON", ""), os.path.join(ROOT, ".venv-xpk", "bin", "python")]
  exe = shutil.which("xpk")
  if exe:
    with open(exe, "rb") as f:
      first = f.readline().decode(errors="replace").strip()
    if first.startswith("#!"):
      candidates.append(first[2:].strip().split()[0])
  for c in candidates:
    if c and os.path.isfile(c) and os.access(c, os.X_OK):
      return c
  return sys.executable if importlib.util.find_spec("xpk") else None


@pytest.fixture(scope="module")
def xpk_python():
  # The pinned xpk in its own venv (tools/setup_xpk_env.sh, idempotent): its pins conflict with MaxText's.
  out = subprocess.run(["bash", os.path.join(ROOT, "tools", "setup_xpk_env.sh")], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200, check=False)
  assert out.returncode == 0, f"tools/setup_xpk_env.sh failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
  python = find_xpk_python()
  assert python is not None
  return python


@pytest.mark.slow  # installs xpk with pip
def test_xpk_parser_accepts_the_generated_commands(tmp_path, xpk_python):
  runs = sweep.expand(sweep.load_spec(os.path.join(SWEEPS, "paper_schedule_grid.yml"))) + [_weird_run(tmp_path)]
  opts = _opts(extra_args=("--priority=high",), num_slices=2)
  cmds = [c[1:] for c in xpk.commands(runs, "paper_schedule_grid", opts)]
  bad = [["workload", "create", "--cluster=c", "--workload=Bad_Name", "--tpu-type=v5p-128", "--command=x"],
         ["workload", "create", "--cluster=c", "--workload=ok", "--tpu-type=v99-8", "--command=x"]]
  results = xpk.parse_with_xpk(cmds + bad, xpk_python)
  assert [r["ok"] for r in results] == [True] * len(cmds) + [False, False]  # xpk's parser can say no
  # Every flag is spelled as xpk spells it (argparse would also accept unambiguous abbreviations).
  options = set(xpk_option_strings(["workload", "create"], xpk_python))
  assert {"--cluster", "--workload", "--tpu-type", "--num-slices", "--docker-image", "--command"} <= options
  assert {a.split("=", 1)[0] for c in cmds for a in c[2:]} <= options
  for run, res in zip(runs, results):
    a = res["args"]
    assert (a["xpk_subcommands"], a["xpk_workload_subcommands"]) == ("workload", "create")
    assert a["workload"] == xpk.workload_name(run.name, "paper_schedule_grid")
    assert a["command"] == xpk.container_command(run, "gs://bucket/sweeps/paper_schedule_grid")
    assert (a["cluster"], a["tpu_type"], a["num_slices"], a["docker_image"]) == (
        "my-cluster", "v5p-128", 2, "gcr.io/proj/sparse:latest")
    assert (a["project"], a["zone"], a["priority"]) == ("proj", "us-east5-a", "high")


def test_cli_dry_runs_print_every_run(tmp_path):
  spec = os.path.join(SWEEPS, "paper_schedule_grid.yml")
  code, out, err = cli(["sweep", spec, "--dry-run", "--output-dir", tmp_path, "dataset_path=gs://b/c4"])
  assert code == 0, err
  lines = [l for l in out.splitlines() if not l.startswith("#")]
  assert len(lines) == 80
  words = shlex.split(lines[0])
  assert words[1] == repo.TRAIN_SCRIPT and "dataset_path=gs://b/c4" in words
  assert f"base_output_directory={tmp_path}" in words
  code, out, _ = cli(["sweep", spec, "--dry-run", "--out", tmp_path, "--json", "--limit", "2"])  # --out: same
  assert code == 0 and [r["command"][1] for r in json.loads(out)] == [repo.TRAIN_SCRIPT] * 2
  code, out, err = cli(["sweep", spec, "--dry-run", "--launcher", "xpk", "--limit", "3", "--cluster", "c1",
                            "--tpu-type", "v5p-128", "--docker-image", "img", "--output-bucket", "gs://b/o",
                            "--xpk-bin", "xpk"])
  assert code == 0, err
  cmds = [shlex.split(l) for l in out.splitlines() if not l.startswith("#")]
  assert len(cmds) == 3 and all(c[:3] == ["xpk", "workload", "create"] for c in cmds)
  assert not os.listdir(tmp_path)  # a dry run writes nothing
  code, _, err = cli(["sweep", spec, "--dry-run", "--launcher", "xpk"])
  assert code == 2 and "--cluster" in err  # missing options: bad usage


def test_cli_runs_several_specs_one_after_another(tmp_path):
  """The study's one command: several SPEC files into one --out, overrides for all, --select and --limit across."""
  study = os.path.join(repo.CONFIGS, "study")
  specs = [os.path.join(study, f) for f in ("pilot.yml", "fig4.yml")]
  code, out, err = cli(["sweep", *specs, "step_scale=0.5", "--dry-run", "--out", tmp_path, "--json"])
  assert code == 0, err
  names = [r["run_name"] for r in json.loads(out)]
  assert len(names) == 3 + 13 and names[0].startswith("pilot-") and names[-1].startswith("fig4-")
  commands = {r["run_name"]: r["command"] for r in json.loads(out)}
  assert all("steps=600" in c for n, c in commands.items() if n.startswith("pilot-"))  # step_scale reaches both specs
  assert "steps=300" in commands["fig4-b1-d0.25-p0.5-seed0"] and "steps=151" in commands["fig4-b1-d0.75-p0.25-seed0"]
  code, out, err = cli(["sweep", *specs, "--dry-run", "--out", tmp_path, "--json", "--select", "seed1|d0.0-",
                            "--limit", "3"])
  assert code == 0, err
  assert [r["run_name"] for r in json.loads(out)] == ["pilot-sparse-w64-s0.8-seed1", "fig4-b1-d0.0-p0.25-seed0",
                                                      "fig4-b1-d0.0-p0.25-seed1"]
  code, _, err = cli(["sweep", *specs, "--dry-run", "--launcher", "xpk", "--cluster", "c"])
  assert code == 2 and "one SPEC" in err
  code, _, err = cli(["sweep", *specs, "--dry-run", "--select", "nothing-like-this"])
  assert code == 2 and "pilot, fig4" in err


# --- A real sweep: 2 x 2 tiny runs on the C4 slice ----------------------------------------------------------

SCHEDULES = ("geometric", "cubic")


def _tiny_spec(tmp_path, sparsities):
  data = {
      "name": "tiny_c4",
      "base": os.path.join(ROOT, "configs", "sparse_base.yml"),
      "fixed": {**{k: int(v) for k, v in (t.split("=") for t in TINY)}, "dataset_type": "tfds", "dataset_path": C4,
                "steps": 8, "pruning_interval": 2, "log_period": 4},
      "axes": {"target_sparsity": list(sparsities), "sparsity_schedule": list(SCHEDULES)},
      "constraints": ["target_sparsity < 1 or sparsity_schedule == 'geometric'"],
      "run_name": "tiny-s{target_sparsity}-{sparsity_schedule}",
  }
  path = tmp_path / f"tiny_{len(sparsities)}.yml"
  path.write_text(yaml.safe_dump(data, sort_keys=False))
  return str(path)


def _cli(*args):
  code, out, err = run_cli(args, timeout=1200)
  return type("R", (), {"returncode": code, "stdout": out, "stderr": err})


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
  if not os.path.isdir(C4):
    pytest.fail(f"the C4 slice is missing at {C4}")
  tmp = tmp_path_factory.mktemp("sweep")
  out = tmp / "out"
  spec = _tiny_spec(tmp, [0.0, 0.5])
  proc = _cli("sweep", spec, "--output-dir", str(out))
  assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
  return tmp, out, spec


NAMES = [f"tiny-s{s}-{k}" for s in (0.0, 0.5) for k in SCHEDULES]


@pytest.mark.slow
def test_real_sweep_runs_collects_and_reports(tiny_sweep):
  tmp, out, _ = tiny_sweep
  events = sweep.read_log(str(out), last_invocation=True)
  assert [(e["status"], e["run_name"]) for e in events] == [("ok", n) for n in NAMES]
  summaries = {}
  for n in NAMES:
    with open(sweep.summary_path(str(out), n)) as f:
      summaries[n] = json.load(f)
  assert summaries["tiny-s0.5-cubic"]["sparsity_schedule"] == "cubic"
  assert summaries["tiny-s0.5-geometric"]["prune_steps"] == [1, 3, 5]  # the compute split of sparse_base.yml
  for s in summaries.values():  # the library's default schedule of the same keys is what MaxText/train.py ran
    lib = schedules.make_schedule(s["steps"], s["target_sparsity"], s["sparsity_schedule"],
                                  interval=s["pruning_interval"])
    assert list(lib.prune_steps) == s["prune_steps"]
  assert summaries["tiny-s0.5-geometric"]["schedule_split"] == "compute"
  assert summaries["tiny-s0.0-geometric"]["prune_steps"] == []

  csv = tmp / "results.csv"
  proc = _cli("collect", str(out), "--out", str(csv))
  assert proc.returncode == 0, proc.stderr[-3000:]
  df = pd.read_csv(csv)
  assert list(df["run_name"]) == sorted(NAMES)
  for _, row in df.iterrows():
    s = summaries[row["run_name"]]
    assert row["loss"] == pytest.approx(s["final_train_loss"]) and row["final_train_loss"] == pytest.approx(
        s["final_train_loss"])
    assert (row["tokens"], row["params"], row["nonzero_params"]) == (s["tokens"], s["total_params"],
                                                                      s["final_active_params"])
    assert row["avg_params"] == pytest.approx(s["avg_active_params"])
    assert row["sparsity"] == pytest.approx(s["final_sparsity"]) and row["target_sparsity"] == s["target_sparsity"]
    assert row["sparsity_schedule"] == s["sparsity_schedule"]
    # schedule keys joined from the manifest / the run's config: what the run actually used
    want = compute.derived_step_fractions(8, s["target_sparsity"], s["sparsity_schedule"], 2)
    assert (row["prune_start_fraction"], row["prune_end_fraction"], row["pruning_interval"]) == (*want, 2)
    # the rebuilt curve has the summary's N_avg
    assert curve_average(row) == pytest.approx(s["avg_active_params"], rel=1e-12)

  rep_dir = tmp / "report"
  proc = _cli("report", str(csv), "--out", str(rep_dir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "predicted_vs_actual: skipped" in proc.stdout  # 4 runs are too few to fit the 5-parameter law
  for key in ("active_params", "loss_vs_avg_params", "schedule_sweep"):
    png = rep_dir / report.FIGURES[key]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(str(png))
    assert img.shape[0] > 100 and float(np.std(img[..., :3])) > 0.01  # not blank
  rep = report.write_report(df, str(tmp / "report2"))
  assert sorted(rep.shown["active_params"]) == sorted(NAMES)
  assert sorted(rep.shown["schedule_sweep"]) == ["tiny-s0.5-cubic", "tiny-s0.5-geometric"]
  table = (rep_dir / report.TABLE_FILE).read_text()
  rows = [l for l in table.splitlines() if l.startswith("| tiny-")]
  assert len(rows) == 4
  header = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
  for line in rows:
    cells = dict(zip(header, [c.strip() for c in line.strip("|").split("|")]))
    s = summaries[cells["run"]]
    assert int(cells["N_avg"].replace(",", "")) == round(s["avg_active_params"])
    assert int(cells["final params"].replace(",", "")) == s["final_active_params"]
    assert int(cells["tokens"].replace(",", "")) == s["tokens"]
    assert float(cells["final train loss"]) == pytest.approx(s["final_train_loss"], abs=5e-5)
    assert float(cells["target sparsity"]) == s["target_sparsity"]


@pytest.mark.slow
def test_real_sweep_resumes_only_missing_runs_and_records_a_failure(tiny_sweep):
  tmp, out, _ = tiny_sweep
  os.remove(sweep.summary_path(str(out), "tiny-s0.5-cubic"))
  # The same grid with a first run that fails (target_sparsity 1.5 is refused by the config validation).
  spec = _tiny_spec(tmp, [1.5, 0.0, 0.5])
  proc = _cli("sweep", spec, "--output-dir", str(out))
  assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
  events = sweep.read_log(str(out), last_invocation=True)
  assert [(e["status"], e["run_name"]) for e in events] == [
      ("failed", "tiny-s1.5-geometric"), ("skipped", "tiny-s0.0-geometric"), ("skipped", "tiny-s0.0-cubic"),
      ("skipped", "tiny-s0.5-geometric"), ("ok", "tiny-s0.5-cubic")]
  with open(out / sweep.FAILURES_FILE) as f:
    failures = json.load(f)
  assert [(f["run_name"], f["returncode"] != 0) for f in failures] == [("tiny-s1.5-geometric", True)]
  # the run's own error, not the log's first line (the command, which names target_sparsity too)
  assert "target_sparsity\n  Input should be less than 1" in failures[0]["tail"]
  assert os.path.isfile(sweep.summary_path(str(out), "tiny-s0.5-cubic"))
  df = collect.collect(str(out))
  assert list(df["run_name"]) == sorted(NAMES)
