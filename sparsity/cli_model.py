"""Commands registered with sparsity.cli (being written)."""
