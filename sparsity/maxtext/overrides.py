"""MaxText's command-line overrides (``key=value``): how a value reads, one rule for every reader (no MaxText import).

MaxText 0.2.5 reads a value with OmegaConf's YAML grammar (``pyconfig``: ``OmegaConf.from_cli``), and the sparsity
keys then validate it (``sparsity.core.config.SparsityKeys``). ``read_value`` is that reading, as the sweep
(``sparsity.experiments.sweep.parse_value``: expressions compute with it) and ``collect`` (a run's config values,
numbers in its table) use it:

* YAML 1.1 as MaxText's config files read it: ``0.01`` and ``1_000`` numbers, ``true`` a boolean, ``[1, 2]`` a
  list, ``null`` or nothing None; text that is not valid YAML stays text;
* ``1e-3`` (an exponent without a decimal point, text in YAML 1.1) a number, as OmegaConf reads it;
* an integer written with ``:`` stays text: YAML 1.1 reads ``2:4`` as the base-60 integer 124, but it is the N:M
  structure (``pruning_structure``; ``SparsityKeys`` reads 124 back as ``2:4``);
* a date (``2024-01-01``) stays text, as OmegaConf keeps it.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import yaml

# A float with an exponent and no decimal point (YAML 1.2 and OmegaConf read it as a number, YAML 1.1 as text).
_EXPONENT_FLOAT = re.compile(r"[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+")


def read_value(text: str) -> Any:
  """The value of an override ``key=text`` (see the module docstring)."""
  try:
    value = yaml.safe_load(text)
  except yaml.YAMLError:
    return text
  if isinstance(value, int) and not isinstance(value, bool) and ":" in text:
    return text
  if isinstance(value, datetime.date):  # datetimes too
    return text
  if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(text.strip()):
    return float(text.strip().replace("_", ""))
  return value


__all__ = ["read_value"]
