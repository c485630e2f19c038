"""Full-reference losses between the restored image and the target (NHWC, [0, 1]), each a mean over the
batch: pixel distances (l1, l2, Charbonnier, PSNR), structure (1 - SSIM) and frequency (FFT L1).

A perceptual (VGG feature) loss is not here because no VGG weights can be downloaded where this project is
built; add one as a term whose network parameters come from `restorejax.losses.AUX_BUILDERS` (see there).
"""

import dm_pix
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


def ssim(restored, batch, *, aux=None, filter_size: int = 11, filter_sigma: float = 1.5):
  """1 - SSIM, per image (dm-pix: Gaussian window 11, sigma 1.5, on each channel, no rounding), averaged.

  Images smaller than the window are compared with a window as large as they are.
  """
  del aux
  size = min(filter_size, restored.shape[1], restored.shape[2])
  return 1.0 - jnp.mean(dm_pix.ssim(restored, batch["target"], filter_size=size, filter_sigma=filter_sigma))


FFT_MODES = ("complex", "amplitude")


def fft(restored, batch, *, aux=None, mode: str = "complex"):
  """L1 between the 2-D FFTs (over height and width, unnormalised, per channel) of restored and target.

  'complex': the mean absolute difference of the real and of the imaginary parts, as the frequency loss
  of MIMO-UNet ("Rethinking coarse-to-fine", Cho et al. 2021) and BasicSR-style `FFTLoss` used with
  NAFNet/Restormer-family models (they weight it 0.01..0.1 against L1, since unnormalised spectra are
  large). 'amplitude': the mean absolute difference of the magnitudes only (phase-blind).
  """
  del aux
  if mode not in FFT_MODES:
    raise ValueError(f"config.losses.fft.mode: unknown {mode!r} (known: {', '.join(FFT_MODES)})")
  a = jnp.fft.fft2(restored.astype(jnp.float32), axes=(1, 2))
  b = jnp.fft.fft2(batch["target"].astype(jnp.float32), axes=(1, 2))
  if mode == "amplitude":
    return jnp.mean(jnp.abs(jnp.abs(a) - jnp.abs(b)))
  return 0.5 * (jnp.mean(jnp.abs(a.real - b.real)) + jnp.mean(jnp.abs(a.imag - b.imag)))
