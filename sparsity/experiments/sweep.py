"""Sweeps: a YAML file expanded into MaxText runs, and the local launcher that runs them one after another.

Sweep file (all keys but ``base`` and ``run_name`` optional)::

  name: paper_schedule_grid          # default: the file's name without .yml
  base: ../paper/llama2_162m_10x.yml  # MaxText config of every run (relative: to this file, then the cwd)
  labels: [budget]                   # keys for run names/constraints only: never passed to MaxText
  fixed: {sparsity_schedule: geometric}   # overrides shared by every run
  axes:                              # cartesian product, first axis varies slowest
    target_sparsity: [0.2, 0.4]      # plain axis: one key, a list of values
    budget:                          # linked axis: a list of mappings, keys move together
      - {budget: 10x, base: ../paper/llama2_162m_10x.yml}
      - {budget: 20x, base: ../paper/llama2_162m_20x.yml}
    zipped:                          # zipped axis: a mapping of equal-length lists (same as linked)
      lr: [1.0e-3, 2.0e-3]
      warmup: [0.01, 0.02]
  derived:                           # key: expression over the keys above, evaluated in order
    prune_end_fraction: "dense_fraction + pruning_fraction"
  constraints: ["dense_fraction + pruning_fraction <= 1"]   # a run is kept when every one is true
                                     # (those reading no derived key are checked before ``derived``)
  run_name: "s{target_sparsity}-{budget}"                   # str.format fields over every key
  meta: {...}                        # free-form data kept with the spec, ignored by the expansion

Rules:

* ``base`` may also be set per run by ``fixed``, an axis or ``derived``; it chooses the config file and
  is never passed as an override.
* A key may be set by only one of ``fixed``, the axes and ``derived``; extra ``key=value`` overrides
  given on the command line replace ``fixed`` values and may not name an axis or derived key.
* Expressions (``derived``, ``constraints``) are evaluated by ``sparsity.experiments.expressions`` (no builtins); besides
  its functions they may call ``prune_start_for(S, t_d, t_s, schedule)`` and ``prune_end_for(...)``
  (``sparsity.core.compute``: the step fractions of the paper's compute split),
  ``interval_for(steps)`` (the paper's 100 of 26,800 steps, scaled) and ``steps_for_compute(steps, S, t_d, t_s)``
  (the steps of split ``(t_d, t_s)`` with the compute of ``steps`` steps at the paper's split).
* Run names must match ``RUN_NAME_PATTERN`` (they become directory names) and be unique; two runs with
  the same config and overrides are an error too.
* Override values are written as MaxText reads them: booleans ``true``/``false``, floats with ``repr``,
  lists as JSON, strings verbatim.

The local launcher runs ``python MaxText/train.py <base> <overrides> run_name=<name>
base_output_directory=<dir>`` per run (same interpreter, working directory the repository) and keeps, in
the output directory:

* ``manifest.json``: every run's config file, overrides and values (``collect`` joins it);
* ``sweep_log.jsonl``: one JSON line per event (``start`` of an invocation, then ``ok`` / ``skipped`` /
  ``failed`` per run, with the return code, seconds and the tail of the run's output when it failed);
* ``failures.json``: the failures of the latest invocation;
* ``_logs/<run_name>.log``: each run's stdout and stderr.

Re-running a sweep resumes it: a run runs again (with the same command, which resumes from its latest checkpoint)
when it has no ``<dir>/<run_name>/sparsity_summary.json`` or its summary says it was stopped to be continued
(``preempted``, ``interrupted``: ``status.RESUMABLE``); a run that completed is skipped, and a run that ended
otherwise (``diverged``, ``failed``, ``data_exhausted``, ``target_eval_loss``) is left as it is unless
``rerun`` (``sweep --rerun STATUS``) names its end. A run fails when it exits non-zero, exits without writing its
summary, or writes one that says it did not complete. Every invocation ends with a status table of all its runs
(``status_table``; ``sweep_status.json``): each run's end status, exit code, steps trained and error.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

import yaml

from sparsity import files
from sparsity.core import compute
from sparsity.experiments import expressions
from sparsity.maxtext import layout, status
from sparsity.maxtext.overrides import read_value
from sparsity.repo import ROOT, TRAIN_SCRIPT

MANIFEST_FILE = "manifest.json"
LOG_FILE = "sweep_log.jsonl"
FAILURES_FILE = "failures.json"
STATUS_FILE = "sweep_status.json"
LOGS_DIR = "_logs"
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,199}")  # a directory name, no spaces or slashes
SPEC_KEYS = ("name", "description", "base", "labels", "fixed", "axes", "derived", "constraints", "run_name", "meta")
TAIL_LINES = 40
# Callables of sweep expressions: the safe builtins plus the compute-to-step schedule conversion.
FUNCTIONS = {**expressions.FUNCTIONS, "prune_start_for": compute.prune_start_for,
             "prune_end_for": compute.prune_end_for, "interval_for": compute.interval_for,
             "steps_for_compute": compute.steps_for_compute}


@dataclasses.dataclass(frozen=True)
class Axis:
  """One axis of the grid: each value is a mapping of the keys it sets (one key for a plain axis)."""

  name: str
  values: tuple[dict[str, Any], ...]

  @property
  def keys(self) -> tuple[str, ...]:
    return tuple(self.values[0])


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """A parsed sweep file (see the module docstring); ``path`` is the file it came from ("" if none)."""

  name: str
  base: str
  run_name: str
  path: str = ""
  labels: tuple[str, ...] = ()
  fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
  axes: tuple[Axis, ...] = ()
  derived: dict[str, str] = dataclasses.field(default_factory=dict)
  constraints: tuple[str, ...] = ()
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  description: str = ""

  @property
  def directory(self) -> str:
    return os.path.dirname(os.path.abspath(self.path)) if self.path else os.getcwd()

  @property
  def varying_keys(self) -> tuple[str, ...]:
    """Axis keys, derived keys and labels, in that order without repeats (the interesting columns)."""
    keys = [k for a in self.axes for k in a.keys] + list(self.derived) + list(self.labels)
    return tuple(dict.fromkeys(k for k in keys if k != "base"))


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep.

  Attributes:
    name: MaxText ``run_name`` (its output directory's name).
    base: absolute path of its MaxText config file.
    overrides: ``key=value`` words for MaxText (without ``run_name`` and ``base_output_directory``).
    values: every key of the run (fixed, axes, derived, labels, and ``base`` as written if set).
  """

  name: str
  base: str
  overrides: tuple[str, ...]
  values: dict[str, Any]

  def argv(self, output_dir: str, base: str | None = None) -> list[str]:
    """MaxText's argv after the script: config, overrides, ``run_name`` and ``base_output_directory``."""
    return [base or self.base, *self.overrides, f"run_name={self.name}", f"base_output_directory={output_dir}"]


