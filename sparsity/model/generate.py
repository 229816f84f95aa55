"""Running a trained (sparse) checkpoint with MaxText itself: text generation and a plain forward pass.

``generate`` drives MaxText's inference engine (``maxtext.inference.maxengine.MaxEngine``: prefill into a KV
cache, insert, then one ``generate`` step per token; greedy unless ``decode_sampling_strategy`` says
otherwise), the loop of ``maxtext.inference.decode``. That script itself needs JetStream, which MaxText
stubs out when decoupled from Google Cloud, so the loop is repeated here with MaxText's own SentencePiece /
Hugging Face tokenizer instead of JetStream's. Parameters come from the checkpoint through MaxText's
``load_parameters_path``, which takes a full train-state checkpoint's ``<step>/items`` directly (it restores
only ``params``; no parameter-only checkpoint is needed). A sparse checkpoint's pruned weights are stored
as zeros, so the model runs as trained; the masks are not needed.

``forward_logits`` is MaxText's training-mode forward pass (``model_creation_utils.from_pretrained``, then the
NNX ``Transformer``) on given token ids, used to check exports against MaxText.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from sparsity.maxtext import checkpoint as ckpt
from sparsity.maxtext import host, modules


def inference_config(argv: Sequence[str], items_dir: str, extra: dict[str, Any]):
  """MaxText's config of ``argv`` (``[yaml, key=value, ...]``) set up to load ``items_dir`` on this host.

  ``extra`` keys are set unless ``argv`` sets them; on a host without an accelerator the CPU settings of
  ``MaxText/train.py`` are added the same way.
  """
  if not argv or not os.path.isfile(argv[0]):
    raise FileNotFoundError(f"no such config file: {argv[0] if argv else '(none)'}")
  argv = host.single_process([*argv, f"load_parameters_path={items_dir}"], extra=("enable_checkpointing=false",))
  from sparsity.maxtext.config import load_config  # pylint: disable=import-outside-toplevel

  given = host.given_keys(argv)
  return load_config([*argv, *(f"{k}={v}" for k, v in extra.items() if k not in given)])


def forward_logits(argv: Sequence[str], checkpoint: str, tokens: np.ndarray, step: int | None = None) -> np.ndarray:
  """MaxText's logits (float32 activations) for ``tokens`` [batch, length] with the checkpoint's parameters."""
  import jax  # pylint: disable=import-outside-toplevel

  maxtext_utils, model_creation_utils = modules.maxtext_utils(), modules.model_creation_utils()
  tokens = np.asarray(tokens, np.int32)
  where = ckpt.locate(checkpoint, step)
  config = inference_config(
      argv, where.items_dir,
      {"dtype": "float32", "per_device_batch_size": 1, "max_target_length": max(tokens.shape[1], 2)},
  )
  mesh = jax.sharding.Mesh(maxtext_utils.create_device_mesh(config), config.mesh_axes)
  model = model_creation_utils.from_pretrained(config, mesh=mesh)
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  segments = np.ones_like(tokens)
  with jax.set_mesh(mesh):
    logits = model(tokens, positions, segments, enable_dropout=False)
  return np.asarray(jax.device_get(logits), np.float32)


def generate(config, prompt: str, max_new_tokens: int, seed: int = 1234) -> dict[str, Any]:
  """Generated token ids and text for ``prompt`` with MaxText's engine (see the module docstring)."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp

  maxengine, build_tokenizer = modules.maxengine(), modules.tokenizer().build_tokenizer

  jax.config.update("jax_default_prng_impl", "unsafe_rbg")  # as maxtext.inference.decode
  _result_tokens_as_pytree(maxengine.engine_api)
  engine = maxengine.MaxEngine(config)
  rng = jax.random.PRNGKey(seed)
  rng, rng_load = jax.random.split(rng)
  params = engine.load_params(rng=rng_load)
  tok = build_tokenizer(
      str(config.tokenizer_path), getattr(config.tokenizer_type, "value", config.tokenizer_type),
      add_bos=bool(config.add_bos), add_eos=False, hf_access_token=config.hf_access_token,
  )
  ids = list(tok.encode(prompt))
  prefill = int(config.max_prefill_predict_length)
  if len(ids) > prefill:
    raise ValueError(f"the prompt has {len(ids)} tokens; max_prefill_predict_length is {prefill}")
  if prefill + max_new_tokens > int(config.max_target_length) + 1:
    raise ValueError(f"max_target_length={config.max_target_length} leaves room for "
                     f"{int(config.max_target_length) + 1 - prefill} new tokens after a {prefill}-token prefill")
  padded = np.zeros(prefill, np.int32)
  padded[: len(ids)] = ids

  rng, rng_prefill = jax.random.split(rng)
  prefix, first = engine.prefill(params=params, padded_tokens=jnp.asarray(padded), true_length=len(ids),
                                 rng=rng_prefill, slot=0)
  rng, rng_init = jax.random.split(rng)
  state = engine.init_decode_state(rng=rng_init)
  state = engine.insert(prefix, state, slot=0)
  out = [int(np.asarray(first.data)[0, first.tokens_idx[0]])]
  eos = getattr(tok, "eos_id", None)
  while len(out) < max_new_tokens and out[-1] != eos:
    rng, rng_gen = jax.random.split(rng)
    state, sampled = engine.generate(params, state, rng=rng_gen)
    out.append(int(np.asarray(sampled.data)[0, sampled.tokens_idx[0]]))
  return {"prompt": prompt, "prompt_ids": ids, "ids": out, "text": tok.decode(out)}


def _result_tokens_as_pytree(engine_api) -> None:
  """Registers MaxText's stand-in for JetStream's ``ResultTokens`` as a JAX pytree.

  Without JetStream (or with ``DECOUPLE_GCLOUD=TRUE``) MaxText substitutes a plain class that its jitted
  prefill/generate cannot return; JetStream's own class is a pytree. Registering the stand-in (array
  fields as children, index fields as static data) is all the engine needs.
  """
  import jax  # pylint: disable=import-outside-toplevel

  cls = engine_api.ResultTokens
  if not getattr(engine_api, "_IS_STUB", False) or getattr(cls, "_sparsity_pytree", False):
    return
  static = ("tokens_idx", "valid_idx", "length_idx", "samples_per_slot")
  jax.tree_util.register_pytree_node(
      cls,
      lambda r: ((r.data, r.log_prob), tuple(getattr(r, k) for k in static)),
      lambda aux, ch: cls(data=ch[0], log_prob=ch[1], **dict(zip(static, aux))),
  )
  cls._sparsity_pytree = True  # pylint: disable=protected-access


def generate_from_cli(checkpoint: str, argv: Sequence[str], prompt: str, max_new_tokens: int,
                      step: int | None = None) -> dict[str, Any]:
  """``generate`` for ``python -m sparsity generate``: the run's argv plus the checkpoint to load."""
  if max_new_tokens < 1:
    raise ValueError("--max-new-tokens must be at least 1")
  where = ckpt.locate(checkpoint, step)
  prefill = 64
  for a in argv:
    if a.startswith("max_prefill_predict_length="):
      prefill = int(a.split("=", 1)[1])
  # The run's max_target_length (its training sequence length) does not bind generation: the KV cache
  # holds the prefill plus the new tokens (RoPE has no learned positions).
  argv = [a for a in argv if not a.startswith("max_target_length=")]
  extra = {"per_device_batch_size": 1, "max_prefill_predict_length": prefill, "max_target_length": prefill + max_new_tokens}
  config = inference_config(argv, where.items_dir, extra)
  return generate(config, prompt, max_new_tokens)
