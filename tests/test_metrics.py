"""BasicSR-compatible PSNR / SSIM: known values, an independent float64 SSIM, batching, dtypes."""

import math

import jax
import numpy as np
import pytest

from restorejax.evaluation import metrics

H, W = 40, 36


def _smooth_image(seed, h=H, w=W):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  out = np.zeros((h, w, 3))
  for c in range(3):
    for _ in range(3):
      fx, fy, ph = rng.uniform(0.5, 4, 3)
      out[..., c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
  out = (out - out.min()) / (out.max() - out.min())
  return np.round(out * 200 + 20).astype(np.uint8)  # 20..220: room for shifts without clipping


@pytest.fixture(scope="module")
def pair():
  """A clean image and a noisy copy, uint8 RGB."""
  clean = _smooth_image(0)
  noise = np.random.default_rng(1).normal(0, 8, clean.shape)
  noisy = np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)
  return noisy, clean


# ---- an independent float64 reference, written from the definition ----

def _y_float64(img):
  img = img.astype(np.float64)
  return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def _reference_ssim(img, ref, crop_border=0, y=False):
  """Per-channel SSIM with an 11x11 Gaussian (sigma 1.5) over valid windows, E[x^2] - mu^2 in float64."""
  a, b = img.astype(np.float64), ref.astype(np.float64)
  if crop_border:
    a, b = a[crop_border:-crop_border, crop_border:-crop_border], b[crop_border:-crop_border, crop_border:-crop_border]
  if y:
    a, b = _y_float64(a)[..., None], _y_float64(b)[..., None]
  g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
  g /= g.sum()
  win = np.outer(g, g)
  filt = lambda v: np.einsum("hwij,ij->hw", np.lib.stride_tricks.sliding_window_view(v, (11, 11)), win)
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  values = []
  for c in range(a.shape[-1]):
    x, z = a[..., c], b[..., c]
    mx, mz = filt(x), filt(z)
    vx, vz, cxz = filt(x * x) - mx ** 2, filt(z * z) - mz ** 2, filt(x * z) - mx * mz
    m = ((2 * mx * mz + c1) * (2 * cxz + c2)) / ((mx ** 2 + mz ** 2 + c1) * (vx + vz + c2))
    values.append(m.mean())
  return float(np.mean(values))


def _reference_psnr(img, ref, crop_border=0, y=False):
  a, b = img.astype(np.float64), ref.astype(np.float64)
  if crop_border:
    a, b = a[crop_border:-crop_border, crop_border:-crop_border], b[crop_border:-crop_border, crop_border:-crop_border]
  if y:
    a, b = _y_float64(a), _y_float64(b)
  return 10 * math.log10(255.0 ** 2 / np.mean((a - b) ** 2))


OPTIONS = [(0, False), (0, True), (4, False), (4, True)]


@pytest.mark.parametrize("crop_border,y", OPTIONS)
def test_ssim_and_psnr_match_independent_float64(pair, crop_border, y):
  noisy, clean = pair
  s = float(metrics.ssim(noisy, clean, crop_border=crop_border, test_y_channel=y))
  p = float(metrics.psnr(noisy, clean, crop_border=crop_border, test_y_channel=y))
  assert 0.3 < s < 0.99  # a meaningful, non-trivial comparison
  assert abs(s - _reference_ssim(noisy, clean, crop_border, y)) < 1e-5
  assert abs(p - _reference_psnr(noisy, clean, crop_border, y)) < 1e-4


