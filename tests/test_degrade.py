"""Tests of the on-device degradations: each op means what it says, the sampler's task ids are honest."""

import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from restorejax.data import degrade, jpeg as jpeg_lib, matlab_resize

H = W = 64


def psnr(a, b):
  return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def _grid():
  yy, xx = np.mgrid[0:H, 0:W] / H
  return yy, xx


@pytest.fixture(scope="module")
def smooth():
  yy, xx = _grid()
  img = np.stack([0.5 + 0.3 * np.sin(3 * xx + yy), 0.5 + 0.2 * np.cos(2 * yy), 0.3 + 0.4 * xx * yy], -1)
  return jnp.asarray(img, jnp.float32)


@pytest.fixture(scope="module")
def textured():
  yy, xx = _grid()
  img = np.stack([0.5 + 0.3 * np.sin(6 * xx + 2 * yy), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0.3 * xx * yy], -1)
  img += 0.15 * (((xx * 8).astype(int) + (yy * 8).astype(int)) % 2)[..., None]
  img += 0.04 * np.random.default_rng(0).standard_normal(img.shape)
  return jnp.asarray(np.round(np.clip(img, 0, 1) * 255) / 255, jnp.float32)


# ---------------------------------------------------------------------------------------------- blur


def test_blur_tiny_sigma_is_identity(textured):
  np.testing.assert_allclose(degrade.gaussian_blur(textured, 1e-3), textured, atol=1e-6)


