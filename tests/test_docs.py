"""The documentation: the site builds with every warning an error, the summary's fields are the documented ones, the
README keeps its promises (length, the two commands first, working links, no project history)."""

import html
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, read_summary, run_train
from sparsity.summary_fields import FIELDS, SOME_RUNS

DOCS = os.path.join(ROOT, "docs")
README = os.path.join(ROOT, "README.md")
COMMANDS = ["bash setup.sh && .venv/bin/python MaxText/train.py configs/sparse_base.yml target_sparsity=0.8",
            "bash setup.sh && .venv/bin/python -m pytest"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """The site built by ``sphinx-build -W --keep-going -n``: warnings are errors, every internal link and
  cross-reference checked."""
  html = tmp_path_factory.mktemp("site") / "html"
  out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html", DOCS,
                        str(html)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, f"sphinx-build failed:\n{out.stdout[-4000:]}\n{out.stderr[-8000:]}"
  return html


def _page(site, name: str) -> str:
  text = (site / f"{name}.html").read_text(encoding="utf-8")
  return html.unescape(re.sub(r"<[^>]+>", "", text))


def test_site_builds_without_warnings(site):
  for page in ("index", "getting_started", "recipe", "reference/keys", "reference/summary", "reference/cli",
               "reference/api", "results/tpu", "results/families", "results/performance"):
    assert (site / f"{page}.html").is_file(), page


def test_reference_holds_every_key_field_command_and_name(site):
  """The generated reference pages name every sparsity key, summary field, command and public name."""
  import sparsity  # pylint: disable=import-outside-toplevel
  from sparsity.cli import COMMANDS as CLI, build_parser  # pylint: disable=import-outside-toplevel
  from sparsity.core.config import SPARSITY_KEYS  # pylint: disable=import-outside-toplevel

  build_parser()  # registers every command
  keys, summary, cli, api = (_page(site, f"reference/{p}") for p in ("keys", "summary", "cli", "api"))
  assert [k for k in SPARSITY_KEYS if k not in keys] == []
  assert [f for f in FIELDS if f not in summary] == []
  assert [c for c in CLI if f"usage: python -m sparsity {c}" not in cli] == []
  assert [n for n in sparsity._EXPORTS if f"sparsity.{n}" not in api] == []  # pylint: disable=protected-access


def _field_names(summary: dict, prefix: str = "") -> set[str]:
  """A summary's field names as ``FIELDS`` writes them: objects entered where ``FIELDS`` describes their fields,
  a list's objects as ``list[].field``."""
  names = set()
  for key, value in summary.items():
    name = prefix + key
    names.add(name)
    sub = name + ("[]." if isinstance(value, list) else ".")
    if any(f.startswith(sub) for f in FIELDS):
      for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
          names |= _field_names(item, sub)
  return names


@pytest.mark.slow
def test_summary_fields_are_the_documented_ones(tmp_path):
  """A real run's summary (pruning events, evaluation) holds exactly the fields of ``sparsity.summary_fields``."""
  run_train(["configs/sparse_base.yml", *TINY, "vocab_size=1024", "steps=8", "pruning_interval=2", "eval_interval=4",
             "eval_steps=1", "run_name=fields"], tmp_path)
  written = _field_names(read_summary(tmp_path, "fields"))
  assert sorted(written - set(FIELDS)) == [], "fields written without a meaning in sparsity/summary_fields.py"
  expected = {f for f in FIELDS if not any(f == p or f.startswith(p) for p in SOME_RUNS)}
  assert sorted(expected - written) == [], "documented fields this run did not write"


def _readme() -> str:
  with open(README, encoding="utf-8") as f:
    return f.read()


def test_readme_is_short_and_starts_with_the_two_commands():
  lines = _readme().splitlines()
  assert len(lines) <= 250, len(lines)
  assert lines[0].startswith("# ")
  assert [l for l in lines[1:6] if l.strip() and not l.startswith("```")] == COMMANDS


def test_readme_links_resolve():
  missing = [link for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _readme())
             if "://" not in link and not os.path.exists(os.path.join(ROOT, link))]
  assert missing == []


def test_fast_suite_time_is_the_same_in_readme_and_conftest():
  with open(os.path.join(ROOT, "tests", "conftest.py"), encoding="utf-8") as f:
    conftest = f.read()
  said = re.findall(r"about (\d+) s\b", conftest.split('"""')[1])
  assert len(said) == 1 and f"about {said[0]} s" in _readme(), said


HISTORY = [r"\bcommit [0-9a-f]{7,40}\b", r"\bat commit\b", r"\bissues? #?\d+\b", r"(?<![\w/&])#\d+\b", r"\bpreviously\b",
           r"\b(before|after) this (change|work|session)\b", r"\bthis session\b", r"\bthe previous (version|session)\b",
           r"\bno longer\b", r"\bdefault before\b"]


def test_readme_and_site_tell_no_history():
  pages = [README] + [os.path.join(d, f) for d, _, fs in os.walk(DOCS) if "_build" not in d for f in fs
                      if f.endswith(".md")]
  found = []
  for page in pages:
    with open(page, encoding="utf-8") as f:
      text = f.read()
    found += [f"{os.path.relpath(page, ROOT)}: {m.group(0)!r}" for p in HISTORY for m in re.finditer(p, text, re.I)]
  assert found == []
