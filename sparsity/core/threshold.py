"""Exact top-k selection over a pytree of weights, without gathering or sorting them.

The k largest scores over many arrays are found by a radix selection on 32-bit keys: each pass
histograms one digit of the keys that still match the prefix chosen so far, so a fixed number of passes pins
the k-th largest key exactly. Every pass is elementwise work plus a small histogram per array, so under
``jit`` with sharded arrays each device histograms its own shard and only the bins' counts cross devices.
Nothing of the arrays' size is gathered, and the work is linear in the number of weights.

The histogram's form is chosen per backend when the program is lowered (``jax.lax.platform_dependent``):
on CPU and GPU a scatter-add of 8-bit digits (4 passes); on TPU, where a scatter whose indices collide is
serialised, a fused compare-and-sum of 4-bit digits (8 passes, 16 compares per key). Both select the same keys.

Keys are ``uint32``; key 0 means "not a candidate" (already pruned) and is never selected. Scores that
tie at the threshold are broken deterministically by position: earlier leaves first, then lower flat
index, so exactly ``k`` keys are selected whatever the ties.

Counts may exceed 2**31 (models past two billion prunable weights), and JAX's default integers are 32
bits, so counts that sum over arrays are carried as two int32 limbs ``(hi, lo)`` meaning
``hi * 2**16 + lo``, exact up to 2**47. A single array past 2**31 elements is counted in chunks of rows of
fewer than 2**31 (``row_ranges``), in place: per-row counts, then a masked sum per chunk (``chunk_counts``). It is
never sliced, since slicing a sharded axis moves the array between devices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

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


def wide_array(values: Sequence[int]) -> Wide:
  """Python integers as one wide array (``hi`` and ``lo`` int32 arrays of ``len(values)``)."""
  if any(n < 0 or n >= 1 << 47 for n in values):
    raise ValueError(f"count out of range in {list(values)}")
  return jnp.asarray([n >> _LIMB for n in values], jnp.int32), jnp.asarray([n & _LIMB_MASK for n in values], jnp.int32)


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


def wide_to_float32(a: Wide):
  """A wide count as float32, rounded once: ``hi * 2**16`` and ``lo`` are each exact in float32 (counts below
  2**40), so their sum is the float32 nearest the exact count (a traced value; for metrics)."""
  return a[0].astype(jnp.float32) * float(1 << _LIMB) + a[1].astype(jnp.float32)


def wide_to_python(a: Wide) -> int:
  return int(a[0]) * (1 << _LIMB) + int(a[1])


def _wide_suffix_sums(hist: Wide) -> Wide:
  """``out[d] = sum(hist[d:])`` for a wide histogram of at most 256 bins (lo sums stay < 2**24)."""
  hi = jnp.cumsum(hist[0][::-1])[::-1]
  lo = jnp.cumsum(hist[1][::-1])[::-1]
  return wide_norm(hi, lo)


# --------------------------------------------------------------------------------------------------
# Radix selection.
# --------------------------------------------------------------------------------------------------


class Radix(NamedTuple):
  """How a selection pass histograms its digit (every form selects exactly the same keys).

  Attributes:
    digit_bits: bits of the key resolved per pass (32 / digit_bits passes).
    histogram: 'scatter' (a scatter-add into the bins: one visit per key) or 'compare' (each key compared with
      every bin value and the matches summed: a fused reduction, 2**digit_bits compares per key, no scatter).
    unrolled: the passes as straight-line code (so that XLA's cost analysis counts every pass) rather than a
      rolled loop (compiled once).
  """

  digit_bits: int
  histogram: str
  unrolled: bool

  @property
  def bins(self) -> int:
    return 1 << self.digit_bits


# CPU and GPU: scatter-adds are cheap there, and 8-bit digits need only 4 passes.
SCATTER_RADIX = Radix(8, "scatter", False)
# TPU serialises scatters with colliding indices (all of a histogram's); 16 compares per key per pass keep the
# vector units' work near the cost of reading the weights, in 8 passes.
TPU_RADIX = Radix(4, "compare", True)


def row_ranges(shape) -> list[tuple[int, int]]:
  """Ranges ``[a, b)`` of the first axis that split an array of ``shape`` into chunks of fewer than 2**31 elements
  (usually one: the whole array). Chunks are counted in place (``chunk_counts``), never sliced out: a slice of a
  sharded axis would move the array between devices."""
  size = math.prod(shape)
  if size <= MAX_CHUNK:
    return [(0, shape[0] if shape else 1)]
  rows = shape[0]
  per_row = size // rows
  if per_row > MAX_CHUNK:
    raise ValueError(f"an array whose rows hold {per_row} >= 2**31 elements is not supported")
  step = MAX_CHUNK // per_row
  return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def _in_rows(shape, a: int, b: int):
  """Whether each entry of an array of ``shape`` lies in rows ``[a, b)`` of its first axis."""
  r = jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  return (r >= a) & (r < b)


def chunk_counts(x, trailing: int = 0) -> list:
  """int32 sums of ``x`` (int32) over each chunk of ``row_ranges`` (the last ``trailing`` axes are kept: the bins of
  a histogram): one reduction over the array to per-row sums, then a masked sum of those per range."""
  shape = x.shape[:x.ndim - trailing]
  ranges = row_ranges(shape)
  if len(ranges) == 1:
    return [jnp.sum(x, axis=tuple(range(len(shape))))]
  per_row = jnp.sum(x, axis=tuple(range(1, len(shape))))
  # Each range's rows by a mask, not a slice: the per-row sums stay where they are (sharded like the array's rows)
  return [jnp.sum(jnp.where(_in_rows(per_row.shape, a, b), per_row, 0), axis=0) for a, b in ranges]


def _as_key_fn(k):
  """A key source as a function of a dependency token (arrays are returned as they are)."""
  return k if callable(k) else (lambda _dep, k=k: k)


def _histograms(digit, radix: Radix) -> list:
  """int32 counts of each value ``0 <= d < radix.bins`` in ``digit`` (the value ``radix.bins`` is not counted), one
  histogram per chunk of ``row_ranges``."""
  if radix.histogram == "scatter":
    # Indexing with an array of the keys' own shape (no ravel): a sharded array is histogrammed in place; int16
    # indices halve the index buffer; the out-of-range bin is dropped. A chunk: the other rows go to that bin.
    ranges = row_ranges(digit.shape)
    bins = jnp.zeros((radix.bins,), jnp.int32)
    if len(ranges) == 1:
      return [bins.at[digit.astype(jnp.int16)].add(jnp.int32(1), mode="drop")]
    return [bins.at[jnp.where(_in_rows(digit.shape, a, b), digit, radix.bins).astype(jnp.int16)].add(
        jnp.int32(1), mode="drop") for a, b in ranges]
  # One fused reduction over the array: nothing of the array's size is built, no two keys write the same place.
  small = digit.astype(jnp.uint8) if radix.bins < 256 else digit
  hits = small[..., None] == jnp.arange(radix.bins, dtype=small.dtype)
  return chunk_counts(hits.astype(jnp.int32), trailing=1)


def _pass_histogram(key_fns, shift, prefix, radix: Radix) -> Wide:
  """Histogram of digit ``(key >> shift) % bins`` over keys whose higher bits equal ``prefix``, all arrays.

  Arrays are visited one after another, each chained to the previous one's histogram, so that XLA keeps the
  per-array buffers of only one array alive at a time.
  """
  total = (jnp.zeros((radix.bins,), jnp.int32),) * 2
  dep = prefix
  for key_fn in key_fns:
    keys = key_fn(dep)
    # Keys off the prefix (for the first pass every key matches: a shift by 32 gives 0) go to the bin past the
    # last, which is not counted.
    match = (keys >> (shift + radix.digit_bits)) == prefix
    digit = jnp.where(match, (keys >> shift) & jnp.uint32(radix.bins - 1), jnp.uint32(radix.bins))
    for h in _histograms(digit, radix):
      total = wide_add(total, wide_from_int32(h))
    dep = h
  return total


def _kth_largest_key(key_fns, k: Wide, radix: Radix):
  passes = 32 // radix.digit_bits
  bins = radix.bins

  def one_pass(i, carry):
    prefix, rem_hi, rem_lo = carry
    shift = jnp.uint32(32 - radix.digit_bits) - jnp.uint32(radix.digit_bits) * jnp.asarray(i).astype(jnp.uint32)
    hist = _pass_histogram(key_fns, shift, prefix, radix)
    suffix = _wide_suffix_sums(hist)  # suffix[d] = number of candidates with digit >= d
    remaining = (rem_hi, rem_lo)
    ok = wide_ge(suffix, (jnp.broadcast_to(rem_hi, (bins,)), jnp.broadcast_to(rem_lo, (bins,))))
    # Largest digit with suffix[d] >= remaining. Keys equal to 0 (not candidates) only ever fall in bin 0 of a
    # zero prefix; since k does not exceed the number of non-zero keys, the path never ends at key 0.
    d = jnp.sum(ok.astype(jnp.int32)) - 1
    nxt = jnp.minimum(d + 1, bins - 1)
    above = (jnp.where(d + 1 < bins, suffix[0][nxt], 0), jnp.where(d + 1 < bins, suffix[1][nxt], 0))
    rem_hi, rem_lo = wide_sub(remaining, above)
    return (prefix << radix.digit_bits) | d.astype(jnp.uint32), rem_hi, rem_lo

  carry = (jnp.uint32(0), k[0], k[1])
  if radix.unrolled:
    for i in range(passes):
      carry = one_pass(i, carry)
  else:  # a rolled loop: the pass is compiled once, not once per digit
    carry = jax.lax.fori_loop(0, passes, one_pass, carry)
  prefix, rem_hi, rem_lo = carry
  return prefix, (rem_hi, rem_lo)


def _per_backend(fn, radix: Radix | None):
  """``fn(radix)`` with the given radix, or with the one that suits the backend being compiled for (TPU or not)."""
  if radix is not None:
    return fn(radix)
  return jax.lax.platform_dependent(tpu=lambda: fn(TPU_RADIX), default=lambda: fn(SCATTER_RADIX))


def kth_largest_key(keys: Sequence, k: Wide, radix: Radix | None = None):
  """The k-th largest key over all arrays (1-based) and how many keys equal to it are needed.

  Args:
    keys: uint32 arrays, or functions ``dep -> array`` computing them (recomputed in every pass instead of
      being held in memory; ``dep`` is a token to order the computation after); key 0 marks entries that
      cannot be selected.
    k: wide count, ``1 <= k <=`` number of non-zero keys (not checked).
    radix: the histogram form (``SCATTER_RADIX``, ``TPU_RADIX``); by default the one for the backend compiled for.

  Returns:
    ``(t, need)``: uint32 threshold ``t`` and a wide count ``need >= 1``: selecting every key ``> t`` and
    ``need`` of the keys ``== t`` selects exactly ``k`` keys.
  """
  key_fns = [_as_key_fn(x) for x in keys]
  return _per_backend(lambda r: _kth_largest_key(key_fns, k, r), radix)


def _flat_index(shape, first_row: int = 0):
  """Row-major position of every entry counted from row ``first_row`` (int32: exact within a chunk of
  ``row_ranges``; entries outside it wrap, and callers mask them)."""
  flat = jnp.zeros(shape, jnp.int32)
  stride = 1
  for axis in range(len(shape) - 1, -1, -1):
    iota = jax.lax.broadcasted_iota(jnp.int32, shape, axis)
    flat = flat + (iota - first_row if axis == 0 else iota) * stride
    stride *= shape[axis]
  return flat


def top_k_masks(keys: Sequence, k: Wide, radix: Radix | None = None) -> list:
  """Boolean masks selecting exactly the ``k`` largest keys over all arrays (ties: earlier position first).

  ``keys`` are uint32 arrays or functions ``dep -> array`` (see ``kth_largest_key``). ``k`` must not exceed
  the number of non-zero keys; entries with key 0 are never selected. ``radix``: as for ``kth_largest_key``
  (the masks are the same whatever the form).

  Keys above the threshold ``t`` are all kept; of the keys equal to ``t``, arrays are filled in order, so at
  most one array (the boundary) keeps only some of its ties: the first ones by position, found by a second
  selection over position keys that only runs when such a partial array exists.
  """
  key_fns = [_as_key_fn(x) for x in keys]
  return _per_backend(lambda r: _top_k_masks(key_fns, k, r), radix)


def _top_k_masks(key_fns, k: Wide, radix: Radix) -> list:
  t, need = _kth_largest_key(key_fns, k, radix)
  parts = []  # (row range, the array's shape) of every chunk of row_ranges, counted in place
  chunks_of = []  # per array, the indices of its chunks in parts
  ties, dep = [], t
  for key_fn in key_fns:
    key = key_fn(dep)
    counts = chunk_counts((key == t).astype(jnp.int32))
    chunks_of.append(list(range(len(parts), len(parts) + len(counts))))
    parts += [(rows, key.shape) for rows in row_ranges(key.shape)]
    ties += counts
    dep = counts[-1]
  # quota of each chunk: clamp(need - ties before it, 0, its ties)
  quotas, before = [], wide_const(0)
  for c in ties:
    wc = wide_from_int32(c)
    left = wide_sub(need, before)
    quotas.append(jnp.where(wide_ge(before, need), 0, jnp.where(wide_ge(left, wc), c, wide_to_int32(left))))
    before = wide_add(before, wc)
  partial = [(q > 0) & (q < c) for q, c in zip(quotas, ties)]
  full = [q == c for q, c in zip(quotas, ties)]
  any_partial = jnp.any(jnp.stack(partial))
  boundary_quota = jnp.sum(jnp.stack([jnp.where(p, q, 0) for p, q in zip(partial, quotas)]))

  def position_keys(n, key, chunked):
    """Unique keys, larger for earlier positions, on the ties of chunk ``n`` when it is the partial one; 0 elsewhere."""
    (a, b), shape = parts[n]
    size = (b - a) * (math.prod(shape[1:]) if shape else 1)
    tie = (key == t) & partial[n]
    if chunked:
      tie = tie & _in_rows(shape, a, b)
    return jnp.where(tie, (size - _flat_index(shape, a)).astype(jnp.uint32), jnp.uint32(0))

  def array_position_keys(j, key):
    chunked = len(chunks_of[j]) > 1
    # the chunks' keys are 0 outside their rows
    return functools.reduce(jnp.bitwise_or, [position_keys(n, key, chunked) for n in chunks_of[j]])

  pos_fns = [lambda dep, j=j: array_position_keys(j, key_fns[j](dep)) for j in range(len(key_fns))]
  # The tie-break selection runs only when one chunk keeps part of its ties (rare for float magnitudes), so its passes
  # stay a rolled loop whatever the radix (it compiles once; XLA's cost estimate counts its body once).
  t2 = jax.lax.cond(
      any_partial,
      lambda q: _kth_largest_key(pos_fns, wide_from_int32(q), radix._replace(unrolled=False))[0],
      lambda q: jnp.uint32(0xFFFFFFFF),
      boundary_quota,
  )
  out = []
  dep = t2
  for j, key_fn in enumerate(key_fns):
    key = key_fn(dep)
    keep_ties = full[chunks_of[j][0]]
    if len(chunks_of[j]) > 1:
      keep_ties = functools.reduce(jnp.logical_or, [_in_rows(key.shape, *parts[n][0]) & full[n] for n in chunks_of[j]])
    sel = (key > t) | ((key == t) & keep_ties) | (array_position_keys(j, key) >= t2)
    out.append(sel)
    dep = jnp.sum(sel.astype(jnp.int32)) if len(key_fns) > 1 else dep  # a token: may wrap past 2**31
  return out


def count_true(masks: Sequence[jax.Array]) -> Wide:
  """Number of True entries over boolean arrays, as a wide count."""
  total = wide_const(0)
  for m in masks:
    for c in chunk_counts(m.astype(jnp.int32)):
      total = wide_add(total, wide_from_int32(c))
  return total


def magnitude_keys(x, alive) -> jax.Array:
  """uint32 keys ordered like ``|x|``, 0 where not ``alive``; NaN magnitudes rank above everything."""
  bits = jax.lax.bitcast_convert_type(jnp.abs(x.astype(jnp.float32)), jnp.uint32)
  return jnp.where(alive, bits + jnp.uint32(1), jnp.uint32(0))


@dataclasses.dataclass(frozen=True)
class ElementwiseKeys:
  """Keys computed entry by entry from arrays of their shape, ``fn(*inputs)``; called with a dependency token
  (``dep -> keys``), it recomputes them after ``dep`` rather than holding them in memory."""

  fn: Callable
  inputs: tuple

  def __call__(self, dep):
    return self.fn(*self.ordered_after(dep))

  def ordered_after(self, dep) -> tuple:
    return jax.lax.optimization_barrier((*self.inputs, dep))[:-1]


def magnitude_key_fn(x, alive) -> ElementwiseKeys:
  """``dep -> magnitude_keys(x, alive)``, recomputed where used (ordered after ``dep``, not held in memory)."""
  return ElementwiseKeys(magnitude_keys, (x, alive))


MAX_KEY = 0xFFFFFFFF  # above every magnitude or random key: selected first


def _grouped(x, axis: int, m: int):
  """``x`` with ``axis`` split in place into (groups, m)."""
  shape = x.shape
  if shape[axis] % m:
    raise ValueError(f"axis {axis} of shape {shape} is not a multiple of {m}")
  return x.reshape(shape[:axis] + (shape[axis] // m, m) + shape[axis + 1:])


def _group_rank_below(member, g, axis: int, n: int, m: int):
  """True where fewer than ``n`` members of the group beat the entry (``member(j)``: the keys of every group's
  ``j``-th member, shaped like ``g`` with 1 on the member axis; ``g``: the grouped keys; ties: first)."""
  pos = jax.lax.broadcasted_iota(jnp.int32, g.shape, axis + 1)
  rank = jnp.zeros(g.shape, jnp.int32)
  for j in range(m):
    kj = member(j)
    rank = rank + ((kj > g) | ((kj == g) & (j < pos))).astype(jnp.int32)
  return rank < n


def group_top_n(keys, axis: int, n: int, m: int):
  """True for the ``n`` largest keys of every group of ``m`` consecutive entries along ``axis`` (ties: first).

  The axis is split in place into (groups, m), so a sharded array whose shards hold whole groups is ranked without
  moving data; each entry is compared with the ``m`` entries of its group.
  """
  g = _grouped(keys, axis, m)
  member = lambda j: jax.lax.slice_in_dim(g, j, j + 1, axis=axis + 1)
  return _group_rank_below(member, g, axis, n, m).reshape(keys.shape)


def protect_top_n(key_fn, axis: int, n: int, m: int, members: bool | None = None):
  """A key source whose ``n`` largest keys of every group of ``m`` along ``axis`` become ``MAX_KEY``.

  Keys computed entry by entry (``ElementwiseKeys``) can be ranked from the members' own inputs, each member's key
  recomputed where it is compared (``members=True``): nothing of the array's size is materialised, which TPU needs
  (the event's temporaries fall from 0.66 to 0.43 of the weights' bytes on the 1B). ``members=False`` slices the
  members out of the keys, the form the CPU and GPU keep (on the CPU both take the same time:
  ``benchmarks/nm_protection.py``). ``None``: per backend, members on TPU. Both select exactly the same keys.
  """
  elementwise = isinstance(key_fn, ElementwiseKeys) and members is not False
  key_fn = key_fn if isinstance(key_fn, ElementwiseKeys) else _as_key_fn(key_fn)

  def protected(dep):
    if not elementwise:
      keys = key_fn(dep)
      top = group_top_n(keys, axis, n, m)
    else:
      inputs = key_fn.ordered_after(dep)
      keys = key_fn.fn(*inputs)

      def from_members():
        grouped = [_grouped(x, axis, m) for x in inputs]
        member = lambda j: key_fn.fn(*[jax.lax.slice_in_dim(x, j, j + 1, axis=axis + 1) for x in grouped])
        return _group_rank_below(member, _grouped(keys, axis, m), axis, n, m).reshape(keys.shape)

      top = from_members() if members else jax.lax.platform_dependent(
          tpu=from_members, default=lambda: group_top_n(keys, axis, n, m))
    return jnp.where(top & (keys > 0), jnp.uint32(MAX_KEY), keys)

  return protected


def random_keys(rng, shape, alive) -> jax.Array:
  """Uniform random uint32 keys (never 0 where ``alive``), 0 where not ``alive``."""
  bits = jax.random.bits(rng, shape, jnp.uint32)
  return jnp.where(alive, (bits >> 1) + jnp.uint32(1), jnp.uint32(0))
