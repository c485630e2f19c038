"""Restormer (Zamir et al., CVPR 2022, swz30/Restormer): the efficient restoration transformer, NHWC.

Faithful to the official `restormer_arch.py`: transformer blocks of MDTA (channel-wise "transposed"
attention over L2-normalised queries/keys with a learned per-head temperature, after 1x1 and depthwise 3x3
convs) and GDFN (GELU-gated depthwise feed-forward), BiasFree or WithBias LayerNorm over channels (eps 1e-5),
3x3 conv + PixelUnshuffle down, 3x3 conv + PixelShuffle up, 1x1 channel reductions on the concatenated
skips of levels 3 and 2 (none at level 1), refinement blocks, a global residual, and the dual-pixel variant
(6 input channels, a 1x1 skip conv instead of the residual). Inputs are reflect-padded to a multiple of 8,
as the official test scripts do, and cropped back.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from restorejax.models import convs, fusion, restorer, stack
from restorejax.models.torch_compat import TORCH_INIT, pad_to_multiple, pixel_shuffle, pixel_unshuffle

_SIZES = dict(dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4, heads=(1, 2, 4, 8),
              ffn_expansion_factor=2.66, bias=False)
# Official configurations (swz30/Restormer */Options/*.yml). The color/gray denoising presets serve the
# blind and the sigma 15/25/50 checkpoints alike.
PRESETS = {
    "motion-deblurring": dict(_SIZES, layer_norm="WithBias"),
    "deraining": dict(_SIZES, layer_norm="WithBias"),
    "defocus-single": dict(_SIZES, layer_norm="WithBias"),
    "defocus-dual-pixel": dict(_SIZES, layer_norm="WithBias", in_channels=6, dual_pixel_task=True),
    "denoise-color": dict(_SIZES, layer_norm="BiasFree"),
    "denoise-gray": dict(_SIZES, layer_norm="BiasFree", in_channels=1, out_channels=1),
    "denoise-real": dict(_SIZES, layer_norm="BiasFree"),
}


class BiasFreeLayerNorm(nn.Module):
  """x / sqrt(var(x) + eps) * scale over channels: the variance is centred, the output is not."""

  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    var = jnp.var(x32, axis=-1, keepdims=True)
    return (x32 * jax.lax.rsqrt(var + self.epsilon) * scale).astype(self.dtype)


def layer_norm(kind: str, dtype, name: str) -> nn.Module:
  if kind == "BiasFree":
    return BiasFreeLayerNorm(dtype=dtype, name=name)
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, name=name)


def _conv(features, k, *, bias, dtype, name, groups=1):
  """nn.Conv's parameters; 1x1 and depthwise in the forms of `convs` (fast on XLA:CPU too)."""
  if k == 1 and groups == 1:
    return convs.PointwiseConv(features, use_bias=bias, dtype=dtype, kernel_init=TORCH_INIT, name=name)
  if groups > 1 and groups == features and k % 2 == 1:  # not a 1-channel output conv
    return convs.DepthwiseConv(k, use_bias=bias, dtype=dtype, kernel_init=TORCH_INIT, name=name)
  return nn.Conv(features, (k, k), padding=k // 2, use_bias=bias, feature_group_count=groups,
                 dtype=dtype, kernel_init=TORCH_INIT, name=name)


