"""Fast unit tests of the MaxText coupling (no training): the layout, the events program on a train state shaped
like MaxText's, the extension-point checks, the end-of-run rules."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsity
from sparsity.core import pruner, schedules, threshold, timeline
from sparsity.core.paths import flatten, nest, unnest
from sparsity.maxtext import events, hook, layout, loop, status

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
  sched = schedules.make_schedule(12, 0.75, "geometric", 0.25, 0.75, 2)  # events at 3, 5, 7, 9
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


@pytest.mark.slow  # imports MaxText's trainer (TensorFlow, the models)
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
  run.prunable_sizes, run.total = [3, 3, 3], 20
  sched = timeline.Schedule(10, (2, 4), (0.5, 0.25))
  # By hand: one threshold over 9 weights keeps round(4.5) = 5, then round(2.25) = 2; per tensor each of the three
  # keeps round(1.5) = 2, then round(0.75) = 1 (ties round half up).
  for scope, kept in (("global", (5, 2)), ("per_tensor", (6, 3))):
    run.plan = sparsity.PrunePlan(sched, pruning_scope=scope)
    acc = run.accounting()
    assert acc.kept == kept and acc.prune_steps == (2, 4) and acc.non_prunable == 11, scope
    assert acc.tokens_per_step == 64 and acc.active_at(3) == kept[0] + 11
  fixed = run.accounting(fixed_kept=7)
  assert (fixed.prune_steps, fixed.kept, fixed.active_at(0)) == ((0,), (7,), 7 + 11)


def test_maxtext_eval_rule():
  cfg = type("C", (), {"eval_interval": 1200, "eval_start_step": 0})()
  assert loop.maxtext_evaluates_after(0, cfg, 0) and not loop.maxtext_evaluates_after(1199, cfg, 0)
  cfg.eval_interval = 0
  assert not loop.maxtext_evaluates_after(0, cfg, 0)
  cfg.eval_interval, cfg.eval_start_step = 10, 5
  assert [s for s in range(30) if loop.maxtext_evaluates_after(s, cfg, 0)] == [5, 15, 25]
  assert [s for s in range(30) if loop.maxtext_evaluates_after(s, cfg, 16)] == [25]


def test_train_step_wrapper_adds_the_schedules_metrics():
  run = hook.Run()
  run.config = type("C", (), {"global_batch_size_to_train_on": 2, "max_target_length": 8})()
  run.plan = sparsity.PrunePlan(schedules.make_schedule(10, 0.5, "one_shot", 0.2, 0.2, 1))
  run.prunable_sizes, run.total = [100], 150

  def original(model, config, state, batch):
    return layout.train_state_tree({}, {}, state + 1), {"scalar": {"learning/loss": 1.0}}

  step = jax.jit(functools.partial(hook._train_step, run, original, None, None))  # pylint: disable=protected-access
  # one-shot to half of 100 prunable weights before update 2: 150 active, then 50 + 50 non-prunable
  for s, active in ((0, 150), (1, 150), (2, 100), (9, 100)):
    _, m = step(jnp.int32(s), None)
    assert float(m["scalar"]["sparsity/active_params"]) == active and float(m["scalar"]["learning/loss"]) == 1.0
  assert run.reached == {"train.train_step"}


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


def test_each_launch_gets_a_coordinator_address_of_its_own():
  """MaxText fixes the coordinator port (1234); launches on one machine differ in the loopback address instead."""
  import socket  # pylint: disable=import-outside-toplevel

  from sparsity.maxtext import launch  # pylint: disable=import-outside-toplevel

  host = launch.free_coordinator()
  assert host.startswith("127.") and not launch.port_in_use(launch.COORDINATOR_PORT, host)
  env = launch.process_env(0, 2, 2, base={}, coordinator=host)
  assert env["JAX_COORDINATOR_ADDRESS"] == host and env["JAX_COORDINATOR_BIND_ADDRESS"] == f"{host}:1234"
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:  # a run holding that coordinator
    held.bind((host, launch.COORDINATOR_PORT))
    held.listen()
    assert launch.port_in_use(launch.COORDINATOR_PORT, host)
    assert {launch.free_coordinator() for _ in range(20)}.isdisjoint({host})


# --- How a run ends (sparsity.maxtext.status, loop.end_of_run) and the fine-tuning count -----------------------


def _maxtext_stop(exc):
  """The StopTraining MaxText's own data loader raises when ``next(iterator)`` raises ``exc``."""
  from maxtext.common import data_loader  # pylint: disable=import-outside-toplevel

  stop = hook.modules.exceptions().StopTraining
  try:
    with data_loader.loader_exception_guard(type("C", (), {"elastic_enabled": False})()):
      raise exc  # _RAISED_AT
  except stop as e:
    return e
  raise AssertionError("MaxText's loader guard did not raise StopTraining")