@pytest.mark.parametrize("sigma,size", [(1.0, 7), (2.5, 21), (3.0, 11)])
def test_blur_matches_scipy_truncated_gaussian(textured, sigma, size):
  # scipy's 'mirror' is reflect-101; truncate so that its radius is size // 2.
  ref = scipy.ndimage.gaussian_filter(np.asarray(textured, np.float64), sigma, mode="mirror",
                                      truncate=(size // 2) / sigma, axes=(0, 1))
  out = jax.jit(degrade.gaussian_blur)(textured, sigma, kernel_size=size)
  np.testing.assert_allclose(out, ref, atol=2e-6)


# ---------------------------------------------------------------------------------------------- noise


def test_gaussian_noise_std_matches_request():
  x = jnp.full((H, W, 3), 0.5)
  for sigma in (15.0, 50.0):
    n = degrade.gaussian_noise(jax.random.key(0), x, sigma) - x
    assert abs(float(jnp.std(n)) * 255 / sigma - 1) < 0.03
    assert abs(float(jnp.mean(n))) * 255 < 0.05 * sigma


def test_poisson_variance_proportional_to_intensity():
  levels = np.array([0.1, 0.3, 0.6, 0.9], np.float32)
  x = jnp.asarray(np.repeat(levels, 32)[:, None, None] * np.ones((1, 64, 3), np.float32))
  peak = 50.0
  y = np.asarray(jax.jit(degrade.poisson_noise)(jax.random.key(1), x, peak)).reshape(4, 32, 64, 3)
  for level, block in zip(levels, y):
    assert abs(block.mean() / level - 1) < 0.03
    assert abs(block.var() * peak / level - 1) < 0.1  # var = x / peak
  # quantised to multiples of 1 / peak, like photon counts
  np.testing.assert_allclose(y * peak, np.round(y * peak), atol=1e-3)


# ---------------------------------------------------------------------------------------------- JPEG


def test_jpeg_quant_tables_match_libjpeg():
  rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
  for q in (5, 10, 25, 49, 50, 51, 75, 95, 100):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=q)
    buf.seek(0)
    tables = Image.open(buf).quantization
    luma, chroma = jpeg_lib.quant_tables(q)
    np.testing.assert_array_equal(np.asarray(luma).ravel(), tables[0], err_msg=f"luma q={q}")
    np.testing.assert_array_equal(np.asarray(chroma).ravel(), tables[1], err_msg=f"chroma q={q}")


@pytest.mark.parametrize("shape", [(64, 64), (50, 38)])
def test_jpeg_close_to_pil(textured, shape):
  # Measured ours vs PIL decode: 46..55 dB at these sizes and qualities (exact float DCT vs libjpeg's
  # integer one), while either one vs the source is 24..30 dB.
  x = np.asarray(textured)[:shape[0], :shape[1]]
  f = jax.jit(jpeg_lib.jpeg)
  for q in (10, 50, 90):
    buf = io.BytesIO()
    Image.fromarray(np.round(x * 255).astype(np.uint8)).save(buf, "JPEG", quality=q)
    buf.seek(0)
    pil = np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255
    ours = np.asarray(f(jnp.asarray(x), q))
    assert psnr(ours, pil) > 42, q
    assert psnr(ours, pil) > psnr(ours, x) + 12, q


def _blockiness(x):
  """Mean |horizontal step| across 8x8 block borders over that inside blocks."""
  dx = np.abs(np.diff(np.asarray(x).mean(-1), axis=1))
  return dx[:, 7::8].mean() / np.delete(dx, np.s_[7::8], axis=1).mean()


def test_jpeg_quality_ordering_and_blocks(smooth, textured):
  f = jax.jit(lambda x, q: degrade.jpeg(x, q))  # its own jit cache, to count compiles
  assert psnr(f(smooth, 95), smooth) > 40
  psnrs = [psnr(f(textured, q), textured) for q in (10, 20, 30, 50, 70, 90, 95)]
  assert all(a < b for a, b in zip(psnrs, psnrs[1:])), psnrs
  assert _blockiness(f(smooth, 10)) > 3 * _blockiness(smooth)
  assert _blockiness(f(smooth, 95)) < 1.3 * max(_blockiness(smooth), 1.0)
  out = f(textured, 30)
  np.testing.assert_allclose(out * 255, jnp.round(out * 255), atol=1e-4)  # a decoded 8-bit image
  assert f._cache_size() == 1  # quality is traced: one compile for every quality


# ---------------------------------------------------------------------------------------------- resize


def test_bicubic_downup_constant_and_ramp():
  c = jnp.full((H, W, 3), 0.37, jnp.float32)
  yy, xx = _grid()
  ramp = jnp.asarray(np.stack([0.2 + 0.6 * xx, 0.1 + 0.5 * yy, 0.3 + 0.3 * (xx + yy)], -1) / 1.2, jnp.float32)
  f = jax.jit(lambda x, factor: degrade.bicubic_downup(x, factor))
  for factor in (2, 4):
    np.testing.assert_allclose(f(c, factor), c, atol=1e-6)
    err = np.abs(np.asarray(f(ramp, factor)) - np.asarray(ramp))
    assert err[8:-8, 8:-8].max() < 1e-4  # cubic interpolation reproduces linear functions
    assert err.max() < 0.02  # the symmetric border bends the ramp only at the edges
  assert f._cache_size() == 1


def test_resize_matches_pil_bicubic_inside(textured):
  # PIL's bicubic is a = -0.5 with the kernel widened when shrinking, like MATLAB; only its border
  # handling differs (it renormalises a truncated kernel), so compare away from the border.
  x = np.asarray(textured)[..., 0]
  for out in (32, 16, 128):
    pil = np.asarray(Image.fromarray(x, mode="F").resize((out, out), Image.BICUBIC))
    ours = np.asarray(matlab_resize.bicubic_resize(jnp.asarray(x)[..., None], (out, out)))[..., 0]
    b = max(64 // out, 1) * 4 if out < 64 else 8
    np.testing.assert_allclose(ours[b:-b, b:-b], pil[b:-b, b:-b], atol=1e-5)


def test_downup_loses_detail(textured):
  x4, x2 = degrade.bicubic_downup(textured, 4), degrade.bicubic_downup(textured, 2)
  assert psnr(x4, textured) < psnr(x2, textured) < 35


# ---------------------------------------------------------------------------------------------- rain


def _streak_angle(layer):
  """Streak direction in degrees counter-clockwise from vertical, from the structure tensor."""
  gy, gx = np.gradient(np.asarray(layer, np.float64))
  grad = 0.5 * np.arctan2(2 * (gx * gy).sum(), (gx * gx).sum() - (gy * gy).sum())  # y down
  return -np.degrees(grad)  # streaks run perpendicular to the dominant gradient


def test_rain_streaks_follow_angle():
  f = jax.jit(lambda k, a: degrade.rain_layer(k, (128, 128), 100, 3, 30, a))
  for angle in (-30.0, 0.0, 20.0, 40.0):
    layer = f(jax.random.key(0), angle)
    assert abs(_streak_angle(layer) - angle) < 6, angle
  assert f._cache_size() == 1


def test_rain_adds_sparse_bright_streaks(smooth):
  key = jax.random.key(2)
  for blend in ("add", "screen"):
    out = degrade.rain(key, smooth, 75, 5, 30, 10.0, blend=blend)
    diff = np.asarray(out - smooth)
    assert diff.min() > -1e-6  # only brightens
    assert 0.005 < (diff.mean(-1) > 0.1).mean() < 0.5  # streaks cover part of the image, not all
  sparse = degrade.rain_layer(key, (H, W), 50, 3, 20, 0.0)
  dense = degrade.rain_layer(key, (H, W), 150, 3, 20, 0.0)
  assert float(jnp.mean(dense > 0.1)) > float(jnp.mean(sparse > 0.1))


# ---------------------------------------------------------------------------------------------- haze, low light


def test_haze(smooth):
  depth = degrade.depth_field(jax.random.key(0), (H, W))
  np.testing.assert_allclose(degrade.haze(smooth, 0.9, 0.0, depth), smooth, atol=1e-7)
  assert 0.1 - 1e-5 <= float(depth.min()) and float(depth.max()) <= 1 + 1e-5
  assert float(depth[:8].mean()) > float(depth[-8:].mean())  # far at the top
  hazy = degrade.haze(smooth, 0.9, 2.0, depth)
  assert float(jnp.std(hazy)) < float(jnp.std(smooth))  # contrast drops
  assert float(jnp.mean(jnp.abs(hazy - 0.9))) < float(jnp.mean(jnp.abs(smooth - 0.9)))  # toward airlight
  far, near = np.unravel_index(np.argmax(depth), depth.shape), np.unravel_index(np.argmin(depth), depth.shape)
  assert abs(float(hazy[far].mean()) - 0.9) < abs(float(hazy[near].mean()) - 0.9) + 1e-3


def test_low_light_darkens(smooth):
  np.testing.assert_allclose(degrade.low_light(smooth, 1.0), smooth, atol=1e-6)
  m = [float(degrade.low_light(smooth, g).mean()) for g in (1.0, 2.0, 3.5)]
  assert m[0] > m[1] > m[2]


# ---------------------------------------------------------------------------------------------- jit + vmap

# Each op with two examples' parameters: (batched params) -> per-example op.
PER_EXAMPLE = {
    "blur": ((jnp.array([0.5, 3.0]), jnp.array([7, 21])),
             lambda k, x, s, n: degrade.gaussian_blur(x, s, kernel_size=n)),
    "noise": ((jnp.array([15.0, 50.0]),), degrade.gaussian_noise),
    "poisson": ((jnp.array([10.0, 200.0]),), degrade.poisson_noise),
    "jpeg": ((jnp.array([10, 90]),), lambda k, x, q: degrade.jpeg(x, q)),
    "downup": ((jnp.array([2, 4]),), lambda k, x, f: degrade.bicubic_downup(x, f)),
    "rain": ((jnp.array([50, 150]), jnp.array([3, 11]), jnp.array([20, 40]), jnp.array([-40.0, 30.0])),
             degrade.rain),
    "haze": ((jnp.array([0.8, 1.0]), jnp.array([0.5, 3.0])),
             lambda k, x, a, b: degrade.haze(x, a, b, degrade.depth_field(k, x.shape[:2]))),
    "lowlight": ((jnp.array([1.5, 4.0]),), lambda k, x, g: degrade.low_light(x, g)),
}


def test_ops_under_jit_and_vmap_with_per_example_parameters(textured):
  # Same key and image for both examples, so that only the parameters tell them apart.
  keys = jnp.stack([jax.random.key(4)] * 2)
  images = jnp.stack([textured] * 2)
  ops = PER_EXAMPLE.items()
  batched = jax.jit(lambda k, x: {n: jax.vmap(f)(k, x, *p) for n, (p, f) in ops})(keys, images)
  single = jax.jit(lambda k, x, i: {n: f(k, x, *(a[i] for a in p)) for n, (p, f) in ops})
  for i in range(2):
    one = single(keys[i], images[i], i)
    for name, out in batched.items():
      assert out.shape == images.shape and out.dtype == images.dtype, name
      np.testing.assert_allclose(out[i], one[name], atol=1e-5 if name != "jpeg" else 1.5 / 255, err_msg=name)
      assert not np.allclose(out[0], out[1], atol=1e-3), name  # the parameters differ per example


# ---------------------------------------------------------------------------------------------- sampler


def test_ranges_are_the_mioir_table():
  t, h = degrade.RANGES["train"], degrade.RANGES["harder"]
  assert t["blur_kernel"] == (7, 21) and t["blur_sigma"] == (1.0, 3.0) and h["blur_sigma"] == (3.0, 5.0)
  assert t["noise_sigma"] == (15.0, 50.0) and h["noise_sigma"] == (50.0, 70.0)
  assert t["jpeg_quality"] == (30, 70) and h["jpeg_quality"] == (10, 30)
  assert t["rain_density"] == (50, 100) and h["rain_density"] == (100, 150)
  assert t["rain_width"] == (3, 11) and t["rain_length"] == (20, 40) and t["rain_angle"] == (-45.0, 45.0)
  assert t["haze_airlight"] == (0.8, 1.0) and t["haze_beta"] == (0.5, 2.5) and h["haze_beta"] == (2.5, 3.0)
  assert t["lowlight_gamma"] == (1.0, 3.0) and h["lowlight_gamma"] == (3.0, 4.0)
  assert t["downup_factors"] == (4,)


@pytest.fixture(scope="module")
def mixed_batch(textured):
  keys = jax.random.split(jax.random.key(7), 8)
  images = jnp.stack([textured] * 8)
  fn = jax.jit(jax.vmap(lambda k, x: degrade.mixed(k, x, max_ops=3)))
  out, task = fn(keys, images)
  return keys, images, out, task, fn


def test_mixed_shapes_determinism_and_task_bits(mixed_batch):
  keys, images, out, task, fn = mixed_batch
  assert out.shape == images.shape and out.dtype == images.dtype
  assert task.shape == (8,) and task.dtype == jnp.int32
  counts = [bin(int(t)).count("1") for t in task]
  assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
  out2, task2 = fn(keys, images)
  np.testing.assert_array_equal(out, out2)
  np.testing.assert_array_equal(task, task2)
  assert len({np.asarray(o).tobytes() for o in out}) == 8  # different keys, different images
  np.testing.assert_allclose(out * 255, jnp.round(out * 255), atol=1e-4)  # saved as 8 bits
  assert fn._cache_size() == 1


def test_mixed_task_id_matches_ops_applied(mixed_batch):
  # mixed(key) draws `applied` from split(key)[0] and degrades with split(key)[1] (its documented
  # contract); re-applying exactly the ops the id names must give the same image.
  keys, images, out, task, _ = mixed_batch
  compose = jax.jit(degrade.compose)
  for i in range(3):
    applied = jnp.array([int(task[i]) >> b & 1 for b in range(len(degrade.OPS))], bool)
    k2 = jax.random.split(keys[i])[1]
    np.testing.assert_array_equal(compose(k2, images[i], applied), out[i])
    wrong = applied.at[int(np.argmin(applied))].set(True)  # one more op than the id says
    assert not np.array_equal(compose(k2, images[i], wrong), out[i])
  assert degrade.task_name(int(task[0])) == "+".join(degrade.task_ops(int(task[0])))


def test_mixed_task_id_semantics(smooth):
  # With only darkening and hazing on offer, the id says which happened and the brightness agrees.
  keys = jax.random.split(jax.random.key(3), 12)
  sample = lambda k: degrade.mixed(k, smooth, ops=("lowlight", "haze"), max_ops=1, ranges="harder")
  fn = jax.jit(jax.vmap(sample))
  out, task = fn(keys)
  low, hz = 1 << degrade.OPS.index("lowlight"), 1 << degrade.OPS.index("haze")
  assert set(np.asarray(task).tolist()) == {low, hz}
  for o, t in zip(out, task):
    assert (float(o.mean()) < float(smooth.mean())) == (int(t) == low)


def test_task_name():
  assert degrade.task_name(0) == "clean"
  assert degrade.task_name(1 << degrade.OPS.index("blur") | 1 << degrade.OPS.index("noise")) == "blur+noise"


# ---------------------------------------------------------------------------------------------- config


def test_from_config_default_is_blur_noise(smooth):
  key = jax.random.key(5)
  out = degrade.from_config(degrade.default_config())(key, smooth)
  np.testing.assert_array_equal(out, degrade.blur_noise(key, smooth))
  _, task = degrade.from_config_with_task(degrade.default_config())(key, smooth)
  assert degrade.task_name(int(task)) == "blur+noise"


def test_from_config_mixed_options(smooth):
  cfg = ml_collections.ConfigDict({"name": "mixed", "ops": ("jpeg",), "max_ops": 1, "ranges": "harder",
                                   "overrides": {"jpeg_quality": (10, 10)}})
  out, task = jax.jit(degrade.from_config_with_task(cfg))(jax.random.key(0), smooth)
  assert degrade.task_name(int(task)) == "jpeg"
  np.testing.assert_array_equal(out, degrade.jpeg(smooth, 10))


@pytest.mark.parametrize("cfg,field", [
    ({"name": "nope"}, "name"),
    ({"name": "mixed", "colour": 1}, "colour"),
    ({"name": "mixed", "ops": ("blur", "smog")}, "ops"),
    ({"name": "mixed", "max_ops": 0}, "max_ops"),
    ({"name": "mixed", "ranges": "easy"}, "ranges"),
    ({"name": "mixed", "overrides": {"fog": (1, 2)}}, "overrides"),
    ({"name": "mixed", "overrides": {"blur_kernel": (7, 31)}}, "overrides.blur_kernel"),
    ({"name": "blur_noise", "max_ops": 2}, "max_ops"),
])
def test_from_config_rejects_bad_options(cfg, field):
  with pytest.raises(ValueError, match=rf"^config\.data\.degrade\.{field}\b") as e:
    degrade.from_config(ml_collections.ConfigDict(cfg))
  assert "\n" not in str(e.value)
