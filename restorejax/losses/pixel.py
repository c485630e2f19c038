"""Pixel losses between the restored image and the target (NHWC, [0, 1]), each a mean over the batch."""

import jax.numpy as jnp


def l1(restored, batch, *, aux=None):
  del aux
  return jnp.mean(jnp.abs(restored - batch["target"]))


def l2(restored, batch, *, aux=None):
  del aux
  return jnp.mean(jnp.square(restored - batch["target"]))


def charbonnier(restored, batch, *, aux=None, eps: float = 1e-3):
  """sqrt((x - y)^2 + eps^2), averaged (BasicSR's CharbonnierLoss, eps 1e-3 as in Restormer/MPRNet)."""
  del aux
  return jnp.mean(jnp.sqrt(jnp.square(restored - batch["target"]) + eps * eps))


def psnr(restored, batch, *, aux=None, eps: float = 1e-8):
  """Minus the PSNR in dB, per image then averaged: NAFNet's PSNRLoss (10/ln 10 * log(MSE + 1e-8))."""
  del aux
  mse = jnp.mean(jnp.square(restored - batch["target"]), axis=tuple(range(1, restored.ndim)))
  return jnp.mean(10.0 / jnp.log(10.0) * jnp.log(mse + eps))
