"""A trained checkpoint as a model: inspect it, export it, import one, generate with it.

  inspection      per-tensor and total sparsity and pruning state of a checkpoint (``inspect``)
  hf_mapping      a family in Hugging Face terms through MaxText's own conversion tables and transformers' config classes
  export          a Hugging Face model directory of any mapped family, masks applied (``export``)
  hf_import       a Hugging Face checkpoint as a MaxText checkpoint for ``load_parameters_path`` (``import``)
  sparse_bitmask  the compressed-tensors sparse-bitmask storage format, NumPy only
  generate        text from a checkpoint with MaxText's own decode engine; MaxText's forward pass
"""
