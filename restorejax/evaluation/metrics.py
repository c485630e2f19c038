"""PSNR and SSIM exactly as BasicSR computes them (`basicsr/metrics/psnr_ssim.py`), batched and jittable.

Conventions (state them next to every number reported):
- Inputs are RGB, HWC (one image: a scalar comes back) or NHWC (a batch: one value per image, shape (N,)).
  One-channel images (HW1 / NHW1) are measured as they are.
- uint8 inputs are 0..255 levels. Float inputs are [0, 1] images: they are clipped and rounded to uint8
  levels first, `round(clip(x, 0, 1) * 255)` in float32 with ties to even, which is what BasicSR's
  `tensor2img` does before its metrics; a float output therefore scores what its saved PNG would.
- `crop_border` pixels are removed from every edge first (SR papers crop the scale factor).
- `test_y_channel` measures only the Y channel of BT.601 YCbCr (MATLAB `rgb2ycbcr`, 16..235), not rounded.
  BasicSR applies `bgr2ycbcr` to the BGR images cv2 reads; on our RGB arrays that is `rgb_to_y`.
- PSNR: peak 255, MSE over all pixels and channels, `inf` when the images are identical.
- SSIM: per channel, 11x11 Gaussian window of sigma 1.5 (the outer product of cv2.getGaussianKernel),
  statistics over the 'valid' region only (cv2.filter2D cropped by 5 pixels on each side),
  C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, mean over the map, then over the channels.

Precision: JAX computes in float32 (float64 is off by default), BasicSR in float64. Measured against
BasicSR's own numpy/cv2 functions on random, smooth, noisy, flat, high-contrast, odd-sized and
1356x2040 pairs, for every crop_border in {0, 4} x test_y_channel: PSNR within 8.3e-6 dB (the float32
spacing of the result) and SSIM within 3.5e-7; Y values are bit-identical. That needs three things:
- Y from exact per-level tables summed in double-float32 (see `rgb_to_y`);
- the MSE as a row-wise sum of squared differences (integers without Y), its log split as m * 2^e;
- SSIM evaluated as `(1 - dmu^2 / (mu1^2 + mu2^2 + C1)) * (1 - var(x - y) / (var(x) + var(y) + C2))`,
  an identity of BasicSR's formula, with local variances as weighted sums of squared deviations from
  the local mean over the 121 window offsets. BasicSR's E[x^2] - mu^2, copied literally into float32,
  cancels digits of 65025 and is off by up to 3e-5 on bright flat images.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

WINDOW = 11
SIGMA = 1.5
C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2
# BT.601 luma rows of MATLAB's rgb2ycbcr, for R, G, B in [0, 1] giving Y in 16..235.
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0


def _gaussian_1d() -> np.ndarray:
  """cv2.getGaussianKernel(11, 1.5) in float64: exp(-(i - 5)^2 / (2 sigma^2)), normalised to sum 1."""
  r = np.arange(WINDOW, dtype=np.float64) - (WINDOW - 1) / 2
  k = np.exp(-r * r / (2 * SIGMA * SIGMA))
  return k / k.sum()


def to_levels(img: jnp.ndarray) -> jnp.ndarray:
  """uint8 levels: uint8 as is, float [0, 1] clipped and rounded like BasicSR's `tensor2img`."""
  if img.dtype == jnp.uint8:
    return img
  if not jnp.issubdtype(img.dtype, jnp.floating):
    raise ValueError(f"metrics: images must be uint8 (0..255) or float (0..1), got dtype {img.dtype}")
  return jnp.round(jnp.clip(img.astype(jnp.float32), 0.0, 1.0) * 255.0).astype(jnp.uint8)


def _y_tables() -> tuple[np.ndarray, np.ndarray]:
  """Per-level Y/255 contributions of R, G, B (and the offset) as float32 (hi, lo) pairs.

  BasicSR forms Y in float64 from float32 `level / 255.`, then rounds Y/255 to float32. A level has
  256 values, so each channel's float64 term is tabulated exactly and split into two float32 parts.
  """
  x = np.arange(256, dtype=np.float32) / np.float32(255.0)
  terms = np.stack([x.astype(np.float64) * w / 255.0 for w in Y_WEIGHTS])  # (3, 256): R, G, B
  terms = np.concatenate([terms, np.full((1, 256), Y_OFFSET / 255.0)])
  hi = terms.astype(np.float32)
  lo = (terms - hi.astype(np.float64)).astype(np.float32)
  return hi, lo