@pytest.mark.parametrize("crop_border,y", OPTIONS)
def test_identical_images_give_inf_and_one(pair, crop_border, y):
  _, clean = pair
  assert np.isinf(float(metrics.psnr(clean, clean, crop_border=crop_border, test_y_channel=y)))
  assert float(metrics.ssim(clean, clean, crop_border=crop_border, test_y_channel=y)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_constant_shift_psnr(pair, k):
  _, clean = pair
  shifted = (clean.astype(np.int32) + k).astype(np.uint8)
  assert float(metrics.psnr(shifted, clean)) == pytest.approx(20 * math.log10(255 / k), abs=1e-4)
  # Y moves by k * (65.481 + 128.553 + 24.966) / 255 = k * 219 / 255 everywhere.
  expected_y = 20 * math.log10(255 / (k * 219 / 255))
  assert float(metrics.psnr(shifted, clean, test_y_channel=True)) == pytest.approx(expected_y, abs=1e-4)


def test_crop_border_removes_exactly_the_border(pair):
  _, clean = pair
  edited = clean.copy()
  edited[:4] = 0
  edited[:, -4:] = 255
  edited[-1, 10] = 7
  assert np.isinf(float(metrics.psnr(edited, clean, crop_border=4)))
  assert float(metrics.ssim(edited, clean, crop_border=4)) == pytest.approx(1.0, abs=1e-6)
  # One pixel inside the kept region makes it finite.
  edited[4, 4] ^= 1
  assert np.isfinite(float(metrics.psnr(edited, clean, crop_border=4)))
  assert np.isfinite(float(metrics.psnr(edited, clean, crop_border=3)))


def test_y_of_known_colours():
  colours = np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 100, 200]],
                     np.uint8)
  by_hand = [16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255 for r, g, b in colours.astype(float)]
  assert by_hand[0] == pytest.approx(235) and by_hand[1] == 16
  for img in (colours, colours.astype(np.float32)):  # exact tables for uint8, the formula for floats
    y = np.asarray(metrics.rgb_to_y(img))
    assert y.shape == (6, 1)
    np.testing.assert_allclose(y[:, 0], by_hand, atol=1e-4)


def test_batched_equals_per_image(pair):
  noisy, clean = pair
  other = _smooth_image(2)
  batch_a, batch_b = np.stack([noisy, other, clean]), np.stack([clean, clean, clean])
  for fn in (metrics.psnr, metrics.ssim):
    batched = np.asarray(fn(batch_a, batch_b, crop_border=4, test_y_channel=True))
    assert batched.shape == (3,)
    single = [float(fn(a, b, crop_border=4, test_y_channel=True)) for a, b in zip(batch_a, batch_b)]
    np.testing.assert_allclose(batched, single, rtol=1e-6)
    assert np.isinf(batched[2]) if fn is metrics.psnr else batched[2] == pytest.approx(1.0, abs=1e-6)


def test_uint8_and_float_inputs_agree(pair):
  noisy, clean = pair
  # Floats are clipped and rounded to levels first: within half a level and out-of-range values agree.
  jitter = np.random.default_rng(3).uniform(-0.49, 0.49, noisy.shape)
  noisy_f = ((noisy + jitter) / 255.0).astype(np.float32)
  noisy_f[0, 0] = [-0.2, 1.3, 0.5]
  noisy_u = noisy.copy()
  noisy_u[0, 0] = [0, 255, 128]  # round(0.5 * 255) = round(127.5) = 128 (ties to even)
  clean_f = (clean / 255.0).astype(np.float32)
  for fn in (metrics.psnr, metrics.ssim):
    for y in (False, True):
      assert float(fn(noisy_f, clean_f, test_y_channel=y)) == float(fn(noisy_u, clean, test_y_channel=y))


def test_jit_inside_a_caller(pair):
  noisy, clean = pair

  @jax.jit
  def both(a, b):
    return metrics.psnr(a, b, crop_border=4), metrics.ssim(a, b, crop_border=4)

  p, s = both(noisy, clean)
  assert float(p) == pytest.approx(float(metrics.psnr(noisy, clean, crop_border=4)), abs=1e-5)
  assert float(s) == pytest.approx(float(metrics.ssim(noisy, clean, crop_border=4)), abs=1e-6)


def test_bad_input_is_named(pair):
  noisy, clean = pair
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.psnr(noisy, clean[:-1])
  with pytest.raises(ValueError, match="crop_border"):
    metrics.psnr(noisy, clean, crop_border=20)
  with pytest.raises(ValueError, match="11x11"):
    metrics.ssim(noisy[:20, :20], clean[:20, :20], crop_border=5)
  with pytest.raises(ValueError, match="dtype"):
    metrics.psnr(noisy.astype(np.int32), clean.astype(np.int32))
