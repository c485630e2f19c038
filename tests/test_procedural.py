"""The embedded dead-leaves images: deterministic, varied, image-like."""

import numpy as np

from restorejax.data import procedural


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
