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
  masks = threshold.top_k_masks(keys, threshold.wide_const(k))
  return masks, threshold.count_true(masks)


def run():
  """The masks on one device and sharded, the sharded program's HLO and its count of the kept entries."""
  f = jax.jit(select)
  single = [np.asarray(m) for m in f({n: jnp.asarray(x, jnp.float32) for n, x in w.items()},
                                     {n: jnp.asarray(a) for n, a in alive.items()})[0]]
  ws = {n: jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh, specs[n])) for n, x in w.items()}
  als = {n: jax.device_put(jnp.asarray(a), NamedSharding(mesh, specs[n])) for n, a in alive.items()}
  hlo = f.lower(ws, als).compile().as_text()
  out, count = f(ws, als)
  return single, out, [np.asarray(m) for m in out], hlo, threshold.wide_to_python(count), ws


# Arrays past 2**31 entries are counted in chunks of rows (threshold.row_ranges). With the chunk size shrunk so
# that every weight here is chunked, at boundaries that do not fall on the shards' (5 rows of 512 entries against
# shards of 32 rows), the program must still move nothing of the weights' size between devices.
threshold.MAX_CHUNK = int(sys.argv[1]) if len(sys.argv) > 1 else threshold.MAX_CHUNK
single, sharded_out, sharded, hlo, counted, ws = run()
COLLECTIVE = re.compile(r"=\s*(.*?)\s(all-gather|all-to-all|ragged-all-to-all|all-reduce|reduce-scatter|"
                        r"collective-permute|collective-broadcast)(-start|-done)?\(")


def collectives_of(text):
  """Every collective instruction of an HLO text (synchronous, or the -start/-done halves of an asynchronous one, whose
  result is a tuple), with its largest result array in elements."""
  out = []
  for line in text.splitlines():
    m = COLLECTIVE.search(line)
    if not m:
      continue
    shapes = re.findall(r"(\w+)\[([\d,]*)\]", m.group(1))
    sizes = [int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1 for _, dims in shapes]
    out.append({"op": m.group(2), "async": m.group(3) or "", "dtype": shapes[0][0] if shapes else "",
                "elements": max(sizes, default=0)})
  return out


# The parser itself, on a program that must gather (a sharded weight made whole on every device) and on the
# asynchronous form TPU programs print (a tuple result, ``all-gather-start(``): "no all-gather" can fail.
gather = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P())).lower(ws["logits"]).compile().as_text()
async_line = ("  %all-gather-start = (f32[16,512]{1,0}, f32[64,512]{1,0}) all-gather-start(f32[16,512]{1,0} %p), "
              "channel_id=1, replica_groups=[1,4]<=[4], dimensions={0}, use_global_device_ids=true")
collectives = collectives_of(hlo)
print(json.dumps({
    "control_gather": collectives_of(gather),
    "control_async": collectives_of(async_line),
    "control_elements": int(np.prod(shapes["logits"])),
    "equal": all(np.array_equal(a, b) for a, b in zip(single, sharded)),
    "kept": int(sum(m.sum() for m in sharded)),
    "counted": counted,
    "chunks": {n: len(threshold.row_ranges(s)) for n, s in shapes.items()},
    "k": k,
    "out_shardings": [str(getattr(m, "sharding", "")) for m in sharded_out],
    "collectives": collectives,
    "largest_weight_shard": max(int(np.prod(s)) // 4 for s in shapes.values()),
}))
