"""Run under .venv-hf (PyTorch, transformers, compressed-tensors): loads exports the way their users would.

Usage: python tests/hf_check.py REQUEST.json RESULT.json, where the request holds either
  make: {out_dir: config_dir}: a Hugging Face checkpoint per entry, made locally from the config.json in config_dir
    with transformers' own class for it (AutoModelForCausalLM.from_config), every tensor random (normal, std 0.05;
    norm weights 1 + that noise), saved with save_pretrained (safetensors); nothing downloaded. The result lists the
    tensors saved.
or
  dense: an export written with --format hf
  compressed: the same checkpoint written with --format compressed (optional)
  compressed24: a 2:4 checkpoint written with --format compressed-24, whose dense export is `dense` (optional)
  tokens: [[int, ...]] token ids for logits
  prompt, max_new_tokens: greedy generation with the exported tokenizer (optional)
The result: logits of the dense export (and of the decompressed compressed export), zeros per weight,
whether decompression gives the dense weights bit for bit, whether the library's own bitmask compressor
writes the same tensors as the export, tokenizer ids and the generated ids.
"""

import json
import sys

import torch
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.compressors.sparse_compressors.sparse_bitmask import BitmaskTensor
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def bits(t):
  return t.contiguous().view(torch.uint8)


def make(req):
  """Random Hugging Face checkpoints of the configs given (see the module docstring)."""
  out = {}
  for target, config_dir in req["make"].items():
    config = AutoConfig.from_pretrained(config_dir)
    config.dtype = "float32"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
      for name, p in model.named_parameters():
        noise = torch.randn_like(p) * 0.05
        p.copy_(1 + noise if "norm" in name else noise)
    model.save_pretrained(target)
    out[target] = {"class": type(model).__name__, "tensors": sorted(load_file(f"{target}/model.safetensors"))}
  return out


def main(request_path, result_path):
  with open(request_path) as f:
    req = json.load(f)
  if "make" in req:
    with open(result_path, "w") as f:
      json.dump(make(req), f)
    return
  out = {}
  dense_dir = req["dense"]
  model, loading = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32, output_loading_info=True)
  model.eval()
  out["model_class"] = type(model).__name__
  out["loading_info"] = {k: sorted(map(str, v)) for k, v in loading.items()}
  tokens = torch.tensor(req["tokens"], dtype=torch.long)
  with torch.no_grad():
    out["logits"] = model(tokens).logits.float().tolist()
    if getattr(model.config.get_text_config(), "tie_word_embeddings", False):
      # MaxText 0.2.5 computes tied-embedding logits against the embedding rounded to bfloat16
      # (maxtext/layers/embeddings.py attend_on_embedding): the same logits from transformers' final hidden states.
      hidden = model.model(tokens).last_hidden_state.float()
      table = model.get_input_embeddings().weight.to(torch.bfloat16).float()
      logits = hidden @ table.T
      cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
      if cap:
        logits = torch.tanh(logits / cap) * cap
      out["logits_embedding_bf16"] = logits.tolist()
  dense = load_file(f"{dense_dir}/model.safetensors")
  out["zeros"] = {k: int((v == 0).sum()) for k, v in dense.items()}
  out["sizes"] = {k: int(v.numel()) for k, v in dense.items()}
  state = model.state_dict()
  # A family whose transformers class fuses tensors on load (e.g. per-expert weights into one stacked tensor)
  # keeps them under other names: those are listed, the rest compared bit for bit.
  out["renamed_on_load"] = sorted(k for k in dense if k not in state)
  out["loaded_equals_file"] = all(torch.equal(bits(state[k]), bits(v)) for k, v in dense.items() if k in state)
  if req.get("no_tokenizer"):
    with open(result_path, "w") as f:
      json.dump(out, f)
    return

  tok = AutoTokenizer.from_pretrained(dense_dir)
  out["tokenizer_class"] = type(tok).__name__
  out["tokenizer_ids"] = tok("The quick brown fox jumps over the lazy dog.")["input_ids"]
  if req.get("prompt") is not None:
    ids = tok(req["prompt"], return_tensors="pt")["input_ids"]
    out["prompt_ids"] = ids[0].tolist()
    with torch.no_grad():
      gen = model.generate(ids, max_new_tokens=req["max_new_tokens"], do_sample=False, pad_token_id=0)
    out["generated_ids"] = gen[0, ids.shape[1]:].tolist()

  comp24 = req.get("compressed24")
  if comp24:
    from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import Sparse24BitMaskTensor

    compressor = ModelCompressor.from_pretrained(comp24)
    out["compressor24"] = type(compressor.sparsity_compressor).__name__
    config = AutoConfig.from_pretrained(comp24)
    out["quantization_config24"] = config.quantization_config
    del config.quantization_config
    decompressed = AutoModelForCausalLM.from_config(config)
    compressor.decompress(comp24, decompressed)
    dstate = decompressed.state_dict()
    out["decompressed24_bitwise_equal"] = sorted(k for k, v in dense.items() if torch.equal(bits(dstate[k]), bits(v)))
    stored = load_file(f"{comp24}/model.safetensors")
    out["compressed24_modules"] = sorted(k[: -len(".compressed")] for k in stored if k.endswith(".compressed"))
    same = []
    for module in out["compressed24_modules"]:
      ref = Sparse24BitMaskTensor.from_dense(dense[module + ".weight"]).dict(name_prefix=module)
      if all(k in stored and stored[k].dtype == v.dtype and torch.equal(bits(stored[k]), bits(v)) for k, v in ref.items()):
        same.append(module)
    out["library_compress24_equal"] = same

  comp_dir = req.get("compressed")
  if comp_dir:
    compressor = ModelCompressor.from_pretrained(comp_dir)
    out["sparsity_compressor"] = type(compressor.sparsity_compressor).__name__
    config = AutoConfig.from_pretrained(comp_dir)
    out["quantization_config"] = config.quantization_config
    del config.quantization_config
    decompressed = AutoModelForCausalLM.from_config(config)
    compressor.decompress(comp_dir, decompressed)
    dstate = decompressed.state_dict()
    out["decompressed_bitwise_equal"] = sorted(k for k, v in dense.items() if torch.equal(bits(dstate[k]), bits(v)))
    decompressed.eval()
    with torch.no_grad():
      out["decompressed_logits"] = decompressed(tokens).logits.float().tolist()
    stored = load_file(f"{comp_dir}/model.safetensors")
    out["compressed_modules"] = sorted(k[: -len(".compressed")] for k in stored if k.endswith(".compressed"))
    same = []
    for module in out["compressed_modules"]:
      ref = BitmaskTensor.from_dense(dense[module + ".weight"]).dict(name_prefix=module)
      if all(k in stored and stored[k].dtype == v.dtype and torch.equal(bits(stored[k]), bits(v)) for k, v in ref.items()):
        same.append(module)
    out["library_compress_equal"] = same
  with open(result_path, "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
