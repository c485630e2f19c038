"""SwinIR (Liang et al., ICCVW 2021, JingyunLiang/SwinIR): Swin-transformer restoration, NHWC.

Faithful to the official `network_swinir.py`: mean shift (RGB mean 0.4488, 0.4371, 0.4040; zero for other
channel counts) and `img_range` scaling, a 3x3 conv, residual Swin transformer blocks (RSTB: Swin blocks
alternating regular and shifted windows, relative position bias, -100 attention mask across the shifted
regions, then a 1conv/3conv residual), LayerNorm after patch embedding and after the body, and the four
reconstruction heads: 'pixelshuffle' (classical SR), 'pixelshuffledirect' (lightweight SR), 'nearest+conv'
(real-world SR) and '' (upscale 1: denoising, JPEG artifact removal, with an image residual). Inputs are
reflect-padded to a multiple of the window, as the official model does, and the output cropped back.

For SR (`upscale` > 1) the model takes the low-resolution image and returns it `upscale` times larger:
`model(lr)` of shape (B, h, w, C) -> (B, h * upscale, w * upscale, C).

The window never shrinks to the image: the official model does so only when its training patch is not
larger than the window, which no official configuration has. Not ported: stochastic depth and dropout (train-time only, identity at inference) and the absolute
position embedding (`ape`, off in every official model).
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from restorejax.models import fusion, restorer, stack
from restorejax.models.torch_compat import (
    TORCH_INIT, TRUNC_NORMAL_02, check_power_of_two_or_three, leaky_relu, pad_to_multiple, pixel_shuffle,
    upsample_nearest)

RGB_MEAN = (0.4488, 0.4371, 0.4040)

_CLASSICAL = dict(embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=8, mlp_ratio=2.0,
                  resi_connection="1conv", img_range=1.0)
# Official configurations (SwinIR main_test_swinir.py define_model) as `config.model` values.
PRESETS = {
    **{f"classical-sr-x{s}": dict(_CLASSICAL, upscale=s, upsampler="pixelshuffle") for s in (2, 3, 4, 8)},
    **{f"lightweight-sr-x{s}": dict(_CLASSICAL, embed_dim=60, depths=(6,) * 4, num_heads=(6,) * 4,
                                    upscale=s, upsampler="pixelshuffledirect") for s in (2, 3, 4)},
    "real-sr-x4": dict(_CLASSICAL, upscale=4, upsampler="nearest+conv"),
    "real-sr-x4-large": dict(_CLASSICAL, embed_dim=240, depths=(6,) * 9, num_heads=(8,) * 9, upscale=4,
                             upsampler="nearest+conv", resi_connection="3conv"),
    "color-dn": dict(_CLASSICAL, upscale=1, upsampler=""),
    "gray-dn": dict(_CLASSICAL, channels=1, upscale=1, upsampler=""),
    # JPEG: window 7 because JPEG blocks are 8x8; img_range 255 (slightly better per the authors).
    "color-jpeg": dict(_CLASSICAL, upscale=1, upsampler="", window_size=7, img_range=255.0),
    "gray-jpeg": dict(_CLASSICAL, channels=1, upscale=1, upsampler="", window_size=7, img_range=255.0),
}
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")


def relative_position_index(window: int) -> np.ndarray:
  """(w*w, w*w) index into the (2w-1)^2 bias table for each query/key pair, as the official buffer."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: jnp.ndarray, window: int) -> jnp.ndarray:
  """(B, H, W, C) -> (B * nW, window * window, C), windows in raster order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def window_reverse(x: jnp.ndarray, window: int, b: int, h: int, w: int) -> jnp.ndarray:
  x = x.reshape(b, h // window, w // window, window, window, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, -1)


def shifted_window_labels(h: int, w: int, window: int, shift: int, xp=jnp):
  """(nW, N) region of each token of each window after the cyclic shift: tokens of different regions
  were not neighbours before the roll. Built from iota at run time, so large images embed no mask."""
  label = lambda n: (xp.arange(n) >= n - window).astype(xp.int32) + (xp.arange(n) >= n - shift).astype(
      xp.int32)
  regions = label(h)[:, None] * 3 + label(w)[None, :]
  return window_partition(regions[None, :, :, None], window)[..., 0]


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """(nW, N, N) additive mask, the official `attn_mask`: -100 between tokens of different regions."""
  labels = np.asarray(shifted_window_labels(h, w, window, shift, xp=np))
  return np.where(labels[:, None, :] != labels[:, :, None], -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  num_heads: int
  window_size: int
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, labels):
    """x: (B * nW, N, C) windows; labels: None or (nW, N) shifted-window regions (masked across)."""
    bw, n, c = x.shape
    hd = c // self.num_heads
    scale = self.qk_scale or hd ** -0.5
    table = self.param("relative_position_bias_table", TRUNC_NORMAL_02,
                       ((2 * self.window_size - 1) ** 2, self.num_heads))
    dense = lambda f, name, bias=True: nn.Dense(f, use_bias=bias, dtype=self.dtype,
                                                kernel_init=TRUNC_NORMAL_02, name=name)
    qkv = dense(3 * c, "qkv", self.qkv_bias)(x).reshape(bw, n, 3, self.num_heads, hd)
    qkv = qkv.transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * scale, qkv[1], qkv[2]
    attn = jnp.einsum("bhnd,bhmd->bhnm", q, k, preferred_element_type=jnp.float32)
    bias = table[relative_position_index(self.window_size).reshape(-1)].reshape(n, n, -1)
    attn = attn + bias.transpose(2, 0, 1)[None]
    if labels is not None:
      nw = labels.shape[0]
      mask = jnp.where(labels[:, :, None] != labels[:, None, :], -100.0, 0.0)
      attn = attn.reshape(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
      attn = attn.reshape(bw, self.num_heads, n, n)
    attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
    x = jnp.einsum("bhnm,bhmd->bnhd", attn, v).reshape(bw, n, c)
    return dense(c, "proj")(x)


class SwinBlock(nn.Module):
  """LN -> (shifted) window attention -> residual, LN -> MLP (GELU) -> residual, on (B, H, W, C)."""

  num_heads: int
  window_size: int
  shift: int = 0
  mlp_ratio: float = 2.0
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    ws, s = self.window_size, self.shift
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype, name=name)
    y = norm("norm1")(x)
    if s:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))
    labels = shifted_window_labels(h, w, ws, s) if s else None
    y = WindowAttention(self.num_heads, ws, self.qkv_bias, self.qk_scale, self.dtype, name="attn")(
        window_partition(y, ws), labels)
    y = window_reverse(y, ws, b, h, w)
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    x = x + y
    y = nn.Dense(int(c * self.mlp_ratio), dtype=self.dtype, kernel_init=TRUNC_NORMAL_02, name="fc1")(
        norm("norm2")(x))
    y = jax.nn.gelu(y, approximate=False)
    return x + nn.Dense(c, dtype=self.dtype, kernel_init=TRUNC_NORMAL_02, name="fc2")(y)


class SwinPair(nn.Module):
  """Two Swin blocks, regular then shifted windows: the unit repeated (and scanned) inside an RSTB."""

  num_heads: int
  window_size: int
  mlp_ratio: float = 2.0
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(num_heads=self.num_heads, window_size=self.window_size, mlp_ratio=self.mlp_ratio,
              qkv_bias=self.qkv_bias, qk_scale=self.qk_scale, dtype=self.dtype)
    x = SwinBlock(shift=0, name="regular", **kw)(x)
    return SwinBlock(shift=self.window_size // 2, name="shifted", **kw)(x)


def residual_convs(x, kind: str, dtype, name: str):
  """The RSTB / body residual convs: '1conv' a 3x3 conv; '3conv' 3x3 to C/4, 1x1, 3x3 back (LReLU 0.2)."""
  c = x.shape[-1]
  conv = lambda f, k, n: nn.Conv(f, (k, k), padding=k // 2, dtype=dtype, kernel_init=TORCH_INIT, name=n)
  if kind == "1conv":
    return conv(c, 3, name)(x)
  x = leaky_relu(conv(c // 4, 3, f"{name}_0")(x), 0.2)
  x = leaky_relu(conv(c // 4, 1, f"{name}_2")(x), 0.2)
  return conv(c, 3, f"{name}_4")(x)


class RSTB(nn.Module):
  """Residual Swin transformer block: pairs of Swin blocks, residual convs, plus the input."""

  depth: int
  num_heads: int
  window_size: int
  mlp_ratio: float = 2.0
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  resi_connection: str = "1conv"
  scan: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = stack.repeat(SwinPair, self.depth // 2, x, name="pairs", scan=self.scan, remat=self.remat,
                     num_heads=self.num_heads, window_size=self.window_size, mlp_ratio=self.mlp_ratio,
                     qkv_bias=self.qkv_bias, qk_scale=self.qk_scale, dtype=self.dtype)
    return residual_convs(y, self.resi_connection, self.dtype, "conv") + x


class SwinIR(restorer.FeatureFusionRestorer):
  """`model(degraded, prior=None, prior_mask=None) -> restored`; NHWC in [0, 1]; SR output is `upscale`
  times larger.

  Attributes:
    channels: image channels (3 color, 1 gray); the mean shift applies to 3 channels only.
    upscale: SR factor (2**n or 3 for 'pixelshuffle'; 2 or 4 for 'nearest+conv'); 1 for restoration.
    upsampler: 'pixelshuffle' | 'pixelshuffledirect' | 'nearest+conv' | '' (see the module docstring).
    img_range: the input scale after the mean shift (1 or 255).
    embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale: the Swin body; each depth
      must be even (blocks come in regular/shifted pairs, as in every official model).
    patch_norm: LayerNorm after the patch embedding.
    resi_connection: '1conv' or '3conv'.
    fusion, fusion_width, fusion_heads, fusion_scale, dtype, scan, remat: see `restorer.Restorer`; the
      prior is mean-shifted like the input, on the input's grid; 'sft' modulates after every RSTB, 'xattn'
      attends at the body's input; `scan` scans each RSTB's block pairs and `remat` rematerialises them.
  """

  channels: int = 3
  upscale: int = 4
  upsampler: str = "pixelshuffle"
  img_range: float = 1.0
  embed_dim: int = 180
  depths: Sequence[int] = (6, 6, 6, 6, 6, 6)
  num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6)
  window_size: int = 8
  mlp_ratio: float = 2.0
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  patch_norm: bool = True
  resi_connection: str = "1conv"

  def input_padding(self) -> tuple[int, str]:
    return int(self.window_size), "reflect"  # whole windows, as the official model pads

  def output_scale(self) -> int:
    return int(self.upscale)

  def _check(self, degraded):
    if self.upsampler not in UPSAMPLERS:
      raise ValueError(f"model.upsampler: unknown {self.upsampler!r} (known: {UPSAMPLERS})")
    if self.resi_connection not in ("1conv", "3conv"):
      raise ValueError(f"model.resi_connection: unknown {self.resi_connection!r} (known: '1conv', '3conv')")
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"model.depths {tuple(self.depths)} and model.num_heads {tuple(self.num_heads)} "
                       "must have the same length")
    if any(d % 2 for d in self.depths):
      raise ValueError(f"model.depths {tuple(self.depths)}: every depth must be even (regular/shifted pairs)")
    if self.upsampler == "" and self.upscale != 1:
      raise ValueError(f"model.upscale {self.upscale}: upsampler '' is for restoration at upscale 1")
    if self.upsampler in ("pixelshuffle", "pixelshuffledirect"):
      check_power_of_two_or_three(self.upscale, "model.upscale")
    if self.upsampler == "nearest+conv" and self.upscale not in (2, 4):
      raise ValueError(f"model.upscale {self.upscale}: 'nearest+conv' supports 2 and 4")
    if degraded.shape[-1] != self.channels:
      raise ValueError(f"degraded image has {degraded.shape[-1]} channels, model.channels is {self.channels}")

  @nn.compact
  def __call__(self, degraded: jnp.ndarray, prior: Optional[jnp.ndarray] = None,
               prior_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    self._check(degraded)
    dtype = jnp.dtype(self.dtype)
    _, h, w, _ = degraded.shape
    mean = jnp.asarray(RGB_MEAN if self.channels == 3 else (0.0,) * self.channels, jnp.float32)
    normalize = lambda img: (img - mean) * self.img_range
    conv = lambda f, k, name: nn.Conv(f, (k, k), padding=k // 2, dtype=dtype, kernel_init=TORCH_INIT,
                                      name=name)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, name=name)

    fz = fusion.Fusion.of(self, "SwinIR", degraded, prior, prior_mask, channels=self.channels,
                          normalize=normalize)
    multiple, mode = self.input_padding()
    pad = lambda t: pad_to_multiple(t, multiple, mode=mode)
    x = pad(fz.concat(normalize(degraded.astype(jnp.float32))))
    fz.encode(pad, 0)
    inp = x[..., :self.channels]

    first = conv(self.embed_dim, 3, "conv_first")(x.astype(dtype))
    y = norm("patch_embed_norm")(first) if self.patch_norm else first
    y = fz.attend(y, 0)
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      y = RSTB(depth, heads, self.window_size, self.mlp_ratio, self.qkv_bias, self.qk_scale,
               self.resi_connection, self.scan, self.remat, dtype, name=f"layers_{i}")(y)
      y = fz.modulate(y, 0, f"layers_{i}")
    y = residual_convs(norm("norm")(y), self.resi_connection, dtype, "conv_after_body") + first

    num_feat = 64
    if self.upsampler == "pixelshuffle":
      y = leaky_relu(conv(num_feat, 3, "conv_before_upsample")(y), 0.01)
      if self.upscale == 3:
        y = pixel_shuffle(conv(9 * num_feat, 3, "upsample_0")(y), 3)
      else:
        for i in range(int(np.log2(self.upscale))):
          y = pixel_shuffle(conv(4 * num_feat, 3, f"upsample_{2 * i}")(y), 2)
      out = conv(self.channels, 3, "conv_last")(y).astype(jnp.float32)
    elif self.upsampler == "pixelshuffledirect":
      out = pixel_shuffle(conv(self.upscale ** 2 * self.channels, 3, "upsample_0")(y), self.upscale)
      out = out.astype(jnp.float32)
    elif self.upsampler == "nearest+conv":
      y = leaky_relu(conv(num_feat, 3, "conv_before_upsample")(y), 0.01)
      y = leaky_relu(conv(num_feat, 3, "conv_up1")(upsample_nearest(y, 2)), 0.2)
      if self.upscale == 4:
        y = leaky_relu(conv(num_feat, 3, "conv_up2")(upsample_nearest(y, 2)), 0.2)
      out = conv(self.channels, 3, "conv_last")(leaky_relu(conv(num_feat, 3, "conv_hr")(y), 0.2))
      out = out.astype(jnp.float32)
    else:
      out = inp + conv(self.channels, 3, "conv_last")(y).astype(jnp.float32)

    out = out / self.img_range + mean
    scale = self.output_scale()
    return out[:, :h * scale, :w * scale, :]
