"""Files the project writes: strict JSON, written atomically (a reader never sees half a file)."""

from __future__ import annotations

import json
import math
import os
from typing import Any


def finite(value: Any) -> Any:
  """``value`` with every NaN or infinite float replaced by ``None`` (strict JSON has neither)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite(v) for v in value]
  return value


def write_json(path: str, obj: Any, indent: int | None = 2) -> str:
  """Writes ``obj`` as strict JSON to ``path`` through a temporary file and ``os.replace``; returns ``path``.

  Non-finite floats become ``null``. A failed write (a full disk) raises ``OSError`` and leaves any earlier
  ``path`` intact and no temporary file behind.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(finite(obj), f, indent=indent, allow_nan=False)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise
  return path
