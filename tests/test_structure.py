"""N:M structured sparsity in the pruner: group ranking, exact counts, the final N-of-M pattern, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsity
from sparsity.core import pruner, schedules, threshold
from sparsity.core.config import SparsityKeys
from sparsity.core.paths import unnest
from sparsity.maxtext import layout


def _groups(mask, axis, m):
  """Non-zeros per group of m consecutive entries along axis: an array of counts."""
  x = np.moveaxis(np.asarray(mask), axis, -1)
  return x.reshape(*x.shape[:-1], x.shape[-1] // m, m).sum(-1)


@pytest.mark.parametrize("n,m,axis", [(2, 4, 0), (1, 4, 1), (4, 8, 2), (3, 4, 0)])
def test_group_top_n_matches_a_numpy_reference_with_ties(n, m, axis):
  rng = np.random.default_rng(0)
  shape = [8, 12, 16]
  keys = rng.integers(0, 6, size=shape).astype(np.uint32)  # many ties
  got = np.asarray(threshold.group_top_n(jnp.asarray(keys), axis, n, m))
  x = np.moveaxis(keys, axis, -1)
  g = x.reshape(*x.shape[:-1], x.shape[-1] // m, m)
  # rank by key descending, ties by position ascending: a stable sort of -key
  order = np.argsort(-g.astype(np.int64), axis=-1, kind="stable")
  ranks = np.argsort(order, axis=-1, kind="stable")
  want = np.moveaxis((ranks < n).reshape(x.shape), -1, axis)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n,m,axis", [(2, 4, 0), (1, 4, 1), (4, 8, 2)])
def test_protection_recomputed_from_the_weights_equals_protection_of_the_keys(n, m, axis):
  """The event's form (each member's key recomputed from its weight, nothing materialised) against the keys array."""
  rng = np.random.default_rng(n + axis)
  shape = [8, 12, 16]
  x = jnp.asarray(rng.integers(-3, 4, size=shape).astype(np.float32) / 2)  # many equal magnitudes, zeros
  alive = jnp.asarray(rng.random(shape) < 0.8)
  eager = threshold.protect_top_n(threshold.magnitude_keys(x, alive), axis, n, m)
  want = np.asarray(eager(None))
  for members in (True, False, None):  # the TPU form, the CPU form, the backend's
    lazy = threshold.protect_top_n(threshold.magnitude_key_fn(x, alive), axis, n, m, members=members)
    np.testing.assert_array_equal(np.asarray(jax.jit(lazy)(jnp.uint32(0))), want, err_msg=str(members))
  protected = want == threshold.MAX_KEY
  assert protected.any() and (_groups(protected, axis, m) <= n).all()


def _params():
  r = np.random.default_rng(1)
  return {"decoder": {"layers": {"mlp": {"wi_0": {"kernel": jnp.asarray(r.normal(size=(16, 2, 32)), jnp.float32)}},
                                 "self_attention": {"out": {"kernel": jnp.asarray(r.normal(size=(4, 2, 8, 16)),
                                                                                  jnp.float32)}}},
                      "logits_dense": {"kernel": jnp.asarray(r.normal(size=(16, 40)), jnp.float32)}}}


@pytest.mark.parametrize("structure,scope,score", [  # the last three in the full suite only
    ("2:4", "global", "magnitude"), pytest.param("2:4", "per_tensor", "magnitude", marks=pytest.mark.slow),
    pytest.param("4:8", "global", "random", marks=pytest.mark.slow), pytest.param("1:4", "global", "magnitude", marks=pytest.mark.slow)])
def test_gradual_nm_pruning_keeps_exact_counts_and_ends_n_of_m(structure, scope, score):
  n, m = map(int, structure.split(":"))
  sched = schedules.make_schedule(24, 1 - n / m, "geometric", 0.2, 0.6, 3)
  plan = sparsity.PrunePlan(sched, pruning_scope=scope, pruning_score=score, pruning_structure=structure,
                            group_axis=layout.contraction_axis)
  params = _params()
  tx = sparsity.pruned(optax.adam(1e-2), plan, events_in_update=False)
  state = tx.init(params)
  names = sorted(unnest(state.masks))
  sizes = {k: int(np.prod(v.shape)) for k, v in unnest(state.masks).items()}
  kept_table = pruner.kept_after_events(plan, [sizes[k] for k in unnest(state.masks)])
  prev = None
  for step in range(24):
    state = sparsity.apply_due_event(state, params, plan)
    grads = jax.tree.map(lambda p, s=step: jnp.cos(p * (s + 1)), params)
    upd, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, upd)
    masks = {k: np.asarray(v) for k, v in unnest(state.masks).items()}  # the state is donated to the next event
    done = sum(e <= step for e in sched.prune_steps)
    total = sum(int(masks[k].sum()) for k in names)
    assert total == (kept_table[done - 1] if done else sum(sizes.values())), step
    for k in names:
      counts = _groups(masks[k], layout.contraction_axis(k, masks[k].shape), m)
      assert counts.min() >= n, (step, k)  # the top N of every group are never pruned
      if prev is not None:
        assert not np.any(masks[k] & ~prev[k])
    prev = masks
  flat = unnest(params)
  for k in names:
    counts = _groups(masks[k], layout.contraction_axis(k, masks[k].shape), m)
    assert np.all(counts == n), k  # at density N/M every group holds exactly N
    assert np.all(_groups(flat[k] != 0, layout.contraction_axis(k, masks[k].shape), m) <= n), k


def test_the_kept_entries_of_a_group_are_its_largest():
  plan = sparsity.PrunePlan(schedules.make_schedule(4, 0.5, "one_shot", 0.25, 0.25, 1), pruning_structure="2:4")
  w = jnp.asarray(np.random.default_rng(2).normal(size=(8, 12)), jnp.float32)  # axis 0: groups of 4 rows
  params = {"mlp": {"wo": {"kernel": w}}}
  tx = sparsity.pruned(optax.sgd(0.0), plan)
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  mask = np.asarray(unnest(state.masks)["mlp/wo/kernel"])
  a = np.abs(np.asarray(w)).reshape(2, 4, 12)
  top2 = np.argsort(-a, axis=1, kind="stable")[:, :2, :]
  want = np.zeros_like(a, bool)
  np.put_along_axis(want, top2, True, axis=1)
  np.testing.assert_array_equal(mask, want.reshape(8, 12))


def test_contraction_axes_of_maxtext_kernels():
  assert layout.contraction_axis("decoder/layers/self_attention/query/kernel", (64, 2, 4, 16)) == 0
  assert layout.contraction_axis("decoder/layers/self_attention/out/kernel", (4, 2, 16, 64)) == 2
  assert layout.contraction_axis("decoder/layers_0/self_attention/out/kernel", (4, 16, 64)) == 1
  assert layout.contraction_axis("decoder/layers/mlp/wo/kernel", (256, 2, 64)) == 0
  assert layout.contraction_axis("decoder/logits_dense/kernel", (64, 1024)) == 0


def test_structure_errors_are_clear():
  with pytest.raises(ValueError, match="need 0 < N < M"):
    SparsityKeys(pruning_structure="4:4")
  with pytest.raises(ValueError, match="'unstructured' or 'N:M'"):
    SparsityKeys(pruning_structure="2-4")
  with pytest.raises(ValueError, match=r"target_sparsity=0.8 is above 1 - N/M = 0.5 for pruning_structure=2:4"):
    SparsityKeys(target_sparsity=0.8, pruning_structure="2:4")
  assert SparsityKeys(target_sparsity="auto", pruning_structure="2:4").target_sparsity == 0.5
  assert SparsityKeys(target_sparsity="auto", pruning_structure="1:8").target_sparsity == 0.875
  assert SparsityKeys(target_sparsity="auto").target_sparsity == 0.8
  with pytest.raises(ValueError, match="above 1 - N/M"):
    sparsity.PrunePlan(schedules.make_schedule(10, 0.6), pruning_structure="2:4")
  plan = sparsity.PrunePlan(schedules.make_schedule(10, 0.5), pruning_structure="2:4")
  with pytest.raises(ValueError, match=r"not a multiple of 4: decoder/mlp/wo/kernel \(6, 8\): axis 0 of size 6"):
    sparsity.pruned(optax.sgd(0.1), plan).init({"decoder": {"mlp": {"wo": {"kernel": jnp.zeros((6, 8))}}}})