def format_value(value: Any) -> str:
  """A value as MaxText reads it on the command line (see the module docstring)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if value is None:
    raise ValueError("None cannot be passed to MaxText as an override (leave the key out)")
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return json.dumps(list(value))
  if isinstance(value, dict):
    raise ValueError(f"mappings cannot be passed as one override: {value!r}")
  return str(value)


def parse_override(word: str) -> tuple[str, str]:
  """``key=value`` -> ``(key, value)``; ``ValueError`` if there is no ``=`` or the key is empty."""
  key, sep, value = word.partition("=")
  if not sep or not key.strip():
    raise ValueError(f"override must look like key=value, got {word!r}")
  return key.strip(), value


def parse_value(text: str) -> Any:
  """A command-line override's value as MaxText reads it (``sparsity.maxtext.overrides.read_value``: ``0.01`` and
  ``1e-3`` numbers, ``true`` a boolean, ``2:4`` text), so that sweep expressions can compute with it; a value that
  reads as None (``null``, nothing) stays its text and is passed on as given."""
  value = read_value(text)
  return text if value is None else value


def _resolve_path(path: str, directory: str) -> str:
  """Absolute path of ``path``: as given if absolute, else next to ``directory``, else from the cwd."""
  if os.path.isabs(path):
    candidates = [path]
  else:
    candidates = [os.path.join(directory, path), os.path.abspath(path), os.path.join(ROOT, path)]
  for c in candidates:
    if os.path.isfile(c):
      return os.path.normpath(c)
  raise ValueError(f"config file {path!r} not found (looked in {', '.join(dict.fromkeys(candidates))})")


def _parse_axis(name: str, raw: Any) -> Axis:
  if isinstance(raw, Mapping):  # zipped: equal-length lists
    if not raw or not all(isinstance(v, list) for v in raw.values()):
      raise ValueError(f"axis {name!r}: a zipped axis maps keys to lists of values")
    lengths = {k: len(v) for k, v in raw.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"axis {name!r}: zipped lists differ in length {lengths}")
    values = tuple(dict(zip(raw, vals)) for vals in zip(*raw.values()))
  elif isinstance(raw, list):
    if all(isinstance(v, Mapping) for v in raw):  # linked
      values = tuple(dict(v) for v in raw)
    elif any(isinstance(v, Mapping) for v in raw):
      raise ValueError(f"axis {name!r}: mixes mappings and plain values")
    else:
      values = tuple({name: v} for v in raw)
  else:
    raise ValueError(f"axis {name!r}: expected a list of values, a list of mappings or a mapping of lists")
  if not values or not values[0]:
    raise ValueError(f"axis {name!r} is empty")
  keys = set(values[0])
  for v in values:
    if set(v) != keys:
      raise ValueError(f"axis {name!r}: every entry must set the same keys {sorted(keys)}, got {sorted(v)}")
  return Axis(str(name), values)


def parse_spec(data: Mapping[str, Any], path: str = "") -> SweepSpec:
  """A ``SweepSpec`` from a parsed sweep file; ``ValueError`` on any structural problem."""
  if not isinstance(data, Mapping):
    raise ValueError(f"{path or 'sweep'}: expected a mapping at the top level")
  unknown = sorted(set(data) - set(SPEC_KEYS))
  if unknown:
    raise ValueError(f"{path or 'sweep'}: unknown keys {unknown}; allowed: {list(SPEC_KEYS)}")
  for key in ("base", "run_name"):
    if not isinstance(data.get(key), str) or not data[key]:
      raise ValueError(f"{path or 'sweep'}: '{key}' (a string) is required")
  name = data.get("name") or (os.path.splitext(os.path.basename(path))[0] if path else "sweep")
  fixed = dict(data.get("fixed") or {})
  axes_raw = data.get("axes") or {}
  if not isinstance(axes_raw, Mapping):
    raise ValueError("'axes' must be a mapping of axis name to values")
  axes = tuple(_parse_axis(k, v) for k, v in axes_raw.items())
  derived = dict(data.get("derived") or {})
  for k, expr in derived.items():
    expressions.parse(expr)  # syntax errors early
  constraints = data.get("constraints") or []
  if isinstance(constraints, str) or not all(isinstance(c, str) for c in constraints):
    raise ValueError("'constraints' must be a list of expression strings")
  for c in constraints:
    expressions.parse(c)
  labels = data.get("labels") or []
  if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
    raise ValueError("'labels' must be a list of key names")
  owners: dict[str, str] = {}
  for owner, keys in [("fixed", list(fixed))] + [(f"axis {a.name!r}", list(a.keys)) for a in axes] + [
      ("derived", list(derived))]:
    for k in keys:
      if k in owners:
        raise ValueError(f"key {k!r} is set by both {owners[k]} and {owner}")
      owners[k] = owner
  for k in ("run_name", "base_output_directory"):
    if k in owners:
      raise ValueError(f"{k!r} is set by the sweep itself; use the 'run_name' template / --output-dir")
  spec = SweepSpec(name=str(name), base="", run_name=data["run_name"], path=os.path.abspath(path) if path else "",
                   labels=tuple(labels), fixed=fixed, axes=axes, derived=derived, constraints=tuple(constraints),
                   meta=dict(data.get("meta") or {}), description=str(data.get("description") or ""))
  return dataclasses.replace(spec, base=_resolve_path(data["base"], spec.directory))


def load_spec(path: str) -> SweepSpec:
  """Reads and parses a sweep file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(path)
  with open(path, encoding="utf-8") as f:
    data = yaml.safe_load(f)
  return parse_spec(data, path)


