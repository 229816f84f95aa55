"""Safe evaluation of the small Python expressions in sweep files (constraints and derived keys).

An expression is parsed with ``ast`` and evaluated by walking the tree; nothing reaches ``eval``. Allowed:

* literals (numbers, strings, booleans, ``None``), tuples and lists of them;
* names, looked up in the given variables only (no builtins, no attributes, no subscripts);
* arithmetic ``+ - * / // % **`` on numbers (exponents limited to ``|b| <= 64``; no repeating strings or
  tuples with ``*``), unary ``- + not``;
* comparisons (``< <= > >= == != in not in``, chained), ``and`` / ``or``, ``a if c else b``;
* calls of the functions in ``FUNCTIONS`` (``abs``, ``min``, ``max``, ``round``, ``int``, ``float``, ``str``,
  ``ceil``, ``floor``, ``isclose``), or of those the caller passes, with positional arguments.

Anything else (attribute access, subscripts, lambdas, comprehensions, keyword arguments, other calls,
``__import__``...) raises ``ValueError`` naming the construct.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Any, Callable, Mapping

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "min": min, "max": max, "round": round, "int": int, "float": float, "str": str,
    "ceil": math.ceil, "floor": math.floor, "isclose": math.isclose,
}

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b}
_MAX_EXPONENT = 64


def parse(expression: str) -> ast.Expression:
  """Parses ``expression`` (one Python expression); ``ValueError`` on a syntax error."""
  if not isinstance(expression, str):
    raise ValueError(f"expression must be a string, got {type(expression).__name__}: {expression!r}")
  try:
    return ast.parse(expression.strip(), mode="eval")
  except SyntaxError as e:
    raise ValueError(f"invalid expression {expression!r}: {e.msg}") from None


def names(expression: str) -> set[str]:
  """The variable names ``expression`` reads (function names excluded)."""
  tree = parse(expression)
  called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
  return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


def evaluate(expression: str, variables: Mapping[str, Any],
             functions: Mapping[str, Callable[..., Any]] | None = None) -> Any:
  """Value of ``expression`` with ``variables`` as the only names in scope.

  ``functions`` (default ``FUNCTIONS``) are the only callables; callers may extend ``FUNCTIONS`` with
  pure functions of their own.

  Raises:
    ValueError: a syntax error, a construct that is not allowed, an unknown name, or an arithmetic error
      (e.g. division by zero), naming the expression.
  """
  tree = parse(expression)
  try:
    return _eval(tree.body, variables, FUNCTIONS if functions is None else functions)
  except ValueError as e:
    raise ValueError(f"in {expression!r}: {e}") from None
  except (ArithmeticError, TypeError) as e:
    raise ValueError(f"in {expression!r}: {type(e).__name__}: {e}") from None


def _eval(node: ast.AST, env: Mapping[str, Any], fns: Mapping[str, Callable[..., Any]]) -> Any:
  if isinstance(node, ast.Constant):
    if isinstance(node.value, (int, float, str, bool)) or node.value is None:
      return node.value
    raise ValueError(f"constant {node.value!r} is not allowed")
  if isinstance(node, ast.Name):
    if node.id not in env:
      raise ValueError(f"unknown name {node.id!r} (known: {', '.join(sorted(env))})")
    return env[node.id]
  if isinstance(node, (ast.Tuple, ast.List)):
    return tuple(_eval(e, env, fns) for e in node.elts)
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
    left, right = _eval(node.left, env, fns), _eval(node.right, env, fns)
    if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT:
      raise ValueError(f"exponent {right} is larger than {_MAX_EXPONENT}")
    if isinstance(node.op, ast.Mult) and any(isinstance(v, (str, tuple)) for v in (left, right)):
      raise ValueError("repeating strings or tuples with * is not allowed")
    return _BINARY[type(node.op)](left, right)
  if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
    return _UNARY[type(node.op)](_eval(node.operand, env, fns))
  if isinstance(node, ast.BoolOp):
    if isinstance(node.op, ast.And):
      value = True
      for v in node.values:
        value = _eval(v, env, fns)
        if not value:
          return value
      return value
    value = False
    for v in node.values:
      value = _eval(v, env, fns)
      if value:
        return value
    return value
  if isinstance(node, ast.Compare):
    left = _eval(node.left, env, fns)
    for op, comp in zip(node.ops, node.comparators):
      if type(op) not in _COMPARE:
        raise ValueError(f"comparison {type(op).__name__} is not allowed")
      right = _eval(comp, env, fns)
      if not _COMPARE[type(op)](left, right):
        return False
      left = right
    return True
  if isinstance(node, ast.IfExp):
    return _eval(node.body, env, fns) if _eval(node.test, env, fns) else _eval(node.orelse, env, fns)
  if isinstance(node, ast.Call):
    if not isinstance(node.func, ast.Name) or node.func.id not in fns:
      raise ValueError(f"only calls of {sorted(fns)} are allowed, got {ast.unparse(node.func)!r}")
    if node.keywords:
      raise ValueError("keyword arguments are not allowed")
    if any(isinstance(a, ast.Starred) for a in node.args):
      raise ValueError("*arguments are not allowed")
    return fns[node.func.id](*(_eval(a, env, fns) for a in node.args))
  raise ValueError(f"{type(node).__name__} ({ast.unparse(node)!r}) is not allowed")


__all__ = ["FUNCTIONS", "parse", "names", "evaluate"]