class MDTA(nn.Module):
  """Multi-Dconv head transposed attention: heads attend across channels, not pixels (cost linear in HW)."""

  num_heads: int
  bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    temperature = self.param("temperature", nn.initializers.ones, (self.num_heads,))
    qkv = _conv(3 * c, 1, bias=self.bias, dtype=self.dtype, name="qkv")(x)
    qkv = _conv(3 * c, 3, bias=self.bias, dtype=self.dtype, groups=3 * c, name="qkv_dwconv")(qkv)
    # (b, h, w, [q|k|v][head][ch]) -> 3 x (b, head, ch, hw), the official rearrange.
    qkv = qkv.reshape(b, h * w, 3, self.num_heads, c // self.num_heads).transpose(2, 0, 3, 4, 1)
    q, k, v = qkv[0], qkv[1], qkv[2]
    normalize = lambda t: t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    q = normalize(q.astype(jnp.float32))
    k = normalize(k.astype(jnp.float32))
    attn = jnp.einsum("bhcn,bhdn->bhcd", q, k) * temperature[None, :, None, None]
    attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhcd,bhdn->bhcn", attn, v.astype(self.dtype))
    out = out.transpose(0, 3, 1, 2).reshape(b, h, w, c)
    return _conv(c, 1, bias=self.bias, dtype=self.dtype, name="project_out")(out)


class GDFN(nn.Module):
  """Gated-Dconv feed-forward: 1x1 up to 2 x hidden, depthwise 3x3, GELU(x1) * x2, 1x1 down."""

  expansion: float = 2.66
  bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    hidden = int(c * self.expansion)
    x = _conv(2 * hidden, 1, bias=self.bias, dtype=self.dtype, name="project_in")(x)
    x = _conv(2 * hidden, 3, bias=self.bias, dtype=self.dtype, groups=2 * hidden, name="dwconv")(x)
    x1, x2 = jnp.split(x, 2, axis=-1)
    x = jax.nn.gelu(x1, approximate=False) * x2
    return _conv(c, 1, bias=self.bias, dtype=self.dtype, name="project_out")(x)


class TransformerBlock(nn.Module):
  num_heads: int
  ffn_expansion_factor: float = 2.66
  bias: bool = False
  layer_norm: str = "WithBias"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x + MDTA(self.num_heads, self.bias, self.dtype, name="attn")(
        layer_norm(self.layer_norm, self.dtype, "norm1")(x))
    return x + GDFN(self.ffn_expansion_factor, self.bias, self.dtype, name="ffn")(
        layer_norm(self.layer_norm, self.dtype, "norm2")(x))


class Restormer(restorer.FeatureFusionRestorer):
  """`model(degraded, prior=None, prior_mask=None) -> restored`; images NHWC in [0, 1], any spatial size.

  Attributes:
    in_channels, out_channels: image channels (dual-pixel: 6 in, the left and right views concatenated).
    dim: channels of level 1; levels 2, 3, 4 have 2x, 4x, 8x; the decoder's level 1 and refinement 2x.
    num_blocks: transformer blocks of levels 1..3 (encoder and decoder each) and of the latent level 4.
    num_refinement_blocks: blocks after the decoder, at full resolution.
    heads: attention heads per level.
    ffn_expansion_factor, bias: GDFN width factor; biases in every conv.
    layer_norm: 'WithBias' (deblurring, deraining) or 'BiasFree' (denoising).
    dual_pixel_task: output = conv(refined + skip_conv(level-1 input)), no global residual.
    fusion, fusion_width, fusion_heads, fusion_scale, dtype, scan, remat: see `restorer.Restorer`; the
      prior has `out_channels` channels; 'sft' modulates after every encoder, latent and decoder level,
      'xattn' attends at the latent level (1/8).
  """

  in_channels: int = 3
  out_channels: int = 3
  dim: int = 48
  num_blocks: Sequence[int] = (4, 6, 6, 8)
  num_refinement_blocks: int = 4
  heads: Sequence[int] = (1, 2, 4, 8)
  ffn_expansion_factor: float = 2.66
  bias: bool = False
  layer_norm: str = "WithBias"
  dual_pixel_task: bool = False

  def input_padding(self) -> tuple[int, str]:
    return 8, "reflect"  # as the official test scripts pad: three 2x downsamplings

  @nn.compact
  def __call__(self, degraded: jnp.ndarray, prior: Optional[jnp.ndarray] = None,
               prior_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    if len(self.num_blocks) != 4 or len(self.heads) != 4:
      raise ValueError(f"model.num_blocks {tuple(self.num_blocks)} and model.heads {tuple(self.heads)} "
                       "must have 4 entries (levels 1-3 and the latent level)")
    if self.layer_norm not in ("WithBias", "BiasFree"):
      raise ValueError(f"model.layer_norm: unknown {self.layer_norm!r} (known: 'WithBias', 'BiasFree')")
    if not self.dual_pixel_task and self.in_channels != self.out_channels:
      raise ValueError(f"model.in_channels {self.in_channels} != model.out_channels {self.out_channels}: "
                       "the global residual needs them equal (only dual_pixel_task differs)")
    if degraded.shape[-1] != self.in_channels:
      raise ValueError(f"degraded image has {degraded.shape[-1]} channels, model.in_channels is "
                       f"{self.in_channels}")
    fz = fusion.Fusion.of(self, "Restormer", degraded, prior, prior_mask, channels=self.out_channels)
    dtype = jnp.dtype(self.dtype)
    _, h, w, _ = degraded.shape
    multiple, mode = self.input_padding()
    pad = lambda t: pad_to_multiple(t, multiple, mode=mode)
    x = pad(fz.concat(degraded.astype(jnp.float32)))
    fz.encode(pad, 3)
    inp = x[..., :self.in_channels]

    def blocks(n, x, level, name):
      return stack.repeat(
          TransformerBlock, n, x, name=name, scan=self.scan, remat=self.remat,
          num_heads=self.heads[level], ffn_expansion_factor=self.ffn_expansion_factor, bias=self.bias,
          layer_norm=self.layer_norm, dtype=dtype)

    conv = lambda f, k, name, bias=self.bias: _conv(f, k, bias=bias, dtype=dtype, name=name)
    # The patch embedding and resampling convs never have a bias, whatever `bias` says (as official).
    down = lambda x, name: pixel_unshuffle(conv(x.shape[-1] // 2, 3, name, False)(x), 2)
    up = lambda x, name: pixel_shuffle(conv(x.shape[-1] * 2, 3, name, False)(x), 2)
    d = self.dim
    n1, n2, n3, n4 = self.num_blocks

    enc1_in = conv(d, 3, "patch_embed", False)(x.astype(dtype))
    # `stage` runs one level's blocks, then the fusion's modulation of their output.
    stage = lambda n, x, level, name: fz.modulate(blocks(n, x, level, name), level, name)
    enc1 = stage(n1, enc1_in, 0, "encoder_level1")
    enc2 = stage(n2, down(enc1, "down1_2"), 1, "encoder_level2")
    enc3 = stage(n3, down(enc2, "down2_3"), 2, "encoder_level3")
    latent = stage(n4, fz.attend(down(enc3, "down3_4"), 3), 3, "latent")

    x = jnp.concatenate([up(latent, "up4_3"), enc3], axis=-1)
    x = stage(n3, conv(4 * d, 1, "reduce_chan_level3")(x), 2, "decoder_level3")
    x = jnp.concatenate([up(x, "up3_2"), enc2], axis=-1)
    x = stage(n2, conv(2 * d, 1, "reduce_chan_level2")(x), 1, "decoder_level2")
    x = jnp.concatenate([up(x, "up2_1"), enc1], axis=-1)
    x = stage(n1, x, 0, "decoder_level1")
    x = blocks(self.num_refinement_blocks, x, 0, "refinement")

    if self.dual_pixel_task:
      x = x + conv(2 * d, 1, "skip_conv")(enc1_in)
      out = conv(self.out_channels, 3, "output")(x).astype(jnp.float32)
    else:
      out = conv(self.out_channels, 3, "output")(x).astype(jnp.float32) + inp
    return out[:, :h, :w, :]
