"""Restoring images of any size with a model compiled for one tile shape (full-image eval without OOM).

`restore_tiled` cuts an HWC image into overlapping tiles of one fixed shape, runs a batched model on
them `batch_size` at a time and blends the outputs into a float32 canvas on the host. Every call of
the model sees the same array shape, so a jitted model compiles once for a whole evaluation set,
whatever the image sizes:
- tiles step by `tile - overlap`; the last tile of a row / column is shifted inward to end at the
  image edge instead of being cut short; an image smaller than a tile is one tile;
- each tile is reflect-padded at its bottom / right to the tile size rounded up to `multiple`
  (2**levels for U-Nets; also what fills a tile larger than the image) and the output cropped back;
- the last batch is filled up with copies of its last tile, whose outputs are discarded;
- overlaps blend with a separable weight that is 0 for the outer quarter of the overlap (where a
  tile's output sees its padding), rises as a raised cosine, and is 1 elsewhere and along the image's
  own borders. Weights of two neighbouring tiles sum to 1 across a regular overlap. A convolutional
  model whose receptive radius is at most `overlap // 4` gives the untiled result; a wider one blends
  smoothly. Models with global statistics (NAFNet's channel attention pools the whole input) see
  per-tile statistics, as with any tiling: choose tiles as large as memory allows.

Blending is a running weighted mean (`out += w / sum_w * (tile - out)`) rather than a sum of weighted
tiles divided at the end, so where all tiles agree the result is bit-identical to the untiled output.
"""

from typing import Callable, Sequence, Union

import numpy as np

IntPair = Union[int, Sequence[int]]


def _pair(value: IntPair, name: str) -> tuple[int, int]:
  pair = (value, value) if np.ndim(value) == 0 else tuple(value)
  if len(pair) != 2 or any(int(v) != v for v in pair):
    raise ValueError(f"restore_tiled: {name} must be an int or a pair of ints, got {value!r}")
  return int(pair[0]), int(pair[1])


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
  """Start offsets of tiles along one axis; the last one ends exactly at `length`."""
  if length <= tile:
    return [0]
  starts = list(range(0, length - tile, tile - overlap))
  return starts + [length - tile]


def _ramp(size: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
  """1-D blend weight over a tile: across each overlap 0 (outer quarter), a raised cosine, then 1."""
  w = np.ones(size, np.float32)
  if overlap == 0:
    return w
  dead = overlap // 4
  rise = overlap - 2 * dead
  t = (np.arange(rise) + 0.5) / rise
  up = np.concatenate([np.zeros(dead), 0.5 - 0.5 * np.cos(np.pi * t), np.ones(dead)]).astype(np.float32)
  if ramp_start:
    w[:overlap] = up
  if ramp_end:
    w[size - overlap:] = np.minimum(w[size - overlap:], up[::-1])
  return w


def _pad_to(tile: np.ndarray, h: int, w: int) -> np.ndarray:
  """Reflect-pads an HWC tile at its bottom / right to (h, w)."""
  ph, pw = h - tile.shape[0], w - tile.shape[1]
  if ph == 0 and pw == 0:
    return tile
  # numpy reflects repeatedly when the pad is longer than the tile; a one-pixel axis is repeated.
  mode = "reflect" if min(tile.shape[:2]) > 1 else "edge"
  return np.pad(tile, ((0, ph), (0, pw), (0, 0)), mode=mode)


def restore_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    image,
    *,
    tile: IntPair,
    overlap: IntPair,
    multiple: int = 1,
    scale: int = 1,
    batch_size: int = 4,
) -> np.ndarray:
  """Applies `fn` (NHWC -> NHWC, output `scale` x larger) to an HWC image tile by tile.

  Args:
    fn: batched model, called as `fn(tiles)` with a float32 array of shape
      (batch_size, th', tw', C), th' = th rounded up to `multiple` (same for tw'); must return
      (batch_size, th' * scale, tw' * scale, C_out). Typically a jitted model application.
    image: HWC array (numpy or jax, any real dtype; tiles are passed as float32 without rescaling).
    tile: tile height and width (int or pair) in input pixels.
    overlap: overlap between neighbouring tiles (int or pair), smaller than the tile.
    multiple: tile sides are padded up to a multiple of this (e.g. 2**levels of a U-Net).
    scale: integer output / input size ratio of `fn` (super-resolution); 1 for restoration.
    batch_size: tiles per call of `fn`.

  Returns:
    The restored image, float32 numpy array of shape (H * scale, W * scale, C_out).
  """
  th, tw = _pair(tile, "tile")
  oh, ow = _pair(overlap, "overlap")
  if min(th, tw) < 1:
    raise ValueError(f"restore_tiled: tile must be positive, got {tile!r}")
  if not (0 <= oh < th and 0 <= ow < tw):
    raise ValueError(f"restore_tiled: overlap must be in [0, tile), got overlap={overlap!r} tile={tile!r}")
  for name, value in (("multiple", multiple), ("scale", scale), ("batch_size", batch_size)):
    if int(value) != value or value < 1:
      raise ValueError(f"restore_tiled: {name} must be a positive int, got {value!r}")
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"restore_tiled: expects an HWC image, got shape {image.shape}")
  h, w, c = image.shape
  ph, pw = -(-th // multiple) * multiple, -(-tw // multiple) * multiple
  s = scale

  boxes = [(y, x) for y in tile_starts(h, th, oh) for x in tile_starts(w, tw, ow)]
  chunks = [boxes[i:i + batch_size] for i in range(0, len(boxes), batch_size)]

  def launch(chunk):
    tiles = [_pad_to(image[y:y + th, x:x + tw], ph, pw) for y, x in chunk]
    tiles += [tiles[-1]] * (batch_size - len(tiles))
    return fn(np.stack(tiles).astype(np.float32))

  out, weight_sum = None, None
  pending = launch(chunks[0])
  for k, chunk in enumerate(chunks):
    # Dispatch the next batch before blending this one, so an accelerator stays busy meanwhile.
    result, pending = pending, (launch(chunks[k + 1]) if k + 1 < len(chunks) else None)
    result = np.asarray(result)
    if result.ndim != 4 or result.shape[:3] != (batch_size, ph * s, pw * s):
      raise ValueError(f"restore_tiled: fn returned shape {result.shape} for input "
                       f"{(batch_size, ph, pw, c)} with scale={s}; expected ({batch_size}, {ph * s}, "
                       f"{pw * s}, C)")
    if out is None:
      out = np.zeros((h * s, w * s, result.shape[-1]), np.float32)
      weight_sum = np.zeros((h * s, w * s, 1), np.float32)
    for (y, x), res in zip(chunk, result):
      rh, rw = min(th, h) * s, min(tw, w) * s
      wy = _ramp(rh, oh * s, ramp_start=y > 0, ramp_end=y + th < h)
      wx = _ramp(rw, ow * s, ramp_start=x > 0, ramp_end=x + tw < w)
      wgt = (wy[:, None] * wx[None, :])[..., None]
      region = (slice(y * s, y * s + rh), slice(x * s, x * s + rw))
      total = weight_sum[region] + wgt
      share = np.divide(wgt, total, out=np.zeros_like(total), where=total > 0)
      out[region] += share * (res[:rh, :rw].astype(np.float32) - out[region])
      weight_sum[region] = total
  return out
