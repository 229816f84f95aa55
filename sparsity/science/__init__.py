"""The science around sparse pre-training, NumPy/SciPy only (no JAX, no MaxText).

  scaling_laws       Chinchilla, the paper's average-parameter law and Frantar et al.'s: fit, predict
  planning           parameter counts, schedules' N_avg and FLOPs, dense matching, law-based choices
  plots              figures of fits
"""
