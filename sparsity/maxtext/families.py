"""Where each MaxText 0.2.5 model family (``decoder_block``) keeps its linear weights, and their contraction axes.

The one description of MaxText's models that the pruner uses (no MaxText import; ``layout`` delegates to it):

* ``WEIGHTS``: every kind of parameter MaxText's decoders hold, as a regex over parameter paths
  (``decoder/layers/self_attention/query/kernel``, ``decoder/layers/MoeBlock_0/wi_0``, ...), with its *kind*
  (attention, mlp, experts, shared_experts, output, other linear, router; or a non-linear class: embedding, norm,
  bias, other) and, for linear weights, its axes before any stacking: ``i`` input (contracted), ``o`` output,
  ``e`` a batch axis (the expert axis of a mixture of experts, the groups of a grouped projection).
* ``FAMILIES``: for every ``decoder_block`` MaxText 0.2.5 offers, which of those linear weights it has.

The linear weights the paper prunes (its section 4: every linear layer) are the attention projections in every form
MaxText has (query/key/value/out, fused qkv, MLA's low-rank ``wq_a``/``wq_b``/``wkv_a``/``wkv_b``, the gated
delta net's projections, DeepSeek-V4's compressed attention), dense MLPs, every routed expert's MLP, shared experts
and the untied output projection. Not pruned by default: embeddings, norms and biases (not linear layers, as in the
paper), and the routers (``gate/kernel``, Qwen3-Next's ``shared_expert_gate``, DeepSeek-V4's indexer): a router is
a small (width x experts) matrix whose every column decides where whole tokens go, so pruning it changes the
routing rather than thinning a computation; ``prunable_params`` can add it (docs/howto/model_families.md).

Axes. A kernel's stored shape is its unstacked axes with the stacked-layer axes inserted at ``param_scan_axis``
(1 by default; several for nested scans such as Gemma 4's or Qwen3-Next's ``layers x local_layers``): e.g. the
experts' ``wi_0`` is ``(experts, in, out)``, stored ``(experts, layers, in, out)`` under ``scan_layers``. The
contraction axis, where N:M groups lie, is the last input axis: the input of the attention output projection
``(heads, head_dim, emb)`` is heads x head_dim, whose consecutive entries run along head_dim.
"""

from __future__ import annotations

import dataclasses
import functools
import re

ATTENTION, MLP, EXPERTS, SHARED_EXPERTS, OUTPUT, OTHER_LINEAR, ROUTER = (
    "attention", "mlp", "experts", "shared_experts", "output", "other_linear", "router")
EMBEDDING, NORM, BIAS, OTHER = "embedding", "norm", "bias", "other"
LINEAR_KINDS = (ATTENTION, MLP, EXPERTS, SHARED_EXPERTS, OUTPUT, OTHER_LINEAR, ROUTER)
KINDS = LINEAR_KINDS + (EMBEDDING, NORM, BIAS, OTHER)


@dataclasses.dataclass(frozen=True)
class Weight:
  """One kind of parameter: ``pattern`` (``re.search`` on the parameter path), its kind and, for a linear weight,
  its unstacked axes (``i`` input, ``o`` output, ``e`` batch/expert); ``prunable``: pruned by default."""

  name: str
  pattern: str
  kind: str
  axes: str = ""
  prunable: bool = False
  what: str = ""

  @property
  def linear(self) -> bool:
    return bool(self.axes)

  def matches(self, path: str) -> bool:
    return re.search(self.pattern, path) is not None


_ATTN = r"(self_attention|self_attention_global|self_attention_local|GptOssAttention)"
_MOE = r"(MoeBlock_0|moe_block|routed_experts|GptOssMlp)"


def _linear(name, pattern, kind, axes, what, prunable=True):
  return Weight(name, pattern, kind, axes, prunable, what)