def render_name(template: str, values: Mapping[str, Any]) -> str:
  """``template.format_map(values)``; ``ValueError`` for unknown fields or a name that is not a valid run name."""
  try:
    name = template.format_map(dict(values))
  except KeyError as e:
    raise ValueError(f"run_name template {template!r}: unknown field {e.args[0]!r} (known: {sorted(values)})") from None
  except (ValueError, IndexError, AttributeError) as e:
    raise ValueError(f"run_name template {template!r}: {e}") from None
  if not RUN_NAME_PATTERN.fullmatch(name):
    raise ValueError(f"run name {name!r} (from {template!r}) must match {RUN_NAME_PATTERN.pattern}")
  return name


def expand(spec: SweepSpec, extra_overrides: Sequence[str] = ()) -> list[Run]:
  """The runs of ``spec`` in grid order (first axis slowest), constraints applied.

  Args:
    spec: the sweep.
    extra_overrides: ``key=value`` words applied to every run (replacing ``fixed`` values); they may not
      name an axis or derived key.

  Raises:
    ValueError: a bad override, expression, run name, duplicate run names or duplicate runs.
  """
  fixed = dict(spec.fixed)
  for word in extra_overrides:
    k, v = parse_override(word)
    if any(k in a.keys for a in spec.axes) or k in spec.derived:
      raise ValueError(f"override {word!r} names a key the sweep varies")
    if k in ("run_name", "base_output_directory"):
      raise ValueError(f"override {word!r}: {k} is set by the sweep itself")
    fixed[k] = parse_value(v)
  runs: list[Run] = []
  for combo in itertools.product(*(a.values for a in spec.axes)):
    values = dict(fixed)
    for part in combo:
      values.update(part)
    # Constraints that read no derived key are checked first, so derived expressions only see valid runs.
    early = [c for c in spec.constraints if not expressions.names(c) & set(spec.derived)]
    if not all(bool(expressions.evaluate(c, values, FUNCTIONS)) for c in early):
      continue
    for key, expr in spec.derived.items():
      values[key] = expressions.evaluate(expr, values, FUNCTIONS)
    if not all(bool(expressions.evaluate(c, values, FUNCTIONS)) for c in spec.constraints if c not in early):
      continue
    name = render_name(spec.run_name, values)
    base = _resolve_path(str(values["base"]), spec.directory) if "base" in values else spec.base
    overrides = tuple(f"{k}={format_value(v)}" for k, v in values.items() if k != "base" and k not in spec.labels)
    runs.append(Run(name, base, overrides, values))
  _check_unique(runs)
  return runs


