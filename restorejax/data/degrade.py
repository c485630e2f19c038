"""Degradations in JAX, run on the accelerator with fixed shapes.

Each degradation is a pure function of one HWC float image in [0, 1] (and a key where it is random);
`jax.vmap` makes it per-example. Parameters are traced values, so one compiled step covers every sampled
strength. Noise strengths are on the 0..255 scale, as papers quote them (sigma 25 = 25/255).

`from_config(cfg)` turns a `config.data.degrade` block into `fn(key, image) -> degraded`, the one entry
point the trainer uses.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

MAX_KERNEL = 21


def gaussian_kernel1d(sigma: jnp.ndarray, kernel_size=MAX_KERNEL, max_size: int = MAX_KERNEL):
  """A normalised 1-D Gaussian of `max_size` taps, zero outside the central `kernel_size` (traceable)."""
  r = jnp.arange(max_size) - max_size // 2
  sigma = jnp.maximum(sigma, 1e-6)
  k = jnp.exp(-0.5 * (r / sigma) ** 2) * (jnp.abs(r) <= kernel_size // 2)
  return k / k.sum()


def gaussian_blur(image: jnp.ndarray, sigma, *, kernel_size=MAX_KERNEL) -> jnp.ndarray:
  """Isotropic Gaussian blur (separable), reflect-101 borders like cv2.filter2D.

  `kernel_size` (odd, at most 21) may be traced: taps beyond it are zero, the array shape never changes.
  """
  k = gaussian_kernel1d(sigma, kernel_size).astype(image.dtype)
  p = MAX_KERNEL // 2
  x = jnp.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")
  h, w, _ = image.shape
  x = sum(k[i] * x[i:i + h] for i in range(MAX_KERNEL))
  x = sum(k[i] * x[:, i:i + w] for i in range(MAX_KERNEL))
  return x


def gaussian_noise(key: jax.Array, image: jnp.ndarray, sigma) -> jnp.ndarray:
  """Additive white Gaussian noise with standard deviation `sigma` on the 0..255 scale (not clipped)."""
  return image + jax.random.normal(key, image.shape, image.dtype) * (sigma / 255.0)


def quantize(image: jnp.ndarray) -> jnp.ndarray:
  """Clips to [0, 1] and rounds to 8 bits, as a degraded image saved to disk would be."""
  return jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0) / 255.0


def blur_noise(key, image, *, blur_sigma=(0.2, 2.0), noise_sigma=(5.0, 30.0)):
  """The default synthetic degradation: Gaussian blur then Gaussian noise, strengths uniform in ranges."""
  k1, k2, k3 = jax.random.split(key, 3)
  s_blur = jax.random.uniform(k1, (), minval=blur_sigma[0], maxval=blur_sigma[1])
  s_noise = jax.random.uniform(k2, (), minval=noise_sigma[0], maxval=noise_sigma[1])
  return quantize(gaussian_noise(k3, gaussian_blur(image, s_blur), s_noise))


RECIPES = {
    "blur_noise": blur_noise,
}


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "blur_noise",
      "blur_sigma": (0.2, 2.0),
      "noise_sigma": (5.0, 30.0),
  })


def from_config(cfg: ml_collections.ConfigDict) -> Callable[[jax.Array, jnp.ndarray], jnp.ndarray]:
  """`config.data.degrade` -> `fn(key, image)`; the block's `name` picks a recipe, the rest are its options."""
  if cfg.name not in RECIPES:
    raise ValueError(f"config.data.degrade.name: unknown degradation {cfg.name!r} "
                     f"(known: {', '.join(sorted(RECIPES))})")
  options = {k: v for k, v in cfg.items() if k != "name"}
  recipe = RECIPES[cfg.name]
  return lambda key, image: recipe(key, image, **options)
