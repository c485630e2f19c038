"""LayerNorm over the channel (last) axis with a closed-form backward: a drop-in for `nn.LayerNorm`.

Same parameters (`scale`, `bias`), same forward arithmetic as `nn.LayerNorm(use_fast_variance=False)`
(statistics in at least float32), so checkpoints and converted weights do not depend on which ran. The
backward is the textbook gradient (the one the official NAFNet's `LayerNorm2d` writes by hand),
`dx = rstd * (g' - mean(g') - x_hat * mean(g' * x_hat))` with `g' = g * scale`, from the saved input
and per-pixel statistics, instead of autodiff's transpose of each step of the forward.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def _stats(x, eps):
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return x, mean, jax.lax.rsqrt(var + eps)


@jax.custom_vjp
def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: jnp.ndarray) -> jnp.ndarray:
  """`(x - mean) / sqrt(var + eps) * scale + bias` over the last axis, in at least float32."""
  x, mean, rstd = _stats(x, eps)
  return (x - mean) * (rstd * scale) + bias


def _layer_norm_fwd(x, scale, bias, eps):
  x32, mean, rstd = _stats(x, eps)
  return (x32 - mean) * (rstd * scale) + bias, (x, mean, rstd, scale, eps)


def _layer_norm_bwd(res, g):
  x, mean, rstd, scale, eps = res
  x_hat = (x.astype(mean.dtype) - mean) * rstd
  g = g.astype(mean.dtype)
  gs = g * scale
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True)
               - x_hat * jnp.mean(gs * x_hat, axis=-1, keepdims=True))
  axes = tuple(range(x.ndim - 1))
  return (dx.astype(x.dtype), jnp.sum(g * x_hat, axis=axes).astype(scale.dtype),
          jnp.sum(g, axis=axes).astype(scale.dtype), jnp.zeros_like(eps))


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """`nn.LayerNorm(epsilon, use_fast_variance=False, dtype)` over the last axis, with `layer_norm`'s VJP."""

  epsilon: float = 1e-6
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    y = layer_norm(x, scale, bias, jnp.asarray(self.epsilon, jnp.float32))
    return y.astype(self.dtype if self.dtype is not None else jnp.result_type(x, scale))
