"""Tiled denoising: one eps prediction for an image larger than the network's tile, blended at every step.

`tiled_eps_fn(eps_fn, image_hw, tile, overlap)` turns a network `eps_fn(x, t, cond)` that runs on tiles
into one that runs on the whole image: x_t and the conditioning are cut into overlapping tiles of one
static shape, the network sees all of them in one batch (B * tiles), and the per-tile eps predictions are
blended into one full-image eps with smooth weights. The sampler then takes its step on the full image, so
the tiles of step t - 1 all start from the same x_{t-1}: overlaps are reconciled at every step and no seam
can build up along the chain (tiling only the final output, as `evaluation.tiling` does for restorers,
would let the tiles drift apart over 50-100 stochastic steps).

Blending is linear in eps, so it is the same as blending the x0 predictions (x0 is affine in eps at fixed
x_t); clipping of x0 happens after the blend, in the sampler. Weights: each tile's 1-D window is 1 in
its interior and rises as a raised cosine, strictly positive, across each overlap with a neighbour (not
along the image's own border); the separable product is divided by the sum over all tiles at every pixel,
so the weights sum to 1 everywhere (a model predicting a constant gives that constant, up to rounding) and
a single tile covering the image has weight exactly 1 (tiled = untiled, bit for bit). Tile starts step by
`tile - overlap`, the last one shifted inward to end at the image edge (as `evaluation.tiling`).
"""

from typing import Callable

import jax.numpy as jnp
import numpy as np

CondEpsFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
  """Start offsets along one axis; the last tile ends exactly at `length`."""
  if tile >= length:
    return [0]
  if not 0 <= overlap < tile:
    raise ValueError(f"tiled sampling: overlap must be in [0, tile), got overlap={overlap} tile={tile}")
  starts = list(range(0, length - tile, tile - overlap))
  return starts + [length - tile]


def _window(size: int, overlap: int, rise_start: bool, rise_end: bool) -> np.ndarray:
  """1-D raw weight: 1 inside, a positive raised cosine over the overlap at each side that has a neighbour."""
  w = np.ones(size, np.float64)
  if overlap <= 0:
    return w
  ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)  # in (0, 1)
  if rise_start:
    w[:overlap] = np.minimum(w[:overlap], ramp)
  if rise_end:
    w[size - overlap:] = np.minimum(w[size - overlap:], ramp[::-1])
  return w


def blend_weights(image_hw: tuple[int, int], tile: tuple[int, int],
                  overlap: tuple[int, int]) -> tuple[list[tuple[int, int]], np.ndarray]:
  """Tile boxes (top-left corners) and their normalised weights (T, th, tw), float32, summing to 1 per pixel."""
  (h, w), (th, tw), (oh, ow) = image_hw, tile, overlap
  ys, xs = tile_starts(h, th, oh), tile_starts(w, tw, ow)
  boxes = [(y, x) for y in ys for x in xs]
  raw = []
  for y, x in boxes:
    wy = _window(th, min(oh, th - 1), y > 0, y + th < h)
    wx = _window(tw, min(ow, tw - 1), x > 0, x + tw < w)
    raw.append(wy[:, None] * wx[None, :])
  total = np.zeros((h, w))
  for (y, x), r in zip(boxes, raw):
    total[y:y + th, x:x + tw] += r
  weights = np.stack([r / total[y:y + th, x:x + tw] for (y, x), r in zip(boxes, raw)])
  return boxes, weights.astype(np.float32)


def tiled_eps_fn(eps_fn: CondEpsFn, image_hw: tuple[int, int], tile: int | tuple[int, int],
                 overlap: int | tuple[int, int]) -> CondEpsFn:
  """`fn(x, t, cond) -> eps` over (B, H, W, C) images from `eps_fn` over (B * tiles, th, tw, C) tiles.

  `tile` larger than the image is clamped to it; `cond` (e.g. SR3's upsampled LR image) is tiled like x.
  """
  h, w = image_hw
  th, tw = (tile, tile) if np.ndim(tile) == 0 else tuple(tile)
  oh, ow = (overlap, overlap) if np.ndim(overlap) == 0 else tuple(overlap)
  th, tw = min(int(th), h), min(int(tw), w)
  if th < 1 or tw < 1:
    raise ValueError(f"tiled sampling: tile must be positive, got {tile!r}")
  boxes, weights = blend_weights((h, w), (th, tw), (int(oh), int(ow)))
  n = len(boxes)

  def cut(a: jnp.ndarray) -> jnp.ndarray:
    tiles = jnp.stack([a[:, y:y + th, x:x + tw] for y, x in boxes], axis=1)  # (B, T, th, tw, C)
    return tiles.reshape((-1, th, tw) + a.shape[3:])

  def fn(x: jnp.ndarray, t: jnp.ndarray, cond: jnp.ndarray) -> jnp.ndarray:
    if x.shape[1:3] != (h, w):
      raise ValueError(f"tiled sampling: built for {h}x{w} images, got {x.shape[1]}x{x.shape[2]}")
    b = x.shape[0]
    t_tiles = jnp.repeat(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,)), n)
    out = eps_fn(cut(x), t_tiles, cut(cond)).astype(jnp.float32)
    out = out.reshape((b, n, th, tw, out.shape[-1]))
    full = jnp.zeros((b, h, w, out.shape[-1]), jnp.float32)
    for k, (y, x0) in enumerate(boxes):
      full = full.at[:, y:y + th, x0:x0 + tw].add(out[:, k] * weights[k][None, :, :, None])
    return full

  return fn
