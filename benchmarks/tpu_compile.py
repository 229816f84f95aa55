"""Sparse pre-training on TPU pods, compiled ahead of time on this CPU host: memory per chip and XLA's estimates.

For each model (the paper's LLaMA-2 configurations, 58M to 1B, and LLaMA-2 7B and 13B) and TPU topology (v5p-8,
v5p-128, v5e-256, v4-128), ``MaxText/train_compile.py`` compiles the dense run (``target_sparsity=0``) and the sparse
run (``target_sparsity=0.8``, the paper's schedule) with the whole slice as one FSDP axis, and records per chip: the
train step's memory (dense and sparse), the pruning event's temporaries, XLA's estimated seconds of the step and the
event, and whether every program fits in HBM. Rows for the pruning event with 2:4 structure and per-tensor scope
(1B on v5p-8), and the largest LLaMA-2 (7B, 13B, 70B) whose sparse run fits a v5e-256, follow.

Every number is the compiler's: ``memory_analysis()`` and ``cost_analysis()['optimal_seconds']``, XLA's roofline
model of the target chip. They are estimates, not measured TPU times.

  .venv/bin/python benchmarks/tpu_compile.py            # resumable: finished cells are kept in the results file
  .venv/bin/python benchmarks/tpu_compile.py --table    # only print the README table from the results file

Results: ``benchmarks/results/tpu_compile.json``. Each cell is one compile of a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import RESULTS, machine  # noqa: E402
from sparsity import files  # noqa: E402
from sparsity.experiments import markdown  # noqa: E402
from sparsity.maxtext import layout  # noqa: E402
from sparsity.repo import ROOT  # noqa: E402

NAME = "tpu_compile"
PAPER = os.path.join(ROOT, "configs", "paper")
BASE = os.path.join(ROOT, "configs", "sparse_base.yml")
LLAMA = ["override_model_config=true", "per_device_batch_size=1", "max_target_length=4096"]
MODELS = {
    "58M": [os.path.join(PAPER, "llama2_58m_20x.yml")],
    "162M": [os.path.join(PAPER, "llama2_162m_20x.yml")],
    "468M": [os.path.join(PAPER, "llama2_468m_20x.yml")],
    "1B": [os.path.join(PAPER, "llama2_1b_released.yml")],
    "7B": [BASE, "model_name=llama2-7b", *LLAMA],
    "13B": [BASE, "model_name=llama2-13b", *LLAMA],
    "70B": [BASE, "model_name=llama2-70b", *LLAMA],
}
TOPOLOGIES = ["v5p-8", "v5p-128", "v5e-256", "v4-128"]
GRID = [(m, t) for m in ("58M", "162M", "468M", "1B", "7B", "13B") for t in TOPOLOGIES]
EXTRA = [("1B", "v5p-8", "2:4"), ("1B", "v5p-8", "per_tensor"), ("7B", "v5p-64", "sparse"), ("70B", "v5e-256", "sparse"),
         ("70B", "v5e-256", "dense")]
VARIANTS = {
    "dense": ["target_sparsity=0"],
    "sparse": ["target_sparsity=0.8"],
    "2:4": ["pruning_structure=2:4", "target_sparsity=auto"],
    "per_tensor": ["target_sparsity=0.8", "pruning_scope=per_tensor"],
}


def compile_cell(model: str, topology: str, variant: str) -> dict:
  """One compile (a subprocess): the compile summary, or the failure's last lines."""
  with tempfile.TemporaryDirectory() as out:
    cmd = [sys.executable, os.path.join(ROOT, "MaxText", "train_compile.py"), *MODELS[model],
           f"compile_topology={topology}", "compile_topology_num_slices=1", "ici_fsdp_parallelism=-1",
           *VARIANTS[variant], f"base_output_directory={out}", "run_name=cell", "dataset_type=synthetic"]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    path = layout.compile_summary_path(layout.run_dir(out, "cell"))
    cell = {"command": " ".join(cmd[1:]).replace(ROOT + "/", ""), "exit_code": proc.returncode,
            "compile_seconds": round(time.time() - start, 1)}
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        cell["summary"] = json.load(f)
    else:
      cell["error"] = proc.stderr[-1500:]
    return cell


def _load(path: str) -> dict:
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  return {"cells": {}}


def _save(path: str, data: dict) -> None:
  data["machine"] = machine()
  files.write_json(path, data, indent=1)


def _gb(b) -> str:
  return "-" if b is None else f"{b / 1e9:.2f}"


def _peak(program: dict) -> str:
  """A program's peak GB per chip, or what the compiler said when it refused the program for lack of HBM."""
  if "out_of_memory" in program:
    return "out of HBM"
  return _gb(program.get("peak_bytes"))


