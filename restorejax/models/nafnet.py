"""NAFNet (Chen et al., ECCV 2022, megvii-research/NAFNet): the activation-free restoration U-Net, NHWC.

Faithful to the official `NAFNet_arch.py`: LayerNorm over channels (eps 1e-6), SimpleGate, simplified
channel attention, zero-initialised beta/gamma residual scales, stride-2 2x2 conv down, 1x1 conv +
PixelShuffle up, zero padding to a multiple of 2**len(enc_blocks), and a global residual.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from restorejax.models import convs, stack

# PyTorch's default conv init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def simple_gate(x: jnp.ndarray) -> jnp.ndarray:
  a, b = jnp.split(x, 2, axis=-1)
  return a * b


def pixel_shuffle(x: jnp.ndarray, r: int) -> jnp.ndarray:
  """torch.nn.PixelShuffle in NHWC: input channel c*r*r + i*r + j goes to output pixel (h*r+i, w*r+j)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, c // (r * r), r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c // (r * r))


class NAFBlock(nn.Module):
  """Norm -> 1x1 -> depthwise 3x3 -> SimpleGate -> SCA -> 1x1 (x beta), then Norm -> FFN (x gamma)."""

  dw_expand: int = 2
  ffn_expand: int = 2
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
    x = x * conv(dw // 2, "sca")(jnp.mean(x, axis=(1, 2), keepdims=True))
    x = conv(c, "conv3")(x)
    y = inp + x * self.param("beta", nn.initializers.zeros, (c,)).astype(self.dtype)

    x = conv(c * self.ffn_expand, "conv4")(norm("norm2")(y))
    x = simple_gate(x)
    x = conv(c, "conv5")(x)
    return y + x * self.param("gamma", nn.initializers.zeros, (c,)).astype(self.dtype)


class NAFNet(nn.Module):
  """`model(degraded, prior=None) -> restored`; images NHWC in [0, 1], any spatial size.

  Attributes:
    width: channels of the first stage; each encoder stage doubles it.
    enc_blocks, middle_blocks, dec_blocks: NAFBlocks per stage (official SIDD: 32, (2,2,4,8), 12,
      (2,2,2,2); GoPro: 64, (1,1,1,28), 1, (1,1,1,1)).
    fusion: how a prior enters: 'none' ignores it, 'concat' adds its channels to the input (zeros when
      absent, so the same parameters serve batches with and without priors).
    dtype: compute dtype ('float32' or 'bfloat16'); parameters stay float32, the output is float32.
    scan / remat: compile each stage's blocks once / recompute activations in the backward pass.
  """

  channels: int = 3
  width: int = 16
  enc_blocks: Sequence[int] = (1, 1, 1, 28)
  middle_blocks: int = 1
  dec_blocks: Sequence[int] = (1, 1, 1, 1)
  dw_expand: int = 2
  ffn_expand: int = 2
  fusion: str = "none"
  dtype: str = "float32"
  scan: bool = True
  remat: bool = False

  @nn.compact
  def __call__(self, degraded: jnp.ndarray, prior: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    if self.fusion not in ("none", "concat"):
      raise ValueError(f"model.fusion: unknown mode {self.fusion!r} (known: 'none', 'concat')")
    if len(self.enc_blocks) != len(self.dec_blocks):
      raise ValueError(
          f"model.enc_blocks {tuple(self.enc_blocks)} and model.dec_blocks {tuple(self.dec_blocks)} "
          "must have the same length")
    dtype = jnp.dtype(self.dtype)
    b, h, w, _ = degraded.shape
    mult = 2 ** len(self.enc_blocks)
    pad = ((0, 0), (0, -h % mult), (0, -w % mult), (0, 0))
    inp = jnp.pad(degraded, pad)
    x = inp
    if self.fusion == "concat":
      prior = jnp.zeros_like(degraded) if prior is None else prior
      x = jnp.concatenate([x, jnp.pad(prior.astype(x.dtype), pad)], axis=-1)

    blocks = lambda n, x, name: stack.repeat(
        NAFBlock, n, x, name=name, scan=self.scan, remat=self.remat,
        dw_expand=self.dw_expand, ffn_expand=self.ffn_expand, dtype=dtype)
    x = nn.Conv(self.width, (3, 3), padding=1, dtype=dtype, kernel_init=TORCH_INIT, name="intro")(
        x.astype(dtype))
    skips = []
    chan = self.width
    for i, n in enumerate(self.enc_blocks):
      x = blocks(n, x, f"encoders_{i}")
      skips.append(x)
      chan *= 2
      x = nn.Conv(chan, (2, 2), strides=2, padding="VALID", dtype=dtype, kernel_init=TORCH_INIT,
                  name=f"downs_{i}")(x)
    x = blocks(self.middle_blocks, x, "middle_blks")
    for i, (n, skip) in enumerate(zip(self.dec_blocks, reversed(skips))):
      x = convs.PointwiseConv(chan * 2, use_bias=False, dtype=dtype, kernel_init=TORCH_INIT,
                              name=f"ups_{i}")(x)
      x = pixel_shuffle(x, 2)
      chan //= 2
      x = blocks(n, x + skip, f"decoders_{i}")
    x = nn.Conv(self.channels, (3, 3), padding=1, dtype=dtype, kernel_init=TORCH_INIT,
                name="ending")(x)
    x = x.astype(jnp.float32) + inp.astype(jnp.float32)
    return x[:, :h, :w, :]
