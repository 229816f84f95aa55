"""The compressed-tensors "sparse-bitmask" format (as llm-compressor and vLLM read it), with NumPy only.

A 2-D weight ``<module>.weight`` of shape (R, C) is stored as four tensors (the layout of
``compressed_tensors.compressors.sparse_compressors.sparse_bitmask.BitmaskCompressor``, compressed-tensors
<= 0.13; the test suite checks it against that library):

* ``<module>.compressed``: the nonzero values in row-major order (1-D, the weight's dtype);
* ``<module>.bitmask``: ``numpy.packbits(weight != 0, axis=-1, bitorder="little")``, uint8 (R, ceil(C/8));
* ``<module>.shape``: int64 [R, C];
* ``<module>.row_offsets``: int64 (R,), index in ``compressed`` where each row starts.

``config.json`` gets the ``quantization_config`` block that ``ModelCompressor.update_config`` writes for a
sparsity-only model (``quant_method: compressed-tensors``, ``sparsity_config.format: sparse-bitmask``).
"""

from __future__ import annotations

import numpy as np

FORMAT = "sparse-bitmask"
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


def compression_config(global_sparsity: float, ignore: list[str]) -> dict:
  """The ``quantization_config`` entry of ``config.json`` for a sparsity-only compressed model."""
  return {
      "quant_method": "compressed-tensors",
      "version": COMPRESSED_TENSORS_VERSION,
      "sparsity_config": {
          "format": FORMAT,
          "global_sparsity": float(global_sparsity),
          "sparsity_structure": "unstructured",
          "targets": ["Linear"],
          "ignore": list(ignore),
          "registry_requires_subclass": False,
      },
      "transform_config": {},
  }
