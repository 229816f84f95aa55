"""The exact global threshold (k-th largest |w| over a pytree of many leaves), three ways, side by side.

* ours: ``sparsity.core.threshold.kth_largest_key`` (radix selection over per-leaf 256-bin histograms);
* sort: concatenate every leaf and fully sort (the authors' fork);
* top_k: ``jax.lax.top_k`` over the concatenation (jaxpruner).

Each at 1e6, 1e7, 1e8 (and 4e8 with --large) weights split over 32 leaves, k = 20% kept. Reports the
median wall time of 3 runs after compiling, XLA's temp memory of the compiled program, and the peak resident
memory added by the run (each method in its own process, so peaks do not mix). Also, with --over-int32, one
selection over more than 2**31 bf16 weights (exact count checked).

  .venv/bin/python benchmarks/threshold.py [--large] [--over-int32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LEAVES = 32


def _child(method: str, n: int, dtype: str) -> dict:
  """Runs in a subprocess: one method at one size."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from sparsity.core import threshold as T  # pylint: disable=import-outside-toplevel

  dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  per = n // LEAVES
  leaves = [jax.random.normal(jax.random.PRNGKey(i), (per // 1024, 1024), dt) for i in range(LEAVES)]
  n = per // 1024 * 1024 * LEAVES
  masks = [jnp.ones(x.shape, jnp.bool_) for x in leaves]
  k = n // 5
  jax.block_until_ready((leaves, masks))
  base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

  if method == "ours":
    def f(ws, ms):
      # As the pruner calls it: keys recomputed from the weights in every pass, never held in memory.
      t, need = T.kth_largest_key([T.magnitude_key_fn(w, m) for w, m in zip(ws, ms)], T.wide_const(k))
      return t, need
    args = (leaves, masks)
  elif method == "sort":
    def f(ws):
      a = jnp.concatenate([jnp.abs(w.astype(jnp.float32)).ravel() for w in ws])
      return jnp.sort(a)[n - k]
    args = (leaves,)
  else:
    def f(ws):
      a = jnp.concatenate([jnp.abs(w.astype(jnp.float32)).ravel() for w in ws])
      return jax.lax.top_k(a, k)[0][-1]
    args = (leaves,)

  jf = jax.jit(f)
  t0 = time.perf_counter()
  compiled = jf.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  temp = compiled.memory_analysis().temp_size_in_bytes
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  if method == "ours":
    t, need = out
    value = float(jax.lax.bitcast_convert_type(jnp.uint32(int(t) - 1), jnp.float32))
    # exact count: keys > t plus `need` ties make exactly k
    above = sum(int(jnp.sum(T.magnitude_keys(w, m) > t)) for w, m in zip(leaves, masks))
    exact = above + T.wide_to_python(need) == k
  else:
    value, exact = float(out), None
  return {
      "method": method,
      "n": n,
      "dtype": dtype,
      "k": k,
      "seconds": float(np.median(times)),
      "compile_seconds": compile_s,
      "xla_temp_bytes": int(temp),
      "weights_bytes": int(n * jnp.dtype(dt).itemsize),
      "peak_rss_added_bytes": int((peak - base_rss) * 1024),
      "threshold": value,
      "exact_count": exact,
  }


def run(method: str, n: int, dtype: str = "float32", timeout: int = 1800) -> dict | None:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  try:
    out = subprocess.run([sys.executable, __file__, "--child", method, str(n), dtype], env=env, capture_output=True,
                         text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"method": method, "n": n, "dtype": dtype, "error": f"timeout after {timeout}s"}
  if out.returncode != 0:
    return {"method": method, "n": n, "dtype": dtype, "error": out.stderr.strip().splitlines()[-1][:300]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict]) -> dict:
  """Speed-ups over the fork's sort and jaxpruner's top_k at each size, and ours' time per weight."""
  by = {(r["method"], r["n"], r["dtype"]): r for r in rows if "seconds" in r}
  out: dict = {"ours_ns_per_weight": {}}
  for (method, n, dtype), r in sorted(by.items(), key=lambda kv: kv[0][1]):
    if method != "ours":
      continue
    out["ours_ns_per_weight"][f"{n:.2e} {dtype}"] = 1e9 * r["seconds"] / n
    for other in ("sort", "top_k"):
      if (other, n, dtype) in by:
        out[f"{other}/ours@{n:.0e}"] = by[(other, n, dtype)]["seconds"] / r["seconds"]
  return out


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--child", nargs=3)
  ap.add_argument("--large", action="store_true", help="also 4e8 weights")
  ap.add_argument("--over-int32", action="store_true", help="also ours over 2**31 + 2**27 bf16 weights")
  ap.add_argument("--topk-max", type=float, default=1e7, help="largest size for jax.lax.top_k (slow on CPU)")
  ap.add_argument("--sort-max", type=float, default=1e8, help="largest size for the full sort (minutes past 1e8)")
  args = ap.parse_args()
  if args.child:
    print(json.dumps(_child(args.child[0], int(args.child[1]), args.child[2])))
    return
  from benchmarks import common  # pylint: disable=import-outside-toplevel

  sizes = [10**6, 10**7, 10**8] + ([4 * 10**8] if args.large else [])
  rows = []
  for n in sizes:
    methods = ["ours"] + (["sort"] if n <= args.sort_max else []) + (["top_k"] if n <= args.topk_max else [])
    for m in methods:
      r = run(m, n)
      rows.append(r)
      print(json.dumps(r), flush=True)
  if args.over_int32:
    r = run("ours", 2**31 + 2**27, "bfloat16", timeout=3600)
    rows.append(r)
    print(json.dumps(r), flush=True)
  ratios = summarise(rows)
  print(json.dumps(ratios, indent=2))
  print("written to", common.write("threshold", {"rows": rows, "ratios": ratios}))


if __name__ == "__main__":
  main()
