"""Loss composition: weighted sum, per-term values, weight 0 not computed, clear errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from restorejax import losses
from restorejax.evaluation import metrics


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


def test_ssim_loss_is_one_minus_basicsr_ssim():
  rng = np.random.default_rng(1)
  y = rng.random((2, 24, 24, 3)).astype(np.float32)
  x = np.clip(y + 0.1 * rng.standard_normal(y.shape), 0, 1).astype(np.float32)
  # BasicSR's SSIM map (metrics.ssim_map, 0..255 floats, no rounding) is an independent implementation.
  expected = 1.0 - float(np.mean(metrics.ssim_map(jnp.asarray(x) * 255.0, jnp.asarray(y) * 255.0)))
  np.testing.assert_allclose(losses.pixel.ssim(x, _batch(y)), expected, atol=1e-4)
  assert abs(float(losses.pixel.ssim(y, _batch(y)))) < 1e-6


def test_fft_loss_matches_numpy_and_amplitude_ignores_circular_shifts():
  rng = np.random.default_rng(2)
  x = rng.random((2, 8, 8, 3)).astype(np.float32)
  y = rng.random((2, 8, 8, 3)).astype(np.float32)
  fx, fy = np.fft.fft2(x, axes=(1, 2)), np.fft.fft2(y, axes=(1, 2))
  expect = np.mean(np.abs(np.stack([fx.real - fy.real, fx.imag - fy.imag])))
  np.testing.assert_allclose(losses.pixel.fft(x, _batch(y)), expect, rtol=1e-5)
  np.testing.assert_allclose(losses.pixel.fft(x, _batch(y), mode="amplitude"),
                             np.mean(np.abs(np.abs(fx) - np.abs(fy))), rtol=1e-5)
  rolled = np.roll(x, (3, 2), axis=(1, 2))
  assert float(losses.pixel.fft(rolled, _batch(x), mode="amplitude")) < 1e-5
  assert float(losses.pixel.fft(rolled, _batch(x))) > 0.1
  with pytest.raises(ValueError, match="config.losses.fft.mode: unknown 'phase'"):
    losses.pixel.fft(x, _batch(y), mode="phase")


def test_terms_with_parts_log_each_part():
  def split(restored, batch, *, aux=None):
    a = jnp.mean(jnp.abs(restored - batch["target"]))
    return 2.0 * a, {"half": a}
  losses.TERMS["split_test"] = split
  try:
    total, terms = losses.build({"split_test": {"weight": 0.5}})(jnp.ones((1, 2, 2, 3)), _batch(jnp.zeros((1, 2, 2, 3))))
  finally:
    del losses.TERMS["split_test"]
  assert terms == {"split_test": 2.0, "split_test/half": 1.0} and float(total) == 1.0


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
    losses.default_config(perceptul=1.0)
