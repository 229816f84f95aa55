"""Exact top-k, in every histogram form: heavy ties, already-pruned weights, wide counts past 2**31, sharded equals unsharded."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsity.core import threshold as T


def _reference(keys, k):
  allk = np.concatenate([np.asarray(x).ravel() for x in keys]).astype(np.int64)
  order = np.lexsort((np.arange(len(allk)), -allk))  # key desc, then position asc
  ref = np.zeros(len(allk), bool)
  ref[order[:k]] = True
  return ref


@functools.partial(jax.jit, static_argnames="radix")
def _top_k(keys, hi, lo, radix=None):
  return T.top_k_masks(keys, (hi, lo), radix=radix)


def _run(keys, k, radix=None):
  masks = _top_k([jnp.asarray(x) for x in keys], jnp.int32(k >> 16), jnp.int32(k & 0xFFFF), radix=radix)
  return np.concatenate([np.asarray(m).ravel() for m in masks])


RADIXES = [T.SCATTER_RADIX, T.TPU_RADIX, T.Radix(2, "compare", False), T.Radix(8, "compare", True)]


@pytest.mark.parametrize("radix", RADIXES, ids=lambda r: f"{r.digit_bits}bit-{r.histogram}")
@pytest.mark.parametrize("high", [2, 300, 2**31])
def test_every_histogram_form_selects_the_reference_keys(high, radix):
  # The TPU form (compare-and-sum, 4-bit digits, unrolled) runs on the CPU too: same keys as a stable sort.
  rng = np.random.default_rng(high + radix.digit_bits)
  shapes = [(7, 5), (13,), (4, 3, 2)]
  for _ in range(4):
    keys = [rng.integers(0, high, size=s).astype(np.uint32) for s in shapes]
    alive = sum(int((x != 0).sum()) for x in keys)
    k = int(rng.integers(1, alive + 1))
    np.testing.assert_array_equal(_run(keys, k, radix), _reference(keys, k))


def test_the_program_lowered_for_a_tpu_has_no_scatter_and_the_cpu_one_does():
  keys = [jax.ShapeDtypeStruct((64, 8), jnp.uint32), jax.ShapeDtypeStruct((32,), jnp.uint32)]
  i32 = jax.ShapeDtypeStruct((), jnp.int32)
  f = jax.jit(lambda ks, hi, lo: T.top_k_masks(ks, (hi, lo)))
  cpu = f.trace(keys, i32, i32).lower(lowering_platforms=("cpu",)).as_text()
  tpu = f.trace(keys, i32, i32).lower(lowering_platforms=("tpu",)).as_text()
  assert "scatter" in cpu
  assert "scatter" not in tpu and "reduce" in tpu


@pytest.mark.parametrize("high", [2, 5, 300, 2**31])
def test_exact_k_with_ties_matches_stable_reference(high):
  rng = np.random.default_rng(high)
  shapes = [(7, 5), (13,), (4, 3, 2)]
  for _ in range(10):
    keys = [rng.integers(0, high, size=s).astype(np.uint32) for s in shapes]
    alive = sum(int((x != 0).sum()) for x in keys)
    if alive == 0:
      continue
    k = int(rng.integers(1, alive + 1))
    got = _run(keys, k)
    assert got.sum() == k
    np.testing.assert_array_equal(got, _reference(keys, k))


def test_all_equal_magnitudes_keep_the_first_k_positions():
  w = [np.ones((4, 4), np.float32), np.ones((3,), np.float32)]
  alive = [np.ones(x.shape, bool) for x in w]
  keys = [T.magnitude_keys(jnp.asarray(x), jnp.asarray(a)) for x, a in zip(w, alive)]
  got = _run(keys, 10)
  assert got.tolist() == [True] * 10 + [False] * 9


def test_already_pruned_weights_are_never_selected_even_if_large():
  w = np.array([5.0, -4.0, 3.0, 0.0, 0.0, 1.0], np.float32)
  alive = np.array([False, True, True, True, True, True])
  keys = T.magnitude_keys(jnp.asarray(w), jnp.asarray(alive))
  assert _run([keys], 3).tolist() == [False, True, True, False, False, True]  # |-4|, |3|, |1|
  assert _run([keys], 4).tolist() == [False, True, True, True, False, True]  # then the first live zero


def test_wide_counts_past_int32():
  a = T.wide_const(2**31 - 5)
  b = T.wide_const(2**31 + 17)
  s = T.wide_add(a, b)
  assert T.wide_to_python(s) == 2**32 + 12
  assert T.wide_to_python(T.wide_sub(s, a)) == 2**31 + 17
  assert bool(T.wide_ge(b, a)) and not bool(T.wide_ge(a, b))
  # Counts combined across many leaves whose total exceeds 2**31 (int32 would wrap).
  per_leaf = [T.wide_from_int32(jnp.int32(2**31 - 1)) for _ in range(5)]
  total = T.wide_const(0)
  for c in per_leaf:
    total = T.wide_add(total, c)
  assert T.wide_to_python(total) == 5 * (2**31 - 1)


@pytest.mark.parametrize("radix", RADIXES[:2], ids=lambda r: f"{r.digit_bits}bit-{r.histogram}")
def test_arrays_split_in_chunks_select_exactly(monkeypatch, radix):
  # Arrays past 2**31 elements are counted in chunks of rows; shrink the chunk size to exercise that path. Heavy ties
  # (4 values): for most k the boundary chunk keeps only some of its ties, and the tie-break runs inside it.
  monkeypatch.setattr(T, "MAX_CHUNK", 64)
  rng = np.random.default_rng(1)
  keys = [rng.integers(0, 4, size=(50, 7)).astype(np.uint32), rng.integers(0, 4, size=(300,)).astype(np.uint32),
          rng.integers(0, 4, size=(20, 3, 5)).astype(np.uint32)]
  assert [len(T.row_ranges(x.shape)) for x in keys] == [6, 5, 5]
  f = jax.jit(lambda ks, hi, lo: T.top_k_masks(ks, (hi, lo), radix=radix))
  for k in (1, 200, 333, 701):
    masks = f([jnp.asarray(x) for x in keys], jnp.int32(k >> 16), jnp.int32(k & 0xFFFF))
    assert [m.shape for m in masks] == [x.shape for x in keys]
    got = np.concatenate([np.asarray(m).ravel() for m in masks])
    np.testing.assert_array_equal(got, _reference(keys, k))
    assert T.wide_to_python(T.count_true(masks)) == k
