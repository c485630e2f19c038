"""NAFNet (Chen et al., ECCV 2022, megvii-research/NAFNet): the activation-free restoration U-Net, NHWC.

Faithful to the official `NAFNet_arch.py`: LayerNorm over channels (eps 1e-6), SimpleGate, simplified
channel attention, zero-initialised beta/gamma residual scales, stride-2 2x2 conv down, 1x1 conv +
PixelShuffle up, zero padding to a multiple of 2**len(enc_blocks), a global residual, and NAFNetLocal's
test-time local statistics (`tlsc_size`). `PRESETS` holds the official configurations.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from restorejax.models import convs, fusion, restorer, stack
from restorejax.models.torch_compat import TORCH_INIT, pixel_shuffle

# Official configurations (megvii-research/NAFNet options/test/*/NAFNet-*.yml) as `config.model` values.
# GoPro/REDS are tested with NAFNetLocal (TLSC, 1.5 x the 256 training crop); SIDD with plain NAFNet.
PRESETS = {
    "sidd-width32": dict(width=32, enc_blocks=(2, 2, 4, 8), middle_blocks=12, dec_blocks=(2, 2, 2, 2)),
    "sidd-width64": dict(width=64, enc_blocks=(2, 2, 4, 8), middle_blocks=12, dec_blocks=(2, 2, 2, 2)),
    "gopro-width32": dict(width=32, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1),
                          tlsc_size=384),
    "gopro-width64": dict(width=64, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1),
                          tlsc_size=384),
    "reds-width64": dict(width=64, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1),
                         tlsc_size=384),
}


def simple_gate(x: jnp.ndarray) -> jnp.ndarray:
  a, b = jnp.split(x, 2, axis=-1)
  return a * b


def local_mean(x: jnp.ndarray, window: int) -> jnp.ndarray:
  """The SCA pooling: the global channel mean, or with `window` > 0 and smaller than the feature map, the
  official TLSC local mean (valid `window` x `window` box average, edge-padded back to full size)."""
  _, h, w, _ = x.shape
  if window <= 0 or (window >= h and window >= w):
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  k1, k2 = min(h, window), min(w, window)
  s = jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add, (1, k1, k2, 1), (1, 1, 1, 1), "VALID")
  s = s / (k1 * k2)
  dh, dw = h - s.shape[1], w - s.shape[2]
  return jnp.pad(s, ((0, 0), (dh // 2, (dh + 1) // 2), (dw // 2, (dw + 1) // 2), (0, 0)), mode="edge")


class NAFBlock(nn.Module):
  """Norm -> 1x1 -> depthwise 3x3 -> SimpleGate -> SCA -> 1x1 (x beta), then Norm -> FFN (x gamma)."""

  dw_expand: int = 2
  ffn_expand: int = 2
  pool_window: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inp):
    c = inp.shape[-1]
    dw = c * self.dw_expand
    conv = lambda f, name: convs.PointwiseConv(f, dtype=self.dtype, kernel_init=TORCH_INIT, name=name)
    norm = lambda name: nn.LayerNorm(
        epsilon=1e-6, use_fast_variance=False, dtype=self.dtype, name=name)

    x = norm("norm1")(inp)
    x = conv(dw, "conv1")(x)
    x = convs.DepthwiseConv(3, dtype=self.dtype, kernel_init=TORCH_INIT, name="conv2")(x)
    x = simple_gate(x)
    x = x * conv(dw // 2, "sca")(local_mean(x, self.pool_window))
    x = conv(c, "conv3")(x)
    y = inp + x * self.param("beta", nn.initializers.zeros, (c,)).astype(self.dtype)

    x = conv(c * self.ffn_expand, "conv4")(norm("norm2")(y))
    x = simple_gate(x)
    x = conv(c, "conv5")(x)
    return y + x * self.param("gamma", nn.initializers.zeros, (c,)).astype(self.dtype)


class NAFNet(restorer.FeatureFusionRestorer):
  """`model(degraded, prior=None, prior_mask=None) -> restored`; images NHWC in [0, 1], any spatial size.

  Attributes:
    width: channels of the first stage; each encoder stage doubles it.
    enc_blocks, middle_blocks, dec_blocks: NAFBlocks per stage (official SIDD: 32, (2,2,4,8), 12,
      (2,2,2,2); GoPro: 64, (1,1,1,28), 1, (1,1,1,1)).
    tlsc_size: test-time local statistics (NAFNetLocal): the SCA mean becomes a local box mean of
      `tlsc_size // 2**level` pixels at each level, so images larger than the training crops see the
      statistics they were trained on; 0 = global mean (official SIDD). Official GoPro/REDS: 384 (1.5 x
      the 256 crop), which equals the global mean on 256 crops, so it is safe in training too.
    fusion, fusion_width, fusion_heads, fusion_scale, dtype, scan, remat: see `restorer.Restorer`; 'sft'
      modulates after every encoder, middle and decoder stage, 'xattn' attends at the bottleneck.
  """

  channels: int = 3
  width: int = 16
  enc_blocks: Sequence[int] = (1, 1, 1, 28)
  middle_blocks: int = 1
  dec_blocks: Sequence[int] = (1, 1, 1, 1)
  dw_expand: int = 2
  ffn_expand: int = 2
  tlsc_size: int = 0

  def input_padding(self) -> tuple[int, str]:
    return 2 ** len(self.enc_blocks), "constant"  # zeros, to a multiple of the deepest level's stride

  @nn.compact
  def __call__(self, degraded: jnp.ndarray, prior: Optional[jnp.ndarray] = None,
               prior_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    fz = fusion.Fusion.of(self, "NAFNet", degraded, prior, prior_mask, channels=self.channels)
    if len(self.enc_blocks) != len(self.dec_blocks):
      raise ValueError(
          f"model.enc_blocks {tuple(self.enc_blocks)} and model.dec_blocks {tuple(self.dec_blocks)} "
          "must have the same length")
    dtype = jnp.dtype(self.dtype)
    b, h, w, _ = degraded.shape
    mult, mode = self.input_padding()
    pad = ((0, 0), (0, -h % mult), (0, -w % mult), (0, 0))
    inp = jnp.pad(degraded, pad, mode=mode)
    x = jnp.pad(fz.concat(degraded), pad, mode=mode)
    fz.encode(lambda p: jnp.pad(p, pad, mode=mode), len(self.enc_blocks))

    blocks = lambda n, x, name, level: stack.repeat(
        NAFBlock, n, x, name=name, scan=self.scan, remat=self.remat,
        dw_expand=self.dw_expand, ffn_expand=self.ffn_expand, dtype=dtype,
        pool_window=self.tlsc_size // 2 ** level if self.tlsc_size > 0 else 0)
    x = nn.Conv(self.width, (3, 3), padding=1, dtype=dtype, kernel_init=TORCH_INIT, name="intro")(
        x.astype(dtype))
    skips = []
    chan = self.width
    for i, n in enumerate(self.enc_blocks):
      x = fz.modulate(blocks(n, x, f"encoders_{i}", i), i, f"encoders_{i}")
      skips.append(x)
      chan *= 2
      x = nn.Conv(chan, (2, 2), strides=2, padding="VALID", dtype=dtype, kernel_init=TORCH_INIT,
                  name=f"downs_{i}")(x)
    x = fz.attend(x, len(self.enc_blocks))
    x = blocks(self.middle_blocks, x, "middle_blks", len(self.enc_blocks))
    x = fz.modulate(x, len(self.enc_blocks), "middle_blks")
    for i, (n, skip) in enumerate(zip(self.dec_blocks, reversed(skips))):
      x = convs.PointwiseConv(chan * 2, use_bias=False, dtype=dtype, kernel_init=TORCH_INIT,
                              name=f"ups_{i}")(x)
      x = pixel_shuffle(x, 2)
      chan //= 2
      level = len(self.dec_blocks) - 1 - i
      x = fz.modulate(blocks(n, x + skip, f"decoders_{i}", level), level, f"decoders_{i}")
    x = nn.Conv(self.channels, (3, 3), padding=1, dtype=dtype, kernel_init=TORCH_INIT,
                name="ending")(x)
    x = x.astype(jnp.float32) + inp.astype(jnp.float32)
    return x[:, :h, :w, :]
