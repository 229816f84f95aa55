"""A trained checkpoint as a model: inspect it, export it, generate with it.

  inspection      per-tensor and total sparsity and pruning state of a checkpoint (``inspect``)
  export          a Hugging Face ``LlamaForCausalLM`` directory, masks applied (``export``)
  sparse_bitmask  the compressed-tensors sparse-bitmask storage format, NumPy only
  generate        text from a checkpoint with MaxText's own decode engine; MaxText's forward pass
"""
