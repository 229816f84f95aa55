"""Checkpoint integrity (``sparsity.maxtext.integrity``): the device fingerprint against a NumPy reference, its
one-bit sensitivity, save/restore stability, sharded and >2**31-entry arrays; the restore checks on a synthetic train
state; unreadable checkpoints named as such; the plan recorded beside each step."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, cpu_env
from sparsity.core import pruner
from sparsity.core.schedules import make_schedule
from sparsity.maxtext import checkpoint, integrity, layout

MASK32 = (1 << 32) - 1


def reference(x: np.ndarray) -> str:
  """The fingerprint computed independently on the host: uint32 words, Python integers mod 2**32."""
  x = np.asarray(x)
  if x.dtype == np.bool_:
    words = x.astype(np.uint64).ravel()
  else:
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
    words = x.view(unsigned).astype(np.uint64).ravel()
  total = int(words.sum()) & MASK32
  weighted = sum(int(w) * (2 * i + 1) for i, w in enumerate(words)) & MASK32
  return f"{total:08x}{weighted:08x}"


def device(x, form=None) -> str:
  """The fingerprint as recorded: through ``fingerprints`` (the backend's form), or ``leaf_fingerprint``'s ``form``."""
  if form is None:
    got = integrity.fingerprints([x])[0]
  else:
    got = jax.jit(integrity.leaf_fingerprint, static_argnums=1)(x, form)
  return integrity._hex(np.asarray(got))  # pylint: disable=protected-access


@pytest.mark.parametrize("form", ["reduced", "products"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int32", "bool"])
def test_fingerprint_matches_the_host_reference(dtype, form):
  rng = np.random.default_rng(0)
  for shape in ((3, 5, 7), (11,), ()):
    x = rng.standard_normal(shape) * 1e3
    x = jnp.asarray(x > 0 if dtype == "bool" else x).astype(dtype)
    got = device(x, form)
    assert got == device(x) == reference(np.asarray(x)), (shape, form)


def test_both_forms_agree_where_the_sums_wrap():
  x = jnp.asarray(np.random.default_rng(5).standard_normal((64, 6, 256)).astype(np.float32))  # sums pass 2**32
  forms = [np.asarray(jax.jit(integrity.leaf_fingerprint, static_argnums=1)(x, f)) for f in ("reduced", "products")]
  assert (forms[0] == forms[1]).all() and device(x, "reduced") == reference(np.asarray(x))


def test_fingerprint_changes_on_every_one_bit_flip():
  x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
  words = x.view(np.uint32).ravel()
  flipped = np.repeat(words[None], words.size * 32, axis=0)
  for i in range(words.size):
    flipped[i * 32:(i + 1) * 32, i] ^= (np.uint32(1) << np.arange(32, dtype=np.uint32))
  prints = np.asarray(jax.jit(jax.vmap(integrity.leaf_fingerprint))(
      jax.lax.bitcast_convert_type(jnp.asarray(flipped.reshape(-1, 4, 6)), jnp.float32)))
  base = np.asarray(integrity.leaf_fingerprint(jnp.asarray(x)))
  assert (prints[:, 0] != base[0]).all() and (prints[:, 1] != base[1]).all()
  # Two entries swapped: the plain sum is blind to it, the position-weighted one is not.
  swapped = x.copy().ravel()
  swapped[[0, 5]] = swapped[[5, 0]]
  assert np.asarray(integrity.leaf_fingerprint(jnp.asarray(swapped.reshape(4, 6))))[1] != base[1]


def test_fingerprint_is_stable_across_an_orbax_save_and_restore(tmp_path):
  import orbax.checkpoint as ocp

  rng = np.random.default_rng(2)
  tree = {"w": jnp.asarray(rng.standard_normal((8, 16)), jnp.float32), "m": jnp.asarray(rng.random((8, 16)) > 0.5),
          "b": jnp.asarray(rng.standard_normal(16), jnp.bfloat16), "count": jnp.int32(7)}
  ocp.PyTreeCheckpointer().save(str(tmp_path / "items"), tree)
  back = ocp.PyTreeCheckpointer().restore(str(tmp_path / "items"))
  assert {k: device(back[k]) for k in tree} == {k: device(v) for k, v in tree.items()}


def test_fingerprint_traces_past_2_31_entries_without_overflow():
  big = jax.ShapeDtypeStruct((1 << 16, (1 << 16) + 8), jnp.float32)  # 2**32 + 2**19 entries
  out = jax.eval_shape(integrity.fingerprints, [big, jax.ShapeDtypeStruct((3,), jnp.bool_)])
  assert out.shape == (2, 2) and out.dtype == jnp.uint32
  text = jax.jit(integrity.leaf_fingerprint).lower(big).as_text()
  assert "s32[65536,65544]" not in text  # every position computed in uint32: no int32 index array
  # The weights' formula where the flat index wraps: rows of 2**31 + 2**30 entries, the index of (2, 1) is 2**32 + ...
  rows = jax.eval_shape(lambda: integrity._odd_weights((3, (1 << 31) + (1 << 30))))  # pylint: disable=protected-access
  assert rows.dtype == jnp.uint32


def test_odd_weights_wrap_like_the_flat_index():
  w = np.asarray(integrity._odd_weights((3, 4, 5)))  # pylint: disable=protected-access
  assert (w.ravel() == 2 * np.arange(60) + 1).all()
  # Entries of a (3, 2**31 + 2**30, 5) array (too large to allocate) whose flat index passes 2**32.
  shape = (3, (1 << 31) + (1 << 30), 5)
  index = [np.array([2, 1, 2]), np.array([5, (1 << 31) + 7, shape[1] - 1]), np.array([4, 0, 3])]
  got = np.asarray(integrity._odd_weights(shape, index))  # pylint: disable=protected-access
  want = [(2 * ((a * shape[1] + b) * shape[2] + c) + 1) % (1 << 32) for a, b, c in zip(*(map(int, x) for x in index))]
  assert got.tolist() == want


SHARDED = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sparsity.maxtext import integrity
    assert jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("fsdp", "tensor"))
    rng = np.random.default_rng(3)
    host = [rng.standard_normal((8, 6, 12)).astype(np.float32), rng.random((8, 12)) > 0.5]
    specs = [P("fsdp", None, "tensor"), P("tensor", "fsdp")]
    arrays = [jax.device_put(h, NamedSharding(mesh, s)) for h, s in zip(host, specs)]
    out = {"host": np.asarray(integrity.fingerprints([jnp.asarray(h) for h in host])).tolist()}
    for form in ("reduced", "products"):
      f = jax.jit(lambda xs: jnp.stack([integrity.leaf_fingerprint(x, form) for x in xs]))
      hlo = f.lower(arrays).compile().as_text()
      out[form] = {"sharded": np.asarray(f(arrays)).tolist(), "all_gather": "all-gather" in hlo,
                   "all_reduce": "all-reduce" in hlo}
    print(json.dumps(out))
    """)


