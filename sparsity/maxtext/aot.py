"""Ahead-of-time compilation of every program of a sparse run for a TPU topology, on any host.

``python MaxText/train_compile.py <yml> compile_topology=v5p-128 compile_topology_num_slices=1 [key=value ...]``
takes the argv of ``MaxText/train.py`` plus MaxText's train_compile keys. It installs the pruner exactly as training
does (``sparsity.maxtext.hook``), builds the abstract train state with MaxText's own train_compile functions (so the
masks are in it, sharded like their parameters), and compiles for the target devices:

* ``train_step``: MaxText's train step with the hook's metrics (what ``train.py`` runs every step);
* ``pruning_event``: the program that changes the masks between steps (``sparsity.maxtext.events.StateEvents``),
  with the first event's counts; every event runs this same program (a sparse run only);
* ``zero_mask_event``: the step-0 program of ``init_mask_from_zeros`` (sparse fine-tuning only);
* ``mask_count``: the end of run's count of the kept weights (a sparse run only);
* ``eval_step``: MaxText's eval step on an eval batch.

Per chip (one JAX device per chip on v4, v5e, v5p and v6e), each program's ``memory_analysis()`` and XLA's cost
estimate (``cost_analysis()['optimal_seconds']``, a roofline model of the target chip: an estimate, not a measured
time) are printed as a table and written to ``<base_output_directory>/<run_name>/compile_summary.json``.
``peak_bytes`` of the train step is its arguments + temporaries + outputs not aliased to arguments; the other
programs run while the whole train state is resident, so theirs is the train step's arguments plus their own
temporaries and non-aliased outputs. ``fits`` compares every peak with the chip's HBM; a program the target's compiler
refuses for lack of HBM is recorded as ``{"out_of_memory": <the compiler's message>}``. A run that would not fit
exits with status 3, naming the program.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Any

import jax

from sparsity import files
from sparsity.core import threshold
from sparsity.core.paths import path_str
from sparsity.maxtext import events as events_lib
from sparsity.maxtext import layout, modules

# HBM per chip, as Cloud TPU's documentation gives it (decimal GB: the conservative reading), by the generation
# prefix of MaxText's topology names (maxtext.utils.accelerator_to_spec_map).
HBM_BYTES_PER_CHIP = {"v4": 32 * 10**9, "v5e": 16 * 10**9, "v5p": 95 * 10**9, "v6e": 32 * 10**9}
FITS_EXIT_CODE = 3


class CompileError(ValueError):
  """A configuration that cannot be compiled for the topology (said before anything compiles)."""


def hbm_bytes(topology: str) -> int:
  """HBM per chip of a MaxText topology name such as ``v5p-128``; a CompileError listing the known generations."""
  generation = topology.split("-", 1)[0]
  if generation not in HBM_BYTES_PER_CHIP:
    raise CompileError(f"compile_topology={topology}: HBM per chip is known for {', '.join(HBM_BYTES_PER_CHIP)} "
                       f"(names like v5p-128, v5e-256, v4-128, v6e-256)")
  return HBM_BYTES_PER_CHIP[generation]


def check_topology(config) -> int:
  """The number of devices of the config's target topology; a CompileError for a missing or unknown topology, a
  missing TPU runtime, or a mesh that does not use exactly the topology's devices."""
  topology = str(config.compile_topology)
  if not topology:
    raise CompileError("compile_topology is not set: name the target, e.g. compile_topology=v5p-8 "
                       "compile_topology_num_slices=1")
  if int(config.compile_topology_num_slices) <= 0:
    raise CompileError("compile_topology_num_slices must be a positive integer (e.g. 1)")
  known = modules.accelerators().UserFacingNameToSystemCharacteristics
  tpus = sorted((n for n, s in known.items() if s.platform == "tpu" and n.split("-", 1)[0] in HBM_BYTES_PER_CHIP),
                key=lambda n: (n.split("-")[0], int(n.split("-")[1])))
  if topology not in known or known[topology].platform != "tpu":
    raise CompileError(f"unknown compile_topology={topology!r}; known TPU topologies: {', '.join(tpus)}")
  hbm_bytes(topology)
  if importlib.util.find_spec("libtpu") is None:
    raise CompileError("compiling for a TPU needs the TPU runtime (libtpu) in this environment: run `bash setup.sh` "
                       "(it installs the pinned libtpu), or `pip install 'libtpu==0.0.50.*'` for jax 0.12.0.1")
  per_slice, slices = known[topology].devices_per_slice, int(config.compile_topology_num_slices)
  for kind, values, want in (("ici", config.ici_parallelism, per_slice), ("dcn", config.dcn_parallelism, slices)):
    fixed = 1
    for v in values:
      fixed *= 1 if int(v) == -1 else int(v)
    fill = sum(int(v) == -1 for v in values)
    if fill > 1 or (fill == 0 and fixed != want) or (fill == 1 and want % fixed):
      given = {f"{kind}_{a}_parallelism": int(v) for a, v in zip(config.mesh_axes, values) if int(v) != 1}
      raise CompileError(
          f"the mesh's {kind}_* parallelisms ({given or 'all 1'}) do not divide compile_topology={topology} x "
          f"{slices} slice(s): their product must be {want} ({'devices per slice' if kind == 'ici' else 'slices'}; "
          "at most one axis may be -1 to take the rest)")
  devices = per_slice * slices
  return devices


