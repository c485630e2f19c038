"""Prior-fusion losses: pull the restored image toward the batch's `prior` only in ways that survive
misalignment.

A generative "restoration" (GPT-4o and the like) used as a prior looks clean but is not pixel-faithful:
it is shifted, rescaled, re-composed, re-toned. These terms compare the restored image with the prior
through statistics that such changes barely move, and none of them reads `target`, so any of them (in
particular `prior_shift_l1`) can supervise where no pixel-level ground truth exists:

  prior_color      low-frequency colour and tone: L1 between both images area-downsampled to size x size
                   and Gaussian-blurred there;
  prior_patch      contextual loss (Mechrez et al., ECCV 2018) between their patches: each prior patch
                   should have a restored patch that is its clear nearest neighbour, wherever it lies
                   (restored patches at every position, so any integer shift keeps exact matches);
  prior_gradient   gradient statistics compared globally: the distribution of gradient magnitudes
                   (1-D Wasserstein distance of soft histograms) and the magnitude-weighted histogram of
                   gradient orientations (L1);
  prior_shift_l1   the prior as the target: L1 at the best integer shift within +-max_shift pixels.

All work on NHWC images in [0, 1] and average over the batch. A term whose batch has no `prior` fails at
trace time naming the term and the data options that provide priors.
"""

import jax
import jax.numpy as jnp
import numpy as np

from restorejax.data import degrade
from restorejax.losses.resize import resize

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # numpy: importing must not start a JAX backend


def require_prior(batch, term: str) -> jnp.ndarray:
  """The batch's prior, or a ValueError naming the term and how to get priors into batches."""
  if batch.get("prior_mask") is not None:  # their zero priors would be pulled toward, not ignored
    raise ValueError(f"config.losses.{term}: the dataset has examples without a prior (prior_absent in its "
                     "dataset_info.json); the prior loss terms need a prior for every example: rebuild "
                     "without them or set this term's weight to 0")
  if batch.get("prior") is None:
    raise ValueError(f"config.losses.{term}: the batch has no 'prior' (set config.data.use_prior=True with a "
                     "source that has priors, or enable config.data.simulated_prior to simulate them from "
                     "the targets), or set this term's weight to 0")
  return batch["prior"].astype(jnp.float32)


def _same_shape(restored, prior, term: str) -> None:
  if restored.shape != prior.shape:
    raise ValueError(f"config.losses.{term}: restored {tuple(restored.shape)} and prior "
                     f"{tuple(prior.shape)} differ in shape")


# --- (a) low-frequency colour and tone ----------------------------------------------------------------

def prior_color(restored, batch, *, aux=None, size: int = 8, blur: float = 1.0, resize_method: str = "area"):
  """L1 between restored and prior downsampled to `size` (shorter side), then blurred with a Gaussian of
  sigma `blur` low-resolution pixels (0: none): colour and tone only.

  The blur removes most of what block averaging keeps of a shift: on 64x64 dead-leaves images shifted
  by 2 pixels the term is about 9 % of the L1 between them (area averaging alone: 35 %).
  """
  del aux
  prior = require_prior(batch, "prior_color")
  _same_shape(restored, prior, "prior_color")

  def low(images):
    small = resize(images, size, resize_method)
    return jax.vmap(lambda im: degrade.gaussian_blur(im, blur))(small) if blur > 0 else small

  return jnp.mean(jnp.abs(low(restored) - low(prior)))


# --- (b) contextual loss between patches --------------------------------------------------------------

