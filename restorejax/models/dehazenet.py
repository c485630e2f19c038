"""DehazeNet (Cai et al., IEEE TIP 2016): a small CNN regresses the haze transmission, physics inverts it.

Follows the authors' dense inference code (caibolun/DehazeNet `run_cnn.m`, with the released `dehaze.mat`
weights), which the paper's patch network (16x16 patch -> one transmission value) becomes on full images:

  1. feature extraction: input - 0.5, a 5x5 conv to 16 maps, Maxout over groups of 4 consecutive maps;
  2. multi-scale mapping: parallel 3x3, 5x5, 7x7 convs (16 maps each), concatenated;
  3. local extremum: a 7x7 max filter (stride 1, replicate borders);
  4. non-linear regression: a 6x6 conv to one map and BReLU, min(max(x, 0), 1): the transmission t;
  5. atmospheric light A: among the 1% of pixels with the lowest t, the mean color of those whose gray
     level (MATLAB rgb2gray) is the highest;
  6. t refined by a guided filter (guide: the gray image, radius 50, eps 1e-3);
  7. J = (I - A) / max(t, t_min) + A, the atmospheric scattering model I = J t + A (1 - t) inverted.

Convs are 'same' with symmetric (edge-repeating) borders, as MATLAB's imfilter(..., 'symmetric'); the even
6x6 kernel is anchored like imfilter (2 rows/columns before, 3 after). `t_min` is ours: the MATLAB code does
not bound t, the authors' Caffe re-implementation (zlinker/DehazeNet, linked from the official README)
uses 0.1, and training needs a bound. There are no PyTorch weights; `restorejax.convert.dehazenet` reads
`dehaze.mat`. DehazeNet has no repeated blocks: `scan` is accepted for uniform configs and changes nothing.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from restorejax.models import fusion, restorer
from restorejax.models.torch_compat import TORCH_INIT

PRESETS = {"official": {}}
# MATLAB rgb2gray weights (the luma row of its inverse NTSC transform).
RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def symmetric_conv(x, features: int, k: int, dtype, name: str):
  """MATLAB imfilter(x, kernel, 'same', 'symmetric') as a conv: anchor at index (k - 1) // 2."""
  before = (k - 1) // 2
  x = jnp.pad(x, ((0, 0), (before, k - 1 - before), (before, k - 1 - before), (0, 0)), mode="symmetric")
  return nn.Conv(features, (k, k), padding="VALID", dtype=dtype, kernel_init=TORCH_INIT, name=name)(x)


def max_filter(x: jnp.ndarray, size: int) -> jnp.ndarray:
  """size x size running max, stride 1, replicate borders (Piotr's toolbox convMax)."""
  r = size // 2
  x = jnp.pad(x, ((0, 0), (r, size - 1 - r), (r, size - 1 - r), (0, 0)), mode="edge")
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, 1, 1, 1), "VALID")


def box_sum(x: jnp.ndarray, r: int) -> jnp.ndarray:
  """Sum over the (2r+1)^2 window clipped at the borders (He's boxfilter.m), on (B, H, W, C)."""
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r + 1, r)
    c = jnp.cumsum(jnp.pad(x, pad), axis=axis)
    n = c.shape[axis]
    x = (jax.lax.slice_in_dim(c, 2 * r + 1, n, axis=axis)
         - jax.lax.slice_in_dim(c, 0, n - 2 * r - 1, axis=axis))
  return x


def guided_filter(guide: jnp.ndarray, p: jnp.ndarray, r: int, eps: float) -> jnp.ndarray:
  """He et al.'s O(1) guided filter with a gray guide (guidedfilter.m)."""
  n = box_sum(jnp.ones_like(guide), r)
  mean = lambda t: box_sum(t, r) / n
  mean_i, mean_p = mean(guide), mean(p)
  a = (mean(guide * p) - mean_i * mean_p) / (mean(guide * guide) - mean_i * mean_i + eps)
  b = mean_p - a * mean_i
  return mean(a) * guide + mean(b)


def atmospheric_light(image: jnp.ndarray, gray: jnp.ndarray, t: jnp.ndarray, fraction: float):
  """(B, 1, 1, C): mean color of the brightest-gray pixels among the `fraction` lowest-t pixels."""
  b, h, w, _ = image.shape
  flat_t = t.reshape(b, -1)
  k = max(int(fraction * h * w + 0.5), 1)  # MATLAB round(), at least one pixel
  val = jnp.sort(flat_t, axis=-1)[:, k - 1]
  candidates = flat_t <= val[:, None]
  g = gray.reshape(b, -1)
  g_max = jnp.max(jnp.where(candidates, g, -jnp.inf), axis=-1, keepdims=True)
  chosen = (candidates & (g >= g_max)).astype(image.dtype)
  a = jnp.einsum("bn,bnc->bc", chosen, image.reshape(b, h * w, -1)) / chosen.sum(-1, keepdims=True)
  return a[:, None, None, :]


