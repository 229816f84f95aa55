"""Prunes exported weights with the authors' fork's own ``prune()`` (its ``MaxText/train.py``), under the fork's Python.

  <fork venv>/bin/python tools/authors_fork/fork_prune.py --fork <checkout> --weights in.npz --keep-fraction F \\
      --out out.npz

``in.npz`` holds ``<path>/kernel`` arrays and their current masks ``<path>/mask`` (0/1), plus any other parameter
(written by ``compare_masks.py``). The tree is nested by path with each mask beside its kernel, the layout of the
fork's ``DenseGeneral`` (a float ``mask`` parameter beside ``kernel``), and handed to ``prune(state,
percent_to_keep, "none", "", "magnitude")`` unchanged. ``out.npz`` holds the masks it returns and its metrics.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def nest(flat: dict) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def flat_masks(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flat_masks(v, f"{prefix}{k}/"))
    elif k == "mask":
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fork", required=True)
  parser.add_argument("--weights", required=True)
  parser.add_argument("--keep-fraction", type=float, required=True, help="the fork's percent_to_keep (of all)")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  sys.path.insert(0, os.path.join(os.path.abspath(args.fork), "MaxText"))
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import struct  # pylint: disable=import-outside-toplevel
  import train  # pylint: disable=import-outside-toplevel  (the fork's MaxText/train.py)

  @struct.dataclass
  class State:  # what prune() reads and returns: .params and .replace(params=...)
    params: dict

  with np.load(args.weights) as data:
    params = nest({k: jnp.asarray(data[k], jnp.float32) for k in data.files})
  new_state, metrics = train.prune(State(params), args.keep_fraction, "none", "", "magnitude")
  out = {k: v.astype(np.float32) for k, v in flat_masks(new_state.params).items()}
  out.update({f"metric:{k}": np.asarray(v) for k, v in metrics.items()})
  np.savez(args.out, **out)
  print(f"fork prune: {len(out)} arrays written to {args.out}")


if __name__ == "__main__":
  main()
