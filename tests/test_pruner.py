"""The optax pruner through the public API: exact counts, monotone masks, pruned weights and their state stay zero."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic
import pytest

import sparsity
from sparsity.core import accounting, compute, pruner, schedules, timeline
from sparsity.core.config import DEFAULT_PRUNABLE
from sparsity.core.paths import flatten, unnest


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


SCHEDULE = schedules.make_schedule(20, 0.8, "geometric", 0.2, 0.6, 3)


def _train(plan, steps, inner=None, params=None, events_in_update=True):
  """Trains on synthetic gradients; with ``events_in_update=False`` the events run between updates."""
  params = _params() if params is None else params
  tx = sparsity.pruned(inner or optax.adamw(1e-2, weight_decay=0.1), plan, events_in_update=events_in_update)
  state = tx.init(params)

  @jax.jit
  def step(params, state, i):
    grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1.0)) + 0.05, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for i in range(steps):
    if not events_in_update:
      state = sparsity.apply_due_event(state, params, plan)
    params, state = step(params, state, jnp.float32(i))
    history.append((jax.device_get(params), jax.device_get(state)))
  return history


def _flat(tree):
  return dict(flatten(tree)[0])


def test_default_regex_selects_linear_kernels_not_norms_or_embeddings():
  plan = sparsity.PrunePlan(schedules.make_schedule(10, 0.5))
  assert plan.prunable_params == DEFAULT_PRUNABLE
  assert sorted(sparsity.prunable_paths(_params(), plan)) == [
      "decoder/layers/mlp/wi_0/kernel",
      "decoder/layers/mlp/wo/kernel",
      "decoder/layers/self_attention/value/kernel",
      "decoder/logits_dense/kernel",
  ]


def test_regex_matching_nothing_is_a_clear_error():
  plan = sparsity.PrunePlan(schedules.make_schedule(10, 0.5), r"attention/nothing")
  with pytest.raises(ValueError, match="(?s)matches no parameter.*token_embedder/embedding"):
    sparsity.pruned(optax.sgd(0.1), plan).init(_params())
  plan = sparsity.PrunePlan(schedules.make_schedule(10, 0.5), non_prunable_params=r"kernel")
  with pytest.raises(ValueError, match="matches no parameter"):
    sparsity.prunable_paths(_params(), plan)


@pytest.mark.parametrize("field, value, message", [
    ("pruning_score", "Magnitude", "pruning_score must be one of"),
    ("pruning_scope", "globl", "pruning_scope must be one of"),
    ("prunable_params", "(unclosed", "prunable_params is not a valid regular expression"),
    ("non_prunable_params", "[", "non_prunable_params is not a valid regular expression"),
    ("schedule", (10, 0.5), "schedule must be a sparsity Schedule"),
])
def test_plan_validates_itself(field, value, message):
  kwargs = {"schedule": SCHEDULE, field: value}
  with pytest.raises(ValueError, match=re.escape(message)):
    sparsity.PrunePlan(**kwargs)


@pytest.mark.parametrize("keys", [{"prunable_params": "(unclosed"}, {"non_prunable_params": "a[b"},
                                  {"pruning_structure": "2:4", "target_sparsity": 0.6}])
def test_the_plan_and_the_keys_refuse_the_same_values_with_the_same_words(keys):
  """A plan and the config keys check regexes and the N:M target alike (one check, two callers)."""
  with pytest.raises(pydantic.ValidationError) as from_keys:
    sparsity.SparsityKeys(**keys)
  target = keys.get("target_sparsity", 0.5)
  plan = {k: v for k, v in keys.items() if k != "target_sparsity"}
  with pytest.raises(ValueError) as from_plan:
    sparsity.PrunePlan(schedules.make_schedule(100, target, interval=10), **plan)
  assert str(from_plan.value) in str(from_keys.value)


def test_plan_from_config_keys_uses_the_same_names():
  class Config(sparsity.SparsityKeys):  # what MaxText's config adds: steps
    steps: int = 40

  keys = Config(target_sparsity=0.6, pruning_scope="per_tensor", pruning_score="random", pruning_seed=3,
                pruning_interval=5, non_prunable_params="query")
  plan = sparsity.PrunePlan.from_config(keys)
  assert (plan.pruning_scope, plan.pruning_score, plan.pruning_seed, plan.non_prunable_params) == (
      "per_tensor", "random", 3, "query")
  # no step fractions set: derived from the compute split (sparsity.core.compute)
  start, end = compute.derived_step_fractions(40, 0.6, "geometric", 5, 0.25, 0.5)
  assert plan.schedule == schedules.make_schedule(40, 0.6, "geometric", start, end, 5)
  assert sparsity.PrunePlan.from_config(Config(target_sparsity=0.6, prune_start_fraction=0.5)).schedule == \
      schedules.make_schedule(40, 0.6, "geometric", 0.5, 0.75, 100)  # one step fraction set: the other's default


@pytest.mark.parametrize("scope, score", [  # the other two in the full suite only
    ("global", "magnitude"), ("per_tensor", "random"),
    pytest.param("per_tensor", "magnitude", marks=pytest.mark.slow), pytest.param("global", "random", marks=pytest.mark.slow)])
def test_exact_counts_monotone_masks_zero_weights_and_moments(scope, score):
  plan = sparsity.PrunePlan(SCHEDULE, pruning_scope=scope, pruning_score=score)
  hist = _train(plan, 20)
  names = sorted(unnest(hist[0][1].masks))
  sizes = {n: unnest(hist[0][1].masks)[n].size for n in names}
  kept_table = pruner.kept_after_events(plan, [sizes[n] for n in names])
  prev = None
  for step, (params, state) in enumerate(hist):
    masks = unnest(state.masks)
    flat_p = _flat(params)
    kept = sum(int(masks[n].sum()) for n in names)
    events_done = sum(s <= step for s in SCHEDULE.prune_steps)
    assert kept == (kept_table[events_done - 1] if events_done else sum(sizes.values())), step
    if scope == "global":
      assert kept == SCHEDULE.active_at(step, sum(sizes.values())), step
    else:
      assert all(int(masks[n].sum()) == SCHEDULE.active_at(step, sizes[n]) for n in names), step
    for n in names:
      assert not np.any(flat_p[n][~masks[n]]), f"pruned weight not zero at step {step}: {n}"
      if prev is not None:
        assert not np.any(masks[n] & ~prev[n]), "a mask regained an entry"
    mu, nu = _flat(state.inner_state[0].mu), _flat(state.inner_state[0].nu)
    for n in names:
      assert not np.any(mu[n][~masks[n]]) and not np.any(nu[n][~masks[n]]), "optimizer moments of pruned weights"
    prev = masks
  assert kept_table[-1] < sum(sizes.values()) * 0.21
  # non-prunable leaves are trained and not masked
  assert np.all(np.asarray(hist[-1][0]["token_embedder"]["embedding"]) != 0)


@pytest.mark.parametrize("scope,score", [("global", "magnitude"), pytest.param("per_tensor", "magnitude", marks=pytest.mark.slow),
                                         pytest.param("global", "random", marks=pytest.mark.slow)])
def test_events_between_updates_equal_events_inside_the_update(scope, score):
  """``apply_due_event`` between updates (how the MaxText hook prunes) gives the same training, bit for bit, though
  it zeroes the optimizer's moments once per event where the self-contained update zeroes them every step."""
  plan = sparsity.PrunePlan(SCHEDULE, pruning_scope=scope, pruning_score=score)
  inside, outside = _train(plan, 20), _train(plan, 20, events_in_update=False)
  assert any(not m.all() for m in unnest(inside[-1][1].masks).values())
  for (p1, s1), (p2, s2) in zip(inside, outside):
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_events_between_updates_leave_no_conditional_in_the_update():
  """The update the MaxText hook compiles into its step holds no pruning branch: only elementwise selects."""
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  for in_update in (True, False):
    tx = sparsity.pruned(optax.adamw(1e-2), sparsity.PrunePlan(SCHEDULE), events_in_update=in_update)
    jaxpr = str(jax.make_jaxpr(tx.update)(grads, tx.init(params), params))
    primitives = set(re.findall(r"= (\w+)\[", jaxpr))
    assert ("cond" in primitives) == in_update, primitives
    assert bool({"scan", "while"} & primitives) == in_update, primitives  # the selection's radix passes


