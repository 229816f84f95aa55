"""Fast unit tests of the MaxText coupling (no training): the layout, the events program on a train state shaped
like MaxText's, the extension-point checks, the end-of-run rules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsity
from sparsity.core import pruner, schedules
from sparsity.core.paths import flatten, nest, unnest
from sparsity.maxtext import events, hook, layout, loop

PARAMS = {
    "decoder": {"layers": {"mlp": {"wi_0": {"kernel": (8, 2, 16)}, "wo": {"kernel": (16, 2, 8)}},
                           "pre_self_attention_layer_norm": {"scale": (8, 2)}},
                "logits_dense": {"kernel": (8, 40)}},
    "token_embedder": {"embedding": (40, 8)},
}


def _state(plan, seed=0):
  """A train state laid out as MaxText's (``layout``): model/..., optimizer/{step, opt_state/...}."""
  r = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: jnp.asarray(r.normal(size=s), jnp.float32), PARAMS,
                        is_leaf=lambda x: isinstance(x, tuple))
  tx = sparsity.pruned(optax.adam(1e-2), plan, events_in_update=False)
  opt = tx.init(params)
  opt = opt._replace(inner_state=jax.tree.map(lambda x: x + 1.0 if x.ndim else x, opt.inner_state))  # moments != 0
  return layout.train_state_tree(params, opt._asdict(), jnp.int32(0))


def _leaves(state, prefix):
  return {p[len(prefix):]: np.asarray(x) for p, x in flatten(state)[0] if p.startswith(prefix)}


def test_layout_paths_round_trip():
  assert layout.state_mask_path(layout.STATE_MASKS + "decoder/mlp/wo/kernel") == "decoder/mlp/wo/kernel"
  assert layout.state_param_path("model/decoder/mlp/wo/kernel") == "decoder/mlp/wo/kernel"
  assert layout.state_mask_path("model/decoder/mlp/wo/kernel") is None
  tree = layout.checkpoint_tree({"a": {"kernel": 1}}, {"a": {"kernel": True}}, count=3, step=3)
  flat = dict(flatten(tree)[0])
  assert layout.ckpt_param_path("params/params/a/kernel") == "a/kernel" and flat["params/params/a/kernel"] == 1
  assert layout.ckpt_mask_path("opt_state/masks/a/kernel") == "a/kernel" and flat["opt_state/masks/a/kernel"]
  assert layout.summary_path(layout.run_dir("/b", "r")) == "/b/r/" + layout.SUMMARY_FILE
  assert layout.items_dir(layout.checkpoints_dir("/b/r"), 7) == "/b/r/checkpoints/7/items"
  assert layout.scan_axis("decoder/layers/mlp/wo/kernel", True) == 1
  assert layout.scan_axis("decoder/layers_0/mlp/wo/kernel", False) is None
  assert layout.scan_axis("decoder/logits_dense/kernel", True) is None


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_state_events_prune_exactly_zero_moments_and_compile_once(scope):
  sched = schedules.make_schedule(12, 0.75, interval=2)  # events at 3, 5, 7, 9
  plan = sparsity.PrunePlan(sched, pruning_scope=scope)
  state = _state(plan)
  ev = events.StateEvents(plan, state, start_step=0)
  assert ev.names == ["decoder/layers/mlp/wi_0/kernel", "decoder/layers/mlp/wo/kernel", "decoder/logits_dense/kernel"]
  assert len(ev.moment_idx) == 6  # Adam's mu and nu of the three kernels, found by path and shape
  assert len(ev._compiled) == 1  # pylint: disable=protected-access  (compiled before the first step)
  sizes = [int(np.prod(unnest(PARAMS)[n])) for n in ev.names]
  kept = pruner.kept_after_events(plan, sizes)
  before = _leaves(state, layout.STATE_MASKS)
  for step in range(12):
    state = ev(state, step)
    masks = _leaves(state, layout.STATE_MASKS)
    if step not in sched.prune_steps:
      assert all(np.array_equal(masks[n], before[n]) for n in masks), step
    else:
      assert sum(int(m.sum()) for m in masks.values()) == kept[sched.prune_steps.index(step)]
      assert events.count_kept(state) == kept[sched.prune_steps.index(step)]
    before = masks
  inner = _leaves(state, layout.STATE_INNER)
  for name, m in masks.items():
    for moment in ("0/mu/", "0/nu/"):
      x = inner[moment + name]
      assert not np.any(x[~m]) and np.all(x[m] == 1.0), (moment, name)  # zeroed where pruned, untouched elsewhere
  assert len(ev._compiled) == 1  # pylint: disable=protected-access  (one program served every event)


def test_state_events_refuse_a_count_that_is_not_maxtexts_step():
  plan = sparsity.PrunePlan(schedules.make_schedule(12, 0.5, interval=2))
  with pytest.raises(RuntimeError, match="update count 0 is not MaxText's step 5"):
    events.StateEvents(plan, _state(plan), start_step=5)


