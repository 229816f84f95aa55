"""Pages generated from the code and the committed results, so that they cannot drift from them.

Directives (in MyST pages, except ``sparsity-api``, which emits reStructuredText for autodoc: use it inside
``{eval-rst}``):

* ``sparsity-keys``: every sparsity key of ``sparsity.core.config.SparsityKeys`` (type, default, meaning from the
  pydantic model) and its value in ``configs/sparse_base.yml``.
* ``summary-fields``: every field of ``sparsity_summary.json`` (``sparsity.summary_fields.FIELDS``).
* ``sparsity-cli``: ``python -m sparsity --help`` and every command's ``--help``, from ``sparsity.cli.build_parser``.
* ``sparsity-api``: autodoc of every public name of ``sparsity`` (``sparsity._EXPORTS``).
* ``results-table NAME``: a results table rendered from ``benchmarks/results/`` or ``results/``: ``tpu_compile``,
  ``families``, ``expert_density``, ``train_overhead``, ``threshold``, ``optimizer_update``.
"""

from __future__ import annotations

import inspect
import json
import os
import typing

import yaml
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(*parts):
  with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
    return yaml.safe_load(f) if parts[-1].endswith(".yml") else json.load(f)


def _code(v) -> str:
  """``v`` as inline code (backticks inside it lengthen the fence)."""
  s = str(v)
  fence = "``" if "`" in s else "`"
  return f"{fence} {s} {fence}" if "`" in s else f"`{s}`"


def list_table(headers, rows, widths=None) -> list[str]:
  """A MyST ``list-table`` (cells are Markdown; pipes need no escaping)."""
  out = ["```{list-table}", ":header-rows: 1"]
  if widths:
    out.append(":widths: " + " ".join(map(str, widths)))
  out.append("")
  for row in [headers, *rows]:
    for i, c in enumerate(row):
      out.append(("* - " if i == 0 else "  - ") + (str(c) if str(c).strip() else " "))
  out.append("```")
  return out


class _Markdown(SphinxDirective):
  """A directive whose output is Markdown text parsed in place."""

  def markdown(self) -> list[str]:
    raise NotImplementedError

  def run(self):
    node = nodes.container()
    self.state.nested_parse(StringList(self.markdown(), source=self.get_source_info()[0]), self.content_offset, node)
    return node.children


# ----------------------------------------------------------------------------------------------------------------
# Sparsity keys and summary fields.
# ----------------------------------------------------------------------------------------------------------------


def _type(annotation) -> str:
  if typing.get_origin(annotation) is typing.Literal:
    return "one of " + ", ".join(_code(a) for a in typing.get_args(annotation))
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  if args and len(args) < len(typing.get_args(annotation)):
    return " or ".join(_type(a) for a in args) + ", or unset"
  return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
  lo = hi = None
  for m in field.metadata:
    for name, sign in (("ge", "["), ("gt", "(")):
      if getattr(m, name, None) is not None:
        lo = f"{sign}{getattr(m, name):g}"
    for name, sign in (("le", "]"), ("lt", ")")):
      if getattr(m, name, None) is not None:
        hi = f"{getattr(m, name):g}{sign}"
  if lo and hi:
    return f" in {lo}, {hi}"
  return f" {'>=' if lo[0] == '[' else '>'} {lo[1:]}" if lo else ""


class SparsityKeysTable(_Markdown):

  def markdown(self):
    from sparsity.core.config import SparsityKeys  # pylint: disable=import-outside-toplevel

    base = _load("configs", "sparse_base.yml")
    rows = []
    for name, field in SparsityKeys.model_fields.items():
      default = "unset" if field.default is None else _code(json.dumps(field.default) if isinstance(
          field.default, bool) else field.default if field.default != "" else "''")
      in_base = _code(base[name]) if name in base else ""
      kind, unset = _type(field.annotation), ", or unset"
      kind = kind[:-len(unset)] + _bounds(field) + unset if kind.endswith(unset) else kind + _bounds(field)
      rows.append([_code(name), kind, default, in_base, field.description or ""])
    return list_table(["key", "type", "default", "`sparse_base.yml`", "meaning"], rows, widths=[14, 14, 12, 10, 50])