WEIGHTS: dict[str, Weight] = {w.name: w for w in (
    # Attention projections.
    _linear("qkv", rf"(^|/){_ATTN}/(query|key|value)/kernel$", ATTENTION, "ioo",
            "query/key/value (emb, heads, head_dim); also MLA's query without q_lora_rank"),
    _linear("attn_out", rf"(^|/){_ATTN}/out/kernel$", ATTENTION, "iio", "output projection (heads, head_dim, emb)"),
    _linear("olmo_qkv", r"(^|/)layers(_\d+)?/attention/(query|key|value)/kernel$", ATTENTION, "ioo",
            "OLMo 3 query/key/value (emb, heads, head_dim)"),
    _linear("olmo_out", r"(^|/)layers(_\d+)?/attention/out/kernel$", ATTENTION, "iio",
            "OLMo 3 output projection (heads, head_dim, emb)"),
    _linear("gated_qkv", r"(^|/)attention/attention/(query|key|value)/kernel$", ATTENTION, "ioo",
            "Qwen3-Next full-attention query (gated: 2 x head_dim)/key/value (emb, heads, head_dim)"),
    _linear("gated_out", r"(^|/)attention/attention/out/kernel$", ATTENTION, "io",
            "Qwen3-Next full-attention output projection (heads x head_dim, emb): 2-D"),
    _linear("fused_qkv", r"(^|/)self_attention/qkv_proj/kernel$", ATTENTION, "iooo", "GPT-3 fused qkv (emb, 3, heads, head_dim)"),
    _linear("mla_down", r"(^|/)self_attention/(wq_a|wkv_a)/kernel$", ATTENTION, "io",
            "MLA low-rank down projections (emb, q_lora_rank) and (emb, kv_lora_rank + rope_head_dim)"),
    _linear("mla_up", r"(^|/)self_attention/(wq_b|wkv_b)/kernel$", ATTENTION, "ioo",
            "MLA up projections (q_lora_rank, heads, qk_head_dim) and (kv_lora_rank, heads, qk_nope + v_head_dim)"),
    _linear("csa_wkv", r"(^|/)self_attention/wkv/kernel$", ATTENTION, "ioo", "DeepSeek-V4 key/value (emb, kv_heads, head_dim)"),
    _linear("csa_o_a", r"(^|/)self_attention/o_a_proj/kernel$", ATTENTION, "eio",
            "DeepSeek-V4 grouped output low-rank projection (groups, in per group, rank)"),
    _linear("csa_o_b", r"(^|/)self_attention/o_b_proj/kernel$", ATTENTION, "io", "DeepSeek-V4 output projection (groups x rank, emb)"),
    _linear("csa_compressor", r"(^|/)(csa|hca)_compressor/(kv_proj|gate_proj)/kernel$", ATTENTION, "io",
            "DeepSeek-V4 key/value compressor projections (emb, dim)"),
    _linear("gdn", r"(^|/)attention/(in_proj_qkvz|in_proj_ba|out_proj)/kernel$", ATTENTION, "io",
            "gated delta net (linear attention) projections in (emb, dim) and out (dim, emb)"),
    # MLPs and experts.
    _linear("mlp", r"(^|/)(mlp|mlp_global|mlp_local)/(wi|wi_0|wi_1|wo)/kernel$", MLP, "io",
            "dense MLP wi/wi_0/wi_1 (emb, mlp) and wo (mlp, emb)"),
    _linear("simple", r"(^|/)layers(_\d+)?/(weights|ff_1|ff_2)$", MLP, "io", "MaxText's test blocks simple/simple_mlp (in, out)"),
    _linear("latent_up", r"(^|/)layer_up_projection/kernel$", MLP, "io",
            "Qwen3 custom MoE up projection of the expert latent (moe_expert_input_dim, emb)"),
    _linear("experts", rf"(^|/){_MOE}/(wi|wi_0|wi_1|wo)$", EXPERTS, "eio",
            "routed experts wi_0/wi_1 (experts, emb, moe_mlp) and wo (experts, moe_mlp, emb)"),
    _linear("shared_experts", r"(^|/)(shared_experts|shared_expert)/(wi_0|wi_1|wo)/kernel$", SHARED_EXPERTS, "io",
            "shared experts: a dense MLP every token uses"),
    _linear("per_layer", r"(^|/)(per_layer_model_projection|per_layer_input_gate|per_layer_projection)/kernel$",
            OTHER_LINEAR, "io", "Gemma 4 small per-layer input projections and gate"),
    _linear("output", r"(^|/)decoder/logits_dense/kernel$|^logits_dense/kernel$", OUTPUT, "io",
            "untied output projection (emb, vocab)"),
    # Linear, not pruned by default.
    _linear("router", rf"(^|/){_MOE}/gate/kernel$", ROUTER, "io", "MoE router (emb, experts)", prunable=False),
    _linear("shared_gate", r"(^|/)shared_expert_gate/kernel$", ROUTER, "io", "Qwen3-Next shared-expert gate (emb, 1)",
            prunable=False),
    _linear("indexer", r"(^|/)indexer/(q_proj|kv_proj|gate_proj|weights_proj)/kernel$", ROUTER, "io",
            "DeepSeek-V4 lightning indexer (chooses the tokens attended to)", prunable=False),
    # Not linear layers.
    Weight("embedding", r"(^|/)(token_embedder|position_embedder)/embedding$|(^|/)embed_tokens_per_layer$", EMBEDDING,
           what="token, position and per-layer embeddings"),
    Weight("norm", r"/scale$", NORM, what="norm scales"),
    Weight("bias", r"(/bias|_bias)$", BIAS, what="biases"),
    Weight("other", r"(^|/)(sinks|A_log|layer_scalar|per_expert_scale|pre_forward_scale_2|position_bias)$"
           r"|(^|/)conv1d/kernel$|(^|/)mhc_(attention|mlp)/|(^|/)hc_head/", OTHER,
           what="attention sinks, gated-delta-net decay and causal convolution, layer and expert scalars, "
                "hyper-connection mixing weights"),
)}

