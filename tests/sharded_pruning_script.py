"""Run on 4 simulated devices (see test_sharded.py): the pruner on sharded weights equals it on one device,
and the compiled pruning step gathers nothing of the weights' size. Prints one JSON line."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from sparsity.core import threshold  # noqa: E402

assert jax.device_count() == 4, jax.device_count()
rng = np.random.default_rng(0)
shapes = {"wi": (64, 2, 256), "wo": (256, 2, 64), "q": (64, 2, 4, 16), "logits": (64, 512)}
specs = {"wi": P("fsdp", None, "tensor"), "wo": P("tensor", None, "fsdp"), "q": P("fsdp", None, "tensor", None), "logits": P("fsdp", "tensor")}
# Heavy ties: values on a coarse grid, plus some already-pruned entries.
w = {k: np.round(rng.normal(size=s) * 4) / 4 for k, s in shapes.items()}
alive = {k: rng.random(s) > 0.1 for k, s in shapes.items()}
n_alive = sum(int(a.sum()) for a in alive.values())
k = n_alive // 3

mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("fsdp", "tensor"))


def select(ws, als):
  keys = [threshold.magnitude_keys(ws[n], als[n]) for n in sorted(ws)]
  return threshold.top_k_masks(keys, threshold.wide_const(k))


f = jax.jit(select)
single = [np.asarray(m) for m in f({n: jnp.asarray(x, jnp.float32) for n, x in w.items()}, {n: jnp.asarray(a) for n, a in alive.items()})]
ws = {n: jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh, specs[n])) for n, x in w.items()}
als = {n: jax.device_put(jnp.asarray(a), NamedSharding(mesh, specs[n])) for n, a in alive.items()}
lowered = f.lower(ws, als)
compiled = lowered.compile()
sharded_out = f(ws, als)
sharded = [np.asarray(m) for m in sharded_out]
hlo = compiled.as_text()
# Every all-gather / all-to-all in the compiled program, with its result size in elements.
collectives = []
for m in re.finditer(r"= (\w+)\[([\d,]*)\][^=]*? (all-gather|all-to-all|all-reduce|collective-permute)\(", hlo):
  dims = [int(d) for d in m.group(2).split(",") if d]
  collectives.append({"op": m.group(3), "dtype": m.group(1), "elements": int(np.prod(dims)) if dims else 1})
print(json.dumps({
    "equal": all(np.array_equal(a, b) for a, b in zip(single, sharded)),
    "kept": int(sum(m.sum() for m in sharded)),
    "k": k,
    "out_shardings": [str(getattr(m, "sharding", "")) for m in sharded_out],
    "collectives": collectives,
    "largest_weight_shard": max(int(np.prod(s)) // 4 for s in shapes.values()),
}))
