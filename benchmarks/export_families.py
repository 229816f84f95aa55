"""Every family through Hugging Face and back: results/export/table.{json,md}.

  .venv/bin/python benchmarks/export_families.py [--only llama3,qwen3] [--work DIR]   # ~3 min per family here
  .venv/bin/python benchmarks/export_families.py --render     # table.md again from table.json

For each family (a MaxText model name of it shrunk to width 64, as ``benchmarks/families.py`` SPECS): trains a tiny
2:4-sparse run with ``MaxText/train.py configs/sparse_base.yml`` (6 steps, synthetic data), then

* export: ``sparsity.model.export`` writes the Hugging Face directory (dense safetensors with exact zeros, and
  ``--format compressed-24``);
* logits match: transformers (``.venv-hf``, ``tests/hf_check.py``) loads the export with ``AutoModelForCausalLM``
  (no missing or unexpected tensors) and its logits on 12 fixed tokens are within 1e-4 (relative to the largest
  logit) of MaxText's own forward pass of the checkpoint (``sparsity.model.generate.forward_logits``);
* zeros kept: each exported tensor's zeros, counted in the file, equal the pruned weights of the MaxText parameters
  it comes from (the sum over them: the checkpoint's masks);
* 2:4 kept: in the written file, every group of 4 consecutive weights along each pruned weight's input dimension
  (the last axis of a Hugging Face ``(out, in)`` matrix; the middle one of a ``(experts, in, out)`` stacked expert
  tensor) holds at most 2 non-zeros;
* import: a Hugging Face checkpoint of the family made locally (transformers' class of the exported config.json,
  random weights, ``save_pretrained``) becomes a MaxText checkpoint (``sparsity.model.hf_import``) that MaxText
  loads through ``load_parameters_path`` (its forward pass gives the Hugging Face model's logits within 1e-4);
* round trip: that MaxText checkpoint exported again gives every tensor of the Hugging Face file bit for bit;
* generate: ``python -m sparsity generate`` (MaxText's engine) continues a prompt from the run's checkpoint; in
  brackets, whether its greedy tokens are transformers' greedy tokens from the export (same tokenizer: the study's
  1,024-piece SentencePiece model, exported with the model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import families as F  # noqa: E402

OUT = os.path.join(ROOT, "results", "export")
ROWS = ("llama3", "qwen3", "qwen3_moe", "mixtral", "gemma2", "gemma3", "gpt_oss", "qwen2")
TOKENS = [[1, 45, 996, 173, 701, 29, 432, 172, 975, 278, 366, 1011]]
TOL = 1e-4
CHECKS = ("export", "logits_match", "zeros_kept", "two_four_kept", "import", "import_logits", "round_trip", "generate")


TOKENIZER = ["tokenizer_type=sentencepiece", f"tokenizer_path={os.path.join(ROOT, 'configs', 'study', 'c4_bpe_1024.model')}"]
PROMPT, NEW_TOKENS = "I love to", 4


def argv_of(row: str) -> list[str]:
  """The family's tiny model with the study's 1,024-piece SentencePiece tokenizer (the vocabulary of TINY)."""
  return F.row_argv(row, TOKENIZER)


def train(row: str, work: str) -> str:
  """The tiny 2:4 run of ``row``; its run directory."""
  from sparsity.maxtext import layout  # pylint: disable=import-outside-toplevel

  run = layout.run_dir(work, row)
  if os.path.exists(layout.summary_path(run)):
    with open(layout.summary_path(run), encoding="utf-8") as f:
      if json.load(f).get("end_status") == "completed":
        return run
    shutil.rmtree(run)
  args = [*argv_of(row), *F.STRUCTURES["2:4"], "steps=6", "pruning_interval=2", "prune_start_fraction=0",
          "prune_end_fraction=0.5", "enable_checkpointing=true", "async_checkpointing=false", "checkpoint_period=1000",
          f"base_output_directory={work}", f"run_name={row}", "log_period=1000"]
  if F._train(args, os.path.join(work, f"{row}.log")) != 0:  # pylint: disable=protected-access
    raise RuntimeError(f"training failed: {F._reason(os.path.join(work, f'{row}.log'))}")  # pylint: disable=protected-access
  return run


def hf_python() -> str:
  py = os.path.join(ROOT, ".venv-hf", "bin", "python")
  if not os.path.isfile(os.path.join(ROOT, ".venv-hf", ".setup-stamp")):
    subprocess.run(["bash", os.path.join(ROOT, "tools", "setup_hf_env.sh")], cwd=ROOT, check=True)
  return py


def hf_check(request: dict, work: str, name: str) -> dict:
  """``tests/hf_check.py`` under ``.venv-hf`` with ``request``."""
  req, res = os.path.join(work, f"{name}.req.json"), os.path.join(work, f"{name}.res.json")
  with open(req, "w", encoding="utf-8") as f:
    json.dump(request, f)
  out = subprocess.run([hf_python(), os.path.join(ROOT, "tests", "hf_check.py"), req, res], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, check=False)
  if out.returncode != 0:
    raise RuntimeError(f"hf_check failed: {out.stderr[-3000:]}")
  with open(res, encoding="utf-8") as f:
    return json.load(f)


def input_axis(name: str, shape: tuple) -> int:
  """The input (contracted) axis of a Hugging Face weight as transformers uses it: ``nn.Linear``'s ``(out, in)``
  matrices contract their last axis; stacked expert tensors ``(experts, in, out)`` (GPT-OSS) their middle one."""
  return 1 if len(shape) == 3 else len(shape) - 1


def max_per_group(w, axis: int, m: int = 4) -> int:
  import numpy as np  # pylint: disable=import-outside-toplevel

  x = np.moveaxis(w != 0, axis, -1)
  return int(x.reshape(*x.shape[:-1], x.shape[-1] // m, m).sum(-1).max())


def relative_error(a, b) -> float:
  import numpy as np  # pylint: disable=import-outside-toplevel

  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def check_export(row: str, run: str, work: str, config) -> dict:
  """export, logits match, zeros kept, 2:4 kept for the run of ``row``."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  from sparsity.maxtext import checkpoint  # pylint: disable=import-outside-toplevel
  from sparsity.model import export, generate  # pylint: disable=import-outside-toplevel

  out: dict = {}
  dense = os.path.join(work, f"{row}-hf")
  r = export.export(run, config, dense, overwrite=True)
  export.export(run, config, os.path.join(work, f"{row}-c24"), fmt="compressed-24", overwrite=True)
  out.update(export=True, architecture=r.info["architecture"], maxtext_model=r.info["maxtext_conversion_model"])
  mt = generate.forward_logits(argv_of(row), run, np.array(TOKENS))
  hf = hf_check({"dense": dense, "tokens": TOKENS, "prompt": PROMPT, "max_new_tokens": NEW_TOKENS}, work, row)
  out["hf_generated_ids"] = hf["generated_ids"]
  info = hf["loading_info"]
  out["loading_info"] = {k: v for k, v in info.items() if v}
  out["logits_rel_error"] = relative_error(mt, hf["logits"])
  err = out["logits_rel_error"]
  if "logits_embedding_bf16" in hf:  # see tests/hf_check.py: MaxText's tied logits use a bfloat16 embedding
    out["logits_rel_error_bf16_embedding"] = err = relative_error(mt, hf["logits_embedding_bf16"])
  out["logits_match"] = bool(not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
                             and err <= TOL and np.abs(mt).max() > 0.1)
  state = checkpoint.load(checkpoint.locate(run).items_dir)
  tensors = load_file(os.path.join(dense, export.SAFETENSORS))
  pruned = sum(int((~m).sum()) for m in state.masks.values())
  prunable_hf = r.info["prunable_hf_weights"]
  out["zeros_kept"] = bool(sum(int((tensors[n] == 0).sum()) for n in prunable_hf) == pruned and pruned > 0)
  out["pruned"], out["prunable_hf_tensors"] = pruned, len(prunable_hf)
  worst = max(max_per_group(tensors[n], input_axis(n, tensors[n].shape)) for n in prunable_hf)
  out["two_four_kept"] = bool(worst <= 2 and r.info["sparsity"] == 0.5)
  return out