_ATTENTION = ("qkv", "attn_out")
_DENSE = _ATTENTION + ("mlp", "output")
_MOE_BASE = _ATTENTION + ("experts", "router", "output")


@dataclasses.dataclass(frozen=True)
class Family:
  """A ``decoder_block``: its linear weights (names in ``WEIGHTS``), MaxText model names, whether it is an MoE."""

  decoder_block: str
  weights: tuple[str, ...]
  models: tuple[str, ...] = ()
  moe: bool = False
  note: str = ""

  @property
  def linear(self) -> tuple[Weight, ...]:
    return tuple(WEIGHTS[n] for n in self.weights)


FAMILIES: dict[str, Family] = {f.decoder_block: f for f in (
    Family("default", _DENSE, note="MaxText's generic decoder layer"),
    Family("llama2", _DENSE, ("llama2-7b", "llama3-8b", "llama3.1-8b", "llama3.3-70b"),
           note="LLaMA 2, 3, 3.1 and 3.3 (decoder_block=llama2 with their model names' shapes)"),
    Family("mistral", _DENSE, ("mistral-7b",)),
    Family("mixtral", _MOE_BASE, ("mixtral-8x7b", "mixtral-8x22b"), moe=True),
    Family("deepseek", _ATTENTION + ("mla_down", "mla_up", "mlp", "shared_experts", "experts", "router", "output"),
           ("deepseek2-16b", "deepseek3-671b", "deepseek3-tiny", "kimi-k2-1t"), moe=True,
           note="MLA attention; first_num_dense_layers dense MLP layers, then routed + shared experts"),
    Family("deepseek4", ("mla_down", "mla_up", "csa_wkv", "csa_o_a", "csa_o_b", "csa_compressor", "indexer",
                         "shared_experts", "experts", "router", "output"), ("deepseek4-tiny", "deepseek4-284b"), moe=True,
           note="compressed sparse attention, hyper-connections"),
    Family("gemma", _DENSE, ("gemma-2b", "gemma-7b")),
    Family("gemma2", _DENSE, ("gemma2-2b", "gemma2-9b", "gemma2-27b"), note="local and global layers"),
    Family("gemma3", _DENSE, ("gemma3-4b", "gemma3-12b", "gemma3-27b")),
    Family("gemma4", _DENSE + ("experts", "shared_experts", "router"), ("gemma4-26b", "gemma4-31b"), moe=True,
           note="gemma4-26b is a mixture of experts, gemma4-31b dense"),
    Family("gemma4_small", _DENSE + ("per_layer",), ("gemma4-e2b", "gemma4-e4b")),
    Family("qwen2", _DENSE, ("qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-14b")),
    Family("qwen3", _DENSE, ("qwen3-0.6b", "qwen3-8b", "qwen3-32b")),
    Family("qwen3_moe", _MOE_BASE, ("qwen3-30b-a3b", "qwen3-235b-a22b"), moe=True),
    Family("qwen3_custom_moe", _MOE_BASE + ("latent_up",), ("qwen3-custom-30b-a3b",), moe=True),
    Family("qwen3_next", ("gated_qkv", "gated_out", "gdn", "experts", "shared_experts", "router", "shared_gate", "output"),
           ("qwen3-next-80b-a3b",), moe=True, note="gated delta net + gated full attention"),
    Family("qwen3_5", ("gated_qkv", "gated_out", "gdn", "experts", "shared_experts", "router", "shared_gate", "output"),
           ("qwen3.5-35b-a3b", "qwen3.5-397b-a17b"), moe=True, note="as qwen3_next"),
    Family("gpt3", ("fused_qkv", "attn_out", "mlp", "output"), ("gpt3-52k", "gpt3-6b", "gpt3-175b")),
    Family("gpt_oss", _MOE_BASE, ("gpt-oss-20b", "gpt-oss-120b"), moe=True),
    Family("simple", ("simple", "output"), note="MaxText's test block"),
    Family("simple_mlp", ("simple", "output"), note="MaxText's test block"),
    Family("llama4", _DENSE + ("experts", "shared_experts", "router"), ("llama4-17b-16e", "llama4-17b-128e"), moe=True),
    Family("olmo3", ("olmo_qkv", "olmo_out", "mlp", "output"), ("olmo3-7b", "olmo3-32b")),
    Family("envy", _DENSE + ("experts", "router"), ("envy-test", "envy-switch-base"), moe=True),
)}

