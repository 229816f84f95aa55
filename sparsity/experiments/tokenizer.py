"""A SentencePiece tokenizer trained on the train split of a dataset MaxText reads, for MaxText's ``tokenizer_path``.

Sources (the text feature, ``text`` by default, of the train split only: the validation split is never read):

* a TFDS data directory, as MaxText's ``dataset_type=tfds`` reads it (``dataset_path`` + ``dataset_name``, e.g.
  ``../shared/data/c4_en_minimal`` and ``c4/en:3.1.0``);
* Parquet files (``dataset_type=hf`` with ``hf_train_files``), given as a glob;
* ArrayRecord files of serialized ``tf.train.Example`` (``dataset_type=grain`` with ``grain_train_files``).

The model is written with LLaMA-2's special ids (``unk=0, bos=1, eos=2``, no pad piece), which MaxText's
SentencePiece tokenizer and the Hugging Face export assume, BPE with byte fallback (no text is unknown),
trained on one thread so that the same data gives the same file.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
from typing import Iterator

SPECIAL_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}


@dataclasses.dataclass(frozen=True)
class Source:
  """Where the training text is: ``kind`` is 'tfds', 'parquet' or 'arrayrecord'."""

  kind: str
  path: str
  dataset_name: str = ""
  split: str = "train"
  feature: str = "text"


def detect(path: str, dataset_name: str = "", split: str = "train", feature: str = "text") -> Source:
  """The source at ``path``: a TFDS directory (needs ``dataset_name``), or a glob of .parquet / ArrayRecord files."""
  if os.path.isdir(path):
    if not dataset_name:
      raise ValueError(f"{path} is a directory: give the TFDS dataset name (e.g. --dataset-name c4/en:3.1.0)")
    return Source("tfds", path, dataset_name, split, feature)
  files = sorted(glob.glob(path))
  if not files:
    raise FileNotFoundError(f"no files match {path}")
  if all(f.endswith(".parquet") for f in files):
    return Source("parquet", path, split=split, feature=feature)
  if all(".array_record" in os.path.basename(f) for f in files):
    return Source("arrayrecord", path, split=split, feature=feature)
  raise ValueError(f"{path}: expected .parquet or ArrayRecord files (or a TFDS directory)")


def texts(src: Source) -> Iterator[str]:
  """The documents of the source's train split, in storage order."""
  if src.kind == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    name, _, version = src.dataset_name.partition(":")
    directory = os.path.join(src.path, name, version) if version else os.path.join(src.path, name)
    builder = tfds.builder_from_directory(directory)
    for ex in tfds.as_numpy(builder.as_dataset(split=src.split, shuffle_files=False)):
      yield ex[src.feature].decode("utf-8")
  elif src.kind == "parquet":
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

    for f in sorted(glob.glob(src.path)):
      yield from pq.read_table(f, columns=[src.feature]).column(src.feature).to_pylist()
  else:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=import-outside-toplevel

    for f in sorted(glob.glob(src.path)):
      reader = ArrayRecordReader(f)
      for record in reader.read_all():
        ex = tf.train.Example.FromString(record)
        yield ex.features.feature[src.feature].bytes_list.value[0].decode("utf-8")
      reader.close()


def train(src: Source, vocab_size: int, out: str, model_type: str = "bpe") -> dict:
  """Trains the model on ``src`` and writes ``out`` (a ``.model`` file); returns what it read and wrote."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  if vocab_size < 260:
    raise ValueError(f"vocab_size {vocab_size} is too small for byte fallback (256 bytes + specials)")
  docs = list(texts(src))
  if not docs:
    raise ValueError(f"no text in the {src.split} split of {src.path}")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(docs), model_writer=model, vocab_size=vocab_size, model_type=model_type,
      byte_fallback=True, character_coverage=0.9995, num_threads=1, max_sentence_length=1 << 20,
      split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
      minloglevel=2, **SPECIAL_IDS,
  )
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "wb") as f:
    f.write(model.getvalue())
  sp = spm.SentencePieceProcessor(model_file=out)
  lengths = [len(ids) for ids in sp.encode(docs)]
  return {"out": out, "source": dataclasses.asdict(src), "documents": len(docs), "vocab_size": sp.get_piece_size(),
          "tokens": sum(lengths), "characters": sum(len(d) for d in docs),
          "tokens_per_document": {"mean": sum(lengths) / len(lengths), "max": max(lengths)}}


def count_tokens(model_file: str, src: Source, max_length: int | None = None) -> dict:
  """Tokens of a split under a model, and (with ``max_length``) the tokens MaxText's tfds pipeline trains on.

  The pipeline adds BOS and EOS, cuts each document to ``max_length + 1`` tokens and shifts by one (inputs and
  targets), so a document of ``n`` tokens gives ``min(n + 2, max_length + 1) - 1`` target tokens.
  """
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  sp = spm.SentencePieceProcessor(model_file=model_file)
  lengths = [len(ids) for ids in sp.encode(list(texts(src)))]
  out = {"split": src.split, "documents": len(lengths), "tokens": sum(lengths)}
  if max_length:
    out["tokens_kept"] = sum(min(n + 2, max_length + 1) - 1 for n in lengths)
    out["documents_truncated"] = sum(n + 2 > max_length + 1 for n in lengths)
  return out


__all__ = ["Source", "detect", "texts", "train", "count_tokens", "SPECIAL_IDS"]
