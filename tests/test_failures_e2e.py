"""Every way a run ends, with the fault injected, end to end through MaxText/train.py and ``python -m sparsity sweep``.

One sweep (``configs/sweeps/faults.yml``, tiny model, synthetic data) serves most tests: before it starts, its
``corrupt`` run is preempted (SIGTERM) after a checkpoint and 64 bytes of that checkpoint's largest data file are
flipped; while it runs, its ``interrupt`` run gets SIGINT (Ctrl-C) after its first checkpoint; ``diverge`` and
``diverge_own`` train at learning rate 1e6 (with and without MaxText's ``abort_on_nan_loss``); ``bad_data`` names a
dataset directory that does not exist. The sweep is then run again. A full disk has a test of its own (a small
tmpfs, mounted by the test).
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, TINY, cpu_env, run_configs, run_train, terminate_at_checkpoint
from sparsity.experiments import sweep
from sparsity.maxtext import checkpoint, layout, status

pytestmark = pytest.mark.slow

SPEC = os.path.join(ROOT, "configs", "sweeps", "faults.yml")
FAULTS = ("interrupt", "diverge", "diverge_own", "corrupt", "bad_data")
FIRST_CHECKPOINT = 8  # checkpoint_period in faults.yml


def _command(out, name):
  runs = sweep.expand(sweep.load_spec(SPEC))
  return dict(zip([r.name for r in runs], sweep.local_commands(runs, out)))[name]


def _children(pid):
  """The process ids whose parent is ``pid`` (from /proc)."""
  found = []
  for stat in glob.glob("/proc/[0-9]*/stat"):
    try:
      with open(stat, encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == pid:
      found.append(int(stat.split("/")[2]))
  return found


def _cmdline(pid):
  try:
    with open(f"/proc/{pid}/cmdline", encoding="utf-8") as f:
      return f.read().split("\0")
  except OSError:
    return []


def _interrupt_run_of_sweep(proc, out, name, step, timeout=600):
  """Waits for the sweep's ``name`` run to have its ``step`` checkpoint, then sends SIGINT to that run's process
  only (the sweep goes on); returns the pid."""
  marker = layout.items_dir(layout.checkpoints_dir(os.path.join(out, name)), step)
  deadline = time.time() + timeout
  while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert os.path.isdir(marker), f"{name} never reached its step-{step} checkpoint"
  pids = [p for p in _children(proc.pid) if f"run_name={name}" in _cmdline(p)]
  assert len(pids) == 1, pids
  os.kill(pids[0], signal.SIGINT)
  return pids[0]


def _flip_bytes(items_dir, n=64):
  """Flips ``n`` bytes in the middle of the largest OCDBT data file of a checkpoint; returns its path."""
  files = glob.glob(os.path.join(items_dir, "**", "d", "*"), recursive=True)
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(n)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in data))
  return path


def _sweep(out, timeout=1200):
  return subprocess.run([sys.executable, "-m", "sparsity", "sweep", SPEC, "--out", out], cwd=ROOT, env=cpu_env(),
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
  """The sweep's output directory, the first sweep's status table, output and summaries, the rerun's, and what the
  corrupt run left before its checkpoint was damaged (a copy: ``plan_case``)."""
  tmp = tmp_path_factory.mktemp("faults")
  out = str(tmp / "sweep")
  # corrupt: preempted after a checkpoint, then its latest checkpoint damaged.
  proc = subprocess.Popen(_command(out, "corrupt"), cwd=ROOT, env=cpu_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  assert terminate_at_checkpoint(proc, os.path.join(out, "corrupt"), FIRST_CHECKPOINT) == status.PREEMPTED_EXIT_CODE
  shutil.copytree(os.path.join(out, "corrupt"), tmp / "plan_case" / "corrupt")
  saved = checkpoint.steps(layout.checkpoints_dir(os.path.join(out, "corrupt")))[-1]
  flipped = _flip_bytes(layout.items_dir(layout.checkpoints_dir(os.path.join(out, "corrupt")), saved))
  # The sweep, with its interrupt run stopped by SIGINT.
  start = time.monotonic()
  with open(tmp / "sweep1.out", "w", encoding="utf-8") as log:
    proc = subprocess.Popen([sys.executable, "-m", "sparsity", "sweep", SPEC, "--out", out], cwd=ROOT, env=cpu_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _interrupt_run_of_sweep(proc, out, "interrupt", FIRST_CHECKPOINT)
    code = proc.wait(timeout=1200)
  first = {"code": code, "seconds": time.monotonic() - start, "output": (tmp / "sweep1.out").read_text(),
           "table": {r["run_name"]: r for r in json.load(open(os.path.join(out, sweep.STATUS_FILE)))},
           "summaries": {n: _summary(out, n) for n in FAULTS},
           "mtimes": {n: os.path.getmtime(sweep.summary_path(out, n)) for n in FAULTS},
           "interrupt_steps": checkpoint.steps(layout.checkpoints_dir(os.path.join(out, "interrupt"))),
           "interrupt_dir": sorted(os.listdir(layout.checkpoints_dir(os.path.join(out, "interrupt"))))}
  second = _sweep(out)
  return {"out": out, "tmp": tmp, "first": first, "second": second, "flipped": flipped, "corrupt_saved": saved,
          "table2": {r["run_name"]: r for r in json.load(open(os.path.join(out, sweep.STATUS_FILE)))}}


def _summary(out, name):
  with open(sweep.summary_path(out, name), encoding="utf-8") as f:
    text = f.read()
  assert "NaN" not in text and "Infinity" not in text, name  # strict JSON (sparsity.files.write_json)
  return json.loads(text)


def _log(faults, name):
  with open(os.path.join(faults["out"], sweep.LOGS_DIR, f"{name}.log"), encoding="utf-8") as f:
    return f.read()


def test_the_status_table_tells_each_fault_apart_and_a_rerun_only_finishes_the_interrupted_run(faults):
  first, out = faults["first"], faults["out"]
  ends = {n: r["end_status"] for n, r in first["table"].items()}
  assert ends == {"interrupt": "interrupted", "diverge": "diverged", "diverge_own": "diverged", "corrupt": "failed",
                  "bad_data": "failed"}, first["output"][-4000:]
  codes = {n: r["exit_code"] for n, r in first["table"].items()}
  assert codes == {"interrupt": 130, "diverge": 1, "diverge_own": 1, "corrupt": 1, "bad_data": 1}
  assert first["code"] == 1
  printed = [line.split() for line in first["output"].splitlines() if line.split()[:1] and line.split()[0] in FAULTS]
  assert {p[0]: p[1] for p in printed if len(p) > 1 and p[1] in status.END_STATUSES} == ends  # the table is printed
  # The rerun: the interrupted run resumes and completes; the others are left as they ended (summaries untouched).
  second, table2 = faults["second"], faults["table2"]
  assert table2["interrupt"]["end_status"] == "completed" and table2["interrupt"]["exit_code"] == 0
  assert {n: r["end_status"] for n, r in table2.items() if n != "interrupt"} == {
      n: e for n, e in ends.items() if n != "interrupt"}
  for name in FAULTS[1:]:
    assert os.path.getmtime(sweep.summary_path(out, name)) == first["mtimes"][name], name
  events = sweep.read_log(out, last_invocation=True)
  assert [(e["status"], e["run_name"]) for e in events] == [("ok", "interrupt")] + [("skipped", n) for n in FAULTS[1:]]
  assert second.returncode == 1 and "left as they ended" in second.stdout + second.stderr


def test_diverged_runs_end_with_a_summary_a_non_zero_exit_and_no_pruning_after_the_nan(faults):
  for name in ("diverge", "diverge_own"):
    s = faults["first"]["summaries"][name]
    assert s["end_status"] == status.DIVERGED and s["exit_code"] == 1, name
    step = s["diverged_at_step"]
    assert step is not None and s["steps_trained"] < s["steps"] and s["final_train_loss"] is None
    assert np.isfinite(s["last_finite_loss"]) and s["last_finite_loss_step"] < step
    assert f"the training loss of step {step} is nan" in s["error"]
    assert s["final_active_params"] - s["non_prunable_params"] == s["final_kept_params"] > 0
    log = _log(faults, name)
    assert "run end:" in log and "diverged at step" in log
    events = [int(x) for x in re.findall(r"pruning event at step (\d+)", log)]
    assert all(e <= step for e in events), (events, step)  # no event after the NaN loss was seen
  assert "Aborting training due to NaN loss." in _log(faults, "diverge")  # MaxText's sys.exit(1), summary first
  assert "Aborting training" not in _log(faults, "diverge_own")  # the pruner stopped it


def test_sigint_saves_a_finished_checkpoint_and_the_same_command_resumes_it(faults):
  first = faults["first"]
  s = first["summaries"]["interrupt"]
  assert s["end_status"] == status.INTERRUPTED and s["exit_code"] == 130 and s["error"] is None
  saved = first["interrupt_steps"][-1]
  assert saved > FIRST_CHECKPOINT and s["steps_trained"] == saved + 1
  assert not [d for d in first["interrupt_dir"] if d.endswith("orbax-checkpoint-tmp")]  # the save was finished
  log = _log(faults, "interrupt")  # the rerun's log
  steps = [int(x) for x in re.findall(r"completed step: (\d+),", log)]
  assert steps[0] == saved + 1 and steps[-1] == 39  # resumed, not restarted
  done = _summary(faults["out"], "interrupt")
  assert done["end_status"] == status.COMPLETED and done["steps_trained"] == 40
  # every step's target tokens, also those before the resume (synthetic data: every token is a target)
  assert done["target_tokens"] == done["tokens"] == 40 * 64


def test_a_damaged_checkpoint_stops_the_resume_naming_it(faults):
  s = faults["first"]["summaries"]["corrupt"]
  assert s["end_status"] == status.FAILED and s["exit_code"] == 1
  error = s["error"]
  named = (os.path.basename(faults["flipped"]), f"checkpoints/{faults['corrupt_saved']}", "kernel")
  assert any(n in error for n in named), error  # the file, the checkpoint or the tensor
  assert "dense run" not in error
  assert "completed step" not in _log(faults, "corrupt")  # nothing trained on the damaged state


def test_bad_data_fails_the_run_naming_the_cause(faults):
  s = faults["first"]["summaries"]["bad_data"]
  assert s["end_status"] == status.FAILED and s["exit_code"] == 1
  assert "tensorflow_datasets" in s["error"] and len(s["error"]) < 1000  # the file it was raised at, short
  assert "Traceback" in _log(faults, "bad_data")  # the full traceback stays in the log


def test_a_missing_config_names_the_path_given_and_a_plan_file_is_never_written_over_checkpoints(faults):
  case = faults["tmp"] / "plan_case"
  plan = layout.plan_path(str(case / "corrupt"))
  os.remove(plan)
  args = [a for a in _command(str(case), "corrupt")[2:] if not a.startswith("base_output_directory=")]
  results = run_configs([["configs/no_such_file.yml", "steps=2"],
                         [*[a for a in args if not a.startswith("target_sparsity=")], "target_sparsity=0.5"]], case)
  (code, text), (code2, text2) = results
  assert code != 0 and "config file not found: configs/no_such_file.yml" in text and "src/" not in text.split(
      "config file not found")[1].splitlines()[0]
  assert not os.path.exists(plan)  # not rewritten for the other target over the checkpoints of the first
  assert code2 != 0 and "completed step" not in text2, text2[-3000:]  # refused at once


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True, check=False)
  if out.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs to fill ({out.stderr.strip() or 'mount failed'}): needs root")


def test_a_full_output_disk_ends_the_run_within_a_minute_naming_it(tmp_path):
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, "2m")
  try:
    with open(disk / "filler", "wb") as f:  # leave about 200 KB: TensorBoard's event file fills it within steps
      f.write(b"\0" * (os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - 200_000))
    start = time.monotonic()
    out = run_train(["configs/sparse_base.yml", *TINY, "vocab_size=1024", "per_device_batch_size=1", "steps=100000",
                     "pruning_interval=1000", "run_name=full"], disk, check=False, timeout=600)
    seconds = time.monotonic() - start
    summary = layout.summary_path(str(disk / "full"))
    written = json.load(open(summary, encoding="utf-8")) if os.path.exists(summary) else None
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)
  text = out.stdout + out.stderr
  assert out.returncode == 1, text[-3000:]
  assert "No space left on device" in text and "TensorBoard could not write" in text
  assert re.search(r"completed step: 0,", text) is not None  # it trained, then stopped
  assert seconds < 180, seconds  # start-up, then seconds of training (never a hang)
  # the summary could not be written either (the disk is full): said so, never a half-written file
  assert written is None and "could not write the failed run's summary" in text
  assert not os.path.exists(summary + ".tmp")


def test_a_disk_that_fills_during_a_checkpoint_save_fails_the_run_keeping_the_previous_checkpoints(tmp_path):
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, "6m")  # room for two checkpoints of the tiny model (about 1.5 MB each) and the logs
  try:
    start = time.monotonic()
    out = run_train(["configs/sparse_base.yml", *TINY, "vocab_size=1024", "per_device_batch_size=1", "steps=100000",
                     "pruning_interval=1000", "enable_checkpointing=true", "checkpoint_period=10", "run_name=ck"],
                    disk, check=False, timeout=600)
    seconds = time.monotonic() - start
    run_dir = str(disk / "ck")
    steps = checkpoint.steps(layout.checkpoints_dir(run_dir))
    s = json.load(open(layout.summary_path(run_dir), encoding="utf-8"))
    state = checkpoint.load(checkpoint.locate(run_dir).items_dir)  # the latest finished checkpoint still loads
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)
  text = out.stdout + out.stderr
  assert out.returncode == 1 and seconds < 180, text[-3000:]
  assert s["end_status"] == status.FAILED and "Checkpointing failed" in s["error"], s["error"]
  assert f"{run_dir}/checkpoints/" in s["error"]  # names the file it could not write
  assert len(steps) >= 1 and state.state_step == steps[-1] + 1