class SummaryFieldsTable(_Markdown):

  def markdown(self):
    from sparsity.summary_fields import FIELDS  # pylint: disable=import-outside-toplevel

    return list_table(["field", "meaning"], [[_code(k), v] for k, v in FIELDS.items()], widths=[30, 70])


# ----------------------------------------------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------------------------------------------


class SparsityCli(SphinxDirective):
  """One section per command: its one-line help and its ``--help`` text, as argparse prints it."""

  def run(self):
    import argparse  # pylint: disable=import-outside-toplevel

    from sparsity import cli  # pylint: disable=import-outside-toplevel

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    try:
      parser = cli.build_parser()
      sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # pylint: disable=protected-access
      out = [nodes.literal_block(text=parser.format_help(), language="text")]
      for name, command in sub.choices.items():
        section = nodes.section(ids=[nodes.make_id("command-" + name)], names=[nodes.fully_normalize_name(name)])
        section += nodes.title(text=name)
        section += nodes.paragraph(text=cli.COMMANDS[name].help)
        section += nodes.literal_block(text=command.format_help(), language="text")
        self.state.document.note_implicit_target(section, section)
        out.append(section)
    finally:
      if columns is None:
        del os.environ["COLUMNS"]
      else:
        os.environ["COLUMNS"] = columns
    return out


# ----------------------------------------------------------------------------------------------------------------
# The Python API.
# ----------------------------------------------------------------------------------------------------------------


class SparsityApi(SphinxDirective):
  """autodoc of ``sparsity._EXPORTS`` (reStructuredText: use inside ``{eval-rst}``)."""

  def run(self):
    import sparsity  # pylint: disable=import-outside-toplevel

    lines = []
    for name in sorted(sparsity._EXPORTS, key=lambda n: (sparsity._EXPORTS[n], n)):  # pylint: disable=protected-access
      obj = getattr(sparsity, name)
      module = sparsity._EXPORTS[name]  # pylint: disable=protected-access
      if inspect.isclass(obj):
        lines += [f".. autoclass:: sparsity.{name}", ""]
      elif callable(obj):
        lines += [f".. autofunction:: sparsity.{name}", ""]
      else:
        lines += [f".. py:data:: sparsity.{name}", f"   :value: {obj!r}"[:2000], "",
                  f"   Defined in ``{module}``.", ""]
    node = nodes.container()
    self.state.nested_parse(StringList(lines, source="sparsity._EXPORTS"), self.content_offset, node)
    return node.children


# ----------------------------------------------------------------------------------------------------------------
# Results tables.
# ----------------------------------------------------------------------------------------------------------------


def _tpu_compile() -> list[str]:
  from benchmarks import tpu_compile  # pylint: disable=import-outside-toplevel

  return tpu_compile.table(_load("benchmarks", "results", "tpu_compile.json")).splitlines()


def _families() -> list[str]:
  from benchmarks import families  # pylint: disable=import-outside-toplevel

  return families.markdown(_load("results", "families", "table.json")["rows"]).splitlines()


def _expert_density() -> list[str]:
  data = _load("results", "families", "expert_density.json")
  per_expert = data["per_expert_density"]
  rows = [[str(layer), *[f"{d:.1%}" for d in dens]] for layer, dens in enumerate(per_expert)]
  lines = list_table(["layer", *[f"expert {e}" for e in range(len(per_expert[0]))]], rows)
  matrices = [[_code(p), f"{min(map(min, d)):.1%} to {max(map(max, d)):.1%}"] for p, d in sorted(data["experts"].items())]
  lines += ["", "Each expert matrix, over the (layer, expert) pairs:", ""] + list_table(["matrix", "density"], matrices)
  other = [[_code(p), f"{d:.1%}"] for p, d in sorted(data["other_kernels"].items())]
  return lines + ["", f"Experts overall: {data['experts_overall']:.1%} of their weights kept; the other kernels:", ""] \
      + list_table(["kernel", "density"], other)


