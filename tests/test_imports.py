"""No two modules of ``sparsity`` import each other, directly or through others.

The import graph is read from the source with ``ast``: every ``import`` and ``from ... import`` statement, at module
level or inside a function, relative or absolute, resolved to the module it names (``from a.b import c`` names the
module ``a.b.c`` when that is a module of the package, else ``a.b``). A cycle is reported as the chain of modules.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "sparsity"


def modules(root: str = ROOT, package: str = PACKAGE) -> dict[str, str]:
  """``{module name: file path}`` of every ``.py`` file of the package (``__init__`` as the package's name)."""
  out = {}
  for folder, _, files in os.walk(os.path.join(root, package)):
    for name in files:
      if name.endswith(".py"):
        parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
  return out


def imported(module: str, path: str, known: set[str]) -> set[str]:
  """The modules of ``known`` that ``module`` (file ``path``) imports anywhere in its body."""
  is_package = path.endswith("__init__.py")
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the package of ``module`` (itself when it is a package), up level - 1
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    for name in names:
      while name and name not in known:  # ``import a.b.c`` of a name inside a module: the module
        name = name.rpartition(".")[0]
      if name and name != module:
        out.add(name)
  return out


def graph(root: str = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
  mods = modules(root, package)
  return {m: imported(m, p, set(mods)) for m, p in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
  """One cycle ``[a, b, ..., a]`` of the directed graph, or None (depth-first search, three colours)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(edges):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_graph_is_read_from_every_kind_of_import(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("from . import c\n")
  (pkg / "a.py").write_text("import pkg.sub.c\n")
  (pkg / "b.py").write_text("def f():\n  from pkg import a\n  return a\n")
  (pkg / "sub" / "c.py").write_text("from ..b import f\nfrom pkg.sub import d\n")
  (pkg / "sub" / "d.py").write_text("import os\n")
  edges = graph(str(tmp_path), "pkg")
  assert edges == {"pkg": set(), "pkg.sub": {"pkg.sub.c"}, "pkg.a": {"pkg.sub.c"}, "pkg.b": {"pkg.a"},
                   "pkg.sub.c": {"pkg.b", "pkg.sub.d"}, "pkg.sub.d": set()}
  assert find_cycle(edges) == ["pkg.a", "pkg.sub.c", "pkg.b", "pkg.a"]
  edges["pkg.sub.c"].discard("pkg.b")
  assert find_cycle(edges) is None


def test_no_module_of_the_package_imports_itself_through_others():
  edges = graph()
  assert len(edges) > 40 and "sparsity.core.compute" in edges
  cycle = find_cycle(edges)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)