_RAISED_AT = next(i for i, line in enumerate(open(__file__, encoding="utf-8"), 1) if line.endswith("# _RAISED_AT\n")
                  and "raise exc" in line)


def test_the_end_of_data_is_told_from_a_failing_data_pipeline():
  out_of_data = _maxtext_stop(StopIteration())
  assert status.of_stop(str(out_of_data), out_of_data.__context__) == status.DATA_EXHAUSTED
  corrupt = _maxtext_stop(OSError("corrupted record at 10356"))
  assert "data" in str(corrupt).lower()  # what the old rule ("data" in the reason) took for the end of the data
  assert status.of_stop(str(corrupt), corrupt.__context__) == status.FAILED
  assert status.of_stop(str(corrupt)) == status.FAILED  # also from the message alone (older summaries)
  assert status.of_stop(str(out_of_data)) == status.DATA_EXHAUSTED
  assert status.of_stop("Target loss self.config.target_eval_loss=2.5 is achieved.") == status.TARGET_EVAL_LOSS
  assert status.of_stop("Job received termination signal (SIGTERM).") == status.PREEMPTED
  assert status.of_stop("something MaxText does not say today") == status.FAILED
  cfg = type("C", (), {"steps": 10})()
  rec = loop.LoopRecord()
  rec.stop_reason, rec.stop_cause = str(corrupt), corrupt.__context__
  end, error = loop.end_of_run(cfg, rec, 4)
  assert end == status.FAILED and error.startswith("OSError: corrupted record at 10356 (raised at ")
  assert error.endswith(f"{os.path.abspath(__file__)}:{_RAISED_AT})")  # the file and line the pipeline raised at
  rec.stop_reason, rec.stop_cause = str(out_of_data), out_of_data.__context__
  assert loop.end_of_run(cfg, rec, 4) == (status.DATA_EXHAUSTED, None)
  rec.stop_reason, rec.stop_cause = "Target loss self.config.target_eval_loss=2.5 is achieved.", None
  assert loop.end_of_run(cfg, rec, 4) == (status.TARGET_EVAL_LOSS, None)
  assert loop.end_of_run(cfg, rec, 10) == (status.COMPLETED, None)  # reached by the last step's evaluation
  assert loop.end_of_run(cfg, loop.LoopRecord(), 10) == (status.COMPLETED, None)
  end, why = loop.end_of_run(cfg, loop.LoopRecord(), 7)  # fewer steps and no stop: never a completed run
  assert end == status.FAILED and "after 7 of 10 steps" in why


def test_a_non_finite_loss_ends_the_run_diverged_naming_the_step_and_the_last_finite_loss():
  cfg = type("C", (), {"steps": 10})()
  rec = loop.LoopRecord()
  loss = lambda x: {"scalar": {"learning/loss": jnp.float32(x)}}  # noqa: E731
  rec.check_loss(0, loss(6.9))
  rec.check_loss(1, loss(5.25))
  rec.check_loss(1, loss(float("nan")))  # a step already checked is not read again
  with pytest.raises(loop.Diverged, match="step 2 is inf"):
    rec.check_loss(2, loss(float("inf")))
  assert rec.diverged == (2, float("inf")) and rec.last_finite == (1, 5.25)
  assert loop.end_of_run(cfg, rec, 3) == (status.DIVERGED, "the training loss of step 2 is inf (last finite loss "
                                                            "5.2500 at step 1)")
  assert loop.end_of_run(cfg, rec, 10)[0] == status.DIVERGED  # also after the last step
  assert status.of_stop(status.SIGINT_STOP) == status.INTERRUPTED and status.of_stop(status.SIGTERM_STOP) == \
      status.PREEMPTED