@pytest.mark.slow
def test_fingerprint_of_sharded_arrays_on_4_devices():
  out = subprocess.run([sys.executable, "-c", SHARDED], cwd=ROOT, env=cpu_env(4), capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  for form in ("reduced", "products"):
    assert got[form]["sharded"] == got["host"], form
    assert got[form]["all_reduce"] and not got[form]["all_gather"], form  # reduced where the shards lie


# ------------------------------------------------------------------------------------------------ restore checks


def _plan(scope="global"):
  return pruner.PrunePlan(schedule=make_schedule(10, 0.5, start_fraction=0.2, end_fraction=0.4, interval=2),
                          pruning_scope=scope, prunable_params="kernel")


def _state(plan, step):
  """A train state after update ``step`` whose masks keep exactly the plan's counts (per tensor: the first entries)."""
  rng = np.random.default_rng(4)
  shapes = {"a/kernel": (4, 8), "b/kernel": (16,)}
  sizes = [32, 16]
  scope, row = integrity.expected_kept(plan, sizes, step)
  per = row if scope == "per_tensor" else [row[0] * 2 // 3, row[0] - row[0] * 2 // 3]
  masks = {p: (np.arange(np.prod(s)) < k).reshape(s) for (p, s), k in zip(shapes.items(), per)}
  params = {p: np.where(masks[p], rng.standard_normal(s), 0).astype(np.float32) for p, s in shapes.items()}
  params["norm/scale"] = np.ones(4, np.float32)
  from sparsity.core.paths import nest
  opt = {"count": jnp.int32(step + 1), "masks": nest({p: jnp.asarray(m) for p, m in masks.items()}), "inner_state": {}}
  return layout.train_state_tree(nest({p: jnp.asarray(v) for p, v in params.items()}), opt, jnp.int32(step + 1))


def _saved(tmp_path, state, step, plan_record=None):
  ckpts = tmp_path / "checkpoints"
  os.makedirs(layout.items_dir(str(ckpts), step))
  rec = integrity.Recorder(str(ckpts), plan_record)
  rec.saved(step, state)
  rec.flush()
  assert rec.written == [step]
  return str(ckpts)


def _with(state, path, fn):
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  from sparsity.core.paths import path_str
  return jax.tree_util.tree_unflatten(treedef, [fn(x) if path_str(p) == path else x for p, x in flat])


def test_recorder_writes_only_finished_saves(tmp_path):
  state = _state(_plan(), 5)
  rec = integrity.Recorder(str(tmp_path), {"target_sparsity": 0.5})
  rec.saved(5, state)
  rec.flush()  # no 5/items yet: Orbax has not finished
  assert rec.written == [] and not os.path.exists(checkpoint.record_path(str(tmp_path), 5))
  os.makedirs(layout.items_dir(str(tmp_path), 5))
  rec.flush()
  record = checkpoint.read_record(str(tmp_path), 5)
  assert record["plan"] == {"target_sparsity": 0.5} and record["kept"] == {"a/kernel": 16, "b/kernel": 8}


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_verify_passes_on_the_saved_state(tmp_path, scope):
  plan = _plan(scope)
  state = _state(plan, 5)
  checked = integrity.verify(state, _saved(tmp_path, state, 5), 5, plan)
  assert "kept counts against the plan" in checked


def test_verify_names_a_changed_tensor(tmp_path):
  plan = _plan()
  state = _state(plan, 5)
  ckpts = _saved(tmp_path, state, 5)
  bad = _with(state, "model/a/kernel", lambda x: x.at[0, 0].set(x[0, 0] * 1e30))
  with pytest.raises(integrity.CheckpointCorrupt, match=r"step 5 .*a/kernel: its values differ from those saved"):
    integrity.verify(bad, ckpts, 5, plan)


def test_verify_names_a_nonzero_masked_out_weight(tmp_path):
  plan = _plan()
  state = _state(plan, 5)
  bad = _with(state, "model/b/kernel", lambda x: x.at[-1].set(0.5))  # b's last entry is masked out
  with pytest.raises(integrity.CheckpointCorrupt, match=r"b/kernel: 1 masked-out weights are not zero"):
    integrity.verify(bad, str(tmp_path), 5, plan)  # no record: the invariant alone


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_verify_checks_kept_counts_against_the_plan(tmp_path, scope):
  plan = _plan(scope)
  state = _state(plan, 5)
  bad = _with(state, "optimizer/opt_state/masks/a/kernel", lambda m: m.at[-1, -1].set(True))
  bad = _with(bad, "model/a/kernel", lambda x: x.at[-1, -1].set(1.0))
  where = "a/kernel: the mask keeps" if scope == "per_tensor" else "the masks keep"
  with pytest.raises(integrity.CheckpointCorrupt, match=where):
    integrity.verify(bad, str(tmp_path), 5, plan)
  other = _plan(scope)
  assert integrity.expected_kept(other, [32, 16], 1) == (("global", [48]) if scope == "global"
                                                         else ("per_tensor", [32, 16]))  # before the first event


# ------------------------------------------------------------------------------------------------ unreadable


def _orbax_run(tmp_path, step=3):
  import orbax.checkpoint as ocp

  ckpts = tmp_path / "run" / layout.CHECKPOINTS
  tree = layout.checkpoint_tree({"a": {"kernel": np.ones((4, 8), np.float32)}},
                                {"a": {"kernel": np.ones((4, 8), bool)}}, np.int32(step + 1), step=np.int32(step + 1))
  ocp.PyTreeCheckpointer().save(layout.items_dir(str(ckpts), step), tree)
  return str(ckpts)


def test_emptied_metadata_is_unreadable_not_dense(tmp_path):
  ckpts = _orbax_run(tmp_path)
  meta = os.path.join(layout.items_dir(ckpts, 3), "_METADATA")
  open(meta, "w").close()
  with pytest.raises(checkpoint.CheckpointUnreadable, match=rf"unreadable: file {meta} is not JSON"):
    checkpoint.check_resumable(ckpts, {"a/kernel": (4, 8)}, ["a/kernel"])


def test_garbage_manifest_is_unreadable_naming_it(tmp_path):
  ckpts = _orbax_run(tmp_path)
  manifests = [os.path.join(d, f) for d, _, fs in os.walk(layout.items_dir(ckpts, 3)) for f in fs
               if f == "manifest.ocdbt"]
  for m in manifests:
    with open(m, "wb") as f:
      f.write(os.urandom(300))
  with pytest.raises(checkpoint.CheckpointUnreadable) as e:
    checkpoint.check_resumable(ckpts, {"a/kernel": (4, 8)}, ["a/kernel"])
  assert "manifest.ocdbt" in str(e.value) and "DATA_LOSS" in str(e.value) and len(str(e.value)) < 600


def test_unreadable_message_finds_the_truncated_data_file(tmp_path):
  """TensorStore's error on a short read names the OCDBT database and the array, not the file: the data file of the
  size it found is named."""
  items = tmp_path / "checkpoints" / "20" / "items"
  data = items / "ocdbt.process_0" / "d"
  data.mkdir(parents=True)
  (data / "aaaa").write_bytes(b"x" * 100)
  (data / "bbbb").write_bytes(b"x" * 353)
  text = ('Traceback ...\nValueError: OUT_OF_RANGE: Error reading shard entry {0, 0, 0}/{1, 1, 1} in '
          '"opt_state.inner_state.0.mu.decoder.layers.mlp.wi_0.kernel/c/0/0/0" in OCDBT database at local file '
          f'"{items}/": Requested byte range [333, 397) is not valid for value of size 353 '
          "[tensorstore_spec='{...}']\n" + "x" * 20000)
  msg = checkpoint.unreadable_message(text, str(tmp_path / "checkpoints"))
  assert msg == (f"file {data / 'bbbb'}, array opt_state/inner_state/0/mu/decoder/layers/mlp/wi_0/kernel, "
                 "OUT_OF_RANGE: Requested byte range [333, 397) is not valid for value of size 353 (the file is "
                 "shorter than its index says: truncated)")


# ------------------------------------------------------------------------------------------------ the plan


def test_deleted_plan_file_lets_no_other_plan_through(tmp_path):
  plan = {k: None for k in checkpoint.PLAN_KEYS} | {"target_sparsity": 0.75}
  run = tmp_path / "run"
  ckpts = str(run / layout.CHECKPOINTS)
  state = _state(_plan(), 5)
  _saved(run, state, 5, plan)
  assert not os.path.exists(layout.plan_path(str(run)))
  checkpoint.check_plan(str(run), plan)  # the same plan: accepted
  with pytest.raises(ValueError, match=r"prunes differently \(.*sparsity_fingerprint.json\): target_sparsity: 0.75"):
    checkpoint.check_plan(str(run), plan | {"target_sparsity": 0.5})
  assert checkpoint.read_record(ckpts, 5)["plan"] == plan