def test_zero_masking_between_updates_equals_zero_masking_inside():
  params = _params()
  params["decoder"]["layers"]["mlp"]["wo"]["kernel"] = params["decoder"]["layers"]["mlp"]["wo"]["kernel"].at[:8].set(0.0)
  plan = sparsity.PrunePlan(schedules.make_schedule(6, 0.0), init_mask_from_zeros=True)
  inside = _train(plan, 6, params=params)
  outside = _train(plan, 6, params=params, events_in_update=False)
  wo = unnest(outside[-1][1].masks)["decoder/layers/mlp/wo/kernel"]
  assert not wo[:8].any() and wo[8:].all()
  for a, b in zip(jax.tree.leaves(inside), jax.tree.leaves(outside)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_event_hides_the_count_representation_and_is_due_only_at_events():
  plan = sparsity.PrunePlan(SCHEDULE)
  sizes = [100, 50]
  assert sparsity.due_event(plan, sizes, SCHEDULE.prune_steps[0] - 1) is None
  ev = sparsity.due_event(plan, sizes, SCHEDULE.prune_steps[-1])
  assert ev.prune and not ev.mask_zeros
  values = [jnp.arange(100.0), jnp.arange(50.0)]
  masks = jax.jit(lambda v, m, e: sparsity.mask_event(v, m, e, plan))(values, [jnp.ones(100, bool), jnp.ones(50, bool)], ev)
  assert sum(int(m.sum()) for m in masks) == timeline.round_half_up(0.2 * 150)


def test_extra_arguments_reach_the_inner_optimizer():
  seen = {}

  def inner_update(updates, state, params=None, *, value=None):
    seen["value"] = value
    return updates, state

  inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), inner_update)
  tx = sparsity.pruned(inner, sparsity.PrunePlan(SCHEDULE))
  params = _params()
  tx.update(params, tx.init(params), params, value=7.0)
  assert seen["value"] == 7.0
  # a plain optax optimizer ignores extra arguments it does not take (optax.with_extra_args_support)
  tx = sparsity.pruned(optax.sgd(0.1), sparsity.PrunePlan(SCHEDULE))
  tx.update(params, tx.init(params), params, value=7.0)


