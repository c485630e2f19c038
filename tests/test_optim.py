"""Optimizer from config: warmup + cosine schedule, clipping, accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from restorejax import optim


def _cfg(**kw):
  cfg = optim.default_config()
  cfg.update(kw)
  return cfg


def test_warmup_then_cosine_to_min_lr():
  lr = optim.schedule(_cfg(lr=1.0, warmup_steps=10, min_lr=0.01), total_steps=110)
  assert float(lr(0)) == 0.0
  assert np.isclose(lr(5), 0.5) and np.isclose(lr(10), 1.0)
  assert np.isclose(lr(60), 0.01 + 0.99 * 0.5, atol=1e-6)     # half way through the cosine
  assert np.isclose(lr(110), 0.01)


def test_clipping_bounds_the_first_update():
  tx, _ = optim.build(_cfg(name="adam", lr=1.0, warmup_steps=0, grad_clip_norm=1e-3, schedule="constant"), 10)
  params = {"w": jnp.zeros(3)}
  clipped = optax.clip_by_global_norm(1e-3).update({"w": jnp.array([3.0, 4.0, 0.0])}, None)[0]
  assert np.isclose(optax.global_norm(clipped), 1e-3)
  updates, _ = tx.update({"w": jnp.array([3.0, 4.0, 0.0])}, tx.init(params), params)
  assert np.all(np.isfinite(updates["w"]))


def test_accumulation_updates_every_k_steps():
  tx, _ = optim.build(_cfg(name="adam", lr=0.1, warmup_steps=0, schedule="constant", accumulate_steps=2,
                           grad_clip_norm=0.0), 10)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  u1, state = tx.update({"w": jnp.ones(2)}, state, params)
  assert np.all(u1["w"] == 0)                                   # first micro-step: no update yet
  u2, state = tx.update({"w": jnp.ones(2)}, state, params)
  assert np.all(u2["w"] < 0)


def test_unknown_names_are_errors():
  with pytest.raises(ValueError, match="config.optim.name: unknown optimizer 'sgdd'"):
    optim.build(_cfg(name="sgdd"), 10)
  with pytest.raises(ValueError, match="config.optim.schedule"):
    optim.build(_cfg(schedule="step"), 10)