def _check_unique(runs: Sequence[Run]) -> None:
  seen: dict[str, int] = {}
  for r in runs:
    seen[r.name] = seen.get(r.name, 0) + 1
  dup = sorted(n for n, c in seen.items() if c > 1)
  if dup:
    raise ValueError(f"run names are not unique (add fields to run_name): {dup[:5]}{' ...' if len(dup) > 5 else ''}")
  configs: dict[tuple, str] = {}
  for r in runs:
    key = (r.base, tuple(sorted(r.overrides)))
    if key in configs:
      raise ValueError(f"runs {configs[key]!r} and {r.name!r} have the same config and overrides")
    configs[key] = r.name


def manifest(spec: SweepSpec, runs: Sequence[Run], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The JSON manifest of ``runs``: the sweep's name, file, varying keys and each run's config and values."""
  return {
      "sweep": spec.name,
      "spec": spec.path,
      "columns": list(spec.varying_keys),
      "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      **(dict(extra) if extra else {}),
      "runs": {r.name: {"base": r.base, "overrides": list(r.overrides), "values": r.values} for r in runs},
  }


def write_manifest(output_dir: str, data: Mapping[str, Any]) -> str:
  """Writes ``manifest.json`` in ``output_dir``, keeping runs of an earlier manifest that ``data`` lacks."""
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, MANIFEST_FILE)
  merged = dict(data)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    merged["runs"] = {**old.get("runs", {}), **data["runs"]}
    merged["columns"] = list(dict.fromkeys(list(old.get("columns", [])) + list(data.get("columns", []))))
  return files.write_json(path, merged)


@dataclasses.dataclass
class Outcome:
  """What a launcher did: run names that succeeded, were skipped (already done) or failed (with details)."""

  ok: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  left: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # ended before, not rerun (run_name, end_status)
  table: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # status_table of every run

  @property
  def exit_code(self) -> int:
    return 1 if self.failed or self.left else 0

  def describe(self) -> str:
    text = f"{len(self.ok)} ran, {len(self.skipped)} skipped (done before), {len(self.failed)} failed"
    if self.failed:
      text += ": " + ", ".join(f"{f['run_name']} (rc {f['returncode']})" for f in self.failed)
    if self.left:
      text += (f"; {len(self.left)} left as they ended (" + ", ".join(f"{x['run_name']}: {x['end_status']}"
                                                                     for x in self.left) + "; rerun with --rerun)")
    return text


def summary_path(output_dir: str, run_name: str) -> str:
  return layout.summary_path(layout.run_dir(output_dir, run_name))


def end_status(output_dir: str, run_name: str) -> tuple[str | None, str]:
  """``(end_status, detail)`` of the run's summary: None if it has none; a summary that is not valid JSON is
  ``failed``. ``detail``: the error or stop reason of a run that did not complete ("" otherwise)."""
  path = summary_path(output_dir, run_name)
  if not os.path.isfile(path):
    return None, ""
  try:
    with open(path, encoding="utf-8") as f:
      summary = json.load(f)
    end = status.of_summary(summary)
  except ValueError as e:  # invalid JSON, unknown end_status
    return status.FAILED, f"unreadable {layout.SUMMARY_FILE}: {e}"
  return end, "" if end == status.COMPLETED else str(summary.get("error") or summary.get("stop_reason") or "")


def status_table(runs: Sequence[Run], output_dir: str) -> list[dict[str, Any]]:
  """One row per run: its end status (``not run`` without a summary), exit code, steps trained of its steps, the
  step it diverged at, and its error or stop reason."""
  rows = []
  for run in runs:
    end, detail = end_status(output_dir, run.name)
    summary = {}
    if end is not None:
      try:
        with open(summary_path(output_dir, run.name), encoding="utf-8") as f:
          summary = json.load(f)
      except ValueError:
        pass
    rows.append({"run_name": run.name, "end_status": end or "not run", "exit_code": summary.get("exit_code"),
                 "steps_trained": summary.get("steps_trained"), "steps": summary.get("steps"),
                 "diverged_at_step": summary.get("diverged_at_step"), "detail": detail})
  return rows


def format_status_table(rows: Sequence[Mapping[str, Any]], width: int = 100) -> str:
  """``status_table`` as text, one line per run."""
  name = max([len("run"), *(len(r["run_name"]) for r in rows)])
  lines = [f"{'run':<{name}}  {'end status':<16} {'exit':>4}  {'steps':>11}  detail"]
  for r in rows:
    steps = "-" if r["steps_trained"] is None else f"{r['steps_trained']}/{r['steps']}"
    code = "-" if r["exit_code"] is None else str(r["exit_code"])
    detail = r["detail"] if len(r["detail"]) <= width else r["detail"][:width - 3] + "..."
    lines.append(f"{r['run_name']:<{name}}  {r['end_status']:<16} {code:>4}  {steps:>11}  {detail}")
  return "\n".join(lines)


def append_log(output_dir: str, event: Mapping[str, Any]) -> None:
  """Appends one JSON line to ``sweep_log.jsonl``."""
  os.makedirs(output_dir, exist_ok=True)
  line = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **event}
  with open(os.path.join(output_dir, LOG_FILE), "a", encoding="utf-8") as f:
    f.write(json.dumps(line, default=str) + "\n")


def read_log(output_dir: str, last_invocation: bool = False) -> list[dict[str, Any]]:
  """Events of ``sweep_log.jsonl``; with ``last_invocation``, only those after the last ``start`` event."""
  path = os.path.join(output_dir, LOG_FILE)
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    events = [json.loads(line) for line in f if line.strip()]
  if last_invocation:
    starts = [i for i, e in enumerate(events) if e.get("status") == "start"]
    if starts:
      events = events[starts[-1] + 1:]
  return events


def tail(path: str, lines: int = TAIL_LINES) -> str:
  """The last ``lines`` lines of a text file ("" if it does not exist)."""
  if not os.path.isfile(path):
    return ""
  with open(path, encoding="utf-8", errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def run_local(
    runs: Sequence[Run],
    output_dir: str,
    *,
    python: str = sys.executable,
    train_script: str = TRAIN_SCRIPT,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    progress: bool = True,
    rerun: Sequence[str] = (),
) -> Outcome:
  """Runs ``runs`` one after another through ``MaxText/train.py``; see the module docstring.

  Args:
    runs: from ``expand``.
    output_dir: MaxText's ``base_output_directory`` (made absolute) and the sweep's bookkeeping directory.
    python, train_script: the interpreter and script (default: this interpreter, the repository's train.py).
    env: the subprocess environment (default: this process's).
    timeout: seconds per run; a run that takes longer is killed and counted as failed.
    progress: show a tqdm progress bar on stderr.
    rerun: end statuses to run again besides the resumable ones (``status.reruns``; ``"all"``: every one).

  Returns:
    The ``Outcome``; ``failures.json`` holds its ``failed`` list.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  output_dir = os.path.abspath(output_dir)
  os.makedirs(os.path.join(output_dir, LOGS_DIR), exist_ok=True)
  append_log(output_dir, {"status": "start", "runs": len(runs), "pid": os.getpid()})
  outcome = Outcome()
  bar = tqdm(runs, desc="sweep", unit="run", file=sys.stderr, disable=not progress, dynamic_ncols=True)
  for run in bar:
    bar.set_postfix_str(run.name, refresh=True)
    before, _ = end_status(output_dir, run.name)
    if not status.reruns(before, tuple(rerun)):
      if before == status.COMPLETED:
        outcome.skipped.append(run.name)
      else:
        outcome.left.append({"run_name": run.name, "end_status": before})
      append_log(output_dir, {"status": "skipped", "run_name": run.name, "end_status": before})
      continue
    log_path = os.path.join(output_dir, LOGS_DIR, f"{run.name}.log")
    cmd = [python, train_script, *run.argv(output_dir)]
    start, started = time.monotonic(), time.time()
    with open(log_path, "w", encoding="utf-8") as log:
      log.write("# " + " ".join(cmd) + "\n")
      log.flush()
      try:
        rc = subprocess.run(cmd, cwd=ROOT, env=dict(env) if env is not None else None, stdout=log,
                            stderr=subprocess.STDOUT, timeout=timeout, check=False).returncode
        reason = "" if rc == 0 else f"exit code {rc}"
      except subprocess.TimeoutExpired:
        rc, reason = -9, f"timed out after {timeout} s"
    seconds = round(time.monotonic() - start, 2)
    end, detail = end_status(output_dir, run.name)
    if end is not None and os.path.getmtime(summary_path(output_dir, run.name)) < started - 1:
      end, detail = None, ""  # the summary of an earlier attempt
    if rc == 0 and end is None:
      reason = f"exited 0 without writing {layout.SUMMARY_FILE}"
    elif end not in (None, status.COMPLETED):
      reason = ", ".join(x for x in (reason, f"ended {end}" + (f": {detail}" if detail else "")) if x)
    if reason:
      failure = {"run_name": run.name, "returncode": rc, "reason": reason, "end_status": end, "seconds": seconds,
                 "log": log_path, "tail": tail(log_path)}
      outcome.failed.append(failure)
      append_log(output_dir, {"status": "failed", **failure})
      bar.write(f"sweep: {run.name} failed ({reason}); log {log_path}", file=sys.stderr)
    else:
      outcome.ok.append(run.name)
      append_log(output_dir, {"status": "ok", "run_name": run.name, "returncode": 0, "seconds": seconds})
  bar.close()
  files.write_json(os.path.join(output_dir, FAILURES_FILE), outcome.failed)
  outcome.table = status_table(runs, output_dir)
  files.write_json(os.path.join(output_dir, STATUS_FILE), outcome.table)
  return outcome


def local_commands(runs: Iterable[Run], output_dir: str, python: str = sys.executable) -> list[list[str]]:
  """The full command line of each run (what ``run_local`` executes)."""
  out = os.path.abspath(output_dir)
  return [[python, TRAIN_SCRIPT, *r.argv(out)] for r in runs]


__all__ = ["Axis", "SweepSpec", "Run", "Outcome", "format_value", "parse_override", "parse_value", "parse_spec", "load_spec",
           "render_name", "expand", "manifest", "write_manifest", "run_local", "local_commands", "read_log",
           "summary_path", "end_status", "status_table", "format_status_table", "tail", "MANIFEST_FILE", "LOG_FILE",
           "FAILURES_FILE", "STATUS_FILE"]