def test_sweep_reruns_only_runs_that_can_continue_unless_asked():
  assert [e for e in (None, *status.END_STATUSES) if status.reruns(e)] == [None, status.PREEMPTED, status.INTERRUPTED]
  assert status.reruns(status.DIVERGED, ("diverged",)) and not status.reruns(status.FAILED, ("diverged",))
  assert [e for e in status.END_STATUSES if status.reruns(e, ("all",))] == [
      e for e in status.END_STATUSES if e != status.COMPLETED]
  assert set(status.EXIT_CODES) == set(status.END_STATUSES)


def test_a_failure_message_is_short_and_names_where_it_was_raised():
  try:
    raise OSError(28, "No space left on device " + "x" * 5000)
  except OSError as e:
    text = status.error_text(e)
  line = sys._getframe().f_lineno - 3  # pylint: disable=protected-access
  assert text.startswith("OSError: [Errno 28] No space left on device xxx") and len(text) < 900
  assert "characters; the full message is in the log" in text and text.endswith(f"{__file__}:{line})")


def test_the_run_end_table_names_each_figure():
  summary = {"end_status": "diverged", "exit_code": 1, "error": "the training loss of step 2 is nan",
             "steps_trained": 3, "steps": 60, "final_sparsity": 0.0, "target_sparsity": 0.8,
             "final_kept_params": 196608, "prunable_params": 196608, "avg_active_params": 262464.0,
             "total_params": 262464, "compute_fractions": {"dense": 1.0, "pruning": 0.0, "recovery": 0.0},
             "final_train_loss": float("nan"), "final_eval_loss": None, "diverged_at_step": 2,
             "last_finite_loss": 6.93, "last_finite_loss_step": 1}
  text = loop.end_table(summary, "/o/r/sparsity_summary.json", None)
  rows = dict(line.strip().split("  ", 1) for line in text.splitlines()[1:])
  rows = {k: v.strip() for k, v in rows.items()}
  assert rows["end status"] == "diverged (exit code 1): the training loss of step 2 is nan"
  assert rows["diverged at step"] == "2 (last finite loss 6.9300 at step 1)"
  assert rows["kept weights"] == "196,608 of 196,608 prunable" and rows["final train loss"] == "-"
  assert rows["compute spent"] == "dense 1.000 / pruning 0.000 / recovery 0.000"
  assert rows["TensorBoard"] == "off" and rows["summary"] == "/o/r/sparsity_summary.json"


def test_each_install_gets_a_run_of_its_own_over_maxtexts_own_functions():
  train = hook.modules.train()
  own = getattr(train.train_step, "_sparsity_original", train.train_step)
  first, second = hook.install(), hook.install()
  assert first is not second and train.train_step.args[0] is second  # the hook is a partial over its run
  assert train.train_step.args[1] is own
  assert train.train_step._sparsity_original is own  # pylint: disable=protected-access
  hook.check_extension_points()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer thread's death
def test_a_tensorboard_writer_whose_thread_failed_raises_instead_of_blocking(tmp_path):
  from sparsity.maxtext import summary_writer  # pylint: disable=import-outside-toplevel

  w = summary_writer.CheckedSummaryWriter(str(tmp_path / "tb"))
  w.add_scalar("a", 1.0, 0)
  w.flush()
  events = w._get_file_writer().event_writer  # pylint: disable=protected-access
  records = events._ev_writer  # pylint: disable=protected-access
  original = records._py_recordio_writer.write  # pylint: disable=protected-access

  def full(data):  # what the event file's write meets on a full disk
    raise OSError(28, "No space left on device")

  records._py_recordio_writer.write = full  # pylint: disable=protected-access
  w.add_scalar("a", 2.0, 1)  # queued; the writer thread dies writing it
  events._worker.join(timeout=30)  # pylint: disable=protected-access
  assert not events._worker.is_alive()  # pylint: disable=protected-access
  for _ in range(3 * 10 + 1):  # more than the queue holds: each raises at once, none blocks
    with pytest.raises(summary_writer.WriteFailed, match="No space left on device"):
      w.add_scalar("a", 3.0, 2)
  with pytest.raises(summary_writer.WriteFailed, match="TensorBoard could not write .*events.out.tfevents"):
    w.close()
  records._py_recordio_writer.write = original  # pylint: disable=protected-access