NON_LINEAR = tuple(w for w in WEIGHTS.values() if not w.linear)


def family(decoder_block) -> Family:
  """The description of ``decoder_block`` (a string or MaxText's enum); a ValueError naming it if not described."""
  name = str(getattr(decoder_block, "value", decoder_block))
  if name not in FAMILIES:
    raise ValueError(f"decoder_block={name!r} is not described in sparsity/maxtext/families.py, so which of its "
                     f"parameters are linear layers is unknown; described: {', '.join(FAMILIES)}. Set prunable_params "
                     "to choose the prunable parameters yourself")
  return FAMILIES[name]


def classify(path: str, fam: Family | None = None) -> Weight | None:
  """The ``Weight`` a parameter path is: among ``fam``'s linear weights (all families' if None), else non-linear
  classes; None if the description does not cover it."""
  linear = fam.linear if fam is not None else tuple(w for w in WEIGHTS.values() if w.linear)
  for w in linear + NON_LINEAR:
    if w.matches(path):
      return w
  return None


def unstacked_axis(w: Weight) -> int:
  """The contraction axis of ``w`` before any stacked-layer axis is inserted: its last input axis."""
  return w.axes.rindex("i")


def contraction_axis(path: str, shape: tuple, decoder_block=None, scan_axis: int = 1) -> int:
  """The axis along which the kernel at ``path`` (stored ``shape``) contracts its input (where N:M groups lie).

  ``decoder_block`` selects the family's description; without it every family describing ``path`` must agree.
  Stacked-layer axes (``len(shape)`` minus the unstacked rank) sit at ``scan_axis`` (MaxText's ``param_scan_axis``).

  Raises:
    ValueError: the path is not a linear weight of the description, or its shape does not fit it.
  """
  fam = family(decoder_block) if decoder_block is not None else None
  if fam is not None:
    candidates = [w for w in fam.linear if w.matches(path)][:1]
  else:
    candidates = [w for w in WEIGHTS.values() if w.linear and w.matches(path)]
  axes = {_axis(w, path, tuple(shape), scan_axis) for w in candidates}
  if not axes:
    where = f"decoder_block={fam.decoder_block}" if fam else "any MaxText family"
    raise ValueError(f"{path} {tuple(shape)} is not a linear weight of {where} (sparsity/maxtext/families.py), so it "
                     "has no contraction axis for an N:M structure")
  if len(axes) > 1:
    raise ValueError(f"{path}: families disagree on its contraction axis; give the decoder_block")
  return axes.pop()


