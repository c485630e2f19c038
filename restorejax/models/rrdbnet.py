"""RRDBNet (ESRGAN, Wang et al., ECCVW 2018; xinntao/ESRGAN, BasicSR `rrdbnet_arch.py`), NHWC.

Faithful to BasicSR's RRDBNet (the ESRGAN generator, also Real-ESRGAN's): a 3x3 conv, residual-in-
residual dense blocks (three 5-conv dense blocks, growth `num_grow_ch`, LeakyReLU 0.2, residuals scaled by
0.2), a trunk conv with a long skip, then two (nearest x2 upsample, 3x3 conv, LeakyReLU) stages, a 3x3 conv
and the output conv. Scales 2 and 1 first pixel-unshuffle the input by 2 and 4 (BasicSR's extension used
by Real-ESRGAN x2); the input is then reflect-padded to that multiple and the output cropped back.

`model(lr)` of shape (B, h, w, C) returns (B, h * scale, w * scale, C). `bicubic_skip` (off by default, so
converted official weights compute exactly what they did) adds the bicubic upsampling of the input to the
output, VDSR-style: the network then learns only the residual over bicubic, which trains faster from
scratch. Initialisation follows BasicSR:
dense-block convs kaiming-normal x 0.1 with zero bias (what keeps 23 blocks trainable), others PyTorch's
default.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from restorejax.models import fusion, restorer, stack
from restorejax.models.torch_compat import (
    TORCH_INIT, leaky_relu, pad_to_multiple, pixel_unshuffle, upsample_nearest)

# Official generators: ESRGAN (RRDB_ESRGAN_x4 / RRDB_PSNR_x4) and Real-ESRGAN (x4plus, x2plus, anime 6B).
PRESETS = {
    "esrgan-x4": dict(scale=4, num_feat=64, num_block=23, num_grow_ch=32),
    "realesrgan-x4plus": dict(scale=4, num_feat=64, num_block=23, num_grow_ch=32),
    "realesrgan-x2plus": dict(scale=2, num_feat=64, num_block=23, num_grow_ch=32),
    "realesrgan-x4plus-anime-6b": dict(scale=4, num_feat=64, num_block=6, num_grow_ch=32),
}
# BasicSR default_init_weights(scale=0.1): kaiming_normal_ (fan_in, gain sqrt(2)) times 0.1.
RDB_INIT = nn.initializers.variance_scaling(2.0 * 0.1 ** 2, "fan_in", "normal")


class ResidualDenseBlock(nn.Module):
  num_grow_ch: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda f, i: nn.Conv(f, (3, 3), padding=1, dtype=self.dtype, kernel_init=RDB_INIT,
                                name=f"conv{i}")
    feats = [x]
    for i in range(1, 5):
      feats.append(leaky_relu(conv(self.num_grow_ch, i)(jnp.concatenate(feats, axis=-1)), 0.2))
    x5 = conv(x.shape[-1], 5)(jnp.concatenate(feats, axis=-1))
    return x5 * jnp.asarray(0.2, x5.dtype) + x


class RRDB(nn.Module):
  """Residual in residual dense block: three dense blocks, the result scaled by 0.2 plus the input."""

  num_grow_ch: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = x
    for i in range(1, 4):
      out = ResidualDenseBlock(self.num_grow_ch, self.dtype, name=f"rdb{i}")(out)
    return out * jnp.asarray(0.2, out.dtype) + x


class RRDBNet(restorer.FeatureFusionRestorer):
  """`model(degraded, prior=None, prior_mask=None) -> restored`; NHWC in [0, 1]; the output is `scale`
  times larger.

  Attributes:
    in_channels, out_channels: image channels.
    scale: 4 (ESRGAN), 2 or 1 (input pixel-unshuffled by 2 or 4 first).
    num_feat, num_block, num_grow_ch: trunk width, RRDB count, dense growth channels.
    bicubic_skip: add the bicubic upsampling of the input to the output (a global residual; not in the
      official generators), by `jax.image.resize(..., 'bicubic')`: close to, not exactly, the MATLAB
      `imresize` of the evaluation baseline (up to ~0.02 apart on noise); the network learns the rest.
    fusion, fusion_width, fusion_heads, fusion_scale, dtype, scan, remat: see `restorer.Restorer`; the
      prior has `out_channels` channels, on the input's grid; 'sft' modulates at the trunk's input and
      output, 'xattn' attends at the trunk's input; `scan` scans the RRDB trunk, `remat` each RRDB.
  """

  in_channels: int = 3
  out_channels: int = 3
  scale: int = 4
  num_feat: int = 64
  num_block: int = 23
  num_grow_ch: int = 32
  bicubic_skip: bool = False

  # The default input_padding (1, 'constant') stays, as evaluation has always had it: the network
  # reflect-pads to a multiple of 4 // scale itself before unshuffling (1 at scale 4).

  def output_scale(self) -> int:
    return int(self.scale)

  @nn.compact
  def __call__(self, degraded: jnp.ndarray, prior: Optional[jnp.ndarray] = None,
               prior_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    if self.scale not in (1, 2, 4):
      raise ValueError(f"model.scale {self.scale}: RRDBNet supports 1, 2 and 4")
    if degraded.shape[-1] != self.in_channels:
      raise ValueError(f"degraded image has {degraded.shape[-1]} channels, model.in_channels is "
                       f"{self.in_channels}")
    dtype = jnp.dtype(self.dtype)
    _, h, w, _ = degraded.shape
    conv = lambda f, name: nn.Conv(f, (3, 3), padding=1, dtype=dtype, kernel_init=TORCH_INIT, name=name)

    fz = fusion.Fusion.of(self, "RRDBNet", degraded, prior, prior_mask, channels=self.out_channels)
    x = fz.concat(degraded.astype(jnp.float32))
    unshuffle = 4 // self.scale
    level = unshuffle.bit_length() - 1  # the trunk runs at 1/unshuffle of the input
    pad = lambda t: pad_to_multiple(t, unshuffle, mode="reflect")
    fz.encode(pad, level)
    if unshuffle > 1:
      x = pixel_unshuffle(pad(x), unshuffle)
    feat = conv(self.num_feat, "conv_first")(x.astype(dtype))
    feat = fz.modulate(fz.attend(feat, level), level, "conv_first")
    body = stack.repeat(RRDB, self.num_block, feat, name="body", scan=self.scan, remat=self.remat,
                        num_grow_ch=self.num_grow_ch, dtype=dtype)
    body = fz.modulate(body, level, "body")
    feat = feat + conv(self.num_feat, "conv_body")(body)
    feat = leaky_relu(conv(self.num_feat, "conv_up1")(upsample_nearest(feat, 2)), 0.2)
    feat = leaky_relu(conv(self.num_feat, "conv_up2")(upsample_nearest(feat, 2)), 0.2)
    out = conv(self.out_channels, "conv_last")(leaky_relu(conv(self.num_feat, "conv_hr")(feat), 0.2))
    scale = self.output_scale()
    out = out.astype(jnp.float32)[:, :h * scale, :w * scale, :]
    if self.bicubic_skip:
      if self.out_channels != self.in_channels:
        raise ValueError(f"model.bicubic_skip needs out_channels == in_channels, got {self.out_channels} "
                         f"and {self.in_channels}")
      b, _, _, c = degraded.shape
      out = out + jax.image.resize(degraded.astype(jnp.float32), (b, h * scale, w * scale, c), "bicubic")
    return out
