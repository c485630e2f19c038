"""Resizing images inside losses (NHWC, traced): area averaging for integer factors, antialiased bilinear
otherwise. Used where a loss compares images at another resolution (DiffLoss's prior resolution, the
low-frequency prior loss) and by the diffusion task for its training resolution."""

import jax
import jax.numpy as jnp

RESIZES = ("area", "bilinear", "none")


def resize(images: jnp.ndarray, size: int, method: str = "area") -> jnp.ndarray:
  """NHWC images scaled so that their shorter side is `size` ('none' or size 0: unchanged).

  'area' averages integer blocks (the factor must divide both sides); 'bilinear' is antialiased linear
  interpolation (any factor).
  """
  if method not in RESIZES:
    raise ValueError(f"resize: unknown method {method!r} (known: {', '.join(RESIZES)})")
  b, h, w, c = images.shape
  if method == "none" or size <= 0 or min(h, w) == size:
    return images
  scale = size / min(h, w)
  oh, ow = round(h * scale), round(w * scale)
  if method == "area":
    if h % oh or w % ow:
      raise ValueError(f"resize 'area': {h}x{w} is not an integer multiple of {oh}x{ow}; use 'bilinear'")
    return images.reshape(b, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
  return jax.image.resize(images, (b, oh, ow, c), "linear", antialias=True)
