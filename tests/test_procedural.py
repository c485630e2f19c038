"""The embedded dead-leaves images: deterministic, varied, image-like, and the same as painting shape by
shape (the reference loop below, the original implementation)."""

import numpy as np
import pytest

from restorejax.data import procedural


def _reference_fill(rng, yy, xx):
  grey = rng.random()
  base = np.clip(grey + rng.uniform(0.2, 0.8) * (rng.random(3) - 0.5), 0, 1)
  kind = rng.random()
  if kind < 0.6:
    return base
  other = np.clip(base + rng.normal(0, 0.25, 3), 0, 1)
  if kind < 0.8:
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    t = ((ramp - ramp.min()) / max(np.ptp(ramp), 1.0))[..., None]
    return base * (1 - t) + other * t
  if kind < 0.92:
    freq = rng.uniform(0.2, 1.2)
    angle = rng.uniform(0, np.pi)
    wave = 0.5 + 0.5 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
    return base * wave[..., None] + other * (1 - wave[..., None])
  return base + rng.normal(0.0, rng.uniform(0.03, 0.12), (yy.shape[0], xx.shape[1], 1))


def _reference_dead_leaves(rng, size, *, r_min=2.0, r_max=None, max_shapes=None, coverage=0.98):
  """Shapes painted one at a time, each over its bounding box, until the coverage is reached."""
  r_max = r_max or size / 2.0
  max_shapes = max_shapes or 8 * size
  canvas = np.empty((size, size, 3), np.float32)
  canvas[:] = rng.random()
  covered = np.zeros((size, size), bool)
  target = coverage * size * size
  count = 0
  radii = procedural._radius(rng, r_min, r_max, max_shapes)
  centres = rng.random((max_shapes, 2)) * (size + radii[:, None]) - radii[:, None] / 2
  kinds = rng.random(max_shapes)
  angles = rng.uniform(0, 2 * np.pi, (max_shapes, 3))
  aspects = rng.uniform(0.2, 1.0, max_shapes)
  grid = np.arange(size)
  grid_f = grid.astype(np.float32)
  for i in range(max_shapes):
    if count >= target:
      break
    r, (cy, cx) = radii[i], centres[i]
    y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, size))
    x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, size))
    if y0 >= y1 or x0 >= x1:
      continue
    dy, dx = grid[y0:y1, None] - cy, grid[None, x0:x1] - cx
    if kinds[i] < 0.55:
      mask = dy * dy + dx * dx <= r * r
    elif kinds[i] < 0.85:
      c, s = np.cos(angles[i, 0]), np.sin(angles[i, 0])
      mask = (np.abs(c * dx + s * dy) <= r) & (np.abs(c * dy - s * dx) <= r * aspects[i])
    else:
      px, py = r * np.cos(angles[i]), r * np.sin(angles[i])
      cross = lambda a, b: (px[b] - px[a]) * (dy - py[a]) - (py[b] - py[a]) * (dx - px[a])
      c0, c1, c2 = cross(0, 1), cross(1, 2), cross(2, 0)
      mask = ((c0 >= 0) & (c1 >= 0) & (c2 >= 0)) | ((c0 <= 0) & (c1 <= 0) & (c2 <= 0))
    box = covered[y0:y1, x0:x1]
    mask = mask & ~box
    n = int(mask.sum())
    if n:
      colour = _reference_fill(rng, grid_f[y0:y1, None], grid_f[None, x0:x1])
      canvas[y0:y1, x0:x1][mask] = colour if colour.ndim == 1 else colour[mask]
      box |= mask
      count += n
  return np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)


@pytest.mark.parametrize("size, options, chunk", [
    (96, {}, 128),                                   # the default run's images
    (40, {}, 16),                                    # the tiny config's; many chunks
    (33, {"r_min": 1.0, "coverage": 1.0}, 128),      # every shape until max_shapes
    (48, {"r_min": 3.5, "r_max": 12.0, "coverage": 0.5}, 64),  # stops early, in the middle of a chunk
    (17, {"max_shapes": 12, "coverage": 0.999}, 5),  # few shapes: the background shows
])
def test_equals_painting_shape_by_shape_and_consumes_the_generator_alike(size, options, chunk):
  for i in range(4):
    fast_rng, ref_rng = np.random.default_rng([5, i]), np.random.default_rng([5, i])
    fast = procedural.dead_leaves(fast_rng, size, chunk=chunk, **options)
    ref = _reference_dead_leaves(ref_rng, size, **options)
    assert fast.dtype == ref.dtype == np.uint8 and np.array_equal(fast, ref), (size, options, i)
    assert fast_rng.random() == ref_rng.random()     # the generator is left in the same state


def test_same_seed_and_index_give_the_same_image_and_others_differ():
  a = procedural.DeadLeavesSource(num_images=4, size=48, seed=3)
  b = procedural.DeadLeavesSource(num_images=4, size=48, seed=3)
  c = procedural.DeadLeavesSource(num_images=4, size=48, seed=4)
  assert np.array_equal(a[1]["target"], b[1]["target"])
  assert not np.array_equal(a[1]["target"], a[2]["target"])
  assert not np.array_equal(a[1]["target"], c[1]["target"])


def test_images_are_uint8_rgb_with_flat_regions_and_sharp_edges():
  img = procedural.DeadLeavesSource(num_images=1, size=64, seed=0)[0]["target"]
  assert img.shape == (64, 64, 3) and img.dtype == np.uint8
  assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20          # many shapes, not a flat picture
  dx = np.abs(np.diff(img.astype(np.int32), axis=1)).max(-1)
  assert (dx == 0).mean() > 0.3                                    # flat regions inside shapes
  assert (dx > 40).mean() > 0.01                                   # occlusion edges


def test_size_distribution_is_scale_invariant():
  r = procedural._radius(np.random.default_rng(0), 2.0, 32.0, 200_000)
  assert r.min() >= 2.0 and r.max() <= 32.0
  # density ~ r^-3: P(r > 2a) / P(r > a) ~ 1/4 away from the upper cut-off
  p = lambda a: (r > a).mean()
  assert abs(p(4.0) / p(2.0) - 0.25) < 0.02


def test_out_of_range_index_raises():
  src = procedural.DeadLeavesSource(num_images=2, size=16, seed=0)
  try:
    src[2]
  except IndexError as e:
    assert "out of range" in str(e)
  else:
    raise AssertionError("no IndexError")
