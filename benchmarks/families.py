"""Every MaxText model family, pruned: the README's per-family table and the parameter inventory the tests check.

  .venv/bin/python benchmarks/families.py inventory   # results/families/params.json: each family's parameters
  .venv/bin/python benchmarks/families.py table [--only mixtral,deepseek] [--steps 16] [--name table-b]
                                                       # results/families/table.{json,md}: ~2 h on 2 CPU cores
  .venv/bin/python benchmarks/families.py render      # merges results/families/table*.json (parallel runners)
  .venv/bin/python benchmarks/families.py experts --steps 120   # results/families/expert_density.json

``inventory`` builds each family's tiny model abstractly with MaxText's own model code (no training) and writes every
parameter's path, shape and MaxText's logical axis names, with and without ``scan_layers``: the fast tests check the
description in ``sparsity/maxtext/families.py`` against it (every parameter classified, each contraction axis an
input axis by MaxText's own names, the default ``prunable_params`` selecting exactly the linear weights).

``table`` trains each family's tiny model (a MaxText model name of the family shrunk to 2-6 layers of width 64, its
family-specific settings kept, MaxText's synthetic data) with ``MaxText/train.py configs/sparse_base.yml`` twice:
unstructured to 0.8 and 2:4. For each it records: trains (exit 0 and a summary), final count exact (the checkpoint's
masks, read with NumPy, keep exactly the schedule's count, and every pruned weight is zero), the N:M check of
``inspect`` (2:4 runs), and resume (the run directory copied without its last checkpoint and summary and the same
command run again: it must restart at the step after the middle checkpoint with the uninterrupted run's loss there,
keep the schedule's exact count and end with the uninterrupted run's masks and loss bit for bit).

``experts`` trains a tiny Mixtral (4 experts, top 2) on the C4 slice, globally pruned to 80%, and writes the density
of every expert's matrices, per layer, from its final checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sparsity import files  # noqa: E402
from sparsity.experiments import markdown as md  # noqa: E402
from sparsity.maxtext.host import cpu_platform  # noqa: E402

cpu_platform()  # this process's JAX (the inventory) on the CPU of a CPU-only host, not the installed TPU runtime

OUT = os.path.join(ROOT, "results", "families")

TINY = ["base_emb_dim=64", "base_num_query_heads=4", "base_num_kv_heads=4", "head_dim=16", "base_mlp_dim=128",
        "base_moe_mlp_dim=128", "base_num_decoder_layers=2", "vocab_size=1024", "max_target_length=64",
        "per_device_batch_size=2", "override_model_config=true", "dataset_type=synthetic", "attention=dot_product"]
MOE = ["num_experts=4", "num_experts_per_tok=2"]
GDN = ["gdn_key_head_dim=16", "gdn_value_head_dim=16", "gdn_num_key_heads=2", "gdn_num_value_heads=4"]

# Table row -> MaxText overrides (after TINY). One MaxText model name per family, shrunk.
SPECS: dict[str, list[str]] = {
    "llama2": ["model_name=llama2-7b"],
    "llama3": ["model_name=llama3-8b", "base_num_kv_heads=2"],
    "mistral": ["model_name=mistral-7b", "base_num_kv_heads=2"],
    "mixtral": ["model_name=mixtral-8x7b", *MOE],
    "deepseek": ["model_name=deepseek3-tiny", "first_num_dense_layers=1", *MOE, "q_lora_rank=32", "kv_lora_rank=16",
                 "qk_nope_head_dim=16", "qk_rope_head_dim=8", "v_head_dim=16"],
    "deepseek4": ["model_name=deepseek4-tiny", "base_num_decoder_layers=4", "compress_ratios=[0,0,4,128]",
                  "first_num_hash_layers=1", *MOE, "head_dim=32", "base_num_kv_heads=1", "max_target_length=256"],
    # (its own head_dim = rope head dim and single kv head; 256 tokens: its heavily compressed attention compresses
    # 128 positions into one)
    "gemma": ["model_name=gemma-2b"],
    "gemma2": ["model_name=gemma2-2b"],
    "gemma3": ["model_name=gemma3-4b", "base_num_decoder_layers=6", "use_multimodal=false"],
    "gemma4": ["model_name=gemma4-26b", "base_num_decoder_layers=6", *MOE, "global_head_dim=32",
               "global_num_kv_heads=2", "use_multimodal=false"],
    "gemma4_small": ["model_name=gemma4-e2b", "base_num_decoder_layers=4", "scan_layers=false"],
    "qwen2": ["model_name=qwen2.5-1.5b"],
    "qwen3": ["model_name=qwen3-0.6b"],
    "qwen3_moe": ["model_name=qwen3-30b-a3b", *MOE],
    "qwen3_custom_moe": ["model_name=qwen3-custom-30b-a3b", *MOE, "attention_output_dim=32", "moe_expert_input_dim=32"],
    "qwen3_next": ["model_name=qwen3-next-80b-a3b", "base_num_decoder_layers=4", *MOE, *GDN],
    "qwen3_5": ["model_name=qwen3.5-35b-a3b", "base_num_decoder_layers=4", *MOE, *GDN, "use_multimodal=false",
                "use_mrope=false"],
    "gpt3": ["model_name=gpt3-52k"],
    "gpt_oss": ["model_name=gpt-oss-20b", *MOE, "base_num_kv_heads=2"],
    "llama4": ["model_name=llama4-17b-16e", "base_num_decoder_layers=4", "num_experts=4", "use_multimodal=false",
               "tokenizer_type=sentencepiece", "tokenizer_path=tokenizer.llama2"],
    "olmo3": ["model_name=olmo3-7b", "base_num_decoder_layers=4"],
    "envy": ["model_name=envy-test", "num_experts=4", "tokenizer_type=sentencepiece", "tokenizer_path=tokenizer.llama2"],
    "default": ["decoder_block=default"],
    "simple": ["decoder_block=simple"],
    "simple_mlp": ["decoder_block=simple_mlp"],
}
# The family (decoder_block) of a row whose name is not one.
BLOCK = {"llama3": "llama2"}
STRUCTURES = {"unstructured 0.8": ["target_sparsity=0.8"], "2:4": ["pruning_structure=2:4", "target_sparsity=auto"]}


def block_of(row: str) -> str:
  return BLOCK.get(row, row)


def cpu_env() -> dict:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", DECOUPLE_GCLOUD="TRUE", PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return env


# --- inventory ---------------------------------------------------------------------------------------------------

def model_params(argv: list[str]) -> dict[str, list]:
  """``{path: [shape, logical axis names]}`` of the parameters MaxText builds for ``argv`` (abstractly: no arrays)."""
  # pylint: disable=import-outside-toplevel
  from flax import nnx
  from maxtext.utils import model_creation_utils

  from sparsity.maxtext.config import load_config

  cfg = load_config(argv)
  _, model = model_creation_utils.create_nnx_abstract_model(cfg)
  out = {}
  for path, v in nnx.state(model, nnx.Param).flat_state():
    meta = v.get_metadata() if hasattr(v, "get_metadata") else {}
    names = meta.get("sharding_names") or meta.get("out_sharding") or meta.get("sharding")
    out["/".join(map(str, path))] = [list(v.value.shape), None if names is None else list(names)]
  return out


def row_argv(row: str, extra=()) -> list[str]:
  return [os.path.join(ROOT, "configs", "sparse_base.yml"), *TINY, *SPECS[row], *extra]


def inventory(rows) -> dict:
  os.environ.update(JAX_PLATFORMS="cpu", DECOUPLE_GCLOUD="TRUE")
  result: dict = {"note": "parameters of each family's tiny model (benchmarks/families.py SPECS): [shape, MaxText's "
                          "logical axis names]", "families": {}}
  for row in rows:
    entry = {"decoder_block": block_of(row), "overrides": SPECS[row]}
    for scan in ("true", "false"):
      if row == "gemma4_small" and scan == "true":
        continue  # MaxText: gemma4-e2b requires scan_layers=False
      try:
        entry[f"scan_layers={scan}"] = model_params(row_argv(row, ["steps=10", f"scan_layers={scan}"]))
      except Exception as e:  # pylint: disable=broad-except
        entry[f"scan_layers={scan}"] = {"error": f"{type(e).__name__}: {e}"[:1000]}
      print(row, scan, len(entry[f"scan_layers={scan}"]), flush=True)
    result["families"][row] = entry
  return result


# --- table -------------------------------------------------------------------------------------------------------

def _train(args: list[str], log: str, timeout: int = 1800) -> int:
  with open(log, "w", encoding="utf-8") as f:
    try:
      return subprocess.run([sys.executable, os.path.join(ROOT, "MaxText", "train.py"), *args], cwd=ROOT, env=cpu_env(),
                            stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
      return -9


def _reason(log: str) -> str:
  """The last error line of a failed run's log."""
  with open(log, encoding="utf-8", errors="replace") as f:
    lines = [l.strip() for l in f if l.strip()]
  for l in reversed(lines):
    if any(k in l for k in ("Error", "error:", "Exception", "RuntimeError", "NotImplemented")) and not l.startswith("File "):
      return l[:400]
  return (lines[-1] if lines else "no output")[:400]


