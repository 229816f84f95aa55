"""The coupling to MaxText 0.2.5: the only code that knows MaxText's internals and layouts.

  layout      every fact about MaxText's state and checkpoint layout and file names (no MaxText import)
  modules     MaxText's modules, imported late, and the pinned version
  config      MaxText's pydantic config joined with the sparsity keys; ``load_config(argv)``
  hook        the extension points: ``install()``, ``main(argv)``, the checks that they are reached
  events      pruning events as their own jitted program on MaxText's train state
  loop        the training loop wrapper and the end of a run (final evaluation, count, summary)
  status      how a run ended (the summary's end_status), told from MaxText's stop messages (no MaxText import)
  checkpoint  reading MaxText checkpoints on the host (inspect, export, resume checks)
  host        what MaxText needs on a host without an accelerator
  overrides   how a command-line override's value reads (one rule for the sweep and collect; no MaxText import)
  yaml_chain  reading MaxText YAML files with their ``base_config`` chain, without importing MaxText
  launch      N MaxText processes on one machine (MaxText's multi-process CPU path, as XPK starts it)
"""
