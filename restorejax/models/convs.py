"""Convolutions in the forms XLA runs fast on every backend, with the parameters of `nn.Conv`.

- `PointwiseConv` (1x1): a reshape and a matmul. XLA:CPU lowers the weight gradient of a 1x1
  convolution to a slow convolution (8x the matmul's cost for NAFNet-sized tensors).
- `DepthwiseConv` (k x k, one filter per channel): k*k shifted multiply-adds. XLA:CPU's grouped
  convolution is ~50x slower; on accelerators the shifted form fuses into one memory-bound kernel,
  which is what a depthwise convolution is anyway.

Parameter names and shapes equal Flax's `nn.Conv` (`kernel` (1, 1, I, O) / (k, k, 1, C), `bias`), so
converted weights and checkpoints do not depend on which implementation ran.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class PointwiseConv(nn.Module):
  """1x1 convolution, NHWC."""

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (1, 1, c, self.features)).astype(self.dtype)
    y = (x.astype(self.dtype).reshape(-1, c) @ kernel[0, 0]).reshape(*x.shape[:-1], self.features)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
    return y


class DepthwiseConv(nn.Module):
  """Stride-1 'same' depthwise convolution (zero padding, odd kernel), NHWC, channel multiplier 1."""

  kernel_size: int = 3
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, c)).astype(self.dtype)
    y = depthwise(x.astype(self.dtype), kernel[:, :, 0])
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (c,)).astype(self.dtype)
    return y


def shifted_sum(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """sum_ij pad(x)[:, i:i+h, j:j+w] * kernel[i, j]: the 'same' depthwise correlation as k*k multiply-adds."""
  k, h, w = kernel.shape[0], x.shape[1], x.shape[2]
  r = k // 2
  xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
  return sum(xp[:, i:i + h, j:j + w, :] * kernel[i, j] for i in range(k) for j in range(k))


@jax.custom_vjp
def depthwise(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """Stride-1 'same' depthwise correlation of NHWC `x` with a (k, k, C) `kernel`, zero padding.

  Its own VJP because autodiff's transpose of the k*k slices is k*k padded copies of the output gradient
  (one fresh buffer each on XLA:CPU); the input gradient is the same shifted sum with the flipped kernel.
  """
  return shifted_sum(x, kernel)


def _depthwise_fwd(x, kernel):
  return shifted_sum(x, kernel), (x, kernel)


def _depthwise_bwd(res, g):
  x, kernel = res
  k, h, w = kernel.shape[0], x.shape[1], x.shape[2]
  r = k // 2
  dx = shifted_sum(g, kernel[::-1, ::-1])
  xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
  dk = jnp.stack([jnp.stack([jnp.sum(xp[:, i:i + h, j:j + w, :] * g, axis=(0, 1, 2))
                             for j in range(k)]) for i in range(k)])
  return dx, dk.astype(kernel.dtype)


depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)
