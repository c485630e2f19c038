"""Tiled restoration: exact for pointwise models, seamless for local ones, one tile shape, SR, tiny images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restorejax.evaluation import tiling


def _image(h, w, c=3, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (h, w, c)).astype(np.float32)


class Recorder:
  """Wraps a model function and records the shapes it was called with."""

  def __init__(self, fn):
    self.fn, self.shapes = fn, set()

  def __call__(self, x):
    self.shapes.add(x.shape)
    return self.fn(x)


@jax.jit
def _pointwise(x):
  return 0.75 * x * x + 0.125 * x + 0.0625


def _box_blur(radius):
  """A (2r+1)^2 box blur with reflect borders, jitted."""

  def blur(x):
    k = 2 * radius + 1
    pad = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    h, w = x.shape[1:3]
    return sum(pad[:, i:i + h, j:j + w] for i in range(k) for j in range(k)) / k ** 2

  return jax.jit(blur)


_blur = _box_blur(2)


@pytest.mark.parametrize("shape", [(70, 53), (64, 64), (33, 100)])
def test_identity_and_pointwise_are_exact(shape):
  img = _image(*shape)
  for fn, expected in ((lambda x: x, img), (_pointwise, np.asarray(_pointwise(img[None]))[0])):
    rec = Recorder(fn)
    out = tiling.restore_tiled(rec, img, tile=24, overlap=8, multiple=8, batch_size=3)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_array_equal(out, expected)
    assert rec.shapes == {(3, 24, 24, 3)}


def _psnr_float(a, b):
  return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


def test_local_blur_is_seamless():
  img = _image(90, 77, seed=1)
  rec = Recorder(_blur)
  # tile 20 is not a multiple of 8: tiles are reflect-padded to 24 and cropped back.
  out = tiling.restore_tiled(rec, img, tile=20, overlap=12, multiple=8, batch_size=4)
  assert rec.shapes == {(4, 24, 24, 3)}
  # Radius 2 is inside the zero-weight quarter of the overlap (3 pixels): padding never shows.
  np.testing.assert_allclose(out, np.asarray(_blur(img[None]))[0], atol=1e-6)
  # Receptive field 11 < overlap 12 but wider than the dead zone: blended, still far above 50 dB.
  wide = _box_blur(5)
  out = tiling.restore_tiled(wide, img, tile=20, overlap=12, multiple=8, batch_size=4)
  assert _psnr_float(out, np.asarray(wide(img[None]))[0]) > 50


def test_blur_with_too_small_overlap_shows_seams():
  """Overlap 4 has a 1-pixel dead zone, less than the radius: the test above would notice."""
  img = _image(60, 60, seed=2)
  out = tiling.restore_tiled(_blur, img, tile=16, overlap=4, batch_size=4)
  assert np.abs(out - np.asarray(_blur(img[None]))[0]).max() > 1e-3


def test_super_resolution_scale_2():
  img = _image(45, 38, seed=3)
  up = lambda x: jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  rec = Recorder(up)
  out = tiling.restore_tiled(rec, img, tile=16, overlap=6, scale=2, batch_size=2)
  np.testing.assert_array_equal(out, img.repeat(2, 0).repeat(2, 1))
  assert rec.shapes == {(2, 16, 16, 3)}


def test_image_smaller_than_one_tile():
  img = _image(13, 9, c=1, seed=4)
  rec = Recorder(_pointwise)
  out = tiling.restore_tiled(rec, img, tile=32, overlap=8, multiple=16, batch_size=2)
  np.testing.assert_array_equal(out, np.asarray(_pointwise(img[None]))[0])
  assert rec.shapes == {(2, 32, 32, 1)}
  # A one-pixel-wide image is padded by repetition.
  line = _image(1, 40, seed=5)
  np.testing.assert_array_equal(tiling.restore_tiled(lambda x: x, line, tile=16, overlap=4), line)


def test_tiles_cover_and_end_at_the_edge():
  assert tiling.tile_starts(100, 64, 16) == [0, 36]
  assert tiling.tile_starts(64, 64, 16) == [0]
  assert tiling.tile_starts(200, 64, 16) == [0, 48, 96, 136]
  assert tiling.tile_starts(10, 64, 16) == [0]


def test_bad_arguments_are_named():
  img = _image(20, 20)
  with pytest.raises(ValueError, match="overlap"):
    tiling.restore_tiled(lambda x: x, img, tile=8, overlap=8)
  with pytest.raises(ValueError, match="multiple"):
    tiling.restore_tiled(lambda x: x, img, tile=8, overlap=2, multiple=0)
  with pytest.raises(ValueError, match="fn returned shape"):
    tiling.restore_tiled(lambda x: x[:, :4], img, tile=8, overlap=2)
  with pytest.raises(ValueError, match="HWC"):
    tiling.restore_tiled(lambda x: x, img[None], tile=8, overlap=2)
