"""A JPEG encode-decode round trip in JAX, following libjpeg's defaults, with the quality traced.

What libjpeg (and so PIL, OpenCV) does for an RGB image, and what this does the same way:
- 8-bit input; JFIF full-range RGB -> YCbCr (BT.601 weights), rounded to integers;
- 4:2:0 chroma: Cb/Cr averaged over 2x2 pixels (libjpeg's alternating 1/2 rounding bias);
- edge replication up to whole blocks where libjpeg does it (cropped away after decoding);
- 8x8 orthonormal DCT-II of samples - 128, quantisation by the IJG tables (JPEG spec Annex K) scaled by
  quality exactly as `jpeg_quality_scaling` + `jpeg_add_quant_table(force_baseline=TRUE)`: scale =
  5000 / q for q < 50 else 200 - 2 q (integer division), entries (base * scale + 50) / 100 clamped to
  [1, 255]; coefficients rounded half away from zero;
- decoding: dequantise, IDCT, + 128, round and clip; chroma upsampled by libjpeg's "fancy" triangle
  filter (3/4, 1/4 per axis); YCbCr -> RGB rounded and clipped.
Differences from libjpeg: the DCT is exact float (libjpeg's default is the 13-bit integer "islow"
approximation) and the fancy upsampling rounds once instead of with libjpeg's alternating biases, so a
few coefficients land one quantisation step apart; the decoded images agree with PIL's to 40-50 dB
(measured numbers in tests/test_degrade.py). Entropy coding is lossless and skipped.

Cost: four 8x8 matmuls per 8x8 block (DCT, IDCT on three planes); negligible next to a network step.
"""

import jax.numpy as jnp
import numpy as np

# IJG / JPEG Annex K tables, natural (row-major) order.
LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
], np.int32).reshape(8, 8)
CHROMA_TABLE = np.full((8, 8), 99, np.int32)
CHROMA_TABLE[:4, :4] = np.array([
    17, 18, 24, 47,
    18, 21, 26, 66,
    24, 26, 56, 99,
    47, 66, 99, 99,
]).reshape(4, 4)


def _dct_matrix() -> np.ndarray:
  n = np.arange(8)
  d = np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16) * np.sqrt(2 / 8)
  d[0] /= np.sqrt(2)
  return d


DCT = _dct_matrix()  # orthonormal: coefficients = DCT @ block @ DCT.T


def quant_tables(quality) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Luma and chroma tables (int32, 8x8) for a (traced) quality, as libjpeg scales them."""
  q = jnp.clip(jnp.round(quality), 1, 100).astype(jnp.int32)
  scale = jnp.where(q < 50, 5000 // q, 200 - 2 * q)
  make = lambda base: jnp.clip((jnp.asarray(base) * scale + 50) // 100, 1, 255)
  return make(LUMA_TABLE), make(CHROMA_TABLE)


def _round_half_away(x):
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def _blocks_roundtrip(plane: jnp.ndarray, table: jnp.ndarray) -> jnp.ndarray:
  """DCT, quantise, dequantise, IDCT of a 2-D plane (sides multiples of 8) of 0..255 samples."""
  h, w = plane.shape
  x = (plane - 128.0).reshape(h // 8, 8, w // 8, 8)
  d = jnp.asarray(DCT, plane.dtype)
  coef = jnp.einsum("ui,aibk,vk->aubv", d, x, d, precision="highest")
  t = table.astype(plane.dtype)[None, :, None, :]
  coef = _round_half_away(coef / t) * t
  x = jnp.einsum("ui,aubv,vk->aibk", d, coef, d, precision="highest")
  return jnp.clip(jnp.round(x.reshape(h, w) + 128.0), 0.0, 255.0)


def _downsample_2x2(plane):
  h, w = plane.shape
  s = plane.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
  bias = jnp.where(jnp.arange(w // 2) % 2 == 0, 1.0, 2.0)  # libjpeg h2v2_downsample's dither of ties
  return jnp.floor((s + bias) / 4.0)


def _fancy_upsample_axis(x, axis):
  """Doubles `axis`: each sample becomes (3 x + its neighbour) / 4 toward either side, edges replicated."""
  x = jnp.moveaxis(x, axis, 0)
  p = jnp.pad(x, ((1, 1),) + ((0, 0),) * (x.ndim - 1), mode="edge")
  out = jnp.stack([0.75 * x + 0.25 * p[:-2], 0.75 * x + 0.25 * p[2:]], axis=1)
  return jnp.moveaxis(out.reshape((2 * x.shape[0],) + x.shape[1:]), 0, axis)


def _fancy_upsample_2x2(plane):
  return jnp.round(_fancy_upsample_axis(_fancy_upsample_axis(plane, 0), 1))


def _pad_edge(plane, mult_h, mult_w):
  return jnp.pad(plane, ((0, -plane.shape[0] % mult_h), (0, -plane.shape[1] % mult_w)), mode="edge")


def jpeg(image: jnp.ndarray, quality) -> jnp.ndarray:
  """JPEG-compresses and decodes one HWC RGB image in [0, 1] at (traced) quality 1..100; same shape/dtype.

  The output is on the 8-bit grid, as a decoded JPEG is. Quality is rounded to an integer, as libjpeg's is.
  """
  h, w, c = image.shape
  if c != 3:
    raise ValueError(f"jpeg: expects an RGB image (3 channels), got shape {image.shape}")
  dtype = image.dtype
  x = jnp.round(jnp.clip(image.astype(jnp.float32), 0.0, 1.0) * 255.0)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  y = jnp.round(0.299 * r + 0.587 * g + 0.114 * b)
  cb = jnp.round(-0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0)
  cr = jnp.round(0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0)
  luma_q, chroma_q = quant_tables(quality)
  y = _blocks_roundtrip(_pad_edge(y, 8, 8), luma_q)[:h, :w]
  ch, cw = -(-h // 2), -(-w // 2)

  def chroma(p):
    # libjpeg pads columns before downsampling, rows after it; its decoder upsamples from the last real
    # chroma sample, not from the padding.
    p = _downsample_2x2(_pad_edge(p, 2, 16))
    p = _blocks_roundtrip(_pad_edge(p, 8, 8), chroma_q)[:ch, :cw]
    return _fancy_upsample_2x2(p)[:h, :w] - 128.0

  cb, cr = chroma(cb), chroma(cr)
  rgb = jnp.stack([
      y + jnp.round(1.402 * cr),
      y + jnp.round(-0.344136286 * cb - 0.714136286 * cr),
      y + jnp.round(1.772 * cb),
  ], axis=-1)
  rgb = jnp.clip(rgb, 0.0, 255.0)
  return (rgb / 255.0).astype(dtype)