class Transmission(nn.Module):
  """Steps 1-4: the CNN from (normalised) image to the raw transmission in [0, 1], (B, H, W, 1)."""

  features: int = 16
  maxout_groups: int = 4
  scale_features: int = 16
  scales: Sequence[int] = (3, 5, 7)
  extremum_size: int = 7
  regression_size: int = 6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = symmetric_conv(x, self.features, 5, self.dtype, "conv1")
    b, h, w, c = x.shape
    x = jnp.max(x.reshape(b, h, w, self.maxout_groups, c // self.maxout_groups), axis=-1)
    x = jnp.concatenate([symmetric_conv(x, self.scale_features, k, self.dtype, f"conv{k}x{k}")
                         for k in self.scales], axis=-1)
    x = max_filter(x, self.extremum_size)
    x = symmetric_conv(x, 1, self.regression_size, self.dtype, "ip")
    return jnp.clip(x.astype(jnp.float32), 0.0, 1.0)


class DehazeNet(restorer.Restorer):
  """`model(degraded, prior=None, prior_mask=None) -> restored`; RGB NHWC in [0, 1], any spatial size.

  Attributes:
    features, maxout_groups, scale_features, scales, extremum_size, regression_size: the CNN (official
      16, 4, 16, (3, 5, 7), 7, 6).
    input_offset: subtracted from the input before the CNN (official 0.5).
    airlight_fraction: share of lowest-transmission pixels searched for the atmospheric light (0.01).
    refine_radius, refine_eps: guided-filter refinement of t (50, 1e-3); radius 0 disables it.
    t_min: lower bound on t in the inversion (ours, 0.1; see the module docstring).
    fusion: 'none' or 'concat' (the prior, offset like the input, and its presence plane added as
      channels to the first conv; restorejax.models.fusion). The inversion itself only reads the degraded
      image; 'sft' and 'xattn' are refused (no feature stages to modulate).
    dtype, scan, remat: see `restorer.Restorer`: compute dtype of the CNN; no effect (no repeated
      blocks); rematerialise the CNN.
  """

  features: int = 16
  maxout_groups: int = 4
  scale_features: int = 16
  scales: Sequence[int] = (3, 5, 7)
  extremum_size: int = 7
  regression_size: int = 6
  input_offset: float = 0.5
  airlight_fraction: float = 0.01
  refine_radius: int = 50
  refine_eps: float = 1e-3
  t_min: float = 0.1

  @nn.compact
  def transmission(self, degraded, prior=None, prior_mask=None):
    """The raw CNN transmission (before refinement), (B, H, W, 1)."""
    normalize = lambda img: img - self.input_offset
    fz = fusion.Fusion.of(self, "DehazeNet", degraded, prior, prior_mask, channels=3, normalize=normalize,
                          supported=("none", "concat"),
                          why="its 4-layer CNN regresses one transmission map and has no feature stages "
                              "to modulate; use 'concat'")
    x = fz.concat(normalize(degraded.astype(jnp.float32)))
    if self.features % self.maxout_groups:
      raise ValueError(f"model.features {self.features} must be a multiple of model.maxout_groups "
                       f"{self.maxout_groups}")
    cls = nn.remat(Transmission) if self.remat else Transmission
    return cls(self.features, self.maxout_groups, self.scale_features, tuple(self.scales),
               self.extremum_size, self.regression_size, jnp.dtype(self.dtype), name="cnn")(
                   x.astype(jnp.dtype(self.dtype)))

  def __call__(self, degraded: jnp.ndarray, prior: Optional[jnp.ndarray] = None,
               prior_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    if degraded.shape[-1] != 3:
      raise ValueError(f"DehazeNet needs RGB images; the degraded image has {degraded.shape[-1]} channels")
    image = degraded.astype(jnp.float32)
    t = self.transmission(image, prior, prior_mask)
    gray = jnp.einsum("bhwc,c->bhw", image, jnp.asarray(RGB2GRAY, jnp.float32))[..., None]
    a = jax.lax.stop_gradient(atmospheric_light(image, gray, t, self.airlight_fraction))
    if self.refine_radius > 0:
      t = guided_filter(gray, t, self.refine_radius, self.refine_eps)
    return (image - a) / jnp.maximum(t, self.t_min) + a
