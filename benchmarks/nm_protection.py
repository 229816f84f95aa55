"""The N:M event's group ranking on the CPU, two forms side by side in one process (the TPU figures are in
``tpu_compile.py``'s results).

* members: each group member's key recomputed from its own weight (``protect_top_n(..., members=True)``, what the
  pruner compiles for TPU: nothing of the array's size is materialised to rank the groups);
* keys array: the keys computed and the members sliced out of them (``members=False``, what it compiles for the CPU
  and GPU, as before the TPU work).

Both recompute the keys in every pass of the selection (nothing of the model's size is held between passes).

The whole 2:4 selection (``top_k_masks`` over the protected keys, k = 20% kept of the alive weights) on the paper's
smallest model's prunable kernels (41.5M weights, the shapes of ``configs/paper/llama2_58m_20x.yml`` with
``scan_layers``), compiled once per form, then timed in alternating rounds (median of ``--rounds``); the masks of
the two forms are checked equal.

  .venv/bin/python benchmarks/nm_protection.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write  # noqa: E402

# (shape, N:M axis) of the 58M model's prunable kernels with scan_layers (emb 512, mlp 2048, 6 layers, 8 heads of
# 64, vocab 32000): the group axis is each kernel's input (contraction) axis.
SHAPES = [((512, 6, 2048), 0), ((512, 6, 2048), 0), ((2048, 6, 512), 0), ((512, 6, 8, 64), 0), ((512, 6, 8, 64), 0),
          ((512, 6, 8, 64), 0), ((8, 6, 64, 512), 0), ((512, 32000), 0)]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rounds", type=int, default=7)
  args = ap.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from sparsity.core import threshold  # pylint: disable=import-outside-toplevel

  weights = [jax.random.normal(jax.random.PRNGKey(i), s, jnp.float32) for i, (s, _) in enumerate(SHAPES)]
  alive = [jnp.ones(s, bool) for s, _ in SHAPES]
  total = sum(int(np.prod(s)) for s, _ in SHAPES)
  k = threshold.wide_const(int(0.2 * total))

  def event(members: bool):
    def run(ws, al):
      keys = [threshold.protect_top_n(threshold.magnitude_key_fn(w, a), axis, 2, 4, members=members)
              for w, a, (_, axis) in zip(ws, al, SHAPES)]
      return threshold.top_k_masks(keys, k)
    return jax.jit(run)

  forms = {"members": event(True), "keys_array": event(False)}
  compiled, results = {}, {}
  for name, fn in forms.items():
    start = time.perf_counter()
    compiled[name] = fn.lower(weights, alive).compile()
    results[name] = {"compile_seconds": round(time.perf_counter() - start, 2),
                     "temp_bytes": compiled[name].memory_analysis().temp_size_in_bytes}
  masks = {name: jax.block_until_ready(c(weights, alive)) for name, c in compiled.items()}
  for a, b in zip(masks["members"], masks["keys_array"]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  times = {name: [] for name in compiled}
  for _ in range(args.rounds):
    for name, c in compiled.items():  # alternating: both forms see the same machine state
      start = time.perf_counter()
      jax.block_until_ready(c(weights, alive))
      times[name].append(time.perf_counter() - start)
  for name in compiled:
    results[name]["median_seconds"] = round(float(np.median(times[name])), 4)
  ratio = results["members"]["median_seconds"] / results["keys_array"]["median_seconds"]
  temp = results["members"]["temp_bytes"] / max(results["keys_array"]["temp_bytes"], 1)
  print(f"2:4 selection over {total / 1e6:.1f}M weights, {args.rounds} alternating rounds (CPU):")
  for name, r in results.items():
    print(f"  {name:10s} median {r['median_seconds'] * 1e3:8.1f} ms   temp {r['temp_bytes'] / 1e6:7.1f} MB   "
          f"compile {r['compile_seconds']:.1f} s")
  print(f"  members / keys array: time {ratio:.3f}, temp {temp:.3f}; masks identical")
  path = write("nm_protection", {"weights": total, "rounds": args.rounds, "forms": results,
                                 "time_ratio_members_over_keys_array": round(ratio, 4),
                                 "temp_ratio_members_over_keys_array": round(temp, 4)})
  print(path)


if __name__ == "__main__":
  main()