def _two_sum(a, b):
  """Error-free float32 addition: a + b == s + e exactly (Knuth)."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def rgb_to_y(img_0_255: jnp.ndarray) -> jnp.ndarray:
  """Y of BT.601 YCbCr (MATLAB rgb2ycbcr) of RGB in 0..255: (..., 3) -> (..., 1) float32 in 16..235.

  uint8 input reproduces BasicSR's `to_y_channel` bit for bit (its float64 sum, rounded to float32,
  is rebuilt from per-level tables in double-float32 arithmetic). Float input (any value, not only
  levels) uses the plain formula `16 + (65.481 R + 128.553 G + 24.966 B) / 255`. Not rounded.
  """
  if img_0_255.shape[-1] != 3:
    raise ValueError(f"rgb_to_y: expects 3 channels (RGB) last, got shape {img_0_255.shape}")
  if img_0_255.dtype != jnp.uint8:
    x = img_0_255.astype(jnp.float32)
    y = Y_OFFSET + (Y_WEIGHTS[0] * x[..., 0] + Y_WEIGHTS[1] * x[..., 1] + Y_WEIGHTS[2] * x[..., 2]) / 255.0
    return y[..., None]
  hi, lo = _y_tables()
  idx = img_0_255.astype(jnp.int32)
  parts_hi = [jnp.asarray(hi[c])[idx[..., c]] for c in range(3)]
  parts_lo = [jnp.asarray(lo[c])[idx[..., c]] for c in range(3)]
  s, e1 = _two_sum(parts_hi[2], parts_hi[1])  # BasicSR sums B, G, R (its BGR order)
  s, e2 = _two_sum(s, parts_hi[0])
  s, e3 = _two_sum(s, jnp.float32(hi[3, 0]))
  y_over_255 = s + (((parts_lo[2] + parts_lo[1]) + parts_lo[0] + float(lo[3, 0])) + (e1 + e2 + e3))
  # = round(y_over_255 * 255), written so that the only product is exact: a compiler that contracts a
  # product with a later subtraction into an FMA (XLA on CPU and GPU does) cannot change the result.
  return (y_over_255 * 256.0 - y_over_255)[..., None]


def _prepare(img, ref, crop_border: int, test_y_channel: bool, name: str):
  """Shared front end: shape checks, NHWC, uint8 levels, border crop, optional Y; float32 0..255."""
  img, ref = jnp.asarray(img), jnp.asarray(ref)
  if img.shape != ref.shape:
    raise ValueError(f"{name}: image shapes differ: {img.shape} vs {ref.shape}")
  if img.ndim not in (3, 4):
    raise ValueError(f"{name}: expects HWC or NHWC images, got shape {img.shape}")
  if crop_border < 0:
    raise ValueError(f"{name}: crop_border must be >= 0, got {crop_border}")
  single = img.ndim == 3
  if single:
    img, ref = img[None], ref[None]
  h, w = img.shape[1:3]
  if 2 * crop_border >= min(h, w):
    raise ValueError(f"{name}: crop_border={crop_border} leaves nothing of a {h}x{w} image")
  x, y = to_levels(img), to_levels(ref)
  if crop_border:
    x = x[:, crop_border:-crop_border, crop_border:-crop_border]
    y = y[:, crop_border:-crop_border, crop_border:-crop_border]
  if test_y_channel and x.shape[-1] == 3:
    return rgb_to_y(x), rgb_to_y(y), single
  return x.astype(jnp.float32), y.astype(jnp.float32), single


def _mean_per_image(v: jnp.ndarray) -> jnp.ndarray:
  """Mean over all but the batch axis, summed row by row first so float32 error stays ~1e-7."""
  rows = jnp.sum(v, axis=tuple(range(2, v.ndim)))
  return jnp.sum(rows, axis=1) / (v[0].size)


# 10 log10(2) split so that e * _DB2_HI is exact in float32 for any float32 exponent e.
_DB2 = 10.0 * np.log10(2.0)
_DB2_HI = float(np.round(_DB2 * 4096) / 4096)
_DB2_LO = _DB2 - _DB2_HI


def _db_below_peak(mse: jnp.ndarray) -> jnp.ndarray:
  """10 log10(255^2 / mse) in float32 to ~1e-5 dB even at 100+ dB.

  A float32 log10 of a tiny MSE loses a few 1e-5 dB; splitting mse = m 2^e leaves the log of m in
  [0.5, 1) and an exactly scaled exponent.
  """
  m, e = jnp.frexp(mse)
  e = e.astype(jnp.float32)
  return (np.float32(10.0 * np.log10(255.0 ** 2)) - e * _DB2_HI) - (10.0 * jnp.log10(m) + e * _DB2_LO)


@functools.partial(jax.jit, static_argnames=("crop_border", "test_y_channel"))
def psnr(img, ref, *, crop_border: int = 0, test_y_channel: bool = False) -> jnp.ndarray:
  """PSNR in dB of `img` against `ref` as BasicSR's `calculate_psnr` (conventions in the module doc).

  HWC -> scalar, NHWC -> (N,); identical images give inf.
  """
  x, y, single = _prepare(img, ref, crop_border, test_y_channel, "psnr")
  d = x - y
  mse = _mean_per_image(d * d)
  value = jnp.where(mse == 0, jnp.inf, _db_below_peak(mse))
  return value[0] if single else value


def _filter_valid(x: jnp.ndarray, k: np.ndarray) -> jnp.ndarray:
  """Separable 'valid' correlation of (N, H, W, C) with the 1-D kernel `k` along H then W."""
  h, w = x.shape[1] - WINDOW + 1, x.shape[2] - WINDOW + 1
  x = sum(float(k[i]) * x[:, i:i + h] for i in range(WINDOW))
  return sum(float(k[j]) * x[:, :, j:j + w] for j in range(WINDOW))


def _local_variance(x: jnp.ndarray, mu: jnp.ndarray, window: np.ndarray) -> jnp.ndarray:
  """Gaussian-weighted variance around the local mean, as a sum of squares (no cancellation)."""
  h, w = mu.shape[1:3]
  window = jnp.asarray(window, jnp.float32)

  def row(i, acc):
    rows = jax.lax.dynamic_slice_in_dim(x, i, h, axis=1)
    for j in range(WINDOW):
      d = rows[:, :, j:j + w] - mu
      acc = acc + window[i, j] * (d * d)
    return acc

  return jax.lax.fori_loop(0, WINDOW, row, jnp.zeros_like(mu))


def ssim_map(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """BasicSR's SSIM map of (N, H, W, C) float 0..255 images: (N, H - 10, W - 10, C)."""
  k = _gaussian_1d()
  window = np.outer(k, k)
  mu1, mu2 = _filter_valid(x, k), _filter_valid(y, k)
  d = x - y
  dmu = _filter_valid(d, k)
  var1 = _local_variance(x, mu1, window)
  var2 = _local_variance(y, mu2, window)
  var_d = _local_variance(d, dmu, window)  # = var1 + var2 - 2 cov12
  luminance = 1.0 - dmu * dmu / (mu1 * mu1 + mu2 * mu2 + C1)  # = (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1)
  structure = 1.0 - var_d / (var1 + var2 + C2)  # = (2 cov12 + C2) / (var1 + var2 + C2)
  return luminance * structure