def test_muon_state_is_zeroed_by_path_and_training_works():
  """Muon partitions its state between Muon and Adam; the per-weight leaves are found by path and shape."""
  plan = sparsity.PrunePlan(SCHEDULE)
  params = {"decoder": {"mlp": {"wo": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)),
                                                              jnp.float32)}},
                        "decoder_norm": {"scale": jnp.ones((16,), jnp.float32)}}}
  hist = _train(plan, 20, inner=optax.contrib.muon(1e-2), params=params, events_in_update=False)
  params, state = hist[-1]
  mask = unnest(state.masks)["decoder/mlp/wo/kernel"]
  assert mask.sum() == timeline.round_half_up(0.2 * 128)
  leaves = [(p, x) for p, x in flatten(state.inner_state)[0] if p.endswith("decoder/mlp/wo/kernel")]
  assert leaves and all(not np.any(np.asarray(x)[~mask]) for _, x in leaves), [p for p, _ in leaves]
  assert not np.any(params["decoder"]["mlp"]["wo"]["kernel"][~mask])


def test_per_param_leaves_takes_the_longest_matching_path_of_the_same_shape():
  leaves = [("0/mu/a/kernel", (2, 3)), ("0/mu/b/a/kernel", (2, 3)), ("0/nu/a/kernel", (3,)), ("count", ())]
  assert sparsity.core.pruner.per_param_leaves(leaves, {"a/kernel": (2, 3), "b/a/kernel": (2, 3)}) == {
      0: "a/kernel", 1: "b/a/kernel"}


