"""Every fact about MaxText 0.2.5's layouts that this project relies on, and nothing else (no MaxText import).

Run directory (``<base_output_directory>/<run_name>``)::

  checkpoints/<step>/items/       Orbax checkpoint of the train state (one per saved step)
  tensorboard/                    TensorBoard event files
  sparsity_summary.json           written by this project when training ends
  sparsity_plan.json              written by this project when a sparse run with checkpointing starts: what its
                                  checkpoints' masks follow (checked before a resume)
  compile_summary.json            written by MaxText/train_compile.py (ahead-of-time compile for a TPU topology)

Train state while training (an ``nnx.State``, flattened to '/'-joined paths):
  ``model/<param path>``                              the parameters
  ``optimizer/step``                                  MaxText's update count
  ``optimizer/opt_state/``                            the optimizer state: ``pruned``'s ``PruningState``, i.e.
    ``count``, ``masks/<param path>``, ``inner_state/...`` (MaxText's optimizer's own state)

Checkpoint tree (``checkpoints/<step>/items``):
  ``params/params/<param path>``, ``opt_state/{count, masks/<param path>, inner_state/...}``, ``step``

Parameter paths look like ``decoder/layers/mlp/wi_0/kernel``; with ``scan_layers=true`` (MaxText's default)
the layers are stacked on axis ``param_scan_axis`` (1) of each kernel.

Checkpoint conversion tables (``maxtext.checkpoint_conversion``) key parameters as ``params-<path with ->``.
"""

from __future__ import annotations

import os

SUMMARY_FILE = "sparsity_summary.json"
PLAN_FILE = "sparsity_plan.json"
COMPILE_SUMMARY_FILE = "compile_summary.json"
CHECKPOINTS = "checkpoints"
ITEMS = "items"
TENSORBOARD = "tensorboard"

# The train state while training.
STATE_PARAMS = "model/"
STATE_OPT = "optimizer/opt_state/"
STATE_MASKS = STATE_OPT + "masks/"
STATE_COUNT = STATE_OPT + "count"
STATE_INNER = STATE_OPT + "inner_state/"
STATE_STEP = ("optimizer", "step")

# The checkpoint tree.
CKPT_PARAMS = ("params", "params")
CKPT_OPT = "opt_state"
CKPT_MASKS = "masks"
CKPT_COUNT = "count"
CKPT_STEP = "step"


def run_dir(base_output_directory: str, run_name: str) -> str:
  return os.path.join(base_output_directory, run_name)


def summary_path(run_directory: str) -> str:
  return os.path.join(run_directory, SUMMARY_FILE)


def plan_path(run_directory: str) -> str:
  return os.path.join(run_directory, PLAN_FILE)


def compile_summary_path(run_directory: str) -> str:
  return os.path.join(run_directory, COMPILE_SUMMARY_FILE)


def checkpoints_dir(run_directory: str) -> str:
  return os.path.join(run_directory, CHECKPOINTS)


def items_dir(checkpoints_directory: str, step: int) -> str:
  return os.path.join(checkpoints_directory, str(step), ITEMS)


def tensorboard_dir(run_directory: str) -> str:
  return os.path.join(run_directory, TENSORBOARD)


def state_param_path(state_path: str) -> str | None:
  """The parameter path of a train-state leaf under ``model/`` (None for other leaves)."""
  return state_path[len(STATE_PARAMS):] if state_path.startswith(STATE_PARAMS) else None


def state_mask_path(state_path: str) -> str | None:
  """The parameter path that a train-state mask leaf masks (None for other leaves)."""
  return state_path[len(STATE_MASKS):] if state_path.startswith(STATE_MASKS) else None


def ckpt_param_path(ckpt_path: str) -> str | None:
  """The parameter path of a checkpoint leaf ``params/params/<path>`` (None for other leaves)."""
  prefix = "/".join(CKPT_PARAMS) + "/"
  return ckpt_path[len(prefix):] if ckpt_path.startswith(prefix) else None


def ckpt_mask_path(ckpt_path: str) -> str | None:
  """The parameter path of a checkpoint mask leaf ``opt_state/masks/<path>`` (None for other leaves)."""
  prefix = f"{CKPT_OPT}/{CKPT_MASKS}/"
  return ckpt_path[len(prefix):] if ckpt_path.startswith(prefix) else None


def train_state_tree(params: dict, opt_state: dict, step) -> dict:
  """A pytree laid out like MaxText's train state (``model``, ``optimizer/{step, opt_state}``), for tests."""
  state: dict = {STATE_PARAMS.rstrip("/"): params}
  node = state
  for key in STATE_OPT.rstrip("/").split("/")[:-1]:
    node = node.setdefault(key, {})
  node[STATE_STEP[-1]] = step
  node[STATE_OPT.rstrip("/").split("/")[-1]] = opt_state
  return state


