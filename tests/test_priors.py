"""Tests of the simulated generative priors: identity at severity 0, worse alignment as severity grows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax.data import degrade, priors

H = W = 64


def psnr(a, b):
  return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


@pytest.fixture(scope="module")
def target():
  yy, xx = np.mgrid[0:H, 0:W] / H
  img = np.stack([0.5 + 0.3 * np.sin(6 * xx + 2 * yy), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0.3 * xx * yy], -1)
  img += 0.1 * (((xx * 8).astype(int) + (yy * 8).astype(int)) % 2)[..., None]
  img += 0.03 * np.random.default_rng(0).standard_normal(img.shape)
  return jnp.asarray(np.clip(img, 0, 1), jnp.float32)


@pytest.fixture(scope="module")
def simulate():
  return jax.jit(jax.vmap(priors.simulate_prior, in_axes=(0, None, 0)))


SEVERITIES = (0.0, 0.1, 0.3, 0.6, 1.0)


@pytest.fixture(scope="module")
def sweep(simulate, target):
  """Priors for 4 keys at each severity: array (len(SEVERITIES), 4, H, W, 3)."""
  keys = jax.random.split(jax.random.key(0), 4)
  return np.stack([np.asarray(simulate(keys, target, jnp.full(4, s, jnp.float32))) for s in SEVERITIES])


def test_severity_zero_is_identity(sweep, target):
  np.testing.assert_allclose(sweep[0], np.broadcast_to(target, sweep[0].shape), atol=1e-5)


def test_psnr_falls_with_severity(sweep, target):
  p = np.array([[psnr(x, target) for x in row] for row in sweep[1:]])  # (severity, key)
  assert np.all(np.diff(p, axis=0) < 0), p  # the same key gets worse at every step, for every key
  assert p[-1].max() < 25 and p[0].min() > 25


def test_low_frequency_colour_stays_related(sweep, target):
  # At moderate severity the prior still tells the network the scene's colours and layout.
  t = np.asarray(target)
  lo = lambda x: x.reshape(8, 8, 8, 8, 3).mean(axis=(1, 3))
  for prior in sweep[SEVERITIES.index(0.3)]:
    assert np.abs(prior.mean((0, 1)) - t.mean((0, 1))).max() < 0.08
    assert np.corrcoef(lo(prior).ravel(), lo(t).ravel())[0, 1] > 0.8
  for prior in sweep[SEVERITIES.index(0.6)]:
    assert np.corrcoef(lo(prior).ravel(), lo(t).ravel())[0, 1] > 0.5


def test_deterministic_and_key_dependent(simulate, target, sweep):
  keys = jax.random.split(jax.random.key(0), 4)
  again = np.asarray(simulate(keys, target, jnp.full(4, 0.6, jnp.float32)))
  np.testing.assert_array_equal(again, sweep[SEVERITIES.index(0.6)])
  assert len({x.tobytes() for x in again}) == 4
  assert again.shape == (4, H, W, 3) and again.dtype == np.float32
  per_example = np.asarray(simulate(keys, target, jnp.array([0.0, 0.1, 0.3, 1.0], jnp.float32)))
  np.testing.assert_array_equal(per_example[0], sweep[0][0])
  np.testing.assert_array_equal(per_example[3], sweep[-1][3])
  assert simulate._cache_size() == 1  # severity is traced: one compile for all of them


def test_warp_pieces(target):
  np.testing.assert_allclose(priors.warp(target, jnp.eye(3)), target, atol=1e-6)
  shift = jnp.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]])  # output (x, y) <- input (x+3, y-2)
  np.testing.assert_allclose(priors.warp(target, shift)[2:, :-3], target[:-2, 3:], atol=1e-6)
  np.testing.assert_allclose(priors.aspect_change(target, 1.0), target, atol=1e-5)
  stripe = jnp.zeros((H, W, 3)).at[:, 28:36].set(1.0)  # 8 px wide, centred
  wide = priors.aspect_change(stripe, 2.0)  # width x sqrt(2), height / sqrt(2)
  assert abs(float(wide[H // 2, :, 0].sum()) - 8 * np.sqrt(2)) < 1.0
  np.testing.assert_allclose(priors.homography((H, W), scale=1.0), jnp.eye(3), atol=1e-6)


def test_tone_pieces(target):
  np.testing.assert_allclose(priors.tone_shift(target), target, atol=1e-6)
  dark = target * 0.4
  np.testing.assert_allclose(priors.tone_shift(dark, exposure=1.0), dark * 2, atol=1e-6)
  grey = priors.tone_shift(target, saturation=0.0)
  np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)
  np.testing.assert_allclose(priors.relight(target, 0.7, 0.0), target, atol=1e-6)
  night = target ** 3
  day = priors.relight(night, 0.5, 1.0)
  luma = lambda x: float(jnp.mean(x @ jnp.array([0.299, 0.587, 0.114])))
  assert luma(night) < 0.2 and abs(luma(day) - 0.5) < 0.1


def test_texture_and_patch_pieces(target):
  key = jax.random.key(1)
  np.testing.assert_allclose(priors.hallucinate_texture(key, target, 0.0), target, atol=1e-5)
  out = priors.hallucinate_texture(key, target, 1.0)
  low = lambda x: degrade.gaussian_blur(x, 3.0)
  detail = lambda x: np.asarray(x - degrade.gaussian_blur(x, 1.5)).ravel()
  assert psnr(low(out), low(target)) > 35  # coarse content kept
  assert np.corrcoef(detail(out), detail(target))[0, 1] < 0.5  # fine detail replaced
  np.testing.assert_allclose(priors.displace_patch(target, (32.0, 32.0), (16.0, 16.0), (0.0, 0.0)), target,
                             atol=1e-6)
  moved = priors.displace_patch(target, (20.0, 20.0), (16.0, 16.0), (24.0, 20.0))
  np.testing.assert_allclose(moved[37:51, 33:47], target[13:27, 13:27], atol=1e-6)  # copied (interior)
  np.testing.assert_allclose(moved[:8], target[:8], atol=1e-6)  # elsewhere untouched
  np.testing.assert_allclose(moved[13:27, 13:27], target[13:27, 13:27], atol=1e-6)  # source left in place
