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


def _clip01(v: float) -> float:
  """np.clip(v, 0, 1) of one float, the same way round (max, then min: -0.0 -> 0.0)."""
  v = v if v > 0.0 else 0.0
  return v if v < 1.0 else 1.0


def _ragged_arange(n: np.ndarray) -> np.ndarray:
  """concatenate([arange(k) for k in n]) without a Python loop."""
  return np.arange(n.sum(), dtype=n.dtype) - np.repeat(np.cumsum(n) - n, n)


def _box_rows(y0: np.ndarray, y1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Every row of every box [y0, y1) x ...: (box number, y); empty boxes have none."""
  h = np.maximum(y1 - y0, 0)
  box = np.repeat(np.arange(len(h), dtype=h.dtype), h)
  return box, y0[box] + _ragged_arange(h)


def _row_pixels(box: np.ndarray, y: np.ndarray, x0: np.ndarray, x1: np.ndarray):
  """Every pixel [x0, x1) of the rows (`box`, `y`) that `_box_rows` gives: (box number, y, x)."""
  w = np.maximum(x1 - x0, 0)[box]
  # Rows, then pixels: no integer division, which numpy does slowly with an array divisor.
  return np.repeat(box, w), np.repeat(y, w), np.repeat(x0[box], w) + _ragged_arange(w)


def _cover(owner: np.ndarray, shapes: np.ndarray, kind: np.ndarray, boxes: tuple[np.ndarray, ...],
           radii: np.ndarray, centres: np.ndarray, angles: np.ndarray, aspects: np.ndarray, *,
           fresh: bool) -> None:
  """Sets each free pixel of `owner` ((size, size); `len(radii)` where free) to the first of `shapes`
  (ascending, after any shape already there) that covers it; `fresh`: all pixels are free.

  Each shape's mask is computed over its integer bounding box with the float64 operations of painting it
  alone, pixel by pixel, so that boundary pixels fall the same way.
  """
  size, owner = owner.shape[0], owner.reshape(-1)
  shapes = shapes[np.argsort(kind[shapes], kind="stable")]  # discs, then rectangles, then triangles
  y0, y1, x0, x1 = (b[shapes] for b in boxes)
  box, y = _box_rows(y0, y1)
  if not fresh:  # pixels an earlier chunk's shape owns are decided: skip rows without free pixels
    free = owner == len(radii)
    before = np.zeros((size, size + 1), np.int32)
    np.cumsum(free.reshape(size, size), axis=1, out=before[:, 1:])  # free pixels left of x in row y
    keep = np.flatnonzero(before[y, x1[box]] > before[y, x0[box]])
    box, y = box[keep], y[keep]
  box, y, x = _row_pixels(box, y, x0, x1)
  p = y * size + x
  if not fresh:
    keep = np.flatnonzero(free[p])
    box, p, y, x = box[keep], p[keep], y[keep], x[keep]
  s = shapes[box]
  dy, dx, r = y - centres[s, 0], x - centres[s, 1], radii[s]
  first = np.cumsum(np.bincount(kind[shapes], minlength=3))  # shapes[:first[0]] are discs, ...
  cut = np.searchsorted(box, first)
  mask = np.empty(len(box), bool)
  disc = slice(0, cut[0])
  mask[disc] = dy[disc] * dy[disc] + dx[disc] * dx[disc] <= r[disc] * r[disc]
  # np.cos / np.sin called as painting one shape did: on a scalar for a rectangle (numpy may evaluate a
  # scalar and an array by different code, e.g. SIMD), on a contiguous row of 3 for a triangle.
  rect, on = slice(cut[0], cut[1]), box[cut[0]:cut[1]] - first[0]
  a = angles[shapes[first[0]:first[1]], 0]
  c, sn = np.array([np.cos(v) for v in a])[on], np.array([np.sin(v) for v in a])[on]
  ry, rx, half_width = dy[rect], dx[rect], (radii * aspects)[s[rect]]
  mask[rect] = (np.abs(c * rx + sn * ry) <= r[rect]) & (np.abs(c * ry - sn * rx) <= half_width)
  tri, on = slice(cut[1], None), box[cut[1]:] - first[1]
  a, tr = angles[shapes[first[1]:]], radii[shapes[first[1]:], None]
  px, py, ty, tx = (tr * np.cos(a))[on], (tr * np.sin(a))[on], dy[tri], dx[tri]
  cross = lambda a, b: (px[:, b] - px[:, a]) * (ty - py[:, a]) - (py[:, b] - py[:, a]) * (tx - px[:, a])
  c0, c1, c2 = cross(0, 1), cross(1, 2), cross(2, 0)
  mask[tri] = ((c0 >= 0) & (c1 >= 0) & (c2 >= 0)) | ((c0 <= 0) & (c1 <= 0) & (c2 <= 0))
  np.minimum.at(owner, p[mask], s[mask])


_FLAT, _GRADIENT, _WAVE, _NOISE = range(4)


def _draw_fills(rng: np.random.Generator, painted: list[int], area: list[int]) -> tuple[list, ...]:
  """The fill of each shape in `painted` (`area`: pixels in its bounding box), drawn in that order: a flat
  colour (60%), a linear gradient to a second colour (20%), a sine wave between the two (12%), or the
  colour plus Gaussian noise (8%). Only the draws, in plain floats where numpy's per-call cost would
  dominate; `_paint` computes the pixels.

  Returns the kinds, the base colours (flattened), (position, other colour, cos, sin, freq, phase) of the
  shapes that are not flat and (position, noise over the box, row by row) of the noisy ones.
  """
  random, uniform, normal = rng.random, rng.uniform, rng.normal
  kinds, bases, textured, noisy = [], [], [], []
  for n, i in enumerate(painted):
    grey, spread = random(), uniform(0.2, 0.8)
    *rgb, kind = random(4).tolist()  # the numbers rng.random(3), then rng.random() give
    base = [_clip01(grey + spread * (c - 0.5)) for c in rgb]  # natural, not neon, colours
    bases += base
    if kind < 0.6:
      kinds.append(_FLAT)
      continue
    other = [_clip01(b + e) for b, e in zip(base, normal(0, 0.25, 3).tolist())]
    cos = sin = freq = phase = 0.0
    if kind < 0.8:
      kind, angle = _GRADIENT, uniform(0, 2 * np.pi)
      cos, sin = np.cos(angle), np.sin(angle)
    elif kind < 0.92:
      kind, freq, angle, phase = _WAVE, uniform(0.2, 1.2), uniform(0, np.pi), uniform(0, 6.3)
      cos, sin = np.cos(angle), np.sin(angle)
    else:
      kind = _NOISE
      noisy.append((n, normal(0.0, uniform(0.03, 0.12), area[i])))
    kinds.append(kind)
    textured.append((n, *other, cos, sin, freq, phase))
  return kinds, bases, textured, noisy


def _paint(canvas: np.ndarray, owner: np.ndarray, painted: np.ndarray, fills: tuple[list, ...],
           boxes: tuple[np.ndarray, ...]) -> None:
  """Paints each pixel of `canvas` (size, size, 3) whose `owner` is in `painted` with that shape's fill.

  The float64 operations of filling each shape over its whole bounding box (grids of float32
  coordinates) and keeping the pixels it owns, pixel by pixel, so the values are the same to the bit.
  """
  size, n = canvas.shape[0], len(painted)
  if not n:
    return
  kinds, bases, textured, noisy = fills
  kind, base = np.array(kinds), np.array(bases).reshape(n, 3)
  other, (cos, sin, freq, phase) = base.copy(), np.zeros((4, n))
  if textured:
    t = np.array(textured)
    at = t[:, 0].astype(np.int64)
    other[at], cos[at], sin[at], freq[at], phase[at] = t[:, 1:4], t[:, 4], t[:, 5], t[:, 6], t[:, 7]
  which = np.full(len(boxes[0]) + 1, n)       # shape -> its position in `painted`; n: not painted
  which[painted] = np.arange(n)
  slot = which[owner.reshape(-1)]
  pixel_kind = np.append(kind, -1)[slot]
  y0, y1, x0, x1 = (b[painted] for b in boxes)
  grid = np.arange(size, dtype=np.float32)    # the fills' pixel coordinates
  # A gradient's ends, ramp.min() and .max() over its box: rounded products and sums are monotone in
  # each argument, so they are the ramp at two of the box's corners, exactly.
  corners = [cos * grid[x] + sin * grid[y] for y in (y0, y1 - 1) for x in (x0, x1 - 1)]
  low = np.minimum.reduce(corners)
  scale = np.maximum(np.maximum.reduce(corners) - low, 1.0)  # max(np.ptp(ramp), 1.0)
  sizes = np.zeros(n, np.int64)
  sizes[[i for i, _ in noisy]] = [v.size for _, v in noisy]
  start = np.cumsum(sizes) - sizes
  noise = np.concatenate([v for _, v in noisy] or [np.zeros(0)])
  out = canvas.reshape(-1, 3)
  for k in (_FLAT, _GRADIENT, _WAVE, _NOISE):
    pix = np.flatnonzero(pixel_kind == k)
    if not pix.size:
      continue
    s, y, x = slot[pix], pix // size, pix % size
    b = base[s]
    if k == _FLAT:
      out[pix] = b
    elif k == _GRADIENT:
      t = ((cos[s] * grid[x] + sin[s] * grid[y] - low[s]) / scale[s])[:, None]
      out[pix] = b * (1 - t) + other[s] * t
    elif k == _WAVE:
      wave = (0.5 + 0.5 * np.sin(freq[s] * (cos[s] * grid[x] + sin[s] * grid[y]) + phase[s]))[:, None]
      out[pix] = b * wave + other[s] * (1 - wave)
    else:
      out[pix] = b + noise[start[s] + (y - y0[s]) * (x1[s] - x0[s]) + (x - x0[s])][:, None]


def dead_leaves(rng: np.random.Generator, size: int, *, r_min: float = 2.0, r_max: float | None = None,
                max_shapes: int | None = None, coverage: float = 0.98, chunk: int = 128) -> np.ndarray:
  """One `size` x `size` RGB uint8 dead-leaves image.

  Discs, rectangles and triangles fall front to back (each shape only paints what is still uncovered)
  until `coverage` of the image is covered or `max_shapes` have fallen; the rest shows a background.
  Computed without a Python loop over shapes' pixels: each pixel's owner is the first shape that covers
  it, found `chunk` shapes at a time (vectorised) until the owned pixels reach the coverage; then the
  fills of the shapes that own pixels are drawn in order and painted at once. The image is, byte for
  byte, that of painting shape by shape, and `rng` is consumed the same way (tests/test_procedural.py
  keeps that loop as the reference).
  """
  r_max = r_max or size / 2.0
  max_shapes = max_shapes or 8 * size
  canvas = np.empty((size, size, 3), np.float32)
  canvas[:] = rng.random()
  target = coverage * size * size
  # Shape parameters drawn up front: per-shape generator calls dominate the cost otherwise.
  radii = _radius(rng, r_min, r_max, max_shapes)
  centres = rng.random((max_shapes, 2)) * (size + radii[:, None]) - radii[:, None] / 2
  kinds = rng.random(max_shapes)
  angles = rng.uniform(0, 2 * np.pi, (max_shapes, 3))
  aspects = rng.uniform(0.2, 1.0, max_shapes)
  cy, cx = centres[:, 0], centres[:, 1]
  # Integer bounding boxes clipped to the canvas, int(max(cy - r, 0)) etc.: truncations of floats >= 0.
  boxes = tuple(v.astype(np.int32) for v in (np.maximum(cy - radii, 0), np.minimum(cy + radii + 1, size),
                                             np.maximum(cx - radii, 0), np.minimum(cx + radii + 1, size)))
  kind = np.where(kinds < 0.55, 0, np.where(kinds < 0.85, 1, 2))  # disc, rectangle, triangle
  owner = np.full((size, size), max_shapes, np.int32)
  for start in range(0, max_shapes, chunk):
    shapes = np.arange(start, min(start + chunk, max_shapes), dtype=np.int32)
    _cover(owner, shapes, kind, boxes, radii, centres, angles, aspects, fresh=start == 0)
    counts = np.bincount(owner.reshape(-1), minlength=max_shapes + 1)[:max_shapes]  # pixels each owns
    if counts.sum() >= target:  # later shapes cannot paint
      break
  # A shape paints (and draws a fill) if it owns pixels and fewer than `target` were covered before it.
  before = np.cumsum(counts) - counts
  stop = np.flatnonzero(before >= target)
  painted = np.flatnonzero(counts[:stop[0] if len(stop) else max_shapes])
  area = ((boxes[1] - boxes[0]) * (boxes[3] - boxes[2])).tolist()
  _paint(canvas, owner, painted, _draw_fills(rng, painted.tolist(), area), boxes)
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
