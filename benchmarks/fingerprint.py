"""What the checkpoint integrity checks cost (``sparsity.maxtext.integrity``): the device work done at each save and
before a resumed run's first step (the fingerprint of every train-state array, each mask's kept count and the
masked-out weights that are not zero: one program, ``integrity.Measured``).

* CPU (``--cpu``): the paper's smallest model's train state (LLaMA-2 58M: fp32 parameters, AdamW's two moments, a
  boolean mask per prunable kernel; ``configs/paper/llama2_58m_20x.yml``'s shapes with ``scan_layers``) on this host:
  the checks, an Orbax save of the same state (what MaxText's checkpointing writes: ``PyTreeCheckpointer``, OCDBT) and
  its restore, timed in alternating rounds (median of ``--rounds``). Run it when the machine is idle: the load average
  is recorded and a busy machine refused (``--max-load``).
* TPU (``--tpu``): the same program compiled ahead of time (``jax.experimental.topologies``, the pinned ``libtpu``)
  for the train states of LLaMA-2 1B, 7B and 13B sharded over every chip, with XLA's estimate
  (``cost_analysis()['optimal_seconds']``, a roofline model, not a measured time) and ``memory_analysis()``, as a ratio
  to the estimate of the same model's sparse train step on the same topology (``benchmarks/results/tpu_compile.json``,
  made by ``benchmarks/tpu_compile.py``).

  .venv/bin/python benchmarks/fingerprint.py --cpu --tpu [--rounds 5]

Results: ``benchmarks/results/fingerprint.json`` and ``fingerprint.md`` (each part kept when only the other is run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import RESULTS, machine  # noqa: E402
from sparsity.experiments.markdown import table  # noqa: E402
from sparsity.files import write_json  # noqa: E402
from sparsity.maxtext import layout  # noqa: E402

NAME = "fingerprint"
# name -> (emb, layers, q heads, kv heads, head dim, mlp, vocab, total parameters of tpu_compile.json's cell)
MODELS = {
    "58M": (512, 6, 8, 8, 64, 2048, 32000, 57940480),
    "1B": (2048, 16, 8, 8, 256, 8192, 32000, 1204881408),
    "7B": (4096, 32, 32, 32, 128, 11008, 32000, 6738415616),
    "13B": (5120, 40, 40, 40, 128, 13824, 32000, 13015864320),
}
TPU_CELLS = [("1B", "v5p-8"), ("7B", "v5p-8"), ("13B", "v5p-8"), ("7B", "v5p-128"), ("13B", "v5p-128")]
TOPOLOGY = {"v5p-8": "v5:2x2x1", "v5p-128": "v5:4x4x4"}  # maxtext/utils/accelerator_to_spec_map.py


def state_shapes(model: str) -> dict[str, tuple[tuple[int, ...], str]]:
  """{train-state path: (shape, dtype)}: parameters, AdamW's mu and nu (fp32), a bool mask per prunable kernel."""
  emb, layers, q, kv, hd, mlp, vocab, total = MODELS[model]
  params = layout.llama_param_shapes(emb, layers, q, kv, hd, mlp, vocab)
  assert sum(_size(s) for s in params.values()) == total, model
  out = {}
  for p, s in params.items():
    out[layout.STATE_PARAMS + p] = (s, "float32")
    for moment in ("mu", "nu"):
      out[f"{layout.STATE_INNER}0/{moment}/{p}"] = (s, "float32")
    if p.endswith("kernel"):
      out[layout.STATE_MASKS + p] = (s, "bool")
  out[layout.STATE_COUNT] = ((), "int32")
  return out


def _size(shape) -> int:
  n = 1
  for d in shape:
    n *= int(d)
  return n


def shard_axis(shape, n: int) -> int | None:
  """The axis each array is split on over ``n`` chips: its largest axis divisible by ``n`` (None: replicated)."""
  return next((a for a in sorted(range(len(shape)), key=lambda a: -shape[a]) if shape[a] % n == 0), None)


def state_bytes(model: str, n: int) -> int:
  """Bytes of the train state one of ``n`` chips holds."""
  total = 0
  for shape, dtype in state_shapes(model).values():
    size = _size(shape) * (1 if dtype == "bool" else 4)
    total += size if shard_axis(shape, n) is None else size // n
  return total


def _program():
  """``integrity.Measured``'s device work (``integrity.measure``) as one program of (all arrays, params, masks)."""
  import jax  # pylint: disable=import-outside-toplevel

  from sparsity.maxtext import integrity  # pylint: disable=import-outside-toplevel

  return jax.jit(integrity.measure)