def check_generate(row: str, run: str) -> dict:
  """MaxText's engine generates from the checkpoint (``python -m sparsity generate``'s function)."""
  from sparsity.model import generate  # pylint: disable=import-outside-toplevel

  r = generate.generate_from_cli(run, [*argv_of(row), "dtype=float32"], PROMPT, NEW_TOKENS)
  return {"generate": len(r["ids"]) >= 1, "maxtext_generated_ids": r["ids"]}


def check_import(row: str, work: str, export_dir: str, config) -> dict:
  """import, MaxText's logits of the import, round trip, for a random Hugging Face checkpoint of ``row``."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  from sparsity.model import export, generate, hf_import  # pylint: disable=import-outside-toplevel

  made = os.path.join(work, f"{row}-made")
  hf_check({"make": {made: export_dir}}, work, f"{row}-make")
  ckpt = os.path.join(work, f"{row}-imported")
  hf_import.import_hf(made, config, ckpt, overwrite=True)
  out = {"import": True}
  hf = hf_check({"dense": made, "tokens": TOKENS, "no_tokenizer": True}, work, f"{row}-made")
  mt = generate.forward_logits(argv_of(row), ckpt, np.array(TOKENS))
  out["import_logits_rel_error"] = err = relative_error(mt, hf["logits"])
  if "logits_embedding_bf16" in hf:
    out["import_logits_rel_error_bf16_embedding"] = err = relative_error(mt, hf["logits_embedding_bf16"])
  out["import_logits"] = err <= TOL
  back = os.path.join(work, f"{row}-back")
  export.export(ckpt, config, back, overwrite=True)
  a, b = load_file(os.path.join(made, "model.safetensors")), load_file(os.path.join(back, export.SAFETENSORS))
  differ = sorted(k for k in a if k not in b or a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes())
  out["round_trip_differ"] = differ
  # how far the differing tensors are, in units of the last place of the original (float32 rounding of a hook's
  # arithmetic, e.g. Gemma's norm scales stored as 1 + w by MaxText, is at most 1)
  out["round_trip_max_ulp"] = max((float(np.max(np.abs(a[k].astype(np.float64) - b[k]) / np.spacing(np.abs(a[k]))))
                                   for k in differ if k in b and a[k].shape == b[k].shape), default=0.0)
  out["round_trip_extra"] = sorted(set(b) - set(a))[:10]
  out["round_trip"] = not differ and set(a) == set(b)
  return out


def run_row(row: str, work: str) -> dict:
  from sparsity.maxtext import host  # pylint: disable=import-outside-toplevel
  from sparsity.maxtext.config import load_config  # pylint: disable=import-outside-toplevel
  from sparsity.model import hf_mapping  # pylint: disable=import-outside-toplevel

  out: dict = {"family": row, "decoder_block": F.block_of(row), "overrides": F.SPECS[row]}
  t0 = time.time()
  try:
    config = load_config(host.single_process(argv_of(row), extra=("enable_checkpointing=false",)))
    hf_mapping.model_key(config)
  except ValueError as e:
    out["reason"] = str(e)
    return out
  try:
    run = train(row, work)
    out.update(check_export(row, run, work, config))
    out.update(check_import(row, work, os.path.join(work, f"{row}-hf"), config))
  except Exception as e:  # pylint: disable=broad-except
    out["reason"] = f"{type(e).__name__}: {e}"[:1500]
  if out.get("export"):
    try:
      out.update(check_generate(row, run))
      out["generate_same_as_transformers"] = out["maxtext_generated_ids"] == out.get("hf_generated_ids")
    except Exception as e:  # pylint: disable=broad-except
      out.update(generate=False, generate_reason=f"{type(e).__name__}: {e}"[:1000])
  out["seconds"] = round(time.time() - t0, 1)
  return out


def _mark(v) -> str:
  return "—" if v is None else ("yes" if v else "**no**")


def _err(r: dict, key: str) -> str:
  """The relative error of a comparison; with a tied embedding, against MaxText's bfloat16 rounding of it (the plain
  comparison after the slash)."""
  if key not in r:
    return ""
  if f"{key}_bf16_embedding" in r:
    return f" ({r[f'{key}_bf16_embedding']:.1e} / {r[key]:.1e})"
  return f" ({r[key]:.1e})"


def _ulp(r: dict) -> str:
  if r.get("round_trip") is False and r.get("round_trip_max_ulp"):
    return f" ({len(r['round_trip_differ'])} tensors within {r['round_trip_max_ulp']:.0f} ulp: {_names(r['round_trip_differ'])})"
  return ""


def _names(names: list[str]) -> str:
  """``model.layers.0.input_layernorm.weight`` ... as ``*.input_layernorm.weight`` ..., each once."""
  return ", ".join(sorted({n.split(".")[-2] + "." + n.split(".")[-1] for n in names}))


def _reason(r: dict) -> str:
  why = r.get("reason") or r.get("generate_reason") or ""
  return why.splitlines()[0][:400].replace("|", "/") if why else ""


def markdown(rows: list[dict]) -> str:
  lines = ["| family (`decoder_block`) | Hugging Face class | export | logits match (rel. error) | zeros kept "
           "| 2:4 kept | import (MaxText logits) | round trip | generate (same tokens) | reason |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    same = "" if "generate_same_as_transformers" not in r else f" ({_mark(r['generate_same_as_transformers'])})"
    err = _err(r, "logits_rel_error")
    ierr = _err(r, "import_logits_rel_error")
    lines.append(f"| {r['family']} (`{r['decoder_block']}`) | {r.get('architecture', '—')} | {_mark(r.get('export'))} "
                 f"| {_mark(r.get('logits_match'))}{err} | {_mark(r.get('zeros_kept'))} | {_mark(r.get('two_four_kept'))} "
                 f"| {_mark(r.get('import_logits') if r.get('import') else r.get('import'))}{ierr} | {_mark(r.get('round_trip'))}{_ulp(r)} | {_mark(r.get('generate'))}{same} "
                 f"| {_reason(r)} |")
  return "\n".join(lines) + "\n"


def refused_rows() -> list[dict]:
  from sparsity.model import hf_mapping  # pylint: disable=import-outside-toplevel

  return [{"family": b, "decoder_block": b, "reason": why} for b, why in hf_mapping.REFUSED.items()]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--only", help="comma-separated rows (default: all)")
  ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "sparsity-export-families"),
                  help="scratch directory (runs, exports; a completed run there is reused)")
  ap.add_argument("--out", default=OUT, help="directory of table.json and table.md (default: results/export)")
  ap.add_argument("--render", action="store_true", help="only rewrite table.md from table.json")
  args = ap.parse_args(argv)
  if args.render:
    with open(os.path.join(args.out, "table.json"), encoding="utf-8") as f:
      table = json.load(f)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
      f.write(markdown(table["rows"] + table["refused"]))
    return 0
  os.environ.update(JAX_PLATFORMS="cpu", DECOUPLE_GCLOUD="TRUE")
  rows = args.only.split(",") if args.only else list(ROWS)
  os.makedirs(args.work, exist_ok=True)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "table.json")
  old = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = {r["family"]: r for r in json.load(f)["rows"]}
  for row in rows:
    old[row] = run_row(row, args.work)
    print(json.dumps({k: old[row].get(k) for k in ("family", *CHECKS, "reason")}), flush=True)
  measured = [old[r] for r in ROWS if r in old]
  from sparsity.files import write_json  # pylint: disable=import-outside-toplevel

  write_json(path, {"command": "python benchmarks/export_families.py", "checks": CHECKS, "tolerance": TOL,
                    "rows": measured, "refused": refused_rows()})
  with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
    f.write(markdown(measured + refused_rows()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
