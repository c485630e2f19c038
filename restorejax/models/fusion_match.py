"""Correspondence fusion ('match'): find where the prior shows each part of the image, bring it there, gate it.

A generative prior is shifted, rescaled and re-toned (restorejax/data/priors.py); a pixel-wise fusion
('concat', 'sft') reads the wrong place. Reference-based super-resolution meets the same problem with a
reference photo: TTSR (Yang et al., CVPR 2020) matches unfolded feature patches of the input and the
reference by normalised inner product, takes the best match per position (hard attention) and weights the
transferred texture by the match's relevance (soft attention); C2-Matching (Jiang et al., CVPR 2021)
learns the matching features and aggregates the reference with offsets from the correspondence; video
restoration (EDVR, BasicVSR++) aligns neighbouring frames by predicted offsets with bilinear sampling.
This module is our own, smaller version of that recipe, shaped for any backbone with feature stages:

1. `Correspondence`, once per call, at 1/2**`MATCH_LEVEL` of the padded input: the degraded image and the
   prior are described by the same features, each image first normalised per channel (mean and spread
   over its pixels, so an exposure or white-balance change does not move the descriptors):
   - fixed ones: the 3x3 neighbourhood of the average-pooled image (cell means suppress noise and
     hallucinated fine texture), useful from the first step;
   - learned ones: a small shared (Siamese) CNN, whose similarity is added with a learned weight that
     starts at zero.
   Each position's similarity to every prior position within +-`RADIUS` cells (a local cost volume,
   cosine similarities), the zero offset's raised by a learned bias (so that an aligned prior, whose
   matches tie with their neighbours in flat regions and along edges, is taken where it is), goes
   through a softmax with a learned inverse temperature (50 at first) restricted to the 3x3 offsets
   around the best one: the expected offset is a sub-cell flow (differentiable, unlike TTSR's argmax)
   and the expected similarity its confidence. A softmax over the whole window at temperature 10 (the
   first version) moved an aligned prior by 0.3 cells (1.2 px) on average.
2. `Transfer`, after each backbone stage: the prior encoder's features at that stage's scale (the same
   `PriorEncoder` as 'sft') are warped by the flow, resized to that grid and scaled to its pixels
   (bilinear sampling, border-clamped), and a gate reads [backbone features, warped prior, confidence]:
   `x + present * sigmoid(gate) * value`, `value` from a zero-initialised 1x1 conv, so an initialised
   network computes its backbone exactly and an example without a prior computes its backbone always.

Absent priors are zeros before anything here reads them (`fusion.prior_input`), and the transfer is
multiplied by `present`, so an absent example's output depends neither on its prior's pixels nor on the
fusion's parameters. Parameters: `fusion_match` (the correspondence) and `fusion_match_<stage>`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from restorejax.models import convs
from restorejax.models.torch_compat import TORCH_INIT, leaky_relu

MATCH_LEVEL = 2  # the cost volume's scale: 1/4 of the input (16 x 16 cells for a 64 x 64 patch)
RADIUS = 3       # search window +-3 cells: +-12 input pixels, the shifts of severity 0.6 on 64 x 64 patches
TEMPERATURE = 50.0       # initial inverse temperature on cosine similarities (learned from here)
ZERO_OFFSET_BIAS = 0.05  # initial similarity bonus of the zero offset (learned): ties mean "aligned"


def normalize_image(x: jnp.ndarray) -> jnp.ndarray:
  """Per example and channel: zero mean, unit spread over the pixels (float32)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-4)


def _unit(x: jnp.ndarray) -> jnp.ndarray:
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-6)


