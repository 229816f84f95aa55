"""Reading a MaxText YAML file with its ``base_config`` chain, without importing MaxText (no JAX start-up).

Same rules as MaxText 0.2.5's ``pyconfig._load_config``: a relative ``base_config`` is looked up next to
the file that names it, then in MaxText's own ``configs`` directory; the child's keys override its base's
(``OmegaConf.merge``). Command-line overrides and MaxText's derived keys (e.g. ``global_batch_size_to_train_on``)
are not applied: use ``sparsity.maxtext.config.load_config`` for the validated config.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from typing import Any

import omegaconf


def maxtext_configs_dir() -> str:
  """MaxText's installed ``configs`` directory (found without importing MaxText)."""
  spec = importlib.util.find_spec("maxtext")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the maxtext package is not installed (run setup.sh)")
  return os.path.join(list(spec.submodule_search_locations)[0], "configs")


def chain(path: str) -> list[str]:
  """The files of ``path``'s chain, ``path`` first and MaxText's ``base.yml`` (or the root) last."""
  files = []
  current = os.path.abspath(path)
  while True:
    if not os.path.isfile(current):
      raise FileNotFoundError(current)
    if current in files:
      raise ValueError(f"base_config cycle: {' -> '.join(files + [current])}")
    files.append(current)
    base = _load_file(current, os.path.getmtime(current)).get("base_config")
    if not base:
      return files
    if os.path.isabs(base):
      current = base
    else:
      nxt = os.path.join(os.path.dirname(current), base)
      current = nxt if os.path.isfile(nxt) else os.path.join(maxtext_configs_dir(), base)


@functools.lru_cache(maxsize=256)
def _load_file(path: str, mtime: float) -> omegaconf.DictConfig:  # pylint: disable=unused-argument
  return omegaconf.OmegaConf.load(path)


@functools.lru_cache(maxsize=256)
def _merged(files: tuple[tuple[str, float], ...]) -> dict[str, Any]:
  merged = omegaconf.OmegaConf.create({})
  for f, mtime in reversed(files):
    merged = omegaconf.OmegaConf.merge(merged, _load_file(f, mtime))
  return omegaconf.OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def load(path: str) -> dict[str, Any]:
  """The merged keys of ``path`` and its bases, as plain Python values (interpolations resolved).

  Files are cached by path and modification time; the result is a fresh copy.
  """
  return copy.deepcopy(_merged(tuple((f, os.path.getmtime(f)) for f in chain(path))))


__all__ = ["maxtext_configs_dir", "chain", "load"]
