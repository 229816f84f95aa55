"""Markdown tables, the one renderer of the report's and the study's tables.

A table is given as ``(column, header, format)`` triples: a cell is its value formatted by ``format``
(``str.format``), empty when the value is missing (None or NaN, ``sparsity.experiments.results.missing``), and the
value's ``str`` when the format does not apply to it (text in a numeric column).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sparsity.experiments.results import missing


def cell(fmt: str, v: Any) -> str:
  """One cell: ``fmt.format(v)``; "" when ``v`` is missing; ``str(v)`` when ``fmt`` does not apply to it."""
  if missing(v):
    return ""
  try:
    return fmt.format(v)
  except (ValueError, TypeError):
    return str(v)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  """A markdown table of ``headers`` and ``rows`` of formatted cells (no trailing newline)."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
  lines += ["| " + " | ".join(cells) + " |" for cells in rows]
  return "\n".join(lines)


def frame_table(frame: Any, columns: Sequence[tuple[str, str, str]]) -> str:
  """The rows of DataFrame ``frame`` as a markdown table of ``columns``, ``(column, header, format)`` triples."""
  return table([h for _, h, _ in columns], ([cell(f, r[c]) for c, _, f in columns] for _, r in frame.iterrows()))


__all__ = ["cell", "table", "frame_table"]
