"""Embedded default images: dead-leaves pictures drawn procedurally, so training needs no download.

The dead-leaves model (occluding shapes whose sizes follow a 1/r^3 law) reproduces the scale invariance,
sharp occlusion edges and flat regions of natural images, which is why it is a standard synthetic training
set for denoising and deblurring (e.g. Achddou et al., "Synthetic images as a regularity prior for image
restoration neural networks", 2021). We add gradients and periodic / noisy textures inside shapes so the
networks also see texture. Image `i` of a source is a pure function of `(seed, i)`.
"""

import dataclasses
import functools

import numpy as np


def _radius(rng: np.random.Generator, r_min: float, r_max: float, n: int) -> np.ndarray:
  """Radii with density ~ 1/r^3 on [r_min, r_max] (inverse CDF), the scale-invariant dead-leaves law."""
  u = rng.random(n)
  return (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5


def _fill(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """Colour of one shape over its bounding box (open float32 grids `yy` (h, 1), `xx` (1, w)): flat (an
  RGB triple, broadcast by the caller), a linear gradient, or a texture (h, w, 3)."""
  grey = rng.random()
  base = np.clip(grey + rng.uniform(0.2, 0.8) * (rng.random(3) - 0.5), 0, 1)  # natural, not neon, colours
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


def dead_leaves(rng: np.random.Generator, size: int, *, r_min: float = 2.0, r_max: float | None = None,
                max_shapes: int | None = None, coverage: float = 0.98) -> np.ndarray:
  """One `size` x `size` RGB uint8 dead-leaves image.

  Discs, rectangles and triangles fall front to back (each shape only paints what is still uncovered)
  until `coverage` of the image is covered or `max_shapes` have fallen; the rest shows a background.
  """
  r_max = r_max or size / 2.0
  max_shapes = max_shapes or 8 * size
  canvas = np.empty((size, size, 3), np.float32)
  canvas[:] = rng.random()
  covered = np.zeros((size, size), bool)
  target = coverage * size * size
  count = 0
  # Shape parameters drawn up front: per-shape generator calls dominate the cost otherwise.
  radii = _radius(rng, r_min, r_max, max_shapes)
  centres = rng.random((max_shapes, 2)) * (size + radii[:, None]) - radii[:, None] / 2
  kinds = rng.random(max_shapes)
  angles = rng.uniform(0, 2 * np.pi, (max_shapes, 3))
  aspects = rng.uniform(0.2, 1.0, max_shapes)
  grid = np.arange(size)                      # integer pixel coordinates for the masks,
  grid_f = grid.astype(np.float32)            # float32 ones for the fills
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
      colour = _fill(rng, grid_f[y0:y1, None], grid_f[None, x0:x1])
      canvas[y0:y1, x0:x1][mask] = colour if colour.ndim == 1 else colour[mask]
      box |= mask
      count += n
  return np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=8192)
def _cached(seed: int, size: int, index: int) -> np.ndarray:
  image = dead_leaves(np.random.default_rng([seed, index]), size)
  image.flags.writeable = False
  return image


@dataclasses.dataclass(frozen=True)
class DeadLeavesSource:
  """A grain random-access source of `num_images` dead-leaves images; element `i` depends on (seed, i) only.

  Elements are `{"target": uint8 (size, size, 3)}`, the ground truth; degradations are synthesised on
  the device by the trainer. Images are drawn on first use and kept (each process keeps its own), so an
  epoch costs the drawing once, like decoding a small dataset.
  """

  num_images: int
  size: int
  seed: int

  def __len__(self) -> int:
    return self.num_images

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_images:
      raise IndexError(f"dead-leaves image {index} out of range [0, {self.num_images})")
    return {"target": _cached(self.seed, self.size, int(index))}