def test_global_magnitude_prunes_the_smallest_weights():
  plan = sparsity.PrunePlan(schedules.make_schedule(4, 0.5, "one_shot", 0.25, 0.25, 1))
  params = _params()
  tx = sparsity.pruned(optax.sgd(0.0), plan)
  state = tx.init(params)
  for _ in range(2):  # the event is at step 1: pruning uses the weights before that step's update
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  masks = unnest(state.masks)
  flat_p = {p: np.asarray(x) for p, x in _flat(params).items()}
  kept = np.concatenate([np.abs(flat_p[n])[masks[n]] for n in masks])
  dropped = np.concatenate([np.abs(flat_p[n])[~masks[n]] for n in masks])
  assert kept.min() >= dropped.max()
  assert len(kept) == (len(kept) + len(dropped)) // 2
  # wo was initialised 10x smaller: global magnitude pruning takes most of it
  assert masks["decoder/layers/mlp/wo/kernel"].mean() < 0.2


def test_dense_plan_trains_like_the_inner_optimizer():
  dense = _train(sparsity.PrunePlan(schedules.make_schedule(6, 0.0)), 6)
  params = _params()
  tx = optax.adamw(1e-2, weight_decay=0.1)
  st = tx.init(params)
  for i in range(6):
    grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1.0)) + 0.05, params)
    u, st = tx.update(grads, st, params)
    params = optax.apply_updates(params, u)
  for a, b in zip(jax.tree.leaves(dense[-1][0]), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_accounting_step_metrics_against_hand_computation():
  sch = schedules.make_schedule(8, 0.75, schedule="linear", start_fraction=0.25, end_fraction=0.5, interval=2)
  acc = accounting.from_schedule(sch, prunable=100, non_prunable=10, tokens_per_step=1000)
  assert acc.kept == (63, 25)  # round(0.625 * 100) after the first event, round(0.25 * 100) after the second
  want_active = [110, 110, 73, 73, 35, 35, 35, 35]
  for s in range(8):
    m = jax.jit(acc.step_metrics)(jnp.int32(s))
    assert float(m["sparsity/active_params"]) == want_active[s]
    assert float(m["sparsity/avg_active_params"]) == pytest.approx(np.mean(want_active[: s + 1]))
    # compute: 6 x tokens x active *prunable* weights (sparsity.core.compute), the 10 non-prunable ones not counted
    assert float(m["sparsity/effective_flops"]) == pytest.approx(6 * 1000 * sum(a - 10 for a in want_active[: s + 1]))
    assert float(m["sparsity/density"]) == pytest.approx((want_active[s] - 10) / 100)
  summ = acc.summary()
  assert summ["avg_active_params"] == 506 / 8 and summ["avg_active_prunable_params"] == 506 / 8 - 10
  assert summ["effective_flops"] == 6 * 1000 * 426 and summ["dense_flops"] == 6 * 1000 * 8 * 100
  # dense: steps 0-1 (2 x 100); pruning: steps 2-3 (2 x 63); recovery: from the last event, steps 4-7 (4 x 25)
  assert summ["compute_fractions"] == {"dense": 200 / 426, "pruning": 126 / 426, "recovery": 100 / 426}
  assert summ["final_active_params"] == 35 and summ["final_sparsity"] == 0.75 and summ["tokens"] == 8000
  # a run that stopped after 3 steps: counts over the steps it trained
  short = acc.summary(steps_trained=3)
  assert short["steps_trained"] == 3 and short["tokens"] == 3000 and short["steps"] == 8
  assert short["avg_active_params"] == (110 + 110 + 73) / 3 and short["final_active_params"] == 73
  assert short["compute_fractions"] == {"dense": 200 / 263, "pruning": 63 / 263, "recovery": 0.0}


@pytest.mark.parametrize("target", [0.63, 0.8, 0.95])
def test_per_tensor_accounting_uses_the_counts_the_scope_keeps(target):
  """Per-tensor rounding keeps a total that can differ from the global count; the accounting follows the scope."""
  sch = schedules.make_schedule(30, target, interval=5)
  sizes = [4096, 4096, 16384, 16384, 16384, 65536, 1000, 7]
  plan = sparsity.PrunePlan(sch, pruning_scope="per_tensor")
  kept = pruner.kept_after_events(plan, sizes)
  # Brute force, independent of the rounding code: each tensor keeps the weights whose rank is within its density
  # (half up), never more than after its previous event; the totals are summed over tensors.
  brute, prev = [], list(sizes)
  for d in sch.densities:
    prev = [min(p, sum(1 for r in range(n) if r + 0.5 <= d * n)) for p, n in zip(prev, sizes)]
    brute.append(sum(prev))
  assert kept == tuple(brute)
  assert kept != sch.keep_counts(sum(sizes))  # per-tensor totals differ from one global threshold's here
  acc = accounting.from_schedule(sch, sum(sizes), 10, 64, kept=kept)
  assert acc.active_at(29) - 10 == kept[-1]
  assert acc.summary()["final_active_params"] == kept[-1] + 10
  # Hand-made: three tensors of 3 at density 0.5 keep 2 each (6 in all), one threshold over the 9 keeps 5.
  small = sparsity.PrunePlan(timeline.Schedule(10, (2,), (0.5,)), pruning_scope="per_tensor")
  assert pruner.kept_after_events(small, [3, 3, 3]) == (6,)
  assert pruner.kept_after_events(sparsity.PrunePlan(small.schedule, pruning_scope="global"), [3, 3, 3]) == (5,)


# --- Past 2**31 weights: every program traces from abstract shapes (no memory) -------------------------------

BIG = {"a/wi/kernel": (65536, 24576), "b/wo/kernel": (24576, 65536), "c/query/kernel": (8192, 8192)}  # 3.3e9 weights


@pytest.mark.parametrize("scope, structure", [  # the other two in the full suite only
    ("global", "unstructured"), ("per_tensor", "2:4"),
    pytest.param("per_tensor", "unstructured", marks=pytest.mark.slow), pytest.param("global", "2:4", marks=pytest.mark.slow)])
def test_the_event_and_the_update_trace_past_2_31_weights(scope, structure):
  sizes = [int(np.prod(s)) for s in BIG.values()]
  assert sum(sizes) > 2**31
  plan = pruner.PrunePlan(schedules.make_schedule(1000, 0.5, interval=100), pruning_scope=scope,
                          pruning_structure=structure)
  abstract = lambda dt: [jax.ShapeDtypeStruct(s, dt) for s in BIG.values()]  # noqa: E731
  event = pruner.due_event(plan, sizes, plan.schedule.prune_steps[0])
  if scope == "global":  # the first event keeps more than 2**31 weights: an exact wide count
    assert threshold_value(event.keep[0]) == plan.schedule.keep_counts(sum(sizes))[0] > 2**31
  out = jax.eval_shape(lambda v, m, e: pruner.mask_event(v, m, e, plan, list(BIG)), abstract(jnp.float32),
                       abstract(jnp.bool_), event)
  assert [o.shape for o in out] == list(BIG.values())
  # The optax form: the event inside the update (lax.cond), with MaxText-free params.
  params = {k: jax.ShapeDtypeStruct(s, jnp.bfloat16) for k, s in BIG.items()}
  tx = pruner.pruned(optax.sgd(0.1), plan)
  state = jax.eval_shape(tx.init, params)
  updates, _ = jax.eval_shape(tx.update, params, state, params)
  assert updates["a/wi/kernel"].shape == BIG["a/wi/kernel"]


def threshold_value(wide):
  from sparsity.core import threshold  # pylint: disable=import-outside-toplevel

  return threshold.wide_to_python(wide)


def test_step_metrics_trace_with_counts_past_2_31():
  acc = accounting.Accounting(steps=1000, prune_steps=(250, 500, 750), kept=(5 * 10**9, 3 * 10**9, 2 * 10**9),
                              prunable=6_607_077_376, non_prunable=2_300_000_000, tokens_per_step=4096)
  metrics = jax.jit(acc.step_metrics)(jnp.int32(800))  # traced step: Python ints past 2**31 meet traced values
  assert float(metrics["sparsity/density"]) == pytest.approx(2e9 / 6_607_077_376, rel=1e-6)
  assert float(metrics["sparsity/active_params"]) == pytest.approx(4.3e9, rel=1e-6)