def _losses(log: str) -> dict[int, str]:
  """``{step: loss}`` as MaxText's log prints them (its rounding: equal strings mean equal to 3 decimals)."""
  out = {}
  with open(log, encoding="utf-8", errors="replace") as f:
    for line in f:
      m = re.search(r"completed step: (\d+), .*? loss: ([0-9.naninf]+)", line)
      if m:
        out[int(m.group(1))] = m.group(2)
  return out


def _masks_and_params(run_dir: str):
  from sparsity.maxtext import checkpoint  # pylint: disable=import-outside-toplevel

  return checkpoint.load(checkpoint.locate(run_dir).items_dir)


def run_row(row: str, structure: str, steps: int, work: str) -> dict:
  """One family x structure: train, check the count, inspect, resume."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from sparsity.maxtext import families, layout  # pylint: disable=import-outside-toplevel
  from sparsity.model import inspection  # pylint: disable=import-outside-toplevel

  tag = f"{row}-{'24' if structure == '2:4' else 'u80'}"
  half = steps // 2
  common = row_argv(row, [*STRUCTURES[structure], f"steps={steps}", "pruning_interval=2", "enable_checkpointing=true",
                          "async_checkpointing=false", f"checkpoint_period={half}", f"base_output_directory={work}",
                          "log_period=1000"])[0:]
  out: dict = {"family": row, "decoder_block": block_of(row), "structure": structure, "overrides": SPECS[row]}
  t0 = time.time()
  code = _train([*common, f"run_name={tag}"], os.path.join(work, f"{tag}.log"))
  out["seconds"] = round(time.time() - t0, 1)
  run_dir = layout.run_dir(work, tag)
  if code != 0 or not os.path.exists(layout.summary_path(run_dir)):
    out.update(trains=False, reason=_reason(os.path.join(work, f"{tag}.log")))
    return out
  s = json.load(open(layout.summary_path(run_dir), encoding="utf-8"))
  out.update(trains=True, prunable_params=s["prunable_params"], total_params=s["total_params"],
             final_sparsity=s["final_sparsity"], final_train_loss=s["final_train_loss"], model=s.get("model"))
  # Final count, independently: the checkpoint's masks and weights with NumPy.
  state = _masks_and_params(run_dir)
  kept = sum(int(np.count_nonzero(m)) for m in state.masks.values())
  pruned_nonzero = sum(int(np.count_nonzero(state.params[p][~m])) for p, m in state.masks.items())
  want = s["kept_after_events"][-1]
  out.update(masks=len(state.masks), kept=kept, expected_kept=want,
             count_exact=kept == want and pruned_nonzero == 0 and sum(m.size for m in state.masks.values()) == s["prunable_params"])
  fam = families.FAMILIES.get(block_of(row))
  out["unpruned_linear"] = [p for p in state.params if p not in state.masks and fam is not None
                            and getattr(families.classify(p, fam), "prunable", False)]
  if structure == "2:4":
    r = inspection.report(run_dir, structure="2:4")
    out["inspect_nm"] = bool(r["structure"]["ok"]) and r["structure"]["tensors_checked"] == len(state.masks)
  # Resume: the run directory without its last checkpoint and summary, the same command again.
  rtag = tag + "-resume"
  rdir = layout.run_dir(work, rtag)
  shutil.copytree(run_dir, rdir)
  ckdir = layout.checkpoints_dir(rdir)
  saved = sorted(int(d) for d in os.listdir(ckdir) if d.isdigit())
  if len(saved) < 2:
    out["resume"] = None
    out["resume_reason"] = f"checkpoints {saved}: no middle checkpoint"
    return out
  shutil.rmtree(os.path.join(ckdir, str(saved[-1])))
  os.remove(layout.summary_path(rdir))
  code = _train([*common, f"run_name={rtag}"], os.path.join(work, f"{rtag}.log"))
  if code != 0 or not os.path.exists(layout.summary_path(rdir)):
    out.update(resume=False, resume_reason=_reason(os.path.join(work, f"{rtag}.log")))
    return out
  s2 = json.load(open(layout.summary_path(rdir), encoding="utf-8"))
  state2 = _masks_and_params(rdir)
  same_masks = set(state2.masks) == set(state.masks) and all(
      np.array_equal(state.masks[p], state2.masks[p]) for p in state.masks)
  straight, resumed = _losses(os.path.join(work, f"{tag}.log")), _losses(os.path.join(work, f"{rtag}.log"))
  first = min(resumed) if resumed else None
  kept2 = sum(int(np.count_nonzero(m)) for m in state2.masks.values())
  # Resumed: continues at the step after the middle checkpoint with the same state (its first loss is the
  # uninterrupted run's), trains to the end and keeps the schedule's exact count; and (resume_identical) ends with
  # the uninterrupted run's masks and loss bit for bit.
  out.update(resume=bool(first == saved[-2] + 1 and resumed[first] == straight.get(first)
                         and kept2 == want and s2["steps_trained"] == s["steps_trained"]),
             resume_identical=bool(same_masks and s2["final_train_loss"] == s["final_train_loss"]),
             resumed_from=saved[-2], resume_loss=s2["final_train_loss"])
  shutil.rmtree(rdir, ignore_errors=True)
  return out


def _mark(v) -> str:
  return "—" if v is None else ("yes" if v else "**no**")


HEADERS = ("family (`decoder_block`)", "structure", "trains", "prunable / total params", "experts pruned",
           "final count exact", "`inspect` N:M check", "resume")


def markdown(rows: list[dict]) -> str:
  """The README's per-family table (``sparsity.experiments.markdown``)."""
  lines = []
  for r in rows:
    fam = r["family"] + ("" if r["decoder_block"] == r["family"] else f" (`{r['decoder_block']}`)")
    if not r.get("trains"):
      lines.append([fam, r["structure"], f"**no**: {r.get('reason', '').replace('|', '/')[:160]}", *[""] * 5])
      continue
    kinds = (r.get("model") or {}).get("prunable_params_by_kind", {})
    allk = (r.get("model") or {}).get("params_by_kind", {})
    exp = "—" if not allk.get("experts") else _mark(kinds.get("experts") == allk.get("experts"))
    nm = _mark(r.get("inspect_nm")) if r["structure"] == "2:4" else "—"
    resume = _mark(r.get("resume") and r.get("resume_identical")) + (
        " (restarts, not bit-identical)" if r.get("resume") and not r.get("resume_identical") else "")
    lines.append([fam, r["structure"], "yes", f"{r['prunable_params']:,} / {r['total_params']:,}", exp,
                  _mark(r["count_exact"]), nm, resume])
  return md.table(HEADERS, lines) + "\n"


