"""MaxText's modules, imported late (they pull in TensorFlow and configure JAX), and the pinned version."""

from __future__ import annotations

import importlib
import importlib.util
import os

MAXTEXT_VERSION = "0.2.5"


def _import(name: str):
  # MaxText resolves tokenizer names like "tokenizer.llama2" against a source checkout's src/maxtext/assets; an
  # installed wheel ships them inside the package.
  spec = importlib.util.find_spec("maxtext")
  if spec and spec.submodule_search_locations:
    os.environ.setdefault("MAXTEXT_ASSETS_ROOT", os.path.join(list(spec.submodule_search_locations)[0], "assets"))
  return importlib.import_module(name)


def pyconfig():
  return _import("maxtext.configs.pyconfig")


def types():
  return _import("maxtext.configs.types")


def optimizers():
  return _import("maxtext.optimizers.optimizers")


def train():
  return _import("maxtext.trainers.pre_train.train")


def train_utils():
  return _import("maxtext.utils.train_utils")


def max_utils():
  return _import("maxtext.utils.max_utils")


def checkpointing():
  return _import("maxtext.common.checkpointing")


def exceptions():
  return _import("maxtext.utils.exceptions")


def train_compile():
  return _import("maxtext.trainers.pre_train.train_compile")


def maxtext_utils():
  return _import("maxtext.utils.maxtext_utils")


def sharding():
  return _import("maxtext.utils.sharding")


def accelerators():
  return _import("maxtext.utils.accelerator_to_spec_map")


def model_creation_utils():
  return _import("maxtext.utils.model_creation_utils")


def param_mapping():
  """MaxText's checkpoint-conversion name and hook tables (``PARAM_MAPPING``, ``HOOK_FNS``), keyed by model name."""
  return _import("maxtext.checkpoint_conversion.utils.param_mapping")


def hf_shape():
  """MaxText's Hugging Face shape tables (``HF_SHAPE``), keyed by model name."""
  return _import("maxtext.checkpoint_conversion.utils.hf_shape")


def hf_model_configs():
  """MaxText's transformers config objects per model name (``HF_MODEL_CONFIGS``)."""
  return _import("maxtext.checkpoint_conversion.utils.hf_model_configs")


def to_huggingface():
  """MaxText's MaxText -> Hugging Face converter module (its table and config helpers)."""
  return _import("maxtext.checkpoint_conversion.to_huggingface")


def to_maxtext():
  """MaxText's Hugging Face -> MaxText converter module (its abstract model and stacking helpers)."""
  return _import("maxtext.checkpoint_conversion.to_maxtext")


def model_module(decoder_block: str):
  """MaxText's module of one model family (``maxtext.models.<decoder_block>``)."""
  return _import(f"maxtext.models.{decoder_block}")


def conversion_utils():
  """MaxText's checkpoint-conversion helpers (``process_maxtext_param``)."""
  return _import("maxtext.checkpoint_conversion.utils.utils")


def maxengine():
  """MaxText's inference engine module (``MaxEngine``, ``engine_api``)."""
  return _import("maxtext.inference.maxengine.maxengine")


def tokenizer():
  """MaxText's tokenizers (``build_tokenizer``)."""
  return _import("maxtext.input_pipeline.tokenizer")


def version() -> str | None:
  return getattr(_import("maxtext.version"), "__version__", None)


def max_logging():
  """MaxText's logger (``max_logging.log``)."""
  return _import("maxtext.utils.max_logging")


__all__ = ["MAXTEXT_VERSION", "pyconfig", "types", "optimizers", "train", "train_utils", "max_utils", "checkpointing", "max_logging",
           "exceptions", "train_compile", "maxtext_utils", "sharding", "accelerators", "model_creation_utils",
           "param_mapping", "hf_shape", "hf_model_configs", "to_huggingface", "to_maxtext", "model_module", "conversion_utils", "maxengine", "tokenizer", "version"]