def test_extension_points_are_checked_by_signature(monkeypatch):
  hook.check_extension_points()  # the pinned MaxText passes
  train = hook.modules.train()

  def moved(config, recorder_and_more):  # a train_loop whose signature changed
    return None

  monkeypatch.setattr(train, "train_loop", moved)
  with pytest.raises(RuntimeError, match=r"extension point train.train_loop takes \('config', 'recorder_and_more'\)"):
    hook.check_extension_points()
  monkeypatch.setattr(hook.modules, "version", lambda: "0.2.6")
  with pytest.raises(RuntimeError, match="needs maxtext==0.2.5, found 0.2.6"):
    hook.check_extension_points()


def test_a_sparse_run_that_misses_an_extension_point_stops_naming_it():
  run = hook.Run()
  run.config = type("C", (), {"target_sparsity": 0.8, "init_mask_from_zeros": False})()
  run.reached = {"optimizers.get_optimizer"}
  with pytest.raises(RuntimeError, match="never reached the extension point\\(s\\) train.train_step"):
    run.require("optimizers.get_optimizer", "train.train_step")
  run.config.target_sparsity = 0.0  # a dense run trains the same either way
  run.require("optimizers.get_optimizer", "train.train_step")


def test_run_accounting_follows_the_scope():
  run = hook.Run()
  run.config = type("C", (), {"global_batch_size_to_train_on": 4, "max_target_length": 16})()
  run.prunable_sizes, run.total = [1000, 10, 333], 2000
  sched = schedules.make_schedule(30, 0.8, interval=5)
  for scope in ("global", "per_tensor"):
    run.plan = sparsity.PrunePlan(sched, pruning_scope=scope)
    acc = run.accounting()
    assert acc.kept == pruner.kept_after_events(run.plan, run.prunable_sizes) and acc.non_prunable == 657
    assert acc.tokens_per_step == 64
  assert run.accounting(fixed_kept=500).active_at(0) == 500 + 657


def test_maxtext_eval_rule():
  cfg = type("C", (), {"eval_interval": 1200, "eval_start_step": 0})()
  assert loop.maxtext_evaluates_after(0, cfg, 0) and not loop.maxtext_evaluates_after(1199, cfg, 0)
  cfg.eval_interval = 0
  assert not loop.maxtext_evaluates_after(0, cfg, 0)
  cfg.eval_interval, cfg.eval_start_step = 10, 5
  assert [s for s in range(30) if loop.maxtext_evaluates_after(s, cfg, 0)] == [5, 15, 25]
  assert [s for s in range(30) if loop.maxtext_evaluates_after(s, cfg, 16)] == [25]


def test_train_step_wrapper_adds_the_schedules_metrics():
  run = hook.RUN
  saved = (run.plan, run.config, run.prunable_sizes, run.total)
  try:
    run.config = type("C", (), {"global_batch_size_to_train_on": 2, "max_target_length": 8})()
    run.plan = sparsity.PrunePlan(schedules.make_schedule(10, 0.5, "one_shot", 0.2, 0.2, 1))
    run.prunable_sizes, run.total = [100], 150

    def original(model, config, state, batch):
      return layout.train_state_tree({}, {}, state + 1), {"scalar": {"learning/loss": 1.0}}

    step = jax.jit(functools.partial(hook._train_step, original, None, None))  # pylint: disable=protected-access
    for s, active in ((0, 150), (1, 150), (2, 100), (9, 100)):
      _, m = step(jnp.int32(s), None)
      assert float(m["scalar"]["sparsity/active_params"]) == active and float(m["scalar"]["learning/loss"]) == 1.0
  finally:
    run.plan, run.config, run.prunable_sizes, run.total = saved


def test_nest_and_unnest_are_inverse():
  flat = {"a/b/c": 1, "a/d": 2, "e": 3}
  assert unnest(nest(flat)) == flat


def test_launch_sets_maxtexts_multi_process_variables():
  from sparsity.maxtext import launch  # pylint: disable=import-outside-toplevel

  env = launch.process_env(1, 4, 2, base={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --other", "X": "y"})
  assert (env["JOB_INDEX"], env["JOB_COMPLETION_INDEX"], env["PROCESSES_IN_JOB"], env["JAX_PROCESS_COUNT"]) == (
      "0", "1", "4", "4")
  assert env["JAX_COORDINATOR_ADDRESS"] == "localhost" and env["X"] == "y" and env["JAX_PLATFORMS"] == "cpu"
  assert env["XLA_FLAGS"] == "--other --xla_force_host_platform_device_count=2"
  assert launch.train_argv(["c.yml", "steps=3"]) == ["c.yml", "steps=3", "hardware=cpu",
                                                     "skip_jax_distributed_system=false"]
  assert launch.train_argv(["c.yml", "hardware=cpu"]) == ["c.yml", "hardware=cpu", "skip_jax_distributed_system=false"]
  assert launch.Result([0, 3], 1, 1.0).exit_code == 3 and launch.Result([-15, 3], 1, 1.0).exit_code == 3
  assert launch.Result([0, 0], None, 1.0).exit_code == 0 and launch.Result([-9, 0], 0, 1.0).exit_code == 1