EXPERT_RUN = ["decoder_block=mixtral", "num_experts=4", "num_experts_per_tok=2", "base_emb_dim=64",
              "base_num_query_heads=4", "base_num_kv_heads=4", "head_dim=16", "base_mlp_dim=256", "base_moe_mlp_dim=256",
              "base_num_decoder_layers=2", "max_target_length=64", "vocab_size=1024",
              "tokenizer_path=configs/study/c4_bpe_1024.model", "dataset_type=tfds",
              "dataset_path=../shared/data/c4_en_minimal", "dataset_name=c4/en:3.1.0", "eval_dataset_name=c4/en:3.1.0",
              "target_sparsity=0.8", "pruning_interval=5", "enable_checkpointing=true", "async_checkpointing=false",
              "checkpoint_period=100000", "log_period=1000"]


def expert_density(steps: int, work: str) -> dict:
  """A tiny Mixtral (4 experts, top 2) pruned globally to 80% on the C4 slice: density of every expert's matrices
  (per layer) in the final checkpoint, beside the other kernels'."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from sparsity.maxtext import families, layout  # pylint: disable=import-outside-toplevel

  args = [os.path.join(ROOT, "configs", "sparse_base.yml"), *EXPERT_RUN, f"steps={steps}", "run_name=experts",
          f"base_output_directory={work}"]
  log = os.path.join(work, "experts.log")
  if _train(args, log) != 0:
    raise RuntimeError(f"the run failed: {_reason(log)}")
  state = _masks_and_params(layout.run_dir(work, "experts"))
  fam = families.family("mixtral")
  out = {"command": "benchmarks/families.py experts", "overrides": EXPERT_RUN + [f"steps={steps}"], "experts": {},
         "other_kernels": {}}
  for p, m in sorted(state.masks.items()):
    w = families.classify(p, fam)
    if w.kind == families.EXPERTS:  # (experts, layers, in, out): density per [layer][expert]
      out["experts"][p] = np.round(m.mean(axis=(2, 3)).T, 4).tolist()
    else:
      out["other_kernels"][p] = round(float(m.mean()), 4)
  dens = np.array(list(out["experts"].values()))  # (matrix, layer, expert)
  out["experts_overall"] = round(float(sum(state.masks[p].sum() for p in out["experts"])
                                       / sum(state.masks[p].size for p in out["experts"])), 4)
  out["expert_matrix_density_min_max"] = [round(float(dens.min()), 4), round(float(dens.max()), 4)]
  per_expert = dens.mean(axis=0)  # (layer, expert): the expert's three matrices together (same sizes)
  out["per_expert_density"] = np.round(per_expert, 4).tolist()
  return out


def _order(d):
  return list(SPECS).index(d["family"]) if d["family"] in SPECS else 99, d["structure"] == "2:4"


def _write(path: str, rows: list[dict], steps: int) -> None:
  rows = sorted(rows, key=_order)
  files.write_json(path, {"command": "benchmarks/families.py table", "steps": steps, "rows": rows}, indent=1)
  with open(os.path.splitext(path)[0] + ".md", "w", encoding="utf-8") as f:
    f.write(markdown(rows))


def render() -> None:
  """table.json and table.md from every results/families/table*.json (table-*.json after table.json: their rows win)."""
  rows, steps = {}, None
  names = sorted(n for n in os.listdir(OUT) if n.startswith("table-") and n.endswith(".json"))
  if os.path.exists(os.path.join(OUT, "table.json")):
    names.insert(0, "table.json")
  for name in names:
    data = json.load(open(os.path.join(OUT, name), encoding="utf-8"))
    steps = data.get("steps", steps)
    for r in data["rows"]:
      if r.get("overrides") == SPECS.get(r["family"]):  # a row run with other overrides is stale
        rows[(r["family"], r["structure"])] = r
  _write(os.path.join(OUT, "table.json"), list(rows.values()), steps)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("what", choices=("inventory", "table", "render", "experts"))
  ap.add_argument("--only", help="comma-separated rows (default: all)")
  ap.add_argument("--steps", type=int, default=16)
  ap.add_argument("--keep", help="keep the runs in this directory (default: a temporary one)")
  ap.add_argument("--name", default="table", help="results file name (several runners: table-a, table-b, then render)")
  args = ap.parse_args(argv)
  rows = args.only.split(",") if args.only else list(SPECS)
  os.makedirs(OUT, exist_ok=True)
  if args.what == "inventory":  # (--only: those rows replaced in the existing file)
    path = os.path.join(OUT, "params.json")
    result = inventory(rows)
    if args.only and os.path.exists(path):
      old = json.load(open(path, encoding="utf-8"))
      old["families"].update(result["families"])
      result = {**old, "families": {k: old["families"][k] for k in SPECS if k in old["families"]}}
    files.write_json(path, result, indent=None)
    return 0
  if args.what == "render":  # merge results/families/table*.json into table.json and table.md
    render()
    return 0
  if args.what == "experts":
    work = args.keep or tempfile.mkdtemp(prefix="families-")
    os.makedirs(work, exist_ok=True)
    result = expert_density(args.steps, work)
    files.write_json(os.path.join(OUT, "expert_density.json"), result, indent=1)
    return 0
  work = args.keep or tempfile.mkdtemp(prefix="families-")
  os.makedirs(work, exist_ok=True)
  path = os.path.join(OUT, f"{args.name}.json")
  done = json.load(open(path, encoding="utf-8"))["rows"] if os.path.exists(path) else []
  for row in rows:
    for structure in STRUCTURES:
      r = run_row(row, structure, args.steps, work)
      done = [d for d in done if (d["family"], d["structure"]) != (row, structure)] + [r]
      _write(path, done, args.steps)
      print(row, structure, {k: r.get(k) for k in ("trains", "count_exact", "inspect_nm", "resume", "reason", "seconds")},
            flush=True)
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