def checkpoint_tree(params: dict, masks: dict | None = None, count=None, inner_state=None, step=None) -> dict:
  """A pytree in MaxText's checkpoint layout from nested dicts (``params``, ``masks``, ``inner_state``).

  What the train state saves, for tools and tests that write a checkpoint MaxText (and ``checkpoint.load``) reads.
  """
  tree: dict = {CKPT_PARAMS[0]: {CKPT_PARAMS[1]: params}}
  if masks is not None:
    tree[CKPT_OPT] = {CKPT_COUNT: count, CKPT_MASKS: masks, "inner_state": inner_state or {}}
  if step is not None:
    tree[CKPT_STEP] = step
  return tree


def llama_param_shapes(emb: int, layers: int, q_heads: int, kv_heads: int, head_dim: int, mlp: int, vocab: int, *,
                       scan_layers: bool = True, tied: bool = False, experts: int = 1,
                       moe_mlp: int = 0) -> dict[str, tuple[int, ...]]:
  """MaxText's parameter paths and stored shapes of a LLaMA-2 decoder (``decoder_block=llama2``; Mistral's is the
  same), or with ``experts > 1`` a Mixtral one (every layer's MLP a ``MoeBlock_0`` of routed experts of width
  ``moe_mlp`` (0: ``mlp``) and their router ``gate``). ``scan_layers``: the layers stacked on axis 1
  (``param_scan_axis``), else one ``layers_<i>`` per layer; ``tied``: no ``logits_dense`` (``logits_via_embedding``).
  The one table of these paths (export checks checkpoints against it, planning counts parameters with it)."""
  per_layer = {
      "self_attention/query/kernel": (emb, q_heads, head_dim),
      "self_attention/key/kernel": (emb, kv_heads, head_dim),
      "self_attention/value/kernel": (emb, kv_heads, head_dim),
      "self_attention/out/kernel": (q_heads, head_dim, emb),
  }
  if experts > 1:
    width = moe_mlp or mlp
    per_layer.update({
        "MoeBlock_0/gate/kernel": (emb, experts),
        "MoeBlock_0/wi_0": (experts, emb, width),
        "MoeBlock_0/wi_1": (experts, emb, width),
        "MoeBlock_0/wo": (experts, width, emb),
    })
  else:
    per_layer.update({"mlp/wi_0/kernel": (emb, mlp), "mlp/wi_1/kernel": (emb, mlp), "mlp/wo/kernel": (mlp, emb)})
  per_layer.update({"pre_self_attention_layer_norm/scale": (emb,), "post_self_attention_layer_norm/scale": (emb,)})
  out = {"token_embedder/embedding": (vocab, emb), "decoder/decoder_norm/scale": (emb,)}
  if not tied:
    out["decoder/logits_dense/kernel"] = (emb, vocab)
  for name, shape in per_layer.items():
    if scan_layers:
      out[f"decoder/layers/{name}"] = (shape[0], layers, *shape[1:])
    else:
      for i in range(layers):
        out[f"decoder/layers_{i}/{name}"] = shape
  return out


def conversion_key(param_path: str) -> str:
  """The key of a parameter in MaxText's checkpoint-conversion tables."""
  return "params-" + param_path.replace("/", "-")


def contraction_axis(param_path: str, shape: tuple, decoder_block=None, scan_axis: int = 1) -> int:
  """The axis of a MaxText kernel along which it contracts its input (where N:M groups lie).

  From the per-family description in ``sparsity.maxtext.families`` (``decoder_block``: the model's family; without
  it every family describing the path must agree). E.g. query/key/value ``(emb, [layers,] heads, head_dim)``, MLP
  ``wi_0`` ``(emb, [layers,] mlp)`` and ``wo`` ``(mlp, [layers,] emb)``, ``logits_dense`` ``(emb, vocab)``: axis 0;
  the attention output projection ``(heads, [layers,] head_dim, emb)``: head_dim; a routed expert's
  ``(experts, [layers,] in, out)``: ``in``.
  """
  from sparsity.maxtext import families  # pylint: disable=import-outside-toplevel

  return families.contraction_axis(param_path, shape, decoder_block, scan_axis)


def scan_axis(param_path: str, scan_layers: bool, param_scan_axis: int = 1) -> int | None:
  """The stacked-layers axis of a parameter (None when layers are not scanned or it is not a layer's)."""
  return param_scan_axis if scan_layers and "/layers/" in f"/{param_path}/" else None


__all__ = [
    "SUMMARY_FILE", "COMPILE_SUMMARY_FILE", "compile_summary_path", "CHECKPOINTS", "ITEMS", "TENSORBOARD", "STATE_PARAMS", "STATE_OPT", "STATE_MASKS", "STATE_COUNT",
    "STATE_INNER", "STATE_STEP", "CKPT_PARAMS", "CKPT_OPT", "CKPT_MASKS", "CKPT_COUNT", "CKPT_STEP", "run_dir",
    "summary_path", "checkpoints_dir", "items_dir", "tensorboard_dir", "state_param_path", "state_mask_path",
    "ckpt_param_path", "ckpt_mask_path", "train_state_tree", "checkpoint_tree", "llama_param_shapes", "conversion_key", "contraction_axis", "scan_axis",
]
