"""The pruner's own per-step work, without process-to-process noise: one optimizer update, three ways, in one process.

A training step's time varies by a few percent from one process to the next on a shared machine, which hides
differences of 1-2% between separate runs (``train_overhead.py``). This times only what the pruner adds to a
step, the optimizer update, on the parameter shapes of the same two models, alternating the variants in one
process:

* dense: ``optax.adamw`` (MaxText's default optimizer; gradients are clipped before it, as MaxText does);
* pruned, events between steps: ``pruned(adamw, plan, events_in_update=False)``, what the MaxText hook runs
  (the masks' selects on the gradients and on the update; the moments are zeroed once per event, elsewhere);
* pruned, events in the update: ``pruned(adamw, plan)``, the self-contained transformation, whose pruning
  branch sits under ``lax.cond`` in every update (timed at non-event updates).

Each jitted function is ``params, state, grads -> apply_updates(params, update), state`` with params and state
donated, as in a training step. Prints the median time of each and the extra time over dense.

  .venv/bin/python benchmarks/optimizer_update.py [--sizes tiny,paper58m] [--iters 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import common, train_overhead  # noqa: E402
from sparsity.core import pruner, timeline  # noqa: E402
from sparsity.core.config import DEFAULT_PRUNABLE  # noqa: E402
from sparsity.core.paths import nest  # noqa: E402


def param_shapes(overrides: list[str]) -> dict:
  """MaxText's LLaMA-2 parameter shapes (layers stacked on axis 1) by path, for ``train_overhead.SIZES`` overrides."""
  o = dict(a.split("=", 1) for a in overrides)
  emb, heads, head_dim, mlp, layers, vocab = (int(o[k]) for k in (
      "base_emb_dim", "base_num_query_heads", "head_dim", "base_mlp_dim", "base_num_decoder_layers", "vocab_size"))
  attn = {name: (emb, layers, heads, head_dim) for name in ("query", "key", "value")}
  shapes = {f"decoder/layers/self_attention/{n}/kernel": s for n, s in attn.items()}
  shapes["decoder/layers/self_attention/out/kernel"] = (heads, layers, head_dim, emb)
  shapes.update({f"decoder/layers/mlp/{n}/kernel": (emb, layers, mlp) for n in ("wi_0", "wi_1")})
  shapes["decoder/layers/mlp/wo/kernel"] = (mlp, layers, emb)
  shapes.update({f"decoder/layers/{n}/scale": (emb, layers) for n in ("pre_self_attention_layer_norm",
                                                                       "post_self_attention_layer_norm")})
  shapes["decoder/decoder_norm/scale"] = (emb,)
  shapes["decoder/logits_dense/kernel"] = (emb, vocab)
  shapes["token_embedder/embedding"] = (vocab, emb)
  return shapes


def measure(size: str, iters: int) -> dict:
  rng = np.random.default_rng(0)
  shapes = param_shapes(train_overhead.SIZES[size])
  params = nest({p: jnp.asarray(rng.normal(size=s) * 0.02, jnp.float32) for p, s in shapes.items()})
  grads = jax.tree.map(lambda p: p * 0.01, params)
  inner = optax.adamw(1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
  # Events at update 10**6: never reached, so every timed update is an ordinary one.
  plan = pruner.PrunePlan(timeline.Schedule(2 * 10**6, (10**6,), (0.2,)), DEFAULT_PRUNABLE)
  variants = {
      "dense": inner,
      "pruned_events_between_steps": pruner.pruned(inner, plan, events_in_update=False),
      "pruned_events_in_update": pruner.pruned(inner, plan, events_in_update=True),
  }
  fns, states = {}, {}
  for name, tx in variants.items():
    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    fns[name] = jax.jit(step, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params)
    states[name] = fns[name](p, tx.init(p), grads)  # compile and warm up
  times = {name: [] for name in variants}
  for _ in range(iters):
    for name, fn in fns.items():
      t = time.perf_counter()
      states[name] = fn(*states[name], grads)
      jax.block_until_ready(states[name])
      times[name].append(time.perf_counter() - t)
  med = {name: statistics.median(ts) for name, ts in times.items()}
  prunable = sum(int(np.prod(s)) for p, s in shapes.items() if plan.is_prunable(p))
  return {
      "median_update_seconds": med,
      "extra_seconds_over_dense": {n: med[n] - med["dense"] for n in med if n != "dense"},
      "params": sum(int(np.prod(s)) for s in shapes.values()),
      "prunable_params": prunable,
  }


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="tiny,paper58m")
  ap.add_argument("--iters", type=int, default=60)
  args = ap.parse_args()
  results = {}
  for size in args.sizes.split(","):
    r = results[size] = measure(size, args.iters if size != "tiny" else args.iters * 10)
    line = ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in r["median_update_seconds"].items())
    print(f"{size} ({r['params'] / 1e6:.1f}M params): {line}", flush=True)
  print("written to", common.write("optimizer_update", {"iters": args.iters, "results": results}))


if __name__ == "__main__":
  main()