def test_old_summaries_get_an_end_status():
  assert status.of_summary({"steps": 10, "steps_trained": 10}) == status.COMPLETED
  assert status.of_summary({"stopped_early": False}) == status.COMPLETED
  assert status.of_summary({"run_name": "a"}) == status.COMPLETED  # nothing to tell: the oldest summaries
  assert status.of_summary({"steps": 10, "steps_trained": 4}) == status.FAILED  # stopped without a reason
  old_out = {"stopped_early": True, "data_ran_out": True,
             "stop_reason": "You may have run out of training data. Received <class 'StopIteration'> exception: ()"}
  assert status.of_summary(old_out) == status.DATA_EXHAUSTED
  # the old summary of a corrupt shard said data_ran_out (its reason mentions "data"): it was a failure
  old_corrupt = {"stopped_early": True, "data_ran_out": True, "stop_reason": "`next(self.data_iterator)` failed with "
                 "<class 'tensorflow.python.framework.errors_impl.DataLossError'> exception: (corrupted record)."}
  assert status.of_summary(old_corrupt) == status.FAILED
  assert status.of_summary({"end_status": "preempted", "stopped_early": False}) == status.PREEMPTED
  with pytest.raises(ValueError, match="unknown end_status 'done'"):
    status.of_summary({"end_status": "done"})


def test_fine_tuning_mask_is_counted_from_the_loaded_weights():
  plan = sparsity.PrunePlan(schedules.make_schedule(12, 0.0, interval=2), init_mask_from_zeros=True)
  state = _state(plan)
  flat = dict(flatten(state)[0])
  zeros = {"decoder/layers/mlp/wi_0/kernel": 37, "decoder/logits_dense/kernel": 5, "token_embedder/embedding": 11}
  for name, n in zeros.items():
    key = layout.STATE_PARAMS + name
    flat[key] = flat[key].reshape(-1).at[:n].set(0.0).reshape(flat[key].shape)
  state = nest(flat)
  prunable = 8 * 2 * 16 + 16 * 2 * 8 + 8 * 40  # the three kernels (the embedding is not prunable)
  # brute force: every prunable weight that is not zero (the embedding's zeros do not count)
  assert loop.fixed_mask_count(state, 0) == prunable - 37 - 5
  assert loop.fixed_mask_count(state, 3) == prunable  # resuming: the restored masks (all True here)


def test_fixed_mask_metrics_round_each_count_once():
  # 2**24 + 1 kept and one non-prunable weight: 2**24 + 2 active, a float32; adding 1 to float32(2**24 + 1) (which
  # rounds to 2**24) would give 2**24.
  kept = threshold.wide_const(2**24 + 1)
  m = jax.jit(lambda k, s: hook.fixed_mask_metrics(k, s, 2**25, 1, 8))(kept, jnp.int32(2))
  assert float(m["sparsity/active_params"]) == 2**24 + 2 == float(m["sparsity/avg_active_params"])
  assert float(m["sparsity/density"]) == pytest.approx((2**24 + 1) / 2**25, rel=1e-7)
  assert float(m["sparsity/effective_flops"]) == pytest.approx(6 * 8 * 3 * (2**24 + 1), rel=1e-7)
  big = threshold.wide_const(3 * 2**31 + 12345)  # past int32: exact limbs, one rounding
  m = jax.jit(lambda k, s: hook.fixed_mask_metrics(k, s, 2**34, 7, 8))(big, jnp.int32(0))
  assert float(m["sparsity/active_params"]) == float(np.float32(3 * 2**31 + 12345 + 7))
