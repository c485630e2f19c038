"""The optimizer's flat update (restorejax/flat_update.py): the same state as the per-leaf update, fewer
fusions, and only on a mesh of one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from restorejax import flat_update, optim, sharding, tasks, train
from restorejax.data import pipeline
from conftest import tiny_config


def _assert_close(a, b, rtol):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * max(np.abs(x).max(), 1e-30))


def test_to_flat_and_back_keeps_the_optimizer_state_as_it_is():
  params = {"conv": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}, "scale": jnp.full((1,), 2.0)}
  tx = optim.build(optim.default_config(), 100)[0]
  state = tx.init(params)
  state = jax.tree_util.tree_map(lambda x: x + 1 if x.dtype == jnp.float32 else x, state)
  flat = flat_update.to_flat(state, params)
  vectors = [x for x in jax.tree_util.tree_leaves(flat) if x.shape == (10,)]
  assert len(vectors) == 2  # AdamW's mu and nu, one vector each; the step count stays a scalar
  back = flat_update.from_flat(flat, state, params)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(state)
  for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(x, y)
    assert x.dtype == y.dtype
  assert flat_update.usable(params)
  assert not flat_update.usable({"w": jnp.ones(3)})
  assert not flat_update.usable({"w": jnp.ones(3), "h": jnp.ones(3, jnp.bfloat16)})


@pytest.fixture(scope="module", params=[1, 2], ids=["update_every_step", "accumulate_2"])
def steps(request):
  config = tiny_config(**{"optim.ema_decay": 0.9, "optim.warmup_steps": 0,
                          "optim.accumulate_steps": request.param})
  task = tasks.build(config)
  tx, lr = optim.build(config.optim, 100)
  state = jax.jit(functools.partial(train.init_state, task, tx))(jax.random.PRNGKey(0))
  batch = next(iter(pipeline.train_dataset(config)))
  batch = dict(batch, target=batch["target"].astype(np.float32) / 255.0)
  make = lambda flat: jax.jit(train.make_train_step(task, tx, lr, config, flat=flat))
  return state, batch, make(False), make(True)


def test_flat_and_per_leaf_updates_give_the_same_state(steps):
  state, batch, tree_step, flat_step = steps
  a = b = state
  for _ in range(4):
    a, ma = tree_step(a, batch, {})
    b, mb = flat_step(b, batch, {})
  assert int(a.step) == int(b.step) == 4
  for name in ("params", "opt_state", "ema_params"):
    _assert_close(getattr(a, name), getattr(b, name), rtol=1e-5)
  np.testing.assert_allclose(float(ma["train/grad_norm"]), float(mb["train/grad_norm"]), rtol=1e-5)
  assert not np.array_equal(np.asarray(jax.tree_util.tree_leaves(b.params)[0]),
                            np.asarray(jax.tree_util.tree_leaves(state.params)[0]))


def test_flat_update_skips_a_non_finite_step_exactly(steps):
  state, batch, _, flat_step = steps
  new, _ = flat_step(state, dict(batch, target=batch["target"] * np.nan), {})
  assert int(new.nonfinite) == 1 and int(new.nonfinite_run) == 1
  for name in ("params", "opt_state", "ema_params"):
    for x, y in zip(jax.tree_util.tree_leaves(getattr(new, name)), jax.tree_util.tree_leaves(getattr(state, name))):
      np.testing.assert_array_equal(x, y)


def test_flat_update_compiles_fewer_fusions(steps):
  state, batch, tree_step, flat_step = steps
  count = lambda step: step.lower(state, batch, {}).compile().as_text().count(" fusion(")
  assert count(flat_step) < 0.8 * count(tree_step)


def test_only_a_mesh_of_one_device_uses_the_flat_update():
  config = tiny_config()
  assert train.flat_update_applies(sharding.mesh(config, devices=jax.devices()[:1]))
  for shape in ((2,), (4, 2)):
    names = ("data", "fsdp")[:len(shape)]
    assert not train.flat_update_applies(jax.sharding.AbstractMesh(shape, names))