def _ms(s) -> str:
  return "-" if s is None else f"{s * 1e3:.1f}"


def _event_temp(s: dict, event: dict) -> str:
  """The event's temporaries in GB, with their ratio to the prunable bytes."""
  ratio = f" ({event['temp_bytes'] / s['prunable_bytes_per_chip']:.2f})" if "temp_bytes" in event else ""
  return _gb(event.get("temp_bytes")) + ratio


def _fits(s: dict) -> str:
  return "yes" if s["fits"] else "no: " + ", ".join(s["programs_over_hbm"])


GRID_HEADERS = ("model", "topology", "chips", "dense step GB", "sparse step GB", "masks GB", "event temp GB (x prunable)",
                "step est. ms", "event est. ms", "fits")
EXTRA_HEADERS = ("model", "topology", "variant", "step GB", "event temp GB (x prunable)", "event est. ms", "step est. ms",
                 "fits")


def table(data: dict) -> str:
  """The README's table (markdown, ``sparsity.experiments.markdown``) from the results."""
  cells, grid, extra = data["cells"], [], []
  for model, topology in GRID:
    dense, sparse = cells.get(f"{model}|{topology}|dense"), cells.get(f"{model}|{topology}|sparse")
    if not sparse or "summary" not in sparse:
      grid.append([model, topology, *[""] * 7, "not compiled" if not sparse else "error"])
      continue
    s = sparse["summary"]
    step, event = s["programs"].get("train_step", {}), s["programs"].get("pruning_event", {})
    d = dense["summary"]["programs"].get("train_step", {}) if dense and "summary" in dense else {}
    grid.append([model, topology, str(s["chips"]), _peak(d), _peak(step), _gb(s["mask_bytes_per_chip"]),
                 _event_temp(s, event), _ms(step.get("estimated_seconds")), _ms(event.get("estimated_seconds")),
                 _fits(s)])
  for model, topology, variant in EXTRA:
    c = cells.get(f"{model}|{topology}|{variant}")
    if not c or "summary" not in c:
      extra.append([model, topology, variant, *[""] * 4, "not compiled" if not c else "error"])
      continue
    s = c["summary"]
    step, event = s["programs"].get("train_step", {}), s["programs"].get("pruning_event", {})
    extra.append([model, topology, variant, _peak(step), _event_temp(s, event), _ms(event.get("estimated_seconds")),
                  _ms(step.get("estimated_seconds")), _fits(s)])
  fits = [m for m in ("70B", "13B", "7B")
          if cells.get(f"{m}|v5e-256|sparse", {}).get("summary", {}).get("fits")]
  tried = [m for m in ("70B", "13B", "7B") if "summary" in cells.get(f"{m}|v5e-256|sparse", {})]
  largest = (f"Largest LLaMA-2 whose sparse run (0.8) fits a v5e-256 (of {', '.join(tried) or 'none compiled'}): "
             f"{fits[0] if fits else 'none'}.")
  return "\n\n".join([markdown.table(GRID_HEADERS, grid), markdown.table(EXTRA_HEADERS, extra), largest])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--table", action="store_true", help="only print the table from the results file")
  ap.add_argument("--only", default="", help="compile only the cells whose key 'model|topology|variant' contains this")
  args = ap.parse_args()
  path = os.path.join(RESULTS, f"{NAME}.json")
  data = _load(path)
  if not args.table:
    # The issue's own checks first (1B on v5p-8, 7B on v5p-64, N:M and per-tensor events), the largest LLaMA-2 on a
    # v5e-256, the small paper models, then the rest of the grid.
    first = [("1B", "v5p-8", "sparse"), ("1B", "v5p-8", "dense"), ("7B", "v5p-64", "sparse"),
             ("1B", "v5p-8", "2:4"), ("1B", "v5p-8", "per_tensor"),
             ("7B", "v5e-256", "sparse"), ("13B", "v5e-256", "sparse"), ("70B", "v5e-256", "sparse")]
    first += [(m, "v5p-8", v) for m in ("58M", "162M", "468M") for v in ("sparse", "dense")]
    first += [(m, t, v) for v in ("sparse", "dense") for m in ("7B", "13B") for t in TOPOLOGIES[1:]]
    todo = first + [(m, t, v) for m, t in GRID for v in ("sparse", "dense")] + EXTRA
    for model, topology, variant in todo:
      key = f"{model}|{topology}|{variant}"
      if key in data["cells"] or args.only not in key:
        continue
      print(f"compiling {key} ...", flush=True)
      data["cells"][key] = compile_cell(model, topology, variant)
      _save(path, data)
  print(table(data))


if __name__ == "__main__":
  main()
