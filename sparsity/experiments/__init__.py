"""Running experiments and reading their results.

  sweep        sweep files expanded into MaxText runs; the resumable local launcher
  xpk          one ``xpk workload create`` per run of a sweep
  expressions  the safe expression language of sweep files
  results      run summaries (or a CSV) as the table the laws read
  collect      a sweep's results table (summaries joined with the sweep manifest)
  report       figures and a markdown table of a sweep
  dense_sweep  the dense runs matched to the paper's sparse runs by N_avg
"""
