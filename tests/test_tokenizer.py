"""The tokenizer command: a SentencePiece model trained on the train split of the C4 slice, as MaxText reads it."""

import json

import pytest
import sentencepiece as spm

from conftest import cli
from sparsity.experiments import tokenizer


@pytest.mark.slow  # trains a SentencePiece model
def test_tokenizer_trains_on_the_train_split_only_and_is_deterministic(tmp_path, c4_path):
  a, b = tmp_path / "a.model", tmp_path / "b.model"
  code, out, err = cli(["tokenizer", c4_path, "--dataset-name", "c4/en:3.1.0", "--vocab-size", "512", "--out", a,
                            "--count-split", "validation", "--max-length", "256", "--json"])
  assert code == 0, err[-3000:]
  r = json.loads(out)
  assert r["documents"] == 1000 and r["vocab_size"] == 512  # the 1,000 train documents, not the 200 validation ones
  train, val = r["counts"]
  assert (train["split"], val["split"], val["documents"]) == ("train", "validation", 200)
  assert 0 < val["tokens_kept"] < val["tokens"] and val["documents_truncated"] > 0
  sp = spm.SentencePieceProcessor(model_file=str(a))
  assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)  # LLaMA's ids, as MaxText assumes
  assert sp.decode(sp.encode("Hello, world! 2024")) == "Hello, world! 2024"
  tokenizer.train(tokenizer.detect(c4_path, "c4/en:3.1.0"), 512, str(b))
  assert a.read_bytes() == b.read_bytes()  # the same data gives the same model
  code, _, err = cli(["tokenizer", c4_path, "--vocab-size", "512", "--out", tmp_path / "c.model"])
  assert code == 1 and "TFDS dataset name" in err  # a directory needs --dataset-name


def test_parquet_and_arrayrecord_sources_read_the_same_documents(c4_path):
  tfds_docs = list(tokenizer.texts(tokenizer.detect(c4_path, "c4/en:3.1.0")))
  parquet = list(tokenizer.texts(tokenizer.detect(f"{c4_path}/hf/c4-train-*.parquet")))
  records = list(tokenizer.texts(tokenizer.detect(f"{c4_path}/c4/en/3.1.0/c4-train.array_record*")))
  assert len(tfds_docs) == len(records) == 1000 and sorted(tfds_docs) == sorted(records)
  assert len(parquet) == 200 and all(isinstance(t, str) and t for t in parquet)  # the slice's Parquet sample
  with pytest.raises(FileNotFoundError):
    tokenizer.detect(f"{c4_path}/nothing-*.parquet")
