"""PyTorch semantics the ported networks rely on, in NHWC: default init, (un)shuffles, upsampling, padding.

Official weights only reproduce the official outputs if these match PyTorch exactly, channel order included,
so they live in one place and are tested against hand computations.
"""

import math

import flax.linen as nn
import jax.numpy as jnp

# PyTorch's default conv/linear kernel init (kaiming_uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# timm's trunc_normal_(std=.02) used for transformer linears and position tables (cut at +-2, i.e. 100 sigma).
TRUNC_NORMAL_02 = nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)


def pixel_shuffle(x: jnp.ndarray, r: int) -> jnp.ndarray:
  """torch.nn.PixelShuffle in NHWC: input channel c*r*r + i*r + j goes to output pixel (h*r+i, w*r+j)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, c // (r * r), r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c // (r * r))


def pixel_unshuffle(x: jnp.ndarray, r: int) -> jnp.ndarray:
  """torch.nn.PixelUnshuffle in NHWC, the inverse of `pixel_shuffle`: pixel (h*r+i, w*r+j) of channel c
  goes to channel c*r*r + i*r + j."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c)
  x = x.transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, h // r, w // r, c * r * r)


def upsample_nearest(x: jnp.ndarray, r: int) -> jnp.ndarray:
  """F.interpolate(scale_factor=r, mode='nearest') for an integer factor: each pixel becomes an r x r block."""
  return jnp.repeat(jnp.repeat(x, r, axis=1), r, axis=2)


def pad_to_multiple(x: jnp.ndarray, multiple: int, mode: str = "constant") -> jnp.ndarray:
  """Pads H and W of an NHWC array at the bottom/right up to a multiple (jnp.pad `mode`, e.g. 'reflect')."""
  _, h, w, _ = x.shape
  pad = ((0, 0), (0, -h % multiple), (0, -w % multiple), (0, 0))
  if pad[1][1] == 0 and pad[2][1] == 0:
    return x
  return jnp.pad(x, pad, mode=mode)


def leaky_relu(x: jnp.ndarray, slope: float) -> jnp.ndarray:
  return jnp.where(x >= 0, x, x * jnp.asarray(slope, x.dtype))


def check_power_of_two_or_three(scale: int, field: str) -> None:
  if not (scale == 3 or (scale >= 1 and 2 ** round(math.log2(scale)) == scale)):
    raise ValueError(f"{field}: scale {scale} is not supported (2**n or 3)")