def _axis(w: Weight, path: str, shape: tuple, scan_axis: int) -> int:
  extra = len(shape) - len(w.axes)
  if extra < 0:
    raise ValueError(f"{path} has shape {shape}, fewer axes than its description {w.name} ({w.axes}: {w.what})")
  a = unstacked_axis(w)
  return a + extra if extra and a >= scan_axis else a


@dataclasses.dataclass(frozen=True)
class GroupAxis:
  """``(path, shape) -> contraction axis`` of a run's kernels (``PrunePlan.group_axis``): its family's description
  (every family's, when ``decoder_block`` is not described) with stacked axes at ``scan_axis``."""

  decoder_block: str | None = None
  scan_axis: int = 1

  def __call__(self, path: str, shape: tuple) -> int:
    block = self.decoder_block if self.decoder_block in FAMILIES else None
    return contraction_axis(path, shape, block, self.scan_axis)


def batch_axes(path: str, shape: tuple, decoder_block=None, scan_axis: int = 1) -> tuple[int, ...]:
  """The stored axes of a linear weight that index experts (or groups): ``e`` axes, shifted past stacked axes."""
  w = classify(path, family(decoder_block) if decoder_block is not None else None)
  if w is None or not w.linear:
    return ()
  extra = len(shape) - len(w.axes)
  return tuple(a + extra if extra and a >= scan_axis else a for a, r in enumerate(w.axes) if r == "e")


@functools.cache
def default_prunable() -> str:
  """The default ``prunable_params``: the union of every family's linear weights pruned by default."""
  pats = sorted({w.pattern for f in FAMILIES.values() for w in f.linear if w.prunable})
  return "|".join(f"(?:{p})" for p in pats)


def extend_default(regex: str) -> str:
  """``prunable_params`` as MaxText runs take it: '+REGEX' is the default and REGEX (a regex cannot start with '+'),
  e.g. '+(^|/)gate/kernel$' also prunes the MoE routers; anything else is itself."""
  return f"{default_prunable()}|(?:{regex[1:]})" if regex.startswith("+") else regex


def check_params(decoder_block, paths, prunable_params: str | None = None) -> Family:
  """The family of a model whose parameters are ``paths``; a ValueError naming the family and every parameter its
  description does not cover (with the default ``prunable_params``, pruning would otherwise silently skip it), or, when
  given, every linear weight the default regex and the family disagree on (a bug in this description)."""
  fam = family(decoder_block)
  unknown = [p for p in paths if classify(p, fam) is None]
  if unknown:
    raise ValueError(f"decoder_block={fam.decoder_block}: parameters that sparsity/maxtext/families.py does not describe "
                     f"(linear layer or not?): {', '.join(unknown)}. Set prunable_params to choose the prunable "
                     "parameters yourself")
  if prunable_params is not None:
    wrong = [p for p in paths
             if bool(re.search(prunable_params, p)) != (classify(p, fam).linear and classify(p, fam).prunable)]
    if wrong:
      raise ValueError(f"decoder_block={fam.decoder_block}: the default prunable_params and the family's description "
                       f"disagree on {', '.join(wrong)}")
  return fam


def kind_counts(fam: Family | None, sizes: dict[str, int]) -> dict[str, int]:
  """``{kind: parameters}`` of ``{path: size}`` by the family's description (``unknown`` for paths it misses)."""
  out: dict[str, int] = {}
  for p, n in sizes.items():
    w = classify(p, fam)
    k = w.kind if w is not None else "unknown"
    out[k] = out.get(k, 0) + int(n)
  return out


__all__ = ["Weight", "Family", "WEIGHTS", "FAMILIES", "NON_LINEAR", "KINDS", "LINEAR_KINDS", "family", "classify",
           "contraction_axis", "GroupAxis", "batch_axes", "unstacked_axis", "default_prunable", "extend_default", "check_params", "kind_counts"]
