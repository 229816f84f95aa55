"""The compressed-tensors "sparse-bitmask" and "sparse-24-bitmask" formats (as llm-compressor read them), NumPy only.

A 2-D weight ``<module>.weight`` of shape (R, C) is stored as four tensors (the layout of
``compressed_tensors.compressors.sparse_compressors.sparse_bitmask.BitmaskCompressor``, compressed-tensors
<= 0.13; the test suite checks it against that library):

* ``<module>.compressed``: the nonzero values in row-major order (1-D, the weight's dtype);
* ``<module>.bitmask``: ``numpy.packbits(weight != 0, axis=-1, bitorder="little")``, uint8 (R, ceil(C/8));
* ``<module>.shape``: int64 [R, C];
* ``<module>.row_offsets``: int64 (R,), index in ``compressed`` where each row starts.

``config.json`` gets the ``quantization_config`` block that ``ModelCompressor.update_config`` writes for a
sparsity-only model (``quant_method: compressed-tensors``, ``sparsity_config.format: sparse-bitmask``).

"sparse-24-bitmask" (``Sparse24BitMaskCompressor``; a 2-D weight whose every group of 4 consecutive entries along
its last axis, the input dimension of a Hugging Face ``(out, in)`` weight, holds at most 2 non-zeros):

* ``<module>.compressed``: the 2 kept values of every group, ``(R, C/2)``, the weight's dtype;
* ``<module>.bitmask``: ``numpy.packbits(kept, axis=-1, bitorder="little")``, uint8 ``(R, ceil(C/8))``;
* ``<module>.shape``: int64 ``[[R], [C]]``.

The 2 kept entries of a group are its non-zeros (first by position when a group has fewer than 2).
"""

from __future__ import annotations

import numpy as np

FORMAT = "sparse-bitmask"
FORMAT_24 = "sparse-24-bitmask"
SUFFIXES_24 = ("compressed", "bitmask", "shape")
SUFFIXES = ("compressed", "bitmask", "shape", "row_offsets")
# The last compressed-tensors release with the sparse-bitmask compressor (later ones keep only its config).
COMPRESSED_TENSORS_VERSION = "0.13.0"


def compress(weight: np.ndarray) -> dict[str, np.ndarray]:
  """{suffix: array} of one 2-D weight (suffixes as in ``SUFFIXES``)."""
  if weight.ndim != 2:
    raise ValueError(f"sparse-bitmask stores 2-D weights, got shape {weight.shape}")
  nonzero = weight != 0
  row_counts = nonzero.sum(axis=-1, dtype=np.int64)
  return {
      "compressed": np.ascontiguousarray(weight[nonzero]),
      "bitmask": np.packbits(nonzero, axis=-1, bitorder="little"),
      "shape": np.asarray(weight.shape, dtype=np.int64),
      "row_offsets": np.cumsum(row_counts, dtype=np.int64) - row_counts,
  }


def decompress(parts: dict[str, np.ndarray]) -> np.ndarray:
  """The dense weight back from ``compress``'s parts."""
  shape = tuple(int(d) for d in parts["shape"])
  nonzero = np.unpackbits(parts["bitmask"], axis=-1, count=shape[-1], bitorder="little").reshape(shape).astype(bool)
  out = np.zeros(shape, dtype=parts["compressed"].dtype)
  out[nonzero] = parts["compressed"]
  return out


def kept_24(weight: np.ndarray) -> np.ndarray:
  """The 2 entries kept of every group of 4 along the last axis: the non-zeros, then the first zeros."""
  if weight.ndim != 2 or weight.shape[-1] % 4:
    raise ValueError(f"sparse-24-bitmask stores 2-D weights whose last axis is a multiple of 4, got {weight.shape}")
  g = (weight != 0).reshape(-1, 4)
  if np.any(g.sum(-1) > 2):
    raise ValueError("the weight is not 2:4 sparse along its input dimension (a group of 4 holds more than 2 non-zeros)")
  # rank: non-zeros first, then by position; keep the first two of each group
  order = np.argsort(~g, axis=-1, kind="stable")[:, :2]
  kept = np.zeros_like(g)
  np.put_along_axis(kept, order, True, axis=-1)
  return kept.reshape(weight.shape)


def compress_24(weight: np.ndarray) -> dict[str, np.ndarray]:
  """{suffix: array} of one 2:4-sparse 2-D weight (suffixes as in ``SUFFIXES_24``)."""
  kept = kept_24(weight)
  rows, cols = weight.shape
  return {
      "compressed": np.ascontiguousarray(weight[kept].reshape(rows, cols // 2)),
      "bitmask": np.packbits(kept, axis=-1, bitorder="little"),
      "shape": np.asarray(weight.shape, dtype=np.int64).reshape(-1, 1),
  }


def decompress_24(parts: dict[str, np.ndarray]) -> np.ndarray:
  """The dense weight back from ``compress_24``'s parts."""
  shape = tuple(int(d) for d in np.asarray(parts["shape"]).reshape(-1))
  kept = np.unpackbits(parts["bitmask"], axis=-1, count=shape[-1], bitorder="little").reshape(shape).astype(bool)
  out = np.zeros(shape, dtype=parts["compressed"].dtype)
  out[kept] = parts["compressed"].reshape(-1)
  return out


def compression_config(global_sparsity: float, ignore: list[str], structure: str = "unstructured") -> dict:
  """The ``quantization_config`` entry of ``config.json`` for a sparsity-only compressed model (``structure``
  '2:4': the sparse-24-bitmask format)."""
  return {
      "quant_method": "compressed-tensors",
      "version": COMPRESSED_TENSORS_VERSION,
      "sparsity_config": {
          "format": FORMAT_24 if structure == "2:4" else FORMAT,
          "global_sparsity": float(global_sparsity),
          "sparsity_structure": structure,
          "targets": ["Linear"],
          "ignore": list(ignore),
          "registry_requires_subclass": False,
      },
      "transform_config": {},
  }