def _split(arrays: dict):
  names = [p[len(layout.STATE_MASKS):] for p in arrays if p.startswith(layout.STATE_MASKS)]
  return (list(arrays.values()), [arrays[layout.STATE_PARAMS + n] for n in names],
          [arrays[layout.STATE_MASKS + n] for n in names])


# ------------------------------------------------------------------------------------------------ CPU


def cpu(rounds: int, max_load: float) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  load = os.getloadavg()[0]
  if load > max_load:
    raise SystemExit(f"the machine is busy (load average {load:.2f} > {max_load}): CPU timings refused")
  rng = np.random.default_rng(0)
  arrays = {}
  for p, (shape, dtype) in state_shapes("58M").items():
    host = rng.random(shape) > 0.3 if dtype == "bool" else rng.standard_normal(shape).astype(dtype)
    arrays[p] = jax.device_put(host)
  nbytes = sum(x.nbytes for x in arrays.values())
  program = _program()
  args = _split(arrays)
  jax.block_until_ready(program(*args))  # compiled outside the timings
  tree = {p.replace("/", "."): x for p, x in arrays.items()}
  ckptr = ocp.PyTreeCheckpointer()
  times: dict[str, list[float]] = {"checks": [], "save": [], "restore": []}
  loads = [load]
  root = tempfile.mkdtemp(prefix="fingerprint_")
  try:
    for r in range(rounds):
      path = os.path.join(root, str(r))
      t = time.perf_counter()
      jax.block_until_ready(program(*args))
      times["checks"].append(time.perf_counter() - t)
      t = time.perf_counter()
      ckptr.save(path, tree)
      times["save"].append(time.perf_counter() - t)
      t = time.perf_counter()
      jax.block_until_ready(ckptr.restore(path))
      times["restore"].append(time.perf_counter() - t)
      shutil.rmtree(path)
      loads.append(os.getloadavg()[0])
  finally:
    shutil.rmtree(root, ignore_errors=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  return {"model": "58M", "state_bytes": nbytes, "arrays": len(arrays), "rounds": rounds, "seconds": times,
          "median_seconds": med, "checks_to_save": med["checks"] / med["save"],
          "checks_to_restore": med["checks"] / med["restore"], "load_average": loads}


# ------------------------------------------------------------------------------------------------ TPU


def tpu() -> dict:
  import importlib.util  # pylint: disable=import-outside-toplevel

  if importlib.util.find_spec("libtpu") is None:
    return {"error": "libtpu is not installed in this environment (pip install 'libtpu==0.0.50.*'): no TPU estimates"}
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel

  from sparsity.maxtext.aot import program_figures  # pylint: disable=import-outside-toplevel

  with open(os.path.join(RESULTS, "tpu_compile.json"), encoding="utf-8") as f:
    steps = json.load(f)["cells"]
  out = {}
  program = _program()
  for model, topo in TPU_CELLS:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGY[topo], num_slices=1).devices
    mesh = Mesh(np.array(devices), ("fsdp",))
    n = len(devices)

    def spec(shape, n=n):
      axis = shard_axis(shape, n)
      return PartitionSpec(*["fsdp" if a == axis else None for a in range(len(shape))])

    arrays = {p: jax.ShapeDtypeStruct(s, jnp.dtype(d), sharding=NamedSharding(mesh, spec(s)))
              for p, (s, d) in state_shapes(model).items()}
    t = time.perf_counter()
    figures = program_figures(program.lower(*_split(arrays)).compile())
    figures["state_bytes"] = state_bytes(model, n)  # (the program's arguments name the params and masks twice)
    step = steps.get(f"{model}|{topo}|sparse", {}).get("summary", {}).get("programs", {}).get("train_step", {})
    step_s = step.get("estimated_seconds")
    est = figures["estimated_seconds"]
    out[f"{model}|{topo}"] = {
        "model": model, "topology": topo, "chips": n, **figures, "compile_seconds": time.perf_counter() - t,
        "train_step_estimated_seconds": step_s, "train_step_argument_bytes": step.get("argument_bytes"),
        "checks_to_step": None if est is None or not step_s else est / step_s,
        "checks_to_100_steps": None if est is None or not step_s else est / (100 * step_s)}
    print(f"{model} on {topo}: {est} s (estimate), train step {step_s} s: ratio "
          f"{out[f'{model}|{topo}']['checks_to_step']}", flush=True)
  return out


