"""The pure train step: learning, skipped non-finite updates, EMA, per-example degradation keys."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax import optim, tasks, train
from restorejax.data import batches, degrade, pipeline
from conftest import tiny_config


@pytest.fixture(scope="module")
def setup():
  config = tiny_config(**{"optim.ema_decay": 0.9, "optim.warmup_steps": 0})
  task = tasks.build(config)
  tx, lr = optim.build(config.optim, 100)
  state = jax.jit(functools.partial(train.init_state, task, tx))(jax.random.PRNGKey(0))
  step = jax.jit(train.make_train_step(task, tx, lr, config))
  batch = next(iter(pipeline.train_dataset(config)))
  # Float targets (prepare_batch passes them through), so the NaN batch below compiles nothing new.
  batch = dict(batch, target=batch["target"].astype(np.float32) / 255.0)
  return config, state, step, batch


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_loss_goes_down_on_a_fixed_batch(setup):
  _, state, step, batch = setup
  losses_seen = []
  for _ in range(15):
    state, metrics = step(state, batch, {})
    losses_seen.append(float(metrics["train/loss"]))
  assert losses_seen[-1] < 0.7 * losses_seen[0]
  assert int(state.step) == 15 and int(state.nonfinite) == 0


def test_nonfinite_loss_skips_the_update_and_is_counted(setup):
  _, state, step, batch = setup
  bad = dict(batch, target=batch["target"] * np.nan)
  new, metrics = step(state, bad, {})
  assert not np.isfinite(float(metrics["train/loss"]))
  assert _leaves_equal(new.params, state.params) and _leaves_equal(new.opt_state, state.opt_state)
  assert int(new.nonfinite) == 1 and int(new.nonfinite_run) == 1 and int(new.step) == 1
  new, _ = step(new, bad, {})
  assert int(new.nonfinite_run) == 2
  new, _ = step(new, batch, {})
  assert int(new.nonfinite_run) == 0 and int(new.nonfinite) == 2
  assert not _leaves_equal(new.params, state.params)


def test_ema_follows_the_params(setup):
  _, state, step, batch = setup
  new, _ = step(state, batch, {})
  d = 1.0 / 10.0  # warm-up at step 0: min(0.9, (1 + 0) / (10 + 0))
  expect = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, state.ema_params, new.params)
  for a, b in zip(jax.tree_util.tree_leaves(expect), jax.tree_util.tree_leaves(new.ema_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  state = new.replace(step=jnp.int32(1000))  # past the warm-up: the configured decay
  new, _ = step(state, batch, {})
  expect = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, state.ema_params, new.params)
  for a, b in zip(jax.tree_util.tree_leaves(expect), jax.tree_util.tree_leaves(new.ema_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_degradation_depends_on_the_example_index_not_its_position():
  config = tiny_config()
  fn = degrade.from_config(config.data.degrade)
  key = batches.data_key(config, "train")
  target = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
  prep = jax.jit(functools.partial(batches.prepare_batch, degrade_fn=fn, key=key))
  a = prep({"target": target, "index": np.array([5, 6, 7])})
  b = prep({"target": target[::-1], "index": np.array([7, 6, 5])})
  np.testing.assert_array_equal(a["degraded"], b["degraded"][::-1])
  assert not np.array_equal(a["degraded"][0], a["degraded"][1])
  assert a["target"].dtype == jnp.float32 and float(a["target"].max()) <= 1.0


def test_bfloat16_compute_keeps_float32_parameters():
  config = tiny_config(**{"model.dtype": "bfloat16"})
  task = tasks.build(config)
  tx, lr = optim.build(config.optim, 100)
  state = jax.jit(functools.partial(train.init_state, task, tx))(jax.random.PRNGKey(0))
  step = jax.jit(train.make_train_step(task, tx, lr, config))
  batch = next(iter(pipeline.train_dataset(config)))
  new, _ = step(state, batch, {})       # the warm-up's first learning rate is 0
  new, metrics = step(new, batch, {})
  assert np.isfinite(float(metrics["train/loss"])) and int(new.nonfinite) == 0
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(new.params))
  assert not _leaves_equal(new.params, state.params)


def test_every_registered_task_follows_the_task_protocol(setup):
  config, *_ = setup
  assert isinstance(tasks.build(config), tasks.Task)
  for name, cls in tasks.TASKS.items():
    for method in ("init_params", "loss", "evaluator"):
      assert callable(getattr(cls, method, None)), (name, method)