@functools.partial(jax.jit, static_argnames=("crop_border", "test_y_channel"))
def ssim(img, ref, *, crop_border: int = 0, test_y_channel: bool = False) -> jnp.ndarray:
  """SSIM of `img` against `ref` as BasicSR's `calculate_ssim` (conventions in the module doc).

  HWC -> scalar, NHWC -> (N,). Images must be at least 11x11 after the border crop.
  """
  x, y, single = _prepare(img, ref, crop_border, test_y_channel, "ssim")
  if min(x.shape[1:3]) < WINDOW:
    raise ValueError(f"ssim: needs at least {WINDOW}x{WINDOW} pixels after crop_border, "
                     f"got {x.shape[1]}x{x.shape[2]}")
  value = _mean_per_image(ssim_map(x, y))
  return value[0] if single else value


# ----------------------------------------------------------------------------------------------------
# Metrics of images padded onto a larger canvas (batched full-image evaluation).


def _region_masks(hw: jnp.ndarray, size: tuple[int, int], crop_border: int, shrink: int = 0):
  """Row / column masks (N, H), (N, W) of each image's [cb, h - cb - shrink) x [cb, w - cb - shrink)."""
  hw = jnp.asarray(hw, jnp.int32)
  rows = jnp.arange(size[0])[None, :]
  cols = jnp.arange(size[1])[None, :]
  row_ok = (rows >= crop_border) & (rows < hw[:, :1] - crop_border - shrink)
  col_ok = (cols >= crop_border) & (cols < hw[:, 1:] - crop_border - shrink)
  return row_ok, col_ok


