"""The optax pruner: exact counts, monotone masks, pruned weights and their moments stay zero."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsity import accounting, pruner, schedules


def _params(seed=0):
  r = np.random.default_rng(seed)
  return {
      "decoder": {
          "layers": {
              "mlp": {"wi_0": {"kernel": jnp.asarray(r.normal(size=(16, 2, 32)), jnp.float32)},
                      "wo": {"kernel": jnp.asarray(r.normal(size=(32, 2, 16)) * 0.1, jnp.float32)}},
              "self_attention": {"value": {"kernel": jnp.asarray(r.normal(size=(16, 2, 4, 4)), jnp.float32)}},
              "pre_self_attention_layer_norm": {"scale": jnp.ones((16, 2), jnp.float32)},
          },
          "logits_dense": {"kernel": jnp.asarray(r.normal(size=(16, 50)), jnp.float32)},
      },
      "token_embedder": {"embedding": jnp.asarray(r.normal(size=(50, 16)), jnp.float32)},
  }


DEFAULT = r"(^|/)(query|key|value|out|wi|wi_0|wi_1|wo|logits_dense)/kernel$"


def _train(plan, steps, inner=None, seed=0, params=None, events_in_update=True):
  """Trains on synthetic gradients; with ``events_in_update=False`` the mask events run between updates."""
  params = _params(seed) if params is None else params
  tx = pruner.pruned(inner or optax.adamw(1e-2, weight_decay=0.1), plan, events_in_update=events_in_update)
  state = tx.init(params)

  @jax.jit
  def step(params, state, i):
    grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1.0)) + 0.05, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  @functools.partial(jax.jit, static_argnums=(4,))
  def event(values, masks, keep, i, zeros):
    return pruner.mask_event(values, masks, keep, i, plan, zeros=zeros)

  history = []
  for i in range(steps):
    flat_p = {pruner.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    names = list(_flat_masks(state))
    inputs = pruner.event_inputs(plan, [flat_p[n].size for n in names], i)
    if not events_in_update and inputs is not None:
      keep, zeros = inputs
      new = event([flat_p[n] for n in names], [_flat_masks(state)[n] for n in names], keep, jnp.int32(i), zeros)
      state = state._replace(masks=pruner.nest_paths(dict(zip(names, new))))
    params, state = step(params, state, jnp.float32(i))
    history.append((jax.device_get(params), jax.device_get(state)))
  return history


def _flat_masks(state):
  return pruner.flatten_nested(state.masks)


def test_default_regex_selects_linear_kernels_not_norms_or_embeddings():
  plan = pruner.PrunePlan(schedules.make_schedule(10, 0.5), DEFAULT)
  assert sorted(pruner.prunable_paths(_params(), plan)) == [
      "decoder/layers/mlp/wi_0/kernel",
      "decoder/layers/mlp/wo/kernel",
      "decoder/layers/self_attention/value/kernel",
      "decoder/logits_dense/kernel",
  ]


def test_regex_matching_nothing_is_a_clear_error():
  plan = pruner.PrunePlan(schedules.make_schedule(10, 0.5), r"attention/nothing")
  with pytest.raises(ValueError, match="(?s)matches no parameter.*token_embedder/embedding"):
    pruner.pruned(optax.sgd(0.1), plan).init(_params())
  plan = pruner.PrunePlan(schedules.make_schedule(10, 0.5), DEFAULT, non_prunable=r"kernel")
  with pytest.raises(ValueError, match="matches no parameter"):
    pruner.prunable_paths(_params(), plan)


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
@pytest.mark.parametrize("score", ["magnitude", "random"])
def test_exact_counts_monotone_masks_zero_weights_and_moments(scope, score):
  sch = schedules.make_schedule(20, 0.8, "geometric", 0.2, 0.6, 3)
  plan = pruner.PrunePlan(sch, DEFAULT, scope=scope, score=score)
  hist = _train(plan, 20)
  names = sorted(_flat_masks(hist[0][1]))
  sizes = {n: int(np.prod(_flat_masks(hist[0][1])[n].shape)) for n in names}
  total = sum(sizes.values())
  prev = None
  for step, (params, state) in enumerate(hist):
    masks = _flat_masks(state)
    flat_p = {pruner.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    kept = sum(int(masks[n].sum()) for n in names)
    if scope == "global":
      assert kept == sch.active_at(step, total), step
    else:
      assert all(int(masks[n].sum()) == sch.active_at(step, sizes[n]) for n in names), step
    for n in names:
      assert not np.any(flat_p[n][~masks[n]]), f"pruned weight not zero at step {step}: {n}"
      if prev is not None:
        assert not np.any(masks[n] & ~prev[n]), "a mask regained an entry"
    mu = {pruner.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(state.inner_state[0].mu)[0]}
    nu = {pruner.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(state.inner_state[0].nu)[0]}
    for n in names:
      assert not np.any(mu[n][~masks[n]]) and not np.any(nu[n][~masks[n]]), "optimizer moments of pruned weights"
    prev = masks
  # non-prunable leaves are trained and not masked
  assert np.all(np.asarray(hist[-1][0]["token_embedder"]["embedding"]) != 0)


@pytest.mark.parametrize("scope,score", [("global", "magnitude"), ("per_tensor", "magnitude"), ("global", "random")])
def test_events_between_updates_equal_events_inside_the_update(scope, score):
  """``mask_event`` run as a separate program (how the MaxText hook prunes) gives the same training, bit for bit."""
  sch = schedules.make_schedule(20, 0.8, "geometric", 0.2, 0.6, 3)
  plan = pruner.PrunePlan(sch, DEFAULT, scope=scope, score=score)
  inside, outside = _train(plan, 20), _train(plan, 20, events_in_update=False)
  assert any(not _flat_masks(inside[-1][1])[n].all() for n in _flat_masks(inside[-1][1]))
  for (p1, s1), (p2, s2) in zip(inside, outside):
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_events_between_updates_leave_no_conditional_in_the_update():
  """The update the MaxText hook compiles into its step holds no pruning branch: only elementwise selects."""
  sch = schedules.make_schedule(20, 0.8, "geometric", 0.2, 0.6, 3)
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  for in_update in (True, False):
    tx = pruner.pruned(optax.adamw(1e-2), pruner.PrunePlan(sch, DEFAULT), events_in_update=in_update)
    jaxpr = str(jax.make_jaxpr(tx.update)(grads, tx.init(params), params))
    primitives = set(re.findall(r"= (\w+)\[", jaxpr))
    assert ("cond" in primitives) == in_update, primitives
    assert bool({"scan", "while"} & primitives) == in_update, primitives  # the selection's radix passes


def test_zero_masking_between_updates_equals_zero_masking_inside():
  params = _params()
  params["decoder"]["layers"]["mlp"]["wo"]["kernel"] = params["decoder"]["layers"]["mlp"]["wo"]["kernel"].at[:8].set(0.0)
  plan = pruner.PrunePlan(schedules.make_schedule(6, 0.0), DEFAULT, mask_zeros=True)
  inside = _train(plan, 6, params=params)
  outside = _train(plan, 6, params=params, events_in_update=False)
  wo = _flat_masks(outside[-1][1])["decoder/layers/mlp/wo/kernel"]
  assert not wo[:8].any() and wo[8:].all()
  for a, b in zip(jax.tree.leaves(inside), jax.tree.leaves(outside)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_global_magnitude_prunes_the_smallest_weights():
  sch = schedules.make_schedule(4, 0.5, "one_shot", 0.25, 0.25, 1)
  plan = pruner.PrunePlan(sch, DEFAULT)
  params = _params()
  tx = pruner.pruned(optax.sgd(0.0), plan)
  state = tx.init(params)
  for _ in range(2):  # the event is at step 1: pruning uses the weights before that step's update
    upd, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  masks = _flat_masks(state)
  flat_p = {pruner.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  kept = np.concatenate([np.abs(flat_p[n])[masks[n]] for n in masks])
  dropped = np.concatenate([np.abs(flat_p[n])[~masks[n]] for n in masks])
  assert kept.min() >= dropped.max()
  assert len(kept) == (len(kept) + len(dropped)) // 2
  # wo was initialised 10x smaller: global magnitude pruning takes most of it
  assert masks["decoder/layers/mlp/wo/kernel"].mean() < 0.2


def test_dense_plan_is_the_inner_optimizer():
  sch = schedules.make_schedule(6, 0.0)
  plan = pruner.PrunePlan(sch, DEFAULT)
  dense = _train(plan, 6)
  r = np.random.default_rng(0)
  del r
  params = _params()
  tx = optax.adamw(1e-2, weight_decay=0.1)
  st = tx.init(params)
  for i in range(6):
    grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1.0)) + 0.05, params)
    u, st = tx.update(grads, st, params)
    params = optax.apply_updates(params, u)
  for a, b in zip(jax.tree.leaves(dense[-1][0]), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_accounting_step_metrics_against_hand_computation():
  sch = schedules.make_schedule(8, 0.75, schedule="linear", start_fraction=0.25, end_fraction=0.5, interval=2)
  acc = accounting.Accounting(sch, prunable=100, non_prunable=10, tokens_per_step=1000)
  # active per step: 110 110 73 73 35 35 35 35
  want_active = [110, 110, 73, 73, 35, 35, 35, 35]
  for s in range(8):
    m = jax.jit(acc.step_metrics)(jnp.int32(s))
    assert float(m["sparsity/active_params"]) == want_active[s]
    assert float(m["sparsity/avg_active_params"]) == pytest.approx(np.mean(want_active[: s + 1]))
    assert float(m["sparsity/effective_flops"]) == pytest.approx(6 * 1000 * sum(want_active[: s + 1]))
    assert float(m["sparsity/density"]) == pytest.approx((want_active[s] - 10) / 100)
  summ = acc.summary("r", 0.75, "linear")
  assert summ["avg_active_params"] == 506 / 8 and summ["avg_active_prunable_params"] == 506 / 8 - 10
  assert summ["effective_flops"] == 6 * 1000 * 506 and summ["dense_flops"] == 6 * 1000 * 8 * 110
  assert summ["final_active_params"] == 35 and summ["final_sparsity"] == 0.75 and summ["tokens"] == 8000