def shard_bytes(leaves) -> int:
  """Bytes of the largest shard of each array (what one chip holds), summed; a leaf's ``sharding`` may be a
  ``jax.sharding.Sharding`` or a ``Format`` holding one (a lowered program's ``out_info``)."""
  total = 0
  for x in leaves:
    sharding = getattr(x, "sharding", None)
    sharding = getattr(sharding, "sharding", sharding)  # a Format's
    shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
    n = 1
    for d in shape:
      n *= int(d)
    total += n * x.dtype.itemsize  # (a PRNG key type says its own)
  return total


_COLLECTIVE = re.compile(r"=\s*(\S.*?)\s+(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)"
                         r"(?:-start)?\(")


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """``{op: {"count", "max_elements"}}`` of the cross-device collectives in a compiled program's HLO text."""
  out: dict[str, dict[str, int]] = {}
  for shape, op in _COLLECTIVE.findall(hlo_text):
    sizes = [1]
    for dims in re.findall(r"\w+\[([\d,]*)\]", shape):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      sizes.append(n)
    entry = out.setdefault(op, {"count": 0, "max_elements": 0})
    entry["count"] += 1
    entry["max_elements"] = max(entry["max_elements"], max(sizes))
  return out


def program_figures(compiled) -> dict[str, Any]:
  """Per-chip bytes, XLA's estimated seconds and the cross-device collectives of a compiled program."""
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
  seconds = cost.get("optimal_seconds")
  return {
      "argument_bytes": int(mem.argument_size_in_bytes),
      "temp_bytes": int(mem.temp_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "alias_bytes": int(mem.alias_size_in_bytes),
      "code_bytes": int(mem.generated_code_size_in_bytes),
      "estimated_seconds": None if seconds is None or seconds < 0 else float(seconds),
      "collectives": collectives(compiled.as_text()),
  }


def lowered_figures(lowered) -> dict[str, Any]:
  """What a lowered (not compiled) program returns per chip: the bytes of its outputs' shards, from the shapes, dtypes
  and shardings it was lowered with (``out_info``)."""
  return {"lowered": True, "output_bytes": shard_bytes(jax.tree_util.tree_leaves(lowered.out_info))}


def _peaks(programs: dict[str, dict]) -> None:
  """Each compiled program's ``peak_bytes`` (see the module docstring); without a compiled train step, the other
  programs' own buffers only (a lower bound)."""
  resident = programs["train_step"]["argument_bytes"] if "train_step" in programs else 0
  for name, p in programs.items():
    base = p["argument_bytes"] if name == "train_step" else resident
    p["peak_bytes"] = base + p["temp_bytes"] + p["output_bytes"] - p["alias_bytes"] + p["code_bytes"]


class _Programs:
  """The programs of a run by name: compiled for the target (or, with ``lower_only``, only lowered), and those the
  target's compiler refused for lack of HBM (recorded with its message, not raised)."""

  def __init__(self, mesh, options: dict, lower_only: bool):
    self.mesh, self.options, self.lower_only = mesh, options, lower_only
    self.compiled: dict[str, Any] = {}
    self.out_of_memory: dict[str, str] = {}

  def add(self, name: str, lowered) -> None:
    if self.lower_only:
      self.compiled[name] = lowered
      return
    try:
      self.compiled[name] = lowered.compile(compiler_options=self.options)
    except jax.errors.JaxRuntimeError as e:  # as MaxText's train_compile.is_oom tells an out-of-memory compile
      message = str(e)
      if "resource_exhausted" not in message.lower() and "hbm" not in message.lower():
        raise
      self.out_of_memory[name] = next((line for line in message.splitlines() if "HBM" in line),
                                      message.splitlines()[0])

  def lower(self, signature, args, rules, **kwargs):
    """MaxText's ``get_functional_*_with_signature`` result jitted and lowered as MaxText's train loop does."""
    from flax.core.spmd import logical_axis_rules  # pylint: disable=import-outside-toplevel

    func, in_s, out_s, static, donate = signature
    with jax.set_mesh(self.mesh), logical_axis_rules(rules):
      return jax.jit(func, in_shardings=in_s, out_shardings=out_s, static_argnums=static,
                     donate_argnums=donate).lower(*args, **kwargs)

  def figures(self, hbm: int) -> dict[str, Any]:
    """``programs`` (each one's ``program_figures`` and ``peak_bytes``, or ``out_of_memory``), ``fits`` and
    ``programs_over_hbm`` against ``hbm`` bytes per chip."""
    programs = {name: program_figures(c) for name, c in self.compiled.items()}
    _peaks(programs)
    programs.update({name: {"out_of_memory": message} for name, message in self.out_of_memory.items()})
    too_big = [n for n, p in programs.items() if "out_of_memory" in p or p["peak_bytes"] > hbm]
    return {"programs": programs, "fits": not too_big, "programs_over_hbm": too_big}


def _mask_programs(programs: _Programs, run, state) -> None:
  """A sparse run's programs on the masks: the first pruning event, the step-0 zero mask of
  ``init_mask_from_zeros``, the end of run's count."""
  state_events = events_lib.StateEvents(run.plan, state, start_step=None)
  kinds = []
  if run.plan.schedule.prune_steps:
    kinds.append(("pruning_event", run.plan.schedule.prune_steps[0]))
  if run.plan.init_mask_from_zeros:
    kinds.append(("zero_mask_event", 0))
  for name, step in kinds:
    programs.add(name, state_events.lower(state, events_lib.abstract(state_events.due(step))))
  programs.add("mask_count", jax.jit(threshold.count_true).lower(events_lib.mask_leaves(state)))


def _run_figures(config, run, state, devices: int) -> dict[str, Any]:
  """The summary's description of the run: topology, chips, HBM, sparsity keys, counts, and per chip the bytes of
  the prunable weights and of the masks."""
  by_path = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  masks = [x for p, x in by_path.items() if layout.state_mask_path(p)]
  params = {layout.state_param_path(p): x for p, x in by_path.items() if layout.state_param_path(p)}
  prunable = [x for p, x in params.items() if run.plan is not None and run.plan.is_prunable(p)]
  return {
      "compile_topology": str(config.compile_topology),
      "compile_topology_num_slices": int(config.compile_topology_num_slices),
      "chips": devices,
      "hbm_bytes_per_chip": hbm_bytes(str(config.compile_topology)),
      "target_sparsity": float(config.target_sparsity),
      "pruning_structure": str(config.pruning_structure),
      "pruning_scope": str(config.pruning_scope),
      "prunable_params": int(run.prunable) if run.plan is not None else 0,
      "total_params": int(run.total),
      "prunable_bytes_per_chip": shard_bytes(prunable),
      "mask_bytes_per_chip": shard_bytes(masks),
      "estimates": "XLA's cost model of the target chip (cost_analysis()['optimal_seconds']): not measured times",
  }


def compile_programs(config, run, lower_only: bool = False) -> dict[str, Any]:
  """Compiles (or with ``lower_only``, only lowers: a trace check that needs no TPU compiler time) every program of
  the run of ``config`` (loaded by ``load``, with ``run``: the ``hook.Run`` its hooks share) for its topology; returns
  the summary."""
  if config.enable_diloco:
    raise CompileError("enable_diloco=true: the ahead-of-time compile of a sparse run covers MaxText's standard "
                       "train step only")
  devices = check_topology(config)
  tc, mu, sh, train = modules.train_compile(), modules.maxtext_utils(), modules.sharding(), modules.train()
  mesh = tc.get_topology_mesh(config)
  run.ahead_of_time = True
  try:
    shaped_args, shaped_kwargs, state_shardings, _, model = tc.get_shaped_inputs(mesh, config)
  finally:
    run.ahead_of_time = False
  params_shardings, state_shardings = sh.maybe_update_params_sharding_with_opt(config, state_shardings)
  input_state_shardings = sh.build_zero1_input_state_mesh_shardings(config, state_shardings, params_shardings)
  programs = _Programs(mesh, modules.max_utils().parse_libtpu_flags_to_dict(config.compile_xla_flags), lower_only)

  data_sharding = sh.get_input_data_sharding(config, mesh)
  programs.add("train_step", programs.lower(mu.get_functional_train_with_signature(
      train.train_step, data_sharding, input_state_shardings, model, config, params_shardings),
      shaped_args, config.logical_axis_rules, **shaped_kwargs))
  run.require("optimizers.get_optimizer", "train.train_step")  # else the program compiled is the dense one
  state = shaped_args[0]
  if run.sparse:
    _mask_programs(programs, run, state)
  eval_sharding = sh.get_input_data_sharding(config, mesh, rules=config.logical_axis_rules_for_eval)
  eval_batch = mu.get_shaped_batch(config, batch_sharding=eval_sharding, is_eval=True)
  programs.add("eval_step", programs.lower(mu.get_functional_eval_with_signature(
      train.eval_step, eval_sharding, state_shardings, model, config), (state, eval_batch),
      config.logical_axis_rules_for_eval))

  summary = _run_figures(config, run, state, devices)
  if lower_only:
    return {**summary, "programs": {name: lowered_figures(p) for name, p in programs.compiled.items()}}
  summary.update(programs.figures(summary["hbm_bytes_per_chip"]))
  if config.compiled_trainstep_file and "train_step" in programs.compiled:
    tc.save_compiled(programs.compiled["train_step"], config.compiled_trainstep_file)
  return summary


def table(summary: dict[str, Any]) -> str:
  """The summary's programs as a text table (GB per chip, estimated seconds)."""
  gb = lambda b: f"{b / 1e9:9.3f}"  # noqa: E731
  rows = [f"{summary['compile_topology']} x {summary['compile_topology_num_slices']} ({summary['chips']} chips, "
          f"{summary['hbm_bytes_per_chip'] / 1e9:g} GB HBM each); prunable weights {gb(summary['prunable_bytes_per_chip'])}"
          f" GB, masks {gb(summary['mask_bytes_per_chip'])} GB per chip",
          f"{'program':<16}{'args GB':>10}{'temp GB':>10}{'out GB':>10}{'peak GB':>10}{'est. s':>11}"]
  for name, p in summary["programs"].items():
    if "out_of_memory" in p:
      rows.append(f"{name:<16}out of HBM: {p['out_of_memory']}")
      continue
    est = "-" if p["estimated_seconds"] is None else f"{p['estimated_seconds']:.5f}"
    rows.append(f"{name:<16}{gb(p['argument_bytes'])} {gb(p['temp_bytes'])} {gb(p['output_bytes'])} "
                f"{gb(p['peak_bytes'])} {est:>10}")
  rows.append("fits in HBM: yes" if summary["fits"] else f"fits in HBM: NO ({', '.join(summary['programs_over_hbm'])})")
  rows.append("(estimated seconds are XLA's cost model for the target chip, not measured TPU times)")
  return "\n".join(rows)


def write(summary: dict[str, Any], config) -> str:
  """Writes ``compile_summary.json`` (strict JSON, atomically: ``sparsity.files.write_json``); returns its path."""
  return files.write_json(layout.compile_summary_path(layout.run_dir(config.base_output_directory, config.run_name)),
                          summary)


def load(argv):
  """``(config, run)``: the config of MaxText argv ``[program, yml, key=value, ...]`` with the pruner's hooks
  installed, and the ``hook.Run`` they share."""
  from sparsity.maxtext import hook  # pylint: disable=import-outside-toplevel

  run = hook.install()
  config = modules.pyconfig().initialize(list(argv))
  # MaxText points JAX's persistent cache at jax_cache_dir; executables for absent TPUs cannot be read back here.
  jax.config.update("jax_enable_compilation_cache", False)
  return config, run


def trace(argv) -> dict[str, Any]:
  """Every program of the run of ``argv`` traced and lowered for its topology, not compiled (seconds, no memory):
  the check that a configuration of any size traces (e.g. counts past 2**31)."""
  return compile_programs(*load(argv), lower_only=True)


def main(argv) -> None:
  """``MaxText/train_compile.py``: load the config with the hook installed, compile, print, write, exit."""
  # As MaxText's train_compile.main: the TPU's RNG settings that training on TPU uses.
  jax.config.update("jax_default_prng_impl", "unsafe_rbg")
  os.environ["LIBTPU_INIT_ARGS"] = os.environ.get("LIBTPU_INIT_ARGS", "") + " --xla_tpu_spmd_rng_bit_generator_unsafe=true"
  try:
    config, run = load(argv)
  except ValueError as e:  # MaxText's pydantic validation (e.g. an unknown compile_topology, with the valid names)
    print(f"train_compile: invalid configuration: {e}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
  try:
    summary = compile_programs(config, run)
  except CompileError as e:
    print(f"train_compile: {e}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
  print(table(summary), flush=True)
  print(f"compile summary written to {write(summary, config)}", flush=True)
  if not summary["fits"]:
    print(f"train_compile: does not fit in {summary['hbm_bytes_per_chip'] / 1e9:g} GB of HBM per chip: "
          f"{', '.join(summary['programs_over_hbm'])}", file=sys.stderr, flush=True)
    raise SystemExit(FITS_EXIT_CODE)


__all__ = ["HBM_BYTES_PER_CHIP", "CompileError", "check_topology", "compile_programs", "hbm_bytes", "load", "main",
           "table", "trace", "write"]