# ------------------------------------------------------------------------------------------------ report


def markdown(data: dict) -> str:
  lines = ["# Checkpoint integrity checks: cost", "",
           "Made by `.venv/bin/python benchmarks/fingerprint.py --cpu --tpu` (`benchmarks/results/fingerprint.json`).",
           "The checks: a fingerprint of every train-state array, each mask's kept count and the masked-out weights "
           "that are not zero (one program), run at each save and before a resumed run's first step.", ""]
  c = data.get("cpu")
  if not c:
    lines += ["CPU: not measured yet (`benchmarks/fingerprint.py --cpu` takes it on an idle machine; it refuses when "
              "the load average is above `--max-load`).", ""]
  else:
    m = c["median_seconds"]
    lines += [f"CPU, LLaMA-2 {c['model']} train state ({c['state_bytes'] / 2**20:,.0f} MiB, {c['arrays']} arrays), "
              f"median of {c['rounds']} alternating rounds, load average {max(c['load_average']):.2f} at most:", "",
              table(["checks (s)", "Orbax save (s)", "Orbax restore (s)", "checks / save", "checks / restore"],
                    [[f"{m['checks']:.3f}", f"{m['save']:.3f}", f"{m['restore']:.3f}", f"{c['checks_to_save']:.3f}",
                      f"{c['checks_to_restore']:.3f}"]]), ""]
  t = data.get("tpu")
  if t and "error" in t:
    lines += [f"TPU: {t['error']}", ""]
  elif t:
    rows = [[r["model"], r["topology"], str(r["chips"]), f"{r['state_bytes'] / 2**30:.2f}",
             f"{r['temp_bytes'] / 2**20:.1f}", f"{r['estimated_seconds'] * 1e3:.3f}",
             "" if r["train_step_estimated_seconds"] is None else f"{r['train_step_estimated_seconds'] * 1e3:.1f}",
             "" if r["checks_to_step"] is None else f"{r['checks_to_step']:.4f}",
             "" if r["checks_to_100_steps"] is None else f"{r['checks_to_100_steps']:.5f}",
             ", ".join(f"{k} x{v['count']} (at most {v['max_elements']} elements)"
                       for k, v in r["collectives"].items())] for r in t.values()]
    lines += ["TPU, compiled ahead of time; XLA's estimates (`optimal_seconds`, a roofline model), not measured times; "
              "the train state (fp32 parameters, AdamW's two moments, bool masks) sharded over every chip; per chip. "
              "The checks run once per checkpoint: `checks / 100 steps` is their share at `checkpoint_period=100`. "
              "`state` equals the argument bytes of MaxText's own compiled train step in `tpu_compile.json` (the same "
              "arrays); the checks read it once, and the parameters and masks once more (the masked-out weights that "
              "are not zero).",
              "",
              table(["model", "topology", "chips", "state (GiB)", "temporaries (MiB)", "checks (ms)",
                     "sparse train step (ms)", "checks / step", "checks / 100 steps", "cross-chip traffic"], rows), ""]
  return "\n".join(lines)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--cpu", action="store_true")
  ap.add_argument("--tpu", action="store_true")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--max-load", type=float, default=1.0)
  args = ap.parse_args()
  path = os.path.join(RESULTS, f"{NAME}.json")
  data = {}
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  if args.tpu:
    data["tpu"] = tpu()
  for cell in data.get("tpu", {}).values():
    if isinstance(cell, dict) and "model" in cell:
      cell["state_bytes"] = state_bytes(cell["model"], cell["chips"])
      cell["checks_to_100_steps"] = None if cell.get("checks_to_step") is None else cell["checks_to_step"] / 100
  if args.cpu:
    data["cpu"] = cpu(args.rounds, args.max_load)
    c = data["cpu"]
    print(f"CPU: checks {c['median_seconds']['checks']:.3f} s, save {c['median_seconds']['save']:.3f} s, restore "
          f"{c['median_seconds']['restore']:.3f} s: checks/save {c['checks_to_save']:.4f}, checks/restore "
          f"{c['checks_to_restore']:.4f}", flush=True)
  data["machine"] = machine()
  write_json(path, data)
  with open(os.path.join(RESULTS, f"{NAME}.md"), "w", encoding="utf-8") as f:
    f.write(markdown(data) + "\n")
  print(f"written {path}")


if __name__ == "__main__":
  main()
