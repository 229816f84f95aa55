"""Sparse pre-training for MaxText: masks, an exact global magnitude pruner, schedules, accounting, scaling laws."""

__version__ = "0.1.0"