def patches(images: jnp.ndarray, patch: int, stride: int) -> jnp.ndarray:
  """(B, H, W, C) -> (B, N, patch * patch * C): every `patch` x `patch` window at `stride` (valid)."""
  p = jax.lax.conv_general_dilated_patches(images, (patch, patch), (stride, stride), "VALID",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return p.reshape(p.shape[0], -1, p.shape[-1])


def contextual_similarity(x: jnp.ndarray, y: jnp.ndarray, bandwidth: float, eps: float = 1e-5) -> jnp.ndarray:
  """CX(X, Y) per image for features x (B, N, D) and y (B, M, D) (Mechrez et al. 2018, eqs. 1-4).

  Features are centred on the mean of y and normalised; d_ij is the cosine distance, made relative to
  x_i's nearest y (d_ij / (min_k d_ik + eps)) and turned into affinities exp((1 - d~_ij) / h) normalised
  over j; CX = mean_j max_i CX_ij, 1 when every y_j is some x_i's clear nearest neighbour.
  """
  mu = jnp.mean(y, axis=1, keepdims=True)
  unit = lambda f: (f - mu) * jax.lax.rsqrt(jnp.sum(jnp.square(f - mu), axis=-1, keepdims=True) + eps)
  d = 1.0 - jnp.einsum("bnd,bmd->bnm", unit(x), unit(y))
  d_rel = d / (jnp.min(d, axis=2, keepdims=True) + eps)
  cx = jax.nn.softmax(-d_rel / bandwidth, axis=2)  # = exp((1 - d~)/h) / sum_k exp((1 - d~_ik)/h)
  return jnp.mean(jnp.max(cx, axis=1), axis=1)


def prior_patch(restored, batch, *, aux=None, patch: int = 5, stride: int = 4, restored_stride: int = 1,
                bandwidth: float = 0.5, size: int = 0):
  """-log CX(restored patches, prior patches) with raw RGB patches as features (no VGG weights here).

  Prior patches are taken every `stride` pixels, restored ones every `restored_stride` (1: everywhere,
  so a prior shifted by any whole number of pixels still finds exact matches). Blind to where patches
  lie: a permutation of the prior's patches leaves it unchanged. `size` > 0 first resizes both images to
  that shorter side; the cost grows with (number of restored patches) x (number of prior patches).
  """
  del aux
  prior = require_prior(batch, "prior_patch")
  _same_shape(restored, prior, "prior_patch")
  method = "bilinear" if size else "none"
  x = patches(resize(restored, size, method), patch, restored_stride)
  y = patches(resize(prior, size, method), patch, stride)
  return jnp.mean(-jnp.log(contextual_similarity(x, y, bandwidth)))


# --- (c) gradient statistics --------------------------------------------------------------------------

def _soft_histogram(values: jnp.ndarray, weights: jnp.ndarray, bins: int, width: float,
                    period: float = 0.0) -> jnp.ndarray:
  """(B, P) values -> (B, bins) triangular-kernel histogram with bin centres k * width, normalised.

  With `period` > 0 the bins wrap around (orientations).
  """
  centres = jnp.arange(bins, dtype=jnp.float32) * width
  diff = values[..., None] - centres
  if period:
    diff = jnp.remainder(diff + period / 2, period) - period / 2
  h = jnp.sum(weights[..., None] * jnp.maximum(0.0, 1.0 - jnp.abs(diff) / width), axis=1)
  return h / (jnp.sum(h, axis=-1, keepdims=True) + 1e-12)


def gradient_histograms(images: jnp.ndarray, bins: int, max_magnitude: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Luma gradient magnitude histogram and magnitude-weighted orientation histogram, each (B, bins)."""
  lum = images.astype(jnp.float32) @ _LUMA
  gx = (lum[:, :-1, 1:] - lum[:, :-1, :-1]).reshape(lum.shape[0], -1)
  gy = (lum[:, 1:, :-1] - lum[:, :-1, :-1]).reshape(lum.shape[0], -1)
  sq = gx * gx + gy * gy
  flat = sq < 1e-12  # atan2 and sqrt have no gradient at 0: give them a harmless input there
  mag = jnp.where(flat, 0.0, jnp.sqrt(jnp.where(flat, 1.0, sq)))
  angle = 2.0 * jnp.arctan2(jnp.where(flat, 0.0, gy), jnp.where(flat, 1.0, gx))  # doubled: mod pi
  width = max_magnitude / (bins - 1)
  h_mag = _soft_histogram(jnp.minimum(mag, max_magnitude), jnp.ones_like(mag), bins, width)
  h_ori = _soft_histogram(angle, mag, bins, 2.0 * jnp.pi / bins, period=2.0 * jnp.pi)
  return h_mag, h_ori


def prior_gradient(restored, batch, *, aux=None, bins: int = 16, max_magnitude: float = 0.5,
                   orientation_weight: float = 1.0):
  """W1 between gradient-magnitude histograms + orientation_weight * L1 between orientation histograms.

  Global statistics: blind to where edges are, sensitive to how many, how strong and which way. W1 is in
  units of gradient magnitude (the mean absolute difference of the two magnitude CDFs times their range).
  """
  del aux
  prior = require_prior(batch, "prior_gradient")
  if bins < 2:
    raise ValueError(f"config.losses.prior_gradient.bins must be at least 2, got {bins}")
  mag_r, ori_r = gradient_histograms(restored, bins, max_magnitude)
  mag_p, ori_p = gradient_histograms(prior, bins, max_magnitude)
  width = max_magnitude / (bins - 1)
  w1 = jnp.sum(jnp.abs(jnp.cumsum(mag_r - mag_p, axis=-1)), axis=-1) * width
  l1 = jnp.sum(jnp.abs(ori_r - ori_p), axis=-1)
  return jnp.mean(w1 + orientation_weight * l1)


# --- (d) the prior as a misalignment-tolerant target --------------------------------------------------

def prior_shift_l1(restored, batch, *, aux=None, max_shift: int = 4, size: int = 0):
  """The prior as target where no ground truth exists: per image, the L1 between the restored image's
  interior and the prior shifted by the best (dy, dx) in [-max_shift, max_shift]^2 (after both are
  resized to `size`, 0: as they are). Never reads `target`."""
  del aux
  prior = require_prior(batch, "prior_shift_l1")
  _same_shape(restored, prior, "prior_shift_l1")
  method = "bilinear" if size else "none"
  r, p = resize(restored, size, method), resize(prior, size, method)
  s = max_shift
  h, w = r.shape[1:3]
  if s < 0 or 2 * s >= min(h, w):
    raise ValueError(f"config.losses.prior_shift_l1.max_shift={max_shift} does not fit {h}x{w} images")
  inner = r[:, s:h - s, s:w - s]
  errors = [jnp.mean(jnp.abs(inner - p[:, s + dy:h - s + dy, s + dx:w - s + dx]), axis=(1, 2, 3))
            for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
  return jnp.mean(jnp.min(jnp.stack(errors, axis=1), axis=1))