def _train_overhead() -> list[str]:
  rows = []
  for file, label in (("train_overhead.json", ""), ("train_overhead_2of4.json", ", 2:4 structure (50%)")):
    data = _load("benchmarks", "results", file)
    for size, r in data["results"].items():
      sizes = dict(o.split("=") for o in data["sizes"][size])
      shape = (f"width {sizes['base_emb_dim']}, {sizes['base_num_decoder_layers']} layers, vocab {sizes['vocab_size']}, "
               f"seq {sizes['max_target_length']}, batch {sizes['per_device_batch_size']}")
      rows.append([f"{size}{label} ({shape})", f"{r['median_step_seconds']['dense'] * 1e3:.1f} ms",
                   f"{r['step_ratio_sparse_over_dense']:.3f}", f"{r['event_extra_in_steps']:+.2f} steps",
                   f"{r['compile_ratio_sparse_over_dense']:.2f}", f"{r['all_compiles_ratio_sparse_over_dense']:.2f}",
                   f"{r['peak_rss_ratio_sparse_over_dense']:.3f}"])
  return list_table(["model", "dense step", "sparse / dense step", "pruning event, extra",
                     "compile of the step, sparse / dense", "all compiles, sparse / dense",
                     "peak RSS, sparse / dense"], rows)


def _threshold() -> list[str]:
  data = _load("benchmarks", "results", "threshold.json")
  by = {}
  for r in data["rows"]:
    by.setdefault((r["n"], r["dtype"]), {})[r["method"]] = r
  rows = []
  for (n, dtype), m in sorted(by.items()):
    ours = m["ours"]
    cell = lambda k: (f"{m[k]['seconds']:.2f} s ({m[k]['seconds'] / ours['seconds']:.0f}x)"  # noqa: E731
                      if k in m else "not run")
    rows.append([f"{n:.3g} {dtype}", f"{ours['seconds']:.3f} s", cell("sort"), cell("top_k"),
                 f"{ours['xla_temp_bytes'] / ours['weights_bytes']:.1%}", "yes" if ours.get("exact_count") else "no"])
  return list_table(["weights", "ours", "full sort (the authors' fork)", "`lax.top_k` (jaxpruner)",
                     "ours: extra memory / weights", "exact count"], rows)


def _optimizer_update() -> list[str]:
  data = _load("benchmarks", "results", "optimizer_update.json")
  rows = []
  for size, r in data["results"].items():
    t = r["median_update_seconds"]
    rows.append([size, f"{r['prunable_params']:,}", f"{t['dense'] * 1e3:.3f} ms",
                 f"{t['pruned_events_between_steps'] * 1e3:.3f} ms", f"{t['pruned_events_in_update'] * 1e3:.3f} ms"])
  return list_table(["model", "prunable weights", "AdamW update, dense", "pruned (events between steps)",
                     "pruned (events inside the update)"], rows)


RESULTS = {"tpu_compile": _tpu_compile, "families": _families, "expert_density": _expert_density,
           "train_overhead": _train_overhead, "threshold": _threshold, "optimizer_update": _optimizer_update}


class ResultsTable(_Markdown):
  required_arguments = 1
  option_spec = {"class": directives.unchanged}

  def markdown(self):
    name = self.arguments[0]
    if name not in RESULTS:
      raise self.error(f"results-table: unknown table {name!r} (known: {', '.join(RESULTS)})")
    return RESULTS[name]()


def setup(app):
  app.add_directive("sparsity-keys", SparsityKeysTable)
  app.add_directive("summary-fields", SummaryFieldsTable)
  app.add_directive("sparsity-cli", SparsityCli)
  app.add_directive("sparsity-api", SparsityApi)
  app.add_directive("results-table", ResultsTable)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
