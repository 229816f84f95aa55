"""Parameter paths: how a pytree leaf is named ('decoder/layers/mlp/wi_0/kernel'), and nesting by those names.

Every part of the project names parameters this way: the pruner's regexes match these strings, its masks are
nested dicts keyed by their parts, and checkpoints, exports and reports list them.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax


def path_str(path) -> str:
  """'decoder/layers/mlp/wi_0/kernel' from a pytree key path (dict keys, attributes, indices).

  A ``.value`` attribute (how a variable wrapper such as ``nnx.Variable`` holds its array) is not part
  of the parameter's name; a dict key named 'value' (the attention value projection) is.
  """
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":
        parts.append(k.name)
    elif isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(getattr(k, "key", getattr(k, "name", k))))
  return "/".join(parts)


def flatten(tree, is_leaf: Callable[[Any], bool] | None = None) -> tuple[list[tuple[str, Any]], Any]:
  """``([(path, leaf), ...], treedef)`` in the tree's leaf order."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [(path_str(p), x) for p, x in leaves], treedef


def nest(flat: dict) -> dict:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (the inverse of ``unnest``)."""
  out: dict = {}
  for path, v in flat.items():
    node = out
    *head, last = path.split("/")
    for h in head:
      node = node.setdefault(h, {})
    node[last] = v
  return out


def unnest(tree, prefix: str = "") -> dict:
  """{'a': {'b': {'c': x}}} -> {'a/b/c': x} for nested mappings (dicts or flax ``State``)."""
  out = {}
  for k, v in tree.items():
    p = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict) or hasattr(v, "items") and not hasattr(v, "shape"):
      out.update(unnest(v, p))
    else:
      out[p] = v
  return out


def shape_of(x) -> tuple[int, ...]:
  """The shape of an array or array-like leaf (a variable wrapper, a ``ShapeDtypeStruct``); () for scalars."""
  return tuple(int(d) for d in getattr(x, "shape", ()))


def size_of(x) -> int:
  """Number of entries of ``shape_of(x)`` (an exact Python int, past 2**31 too)."""
  return math.prod(shape_of(x))


__all__ = ["path_str", "flatten", "nest", "unnest", "shape_of", "size_of"]
