"""Commands on a trained model: ``inspect``, ``export``, ``import`` and ``generate`` (see ``sparsity.cli`` for the style).

  inspect   CHECKPOINT_DIR [--step N] [--json] [--prunable REGEX] [--structure N:M] [--decoder-block NAME]
  export    CHECKPOINT_DIR --config CONFIG [key=value ...] --out DIR [--format hf|compressed|compressed-24] [--json]
  import    HF_DIR --config CONFIG [key=value ...] --out DIR [--dtype float32|bfloat16] [--json]
  generate  CHECKPOINT_DIR --config CONFIG [key=value ...] [--prompt TEXT] [--max-new-tokens N] [--json]

CHECKPOINT_DIR is a run directory, its ``checkpoints`` directory, one step's directory or its ``items``; HF_DIR a
Hugging Face checkpoint directory (``config.json`` and ``*.safetensors``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from sparsity.cli import Runner, add_json, add_out, check_out, command, emit


def _checkpoint_args(p: argparse.ArgumentParser, verb: str, config: bool = True) -> None:
  """The arguments every model command takes: the checkpoint, its step and (to rebuild the model) its config."""
  p.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="run dir, its checkpoints/ dir, a step's dir or items/")
  p.add_argument("--step", type=int, help=f"step to {verb} (default: the latest)")
  if config:
    p.add_argument("--config", required=True, help="the run's MaxText YAML (then the run's key=value overrides)")
  add_json(p)


@command("inspect", "per-tensor and total sparsity and pruning state of a MaxText checkpoint")
def _inspect(p: argparse.ArgumentParser) -> Runner:
  _checkpoint_args(p, "read", config=False)
  p.add_argument("--prunable", help="regex of prunable parameter paths, for a checkpoint without masks (default: the "
                 "linear layers of every MaxText family, sparsity/maxtext/families.py)")
  p.add_argument("--decoder-block", help="the model's family, for the N:M check's contraction axes (default: the run "
                 "summary's)")
  p.add_argument("--structure", help="N:M (e.g. 2:4) to check every prunable tensor for along its contraction axis "
                 "(default: the run summary's pruning_structure)")

  def run(args: argparse.Namespace) -> int:
    from sparsity.model import inspection  # pylint: disable=import-outside-toplevel

    with contextlib.redirect_stdout(sys.stderr):  # Orbax/absl may print; keep stdout for the report
      r = inspection.report(args.checkpoint, args.step, args.prunable, args.structure, args.decoder_block)
    emit(args, r, lambda: inspection.format_report(r))
    return 0

  return run


@command("export", "write a Hugging Face model directory (masks applied; optionally sparse-bitmask compressed)",
         overrides=True)
def _export(p: argparse.ArgumentParser) -> Runner:
  _checkpoint_args(p, "export")
  add_out(p, "directory to create")
  p.add_argument("--format", choices=("hf", "compressed", "compressed-24"), default="hf",
                 help="hf: dense safetensors with exact zeros (portable); compressed: pruned linear weights in "
                 "compressed-tensors sparse-bitmask; compressed-24: sparse-24-bitmask, for a 2:4 model")
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="weight dtype written")

  def run(args: argparse.Namespace) -> int:
    from sparsity.model import export  # pylint: disable=import-outside-toplevel

    check_out(args.out, args.force)
    with contextlib.redirect_stdout(sys.stderr):
      result = export.export_from_cli(
          args.checkpoint, [args.config, *args.overrides], args.out, fmt=args.format, step=args.step,
          dtype=args.dtype, overwrite=args.force,
      )
    emit(args, {"out": result.out, **result.info}, lambda: export.format_result(result))
    return 0

  return run


@command("import", "a Hugging Face checkpoint as a MaxText checkpoint for load_parameters_path (MaxText's to_maxtext)",
         overrides=True)
def _import(p: argparse.ArgumentParser) -> Runner:
  p.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face checkpoint directory (config.json, *.safetensors)")
  p.add_argument("--config", required=True, help="the MaxText YAML of the model (then key=value overrides: its "
                 "family's model_name and dimensions)")
  add_json(p)
  add_out(p, "MaxText checkpoint directory to create (OUT/0/items is the load_parameters_path)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="parameter dtype written")

  def run(args: argparse.Namespace) -> int:
    from sparsity.model import hf_import  # pylint: disable=import-outside-toplevel

    check_out(args.out, args.force)
    with contextlib.redirect_stdout(sys.stderr):
      out = hf_import.import_from_cli(args.hf_dir, [args.config, *args.overrides], args.out, dtype=args.dtype,
                                      overwrite=args.force)
    emit(args, out, lambda: f"wrote {out['out']} ({out['tensors']} tensors, {out['params']:,} params, {out['dtype']}); "
         f"train from it with load_parameters_path={out['load_parameters_path']}")
    return 0

  return run


@command("generate", "generate text from a checkpoint with MaxText's own decode engine (prefill + KV cache)",
         overrides=True)
def _generate(p: argparse.ArgumentParser) -> Runner:
  _checkpoint_args(p, "load")
  p.add_argument("--prompt", default="I love to", help="text to continue")
  p.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated after the prompt")

  def run(args: argparse.Namespace) -> int:
    from sparsity.model import generate  # pylint: disable=import-outside-toplevel

    with contextlib.redirect_stdout(sys.stderr):
      out = generate.generate_from_cli(
          args.checkpoint, [args.config, *args.overrides], args.prompt, args.max_new_tokens, step=args.step
      )
    emit(args, out, out["text"])
    return 0

  return run
