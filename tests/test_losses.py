"""Loss composition: weighted sum, per-term values, weight 0 not computed, clear errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from restorejax import losses


def _batch(target):
  return {"target": jnp.asarray(target)}


def test_terms_match_their_definitions():
  rng = np.random.default_rng(0)
  x = rng.random((2, 4, 4, 3)).astype(np.float32)
  y = rng.random((2, 4, 4, 3)).astype(np.float32)
  b = _batch(y)
  assert np.isclose(losses.pixel.l1(x, b), np.abs(x - y).mean(), rtol=1e-6)
  assert np.isclose(losses.pixel.l2(x, b), ((x - y) ** 2).mean(), rtol=1e-6)
  assert np.isclose(losses.pixel.charbonnier(x, b, eps=1e-3), np.sqrt((x - y) ** 2 + 1e-6).mean(), rtol=1e-6)
  mse = ((x - y) ** 2).mean(axis=(1, 2, 3))
  assert np.isclose(losses.pixel.psnr(x, b), np.mean(10 * np.log10(mse + 1e-8)), rtol=1e-5)


def test_psnr_loss_is_minus_psnr_for_a_known_error():
  y = np.zeros((1, 8, 8, 3), np.float32)
  x = y + 0.1                                    # MSE 0.01 -> PSNR 20 dB
  assert np.isclose(losses.pixel.psnr(x, _batch(y)), -20.0, atol=1e-4)


def test_total_is_the_weighted_sum_and_each_term_is_reported():
  cfg = losses.default_config(l1=2.0, l2=0.5)
  fn = losses.build(cfg)
  x, y = jnp.full((1, 2, 2, 3), 0.5), jnp.zeros((1, 2, 2, 3))
  total, terms = fn(x, _batch(y))
  assert set(terms) == {"l1", "l2"}
  assert np.isclose(total, 2.0 * 0.5 + 0.5 * 0.25)


def test_weight_zero_terms_are_not_computed(monkeypatch):
  def boom(restored, batch, *, aux=None):
    raise AssertionError("a weight-0 term was computed")
  monkeypatch.setitem(losses.TERMS, "l2", boom)
  fn = losses.build(losses.default_config(l1=1.0))
  total, terms = fn(jnp.ones((1, 2, 2, 3)), _batch(jnp.zeros((1, 2, 2, 3))))
  assert set(terms) == {"l1"} and np.isclose(total, 1.0)


def test_errors_name_the_problem():
  cfg = losses.default_config(l1=1.0)
  with pytest.raises(ValueError, match="unknown loss term 'l3'"):
    losses.build({**cfg.to_dict(), "l3": {"weight": 1.0}})
  with pytest.raises(ValueError, match=r"config.losses.charbonnier: unknown option\(s\) epsilon"):
    losses.build({"charbonnier": {"weight": 1.0, "epsilon": 1e-3}})
  with pytest.raises(ValueError, match="every term has weight 0"):
    losses.build(losses.default_config())
  with pytest.raises(ValueError, match="unknown loss term"):
    losses.default_config(perceptual=1.0)
