"""Exact top-k selection over a pytree of weights, without gathering or sorting them.

The k largest scores over many arrays are found by a radix selection on 32-bit keys: each pass
histograms one 8-bit digit of the keys that still match the prefix chosen so far, so four passes pin the
k-th largest key exactly. Every pass is elementwise work plus a 256-bin histogram per array, so under
``jit`` with sharded arrays each device histograms its own shard and only 256 counts per array cross
devices. Nothing of the arrays' size is gathered, and the work is linear in the number of weights.

Keys are ``uint32``; key 0 means "not a candidate" (already pruned) and is never selected. Scores that
tie at the threshold are broken deterministically by position: earlier leaves first, then lower flat
index, so exactly ``k`` keys are selected whatever the ties.

Counts may exceed 2**31 (models past two billion prunable weights), and JAX's default integers are 32
bits, so counts that sum over arrays are carried as two int32 limbs ``(hi, lo)`` meaning
``hi * 2**16 + lo``, exact up to 2**47. A single array is processed in chunks of fewer than 2**31 elements.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

DIGIT_BITS = 8
NUM_BINS = 1 << DIGIT_BITS
_LIMB = 16
_LIMB_MASK = (1 << _LIMB) - 1
MAX_CHUNK = (1 << 31) - 1

Wide = tuple  # (hi, lo) int32 arrays of the same shape: value = hi * 2**16 + lo, 0 <= lo < 2**16


# --------------------------------------------------------------------------------------------------
# Wide (two-limb) non-negative integer counts.
# --------------------------------------------------------------------------------------------------


def wide_const(n: int) -> Wide:
  """A Python integer as a wide count."""
  if n < 0 or n >= 1 << 47:
    raise ValueError(f"count out of range: {n}")
  return jnp.int32(n >> _LIMB), jnp.int32(n & _LIMB_MASK)


def wide_from_int32(x) -> Wide:
  """Non-negative int32 values as wide counts."""
  x = jnp.asarray(x, jnp.int32)
  return x >> _LIMB, x & _LIMB_MASK


def wide_norm(hi, lo) -> Wide:
  """Moves carries (or borrows) from ``lo`` into ``hi`` so that ``0 <= lo < 2**16``."""
  return hi + (lo >> _LIMB), lo & _LIMB_MASK


def wide_add(a: Wide, b: Wide) -> Wide:
  return wide_norm(a[0] + b[0], a[1] + b[1])


def wide_sub(a: Wide, b: Wide) -> Wide:
  return wide_norm(a[0] - b[0], a[1] - b[1])


def wide_ge(a: Wide, b: Wide):
  return (a[0] > b[0]) | ((a[0] == b[0]) & (a[1] >= b[1]))


def wide_to_int32(a: Wide):
  """Back to int32; only for values known to be below 2**31."""
  return a[0] * (1 << _LIMB) + a[1]


def wide_to_python(a: Wide) -> int:
  return int(a[0]) * (1 << _LIMB) + int(a[1])


def _wide_suffix_sums(hist: Wide) -> Wide:
  """``out[d] = sum(hist[d:])`` for a wide histogram of NUM_BINS bins (lo sums stay < 2**24)."""
  hi = jnp.cumsum(hist[0][::-1])[::-1]
  lo = jnp.cumsum(hist[1][::-1])[::-1]
  return wide_norm(hi, lo)


# --------------------------------------------------------------------------------------------------
# Radix selection.
# --------------------------------------------------------------------------------------------------


def chunks(x) -> list:
  """Splits an array along its first axis into pieces of fewer than 2**31 elements (usually one)."""
  if x.size <= MAX_CHUNK:
    return [x]
  rows = x.shape[0]
  per_row = x.size // rows
  if per_row > MAX_CHUNK:
    raise ValueError(f"an array whose rows hold {per_row} >= 2**31 elements is not supported")
  step = MAX_CHUNK // per_row
  return [x[i : i + step] for i in range(0, rows, step)]


def _histogram(keys, shift: int, prefix, prefix_shift: int) -> Wide:
  """Counts of digit ``(key >> shift) & 0xFF`` over keys whose bits above ``prefix_shift`` equal ``prefix``."""
  total = (jnp.zeros((NUM_BINS,), jnp.int32),) * 2
  for part in chunks(keys):
    digit = ((part >> shift) & (NUM_BINS - 1)).astype(jnp.int32)
    if prefix_shift < 32:
      # Keys off the prefix go to an out-of-range bin that the scatter drops: no weights array is built.
      digit = jnp.where((part >> prefix_shift) == prefix, digit, NUM_BINS)
    # Indexing with an array of the keys' own shape (no ravel): a sharded array is histogrammed in place.
    h = jnp.zeros((NUM_BINS,), jnp.int32).at[digit].add(jnp.int32(1), mode="drop")
    total = wide_add(total, wide_from_int32(h))
  return total


def kth_largest_key(keys: Sequence[jax.Array], k: Wide):
  """The k-th largest key over all arrays (1-based) and how many keys equal to it are needed.

  Args:
    keys: uint32 arrays; key 0 marks entries that cannot be selected.
    k: wide count, ``1 <= k <=`` number of non-zero keys (not checked).

  Returns:
    ``(t, need)``: uint32 threshold ``t`` and a wide count ``need >= 1``: selecting every key ``> t`` and
    ``need`` of the keys ``== t`` selects exactly ``k`` keys.
  """
  prefix = jnp.uint32(0)
  remaining = k
  for shift in range(32 - DIGIT_BITS, -1, -DIGIT_BITS):
    prefix_shift = shift + DIGIT_BITS
    hist = (jnp.zeros((NUM_BINS,), jnp.int32),) * 2
    for x in keys:
      hist = wide_add(hist, _histogram(x, shift, prefix, prefix_shift))
    # Keys equal to 0 (not candidates) only ever fall in bin 0 of a zero prefix; since k does not exceed
    # the number of non-zero keys, the chosen digit path never ends at key 0 and they are never selected.
    suffix = _wide_suffix_sums(hist)  # suffix[d] = number of candidates with digit >= d
    ok = wide_ge(suffix, (jnp.broadcast_to(remaining[0], (NUM_BINS,)), jnp.broadcast_to(remaining[1], (NUM_BINS,))))
    d = jnp.sum(ok.astype(jnp.int32)) - 1  # largest digit with suffix[d] >= remaining
    above = jnp.where(d + 1 < NUM_BINS, jnp.take(suffix[0], jnp.minimum(d + 1, NUM_BINS - 1)), 0), jnp.where(
        d + 1 < NUM_BINS, jnp.take(suffix[1], jnp.minimum(d + 1, NUM_BINS - 1)), 0
    )
    remaining = wide_sub(remaining, above)
    prefix = (prefix << DIGIT_BITS) | d.astype(jnp.uint32)
  return prefix, remaining


def _first_q_ties(tie, q):
  """Boolean array marking the first ``q`` True entries of ``tie`` in flat (row-major) order, q int32."""
  size = tie.size
  stride = 1
  flat = jnp.zeros(tie.shape, jnp.int32)
  for axis in range(tie.ndim - 1, -1, -1):
    flat = flat + jax.lax.broadcasted_iota(jnp.int32, tie.shape, axis) * stride
    stride *= tie.shape[axis]
  # Unique keys, larger for earlier positions; 0 for non-ties.
  key = jnp.where(tie, (size - flat).astype(jnp.uint32), jnp.uint32(0))

  def select(q):
    t, _ = kth_largest_key([key], wide_from_int32(q))
    return key >= t

  def trivial(q):
    return tie & (q > 0)

  count = jnp.sum(tie.astype(jnp.int32))
  return jax.lax.cond((q > 0) & (q < count), select, trivial, q)


def top_k_masks(keys: Sequence[jax.Array], k: Wide) -> list:
  """Boolean masks selecting exactly the ``k`` largest keys over all arrays (ties: earlier position first).

  ``k`` must not exceed the number of non-zero keys; entries with key 0 are never selected.
  """
  t, need = kth_largest_key(keys, k)
  out = []
  before = wide_const(0)
  for x in keys:
    parts = []
    for part in chunks(x):
      tie = part == t
      c = wide_from_int32(jnp.sum(tie.astype(jnp.int32)))
      # quota = clamp(need - before, 0, c)
      left = wide_sub(need, before)
      quota = jnp.where(wide_ge(before, need), 0, jnp.where(wide_ge(left, c), wide_to_int32(c), wide_to_int32(left)))
      parts.append((part > t) | _first_q_ties(tie, quota))
      before = wide_add(before, c)
    out.append(parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0))
  return out


def count_true(masks: Sequence[jax.Array]) -> Wide:
  """Number of True entries over boolean arrays, as a wide count."""
  total = wide_const(0)
  for m in masks:
    for part in chunks(m):
      total = wide_add(total, wide_from_int32(jnp.sum(part.astype(jnp.int32))))
  return total


def magnitude_keys(x, alive) -> jax.Array:
  """uint32 keys ordered like ``|x|``, 0 where not ``alive``; NaN magnitudes rank above everything."""
  bits = jax.lax.bitcast_convert_type(jnp.abs(x.astype(jnp.float32)), jnp.uint32)
  return jnp.where(alive, bits + jnp.uint32(1), jnp.uint32(0))


def random_keys(rng, shape, alive) -> jax.Array:
  """Uniform random uint32 keys (never 0 where ``alive``), 0 where not ``alive``."""
  bits = jax.random.bits(rng, shape, jnp.uint32)
  return jnp.where(alive, (bits >> 1) + jnp.uint32(1), jnp.uint32(0))
