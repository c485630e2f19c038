"""Bicubic resizing as MATLAB's `imresize` does it, as fixed matrices that run as matmuls on the device.

Resizing one axis is a linear map, so it is a dense `(out, in)` matrix built once in numpy (float64) for a
static shape and applied with `jnp.einsum`. Convention (MATLAB `imresize(..., 'bicubic')`, which BasicSR's
`matlab_functions.imresize` reproduces): Keys cubic with a = -0.5, the kernel widened by 1/scale when
shrinking (antialiasing), pixel centres aligned (`x_in = x_out / scale + 0.5 (1 - 1 / scale)`), symmetric
(half-sample) reflection at the borders, each row of weights normalised to sum 1. PyTorch's
`F.interpolate(mode='bicubic')` (a = -0.75, no antialias, clamped borders) is available as
`a=-0.75, antialias=False` up to the border handling.

Cost: one resize of an (H, W) image is 2 H W (H' + W') flops per channel; cheap at training patch sizes,
about 50 GFLOP for a 2K image (a banded gather would be cheaper there; not needed for patches).
"""

import functools
import math

import jax.numpy as jnp
import numpy as np


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys' cubic convolution kernel; a = -0.5 is MATLAB's and PIL's bicubic."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int, scale: float | None = None, *, a: float = -0.5,
                  antialias: bool = True) -> np.ndarray:
  """The `(out_size, in_size)` float64 matrix of a 1-D bicubic resize (see the module docstring).

  `scale` is the coordinate scale (out / in when None), as MATLAB's `imresize(img, scale)` uses it even
  when `ceil(in * scale)` is not exactly `in * scale`.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f"resize_matrix: sizes must be positive, got {in_size} -> {out_size}")
  scale = out_size / in_size if scale is None else float(scale)
  width = 4.0
  shrink = scale < 1 and antialias
  if shrink:
    width /= scale
  u = np.arange(1, out_size + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinates
  left = np.floor(u - width / 2)
  taps = math.ceil(width) + 2
  idx = left[:, None] + np.arange(taps)[None, :]
  dist = u[:, None] - idx
  w = scale * cubic(dist * scale, a) if shrink else cubic(dist, a)
  w = w / w.sum(axis=1, keepdims=True)
  # Symmetric (half-sample) reflection: ... 2 1 | 1 2 ... n | n n-1 ...
  period = 2 * in_size
  j = np.mod(idx.astype(np.int64) - 1, period)
  j = np.where(j >= in_size, period - 1 - j, j)
  m = np.zeros((out_size, in_size))
  np.add.at(m, (np.repeat(np.arange(out_size), taps), j.ravel()), w.ravel())
  return m


def bicubic_resize(image: jnp.ndarray, out_hw: tuple[int, int], *, scale: float | None = None,
                   a: float = -0.5, antialias: bool = True) -> jnp.ndarray:
  """Resizes one HWC image to the static `out_hw` (MATLAB bicubic; `scale` as in `resize_matrix`)."""
  h, w, _ = image.shape
  mh = jnp.asarray(resize_matrix(h, out_hw[0], scale, a=a, antialias=antialias), image.dtype)
  mw = jnp.asarray(resize_matrix(w, out_hw[1], scale, a=a, antialias=antialias), image.dtype)
  return jnp.einsum("oh,hwc,pw->opc", mh, image, mw, precision="highest")


@functools.lru_cache(maxsize=64)
def downup_matrix(size: int, factor: int, *, a: float = -0.5, antialias: bool = True) -> np.ndarray:
  """`(size, size)` matrix of bicubic down by `factor` (to ceil(size / factor)) then up back to `size`."""
  low = math.ceil(size / factor)
  down = resize_matrix(size, low, 1.0 / factor, a=a, antialias=antialias)
  up = resize_matrix(low, size, a=a, antialias=antialias)
  return up @ down