def pooled_patches(x: jnp.ndarray, level: int) -> jnp.ndarray:
  """Unit-length 3x3 neighbourhoods (edge-padded) of `x` average-pooled by 2**level (ceil grid)."""
  f = 2 ** level
  b, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, -h % f), (0, -w % f), (0, 0)), mode="edge")
  x = x.reshape(b, x.shape[1] // f, f, x.shape[2] // f, f, c).mean(axis=(2, 4))
  hp, wp = x.shape[1:3]
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  patches = jnp.concatenate([p[:, i:i + hp, j:j + wp] for i in range(3) for j in range(3)], axis=-1)
  return _unit(patches - jnp.mean(patches, axis=-1, keepdims=True))


def offsets(radius: int) -> np.ndarray:
  """((2r+1)**2, 2) window offsets (dy, dx), row-major."""
  r = np.arange(-radius, radius + 1, dtype=np.float32)
  dy, dx = np.meshgrid(r, r, indexing="ij")
  return np.stack([dy.reshape(-1), dx.reshape(-1)], axis=-1)


def local_correlation(q: jnp.ndarray, k: jnp.ndarray, radius: int) -> jnp.ndarray:
  """(B, h, w, (2r+1)**2): q[y, x] . k[y + dy, x + dx] for each window offset (k edge-padded)."""
  _, h, w, _ = q.shape
  kp = jnp.pad(k, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
  n = 2 * radius + 1
  return jnp.stack([jnp.sum(q * kp[:, i:i + h, j:j + w], axis=-1, dtype=jnp.float32)
                    for i in range(n) for j in range(n)], axis=-1)


def warp(feats: jnp.ndarray, flow: jnp.ndarray) -> jnp.ndarray:
  """feats sampled at (y + flow_y, x + flow_x), bilinear, coordinates clamped to the grid."""
  b, h, w, c = feats.shape
  ys = jnp.clip(jnp.arange(h, dtype=jnp.float32)[None, :, None] + flow[..., 0], 0, h - 1)
  xs = jnp.clip(jnp.arange(w, dtype=jnp.float32)[None, None, :] + flow[..., 1], 0, w - 1)
  y0, x0 = jnp.floor(ys), jnp.floor(xs)
  wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  flat = feats.reshape(b, h * w, c)
  at = lambda yy, xx: jnp.take_along_axis(flat, (yy * w + xx).reshape(b, h * w, 1), axis=1).reshape(
      b, h, w, c).astype(jnp.float32)
  out = (at(y0, x0) * (1 - wy) * (1 - wx) + at(y0, x1) * (1 - wy) * wx
         + at(y1, x0) * wy * (1 - wx) + at(y1, x1) * wy * wx)
  return out.astype(feats.dtype)


class MatchFeatures(nn.Module):
  """The learned (Siamese) descriptors: 3x3 convs, a stride-2 conv per level, unit length at the end."""

  width: int = 16
  level: int = MATCH_LEVEL
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    conv = lambda s, name: nn.Conv(self.width, (3, 3), strides=s, padding=1, dtype=self.dtype,
                                   kernel_init=TORCH_INIT, name=name)
    x = leaky_relu(conv(1, "conv_in")(x.astype(self.dtype)), 0.2)
    for level in range(self.level):
      x = leaky_relu(conv(2, f"down_{level}")(x), 0.2)
    return _unit(conv(1, "conv_out")(x).astype(jnp.float32))


class Correspondence(nn.Module):
  """(degraded, prior) images on one grid -> (flow (B, h, w, 2) in cells (dy, dx), confidence (B, h, w, 1)),
  both at 1/2**`level`: where each cell of the degraded image is found in the prior, and how well."""

  width: int = 16
  level: int = MATCH_LEVEL
  radius: int = RADIUS
  dtype: Any = jnp.float32
  remat: bool = False
  temperature: float = TEMPERATURE
  zero_bias: float = ZERO_OFFSET_BIAS

  @nn.compact
  def __call__(self, degraded: jnp.ndarray, prior: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    a, b = normalize_image(degraded), normalize_image(prior)
    sim = local_correlation(pooled_patches(a, self.level), pooled_patches(b, self.level), self.radius)
    cls = nn.remat(MatchFeatures) if self.remat else MatchFeatures
    learned = cls(self.width, self.level, self.dtype, name="features")  # one module, both images
    weight = self.param("learned_weight", nn.initializers.zeros, ())
    sim = sim + weight * local_correlation(learned(a), learned(b), self.radius)
    window = jnp.asarray(offsets(self.radius))
    centre = (2 * self.radius + 1) ** 2 // 2
    bias = self.param("zero_offset_bias", nn.initializers.constant(self.zero_bias), ())
    log_temperature = self.param("log_temperature", nn.initializers.constant(np.log(self.temperature)), ())
    logits = sim.at[..., centre].add(bias) * jnp.exp(log_temperature)
    # Soft-argmax only around the best offset: far near-equal matches (flat regions, straight edges)
    # would otherwise pull the flow off it.
    best = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
    near = jnp.max(jnp.abs(window[best][..., None, :] - window), axis=-1) <= 1
    p = jax.nn.softmax(jnp.where(near, logits, -1e9), axis=-1)
    flow = p @ window
    confidence = jnp.sum(p * sim, axis=-1, keepdims=True)
    return flow, confidence


class Transfer(nn.Module):
  """`x + present * sigmoid(gate) * value` from [x, prior features warped by the flow, confidence];
  `value` starts at zero, so the layer starts as the identity."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, feats: jnp.ndarray, flow: jnp.ndarray, confidence: jnp.ndarray,
               present: jnp.ndarray) -> jnp.ndarray:
    b, h, w, c = x.shape
    if feats.shape[1:3] != (h, w):  # a hook given the wrong level: a bug in the network, not input
      raise ValueError(f"Transfer: prior features {feats.shape[1:3]} and backbone features {(h, w)} "
                       "are on different grids")
    fh, fw = flow.shape[1:3]
    if (fh, fw) != (h, w):
      flow = jax.image.resize(flow, (b, h, w, 2), "linear") * jnp.array([h / fh, w / fw], jnp.float32)
      confidence = jax.image.resize(confidence, (b, h, w, 1), "linear")
    aligned = warp(feats.astype(self.dtype), flow)
    pw = lambda f, name, init=TORCH_INIT: convs.PointwiseConv(f, dtype=self.dtype, kernel_init=init,
                                                               name=name)
    hidden = leaky_relu(pw(feats.shape[-1], "shared")(
        jnp.concatenate([x.astype(self.dtype), aligned, confidence.astype(self.dtype)], axis=-1)), 0.2)
    gate = jax.nn.sigmoid(pw(c, "gate")(hidden))
    value = pw(c, "value", nn.initializers.zeros)(hidden)
    delta = jnp.where(present[:, None, None, None], gate * value, 0).astype(self.dtype)
    return x.astype(self.dtype) + delta
