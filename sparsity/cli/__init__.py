"""Command line: ``python -m sparsity <command> ...``, one style for every command.

* A MaxText config is its YAML file followed by ``key=value`` overrides, exactly as ``MaxText/train.py`` takes
  it: positional when the config is what the command is about (``plan CONFIG key=value``, ``sweep SPEC
  key=value``), ``--config CONFIG key=value`` when the subject is a checkpoint (``export``, ``generate``).
* Input data (a CSV or a directory of runs) is ``--data PATH``; commands whose one input is data also take it as
  their first positional argument (``collect DIR``, ``report CSV``).
* Every file or directory a command writes is ``--out PATH``; ``-`` writes to stdout where the output is one
  text stream (``fit``, ``predict``, ``collect``, ``dense-sweep``). An existing output is kept unless
  ``--force`` is given (``--overwrite`` is the same flag; a sweep's ``--out`` is its resumable output directory).
* ``--json`` prints the result as one JSON object (or array) on stdout instead of text, on every command that
  prints a result.
* Exit codes: 0 success, 1 bad data or a failed run (a message on stderr), 2 bad usage (argparse's message).

Each subcommand is a function registered with ``@command(name, help)``: it receives its
``argparse.ArgumentParser``, adds its arguments and returns the function that runs it (``args -> exit
code``). Commands registered with ``overrides=True`` also receive ``key=value`` words in ``args.overrides``.
The commands live in ``science`` (fit, predict, plan), ``experiments`` (sweep, collect, report, dense-sweep,
schedule-fractions, tokenizer), ``model`` (inspect, export, generate) and ``maxtext`` (launch).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import sys
from typing import Any, Callable, Sequence

Runner = Callable[[argparse.Namespace], int]
COMMAND_MODULES = ("sparsity.cli.science", "sparsity.cli.experiments", "sparsity.cli.model", "sparsity.cli.maxtext")


class UsageError(ValueError):
  """Bad usage found after parsing (exit code 2)."""


@dataclasses.dataclass(frozen=True)
class Command:
  name: str
  help: str
  build: Callable[[argparse.ArgumentParser], Runner]
  overrides: bool = False


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, overrides: bool = False) -> Callable:  # pylint: disable=redefined-builtin
  """Registers ``build(parser) -> runner`` as subcommand ``name``."""

  def register(build: Callable[[argparse.ArgumentParser], Runner]) -> Callable:
    if name in COMMANDS:
      raise ValueError(f"command {name!r} registered twice")
    COMMANDS[name] = Command(name, help, build, overrides)
    return build

  return register


# ----------------------------------------------------------------------------------------------------------------
# Shared arguments and output.
# ----------------------------------------------------------------------------------------------------------------


def add_out(p: argparse.ArgumentParser, what: str, required: bool = True, stdout: bool = False, default=None) -> None:
  """``--out`` (``-``: stdout when ``stdout``) and ``--force`` (alias ``--overwrite``)."""
  p.add_argument("--out", required=required, default=default,
                 help=what + (" ('-': stdout)" if stdout else ""))
  p.add_argument("--force", "--overwrite", dest="force", action="store_true", help="replace an existing --out")


def add_json(p: argparse.ArgumentParser) -> None:
  p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def add_data(p: argparse.ArgumentParser, what: str, positional: bool = False) -> None:
  """``--data PATH`` (and, with ``positional``, the same as the first positional argument)."""
  if positional:
    p.add_argument("data_pos", nargs="?", metavar="DATA", help=what)
  p.add_argument("--data", help=what)


def data_path(args: argparse.Namespace) -> str:
  """The data path given by ``--data`` or positionally (exactly one of them)."""
  pos = getattr(args, "data_pos", None)
  if pos and args.data and pos != args.data:
    raise UsageError(f"data given twice: {pos!r} and --data {args.data!r}")
  path = args.data or pos
  if not path:
    raise UsageError("no data given (--data PATH)")
  return path


def check_out(path: str | None, force: bool, is_dir: bool = False) -> None:
  """A UsageError if ``path`` exists and ``force`` is not set ('-' and None are never checked)."""
  if path in (None, "-") or force or not os.path.exists(path):
    return
  if is_dir and os.path.isdir(path) and not os.listdir(path):
    return
  raise UsageError(f"--out {path} exists; choose another path or pass --force")


def write_text(text: str, path: str | None) -> None:
  """``text`` to ``path`` (a file; its directory is created) or to stdout for '-' or None."""
  if path in (None, "-"):
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text if text.endswith("\n") else text + "\n")


def json_text(obj: Any) -> str:
  return json.dumps(obj, indent=2, default=_json_default, allow_nan=True)


def _json_default(o: Any) -> Any:
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  if hasattr(o, "tolist"):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def emit(args: argparse.Namespace, result: Any, text: str | Callable[[], str]) -> None:
  """Prints ``result`` as JSON with ``--json``, else ``text`` (a string or a function making it)."""
  if getattr(args, "json", False):
    print(json_text(result))
  else:
    print(text() if callable(text) else text)


def load_maxtext_config(argv: Sequence[str]):
  """MaxText's validated config of ``[yaml, key=value, ...]`` (its prints go to stderr, keeping stdout clean)."""
  if not argv or not os.path.isfile(argv[0]):
    raise FileNotFoundError(f"no such config file: {argv[0] if argv else '(none)'}")
  from sparsity.maxtext.config import load_config  # pylint: disable=import-outside-toplevel

  with contextlib.redirect_stdout(sys.stderr):
    return load_config(list(argv))


# ----------------------------------------------------------------------------------------------------------------
# The parser and main.
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  """The ``python -m sparsity`` parser with one subparser per entry of ``COMMANDS``."""
  for module in COMMAND_MODULES:
    importlib.import_module(module)
  parser = argparse.ArgumentParser(prog="python -m sparsity", description="Sparse pre-training tools.",
                                   epilog="Exit codes: 0 ok, 1 bad data or a failed run, 2 bad usage.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for c in COMMANDS.values():
    sp = sub.add_parser(c.name, help=c.help, description=c.help)
    sp.set_defaults(_run=c.build(sp), _overrides=c.overrides)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Parses ``argv`` (default ``sys.argv[1:]``) and runs the command (exit codes in the module docstring)."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra:
    bad = [w for w in extra if w.startswith("-") or "=" not in w]
    if not args._overrides or bad:  # pylint: disable=protected-access
      parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
  args.overrides = list(extra)
  try:
    return args._run(args)  # pylint: disable=protected-access
  except UsageError as e:
    parser.error(str(e))
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 2


__all__ = ["COMMANDS", "Command", "UsageError", "command", "build_parser", "main", "add_out", "add_json", "add_data",
           "data_path", "check_out", "write_text", "json_text", "emit", "load_maxtext_config"]