def _masked_mean(v: jnp.ndarray, row_ok: jnp.ndarray, col_ok: jnp.ndarray) -> jnp.ndarray:
  """Mean of (N, H, W, C) over the masked rectangle, row-wise first like `_mean_per_image`."""
  v = jnp.where(row_ok[:, :, None, None] & col_ok[:, None, :, None], v, 0.0)
  rows = jnp.sum(v, axis=(2, 3))
  count = (jnp.sum(row_ok, axis=1) * jnp.sum(col_ok, axis=1) * v.shape[-1]).astype(jnp.float32)
  return jnp.sum(rows, axis=1) / count


def _canvas_levels(img, ref, test_y_channel: bool, name: str):
  img, ref = jnp.asarray(img), jnp.asarray(ref)
  if img.shape != ref.shape or img.ndim != 4:
    raise ValueError(f"{name}: expects two NHWC canvases of one shape, got {img.shape} and {ref.shape}")
  x, y = to_levels(img), to_levels(ref)
  if test_y_channel and x.shape[-1] == 3:
    return rgb_to_y(x), rgb_to_y(y)
  return x.astype(jnp.float32), y.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("crop_border", "test_y_channel"))
def region_psnr(img, ref, hw, *, crop_border: int = 0, test_y_channel: bool = False) -> jnp.ndarray:
  """`psnr` of each image's own top-left `hw[i] = (h, w)` region of NHWC canvases: (N,).

  Equals `psnr(img[i, :h, :w], ref[i, :h, :w])` with the same conventions; whatever lies outside
  the region (padding) is ignored. The caller ensures `2 * crop_border < min(h, w)`.
  """
  x, y = _canvas_levels(img, ref, test_y_channel, "region_psnr")
  d = x - y
  mse = _masked_mean(d * d, *_region_masks(hw, x.shape[1:3], crop_border))
  return jnp.where(mse == 0, jnp.inf, _db_below_peak(mse))


@functools.partial(jax.jit, static_argnames=("crop_border", "test_y_channel"))
def region_ssim(img, ref, hw, *, crop_border: int = 0, test_y_channel: bool = False) -> jnp.ndarray:
  """`ssim` of each image's own top-left `hw[i] = (h, w)` region of NHWC canvases: (N,).

  The SSIM map of the canvas holds, at every window lying wholly inside an image's cropped region,
  exactly the value the map of that image alone has there; the mean is taken over those windows.
  The caller ensures each region is at least 11x11 after the border crop.
  """
  x, y = _canvas_levels(img, ref, test_y_channel, "region_ssim")
  if min(x.shape[1:3]) < WINDOW:
    raise ValueError(f"region_ssim: canvas {x.shape[1]}x{x.shape[2]} is smaller than {WINDOW}x{WINDOW}")
  m = ssim_map(x, y)
  return _masked_mean(m, *_region_masks(hw, m.shape[1:3], crop_border, shrink=WINDOW - 1))
