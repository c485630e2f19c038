"""ADM UNet (Dhariwal & Nichol 2021, openai/guided-diffusion `UNetModel`): the pixel-space diffusion UNet, NHWC.

The frozen DiffLoss prior, our own small diffusion priors and the SR3 super-resolution network are all this
one module. It follows the official `unet.py` layer for layer, so that `restorejax.convert.adm` can load
the released checkpoints: GroupNorm32 (32 groups, eps 1e-5, computed in float32), SiLU, FiLM-style
scale-shift conditioning, residual up/down blocks, legacy or new QKV ordering, zero-initialised output
convolutions, and the cos-first sinusoidal timestep embedding.

It is not a restorer (`model(degraded, prior)`), so it is not in `MODELS` but in `models.GENERATIVE`:
build it with `build(default_config(preset))` / `build(preset, **overrides)` from `ADM_PRESETS`, from
`config_from_flags(...)` (the official command-line flags), or as a run's `config.model` block
(`default_config(preset)` carries `name: 'adm_unet'`, so `restorejax.models.build` takes it too).
`model.apply({'params': params}, x, t, y=None, cond=None, train=False) -> (out, h)` with `x` in [-1, 1]
(NHWC), `t` integer or continuous timesteps of shape (B,) or scalar, `out` the eps (and variance)
prediction, float32, and `h` the middle-block output ("h-space", 8x8x1024 at 256x256 in the official
config), float32.
"""

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

# PyTorch's default conv/linear weight init, so that a model trained from scratch starts like the official.
TORCH_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# Sharding of the parameters over the `fsdp` mesh axis, in the format of `restorejax.sharding`:
# (regex searched in the '/'-joined parameter path, spec), first match wins. 'fsdp' shards the largest
# dimension divisible by the fsdp axis size; the 1-D norms and biases are replicated.
ADM_SHARDING_RULES = (
    (r"(^|/)kernel$", "fsdp"),
    (r"(^|/)embedding$", "fsdp"),
    (r"(^|/)(bias|scale)$", (None,)),
)


def timestep_embedding(t: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
  """Sinusoidal embedding of (possibly fractional) timesteps `t` (B,) -> (B, dim), float32, cos first."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def group_norm(x: jnp.ndarray, groups: int, name: str) -> jnp.ndarray:
  """GroupNorm32: statistics and affine in float32 whatever the compute dtype, result cast back."""
  y = nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=jnp.float32, use_fast_variance=False,
                   name=name)(x.astype(jnp.float32))
  return y.astype(x.dtype)


def conv(features: int, kernel: int, name: str, dtype: Any, zero: bool = False) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), padding=kernel // 2, dtype=dtype, name=name,
                 kernel_init=nn.initializers.zeros if zero else TORCH_INIT)


def upsample(x: jnp.ndarray) -> jnp.ndarray:
  """Nearest-neighbour x2 (F.interpolate(scale_factor=2, mode='nearest'))."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample(x: jnp.ndarray) -> jnp.ndarray:
  """2x2 average pooling, stride 2."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Downsample(nn.Module):
  """Strided 3x3 conv (used when resblock_updown is False)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return nn.Conv(x.shape[-1], (3, 3), strides=2, padding=1, dtype=self.dtype, kernel_init=TORCH_INIT,
                   name="op")(x)


class Upsample(nn.Module):
  """Nearest x2 then 3x3 conv (used when resblock_updown is False)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return conv(x.shape[-1], 3, "conv", self.dtype)(upsample(x))


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv, timestep conditioning (add or scale-shift), GroupNorm-SiLU-dropout-conv, skip."""

  out_channels: int
  use_scale_shift_norm: bool
  dropout: float = 0.0
  deterministic: bool = True
  up: bool = False
  down: bool = False
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, emb: jnp.ndarray) -> jnp.ndarray:
    h = nn.silu(group_norm(x, self.norm_groups, "in_norm"))
    if self.up:
      h, x = upsample(h), upsample(x)
    elif self.down:
      h, x = downsample(h), downsample(x)
    h = conv(self.out_channels, 3, "in_conv", self.dtype)(h)
    # The official code keeps these Linear layers in float32 even in its fp16 mode.
    emb_features = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
    emb_out = nn.Dense(emb_features, kernel_init=TORCH_INIT, name="emb_dense")(nn.silu(emb))
    emb_out = emb_out.astype(self.dtype)[:, None, None, :]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = group_norm(h, self.norm_groups, "out_norm") * (1 + scale) + shift
    else:
      h = group_norm(h + emb_out, self.norm_groups, "out_norm")
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(nn.silu(h))
    h = conv(self.out_channels, 3, "out_conv", self.dtype, zero=True)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, "skip", self.dtype)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Self-attention over all positions; `legacy_order` reads qkv channels as [head][q,k,v][ch]."""

  num_heads: int
  legacy_order: bool = True
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, hh, ww, c = x.shape
    heads, ch = self.num_heads, c // self.num_heads
    x = x.reshape(b, hh * ww, c)
    qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=TORCH_INIT, name="qkv")(
        group_norm(x, self.norm_groups, "norm"))
    if self.legacy_order:
      qkv = qkv.reshape(b, hh * ww, heads, 3, ch)
      q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    else:
      qkv = qkv.reshape(b, hh * ww, 3, heads, ch)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # Scaling q and k separately (not the logits) as the official code does, for fp16/bf16 range.
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    logits = jnp.einsum("bthc,bshc->bhts", q * scale, k * scale)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    a = jnp.einsum("bhts,bshc->bthc", weights, v).reshape(b, hh * ww, c)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj_out")(a)
    return (x + h).reshape(b, hh, ww, c)


class ADMUNet(nn.Module):
  """`model(x, t, y=None, *, cond=None, train=False) -> (out, h)`; see the module docstring.

  Defaults are the official ImageNet 256x256 unconditional model (`256x256_diffusion_uncond.pt`).

  Attributes:
    image_size: the resolution the model is built for; only used to turn `attention_resolutions` into
      downsample factors (official flag semantics: 32,16,8 at 256 -> attention at x8, x16, x32 downsampling).
      Any input whose sides are multiples of 2**(len(channel_mult)-1) runs.
    in_channels: input channels; above 3 for SR3-style conditioning (`cond` is concatenated to `x`).
    model_channels: base width; channels of level i are int(channel_mult[i] * model_channels).
    out_channels: 3 for eps only, 6 with learned sigma ([eps, v], as `learn_sigma=True`).
    num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
    attention_resolutions: feature-map resolutions (at `image_size` input) that get attention.
    dropout: dropout rate in the ResBlocks; inactive unless `train=True` (needs a 'dropout' rng).
    channel_mult: per-level width multipliers (may be fractional, e.g. 0.5 in the 512 model).
    num_classes: class-conditional with this many classes (label embedding added to the time embedding).
    num_heads / num_head_channels: attention heads; num_head_channels != -1 overrides num_heads with
      channels // num_head_channels. num_heads_upsample: heads in the decoder (-1: num_heads).
    use_scale_shift_norm: FiLM conditioning `norm(h) * (1 + scale) + shift` instead of `h + emb`.
    resblock_updown: ResBlocks with up/down sampling instead of strided / nearest+conv layers.
    use_new_attention_order: qkv channels as [q,k,v][head][ch]; False is the legacy [head][q,k,v][ch].
    norm_groups: GroupNorm groups (32 in every official model; smaller for toy-sized priors).
    dtype: compute dtype of the torso ('float32' or 'bfloat16'); parameters, norms, the time embedding and
      the output head stay float32, as in the official fp16 mode.
    remat: recompute each ResBlock / AttentionBlock's activations in the backward pass.
  """

  image_size: int = 256
  in_channels: int = 3
  model_channels: int = 256
  out_channels: int = 6
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (32, 16, 8)
  dropout: float = 0.0
  channel_mult: Sequence[float] = (1, 1, 2, 2, 4, 4)
  num_classes: Optional[int] = None
  num_heads: int = 4
  num_head_channels: int = 64
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  use_new_attention_order: bool = False
  norm_groups: int = 32
  dtype: str = "float32"
  remat: bool = False

  def attention_ds(self) -> tuple[int, ...]:
    """Downsample factors that get attention; a resolution matching no level is an error."""
    levels = [2**i for i in range(len(self.channel_mult))]
    ds = []
    for res in self.attention_resolutions:
      if res <= 0 or self.image_size % res or self.image_size // res not in levels:
        raise ValueError(
            f"adm.attention_resolutions: {res} is not a feature-map resolution of a {self.image_size}px "
            f"model with {len(self.channel_mult)} levels ({', '.join(str(self.image_size // l) for l in levels)})")
      ds.append(self.image_size // res)
    return tuple(ds)

  def heads(self, channels: int, num_heads: int) -> int:
    if self.num_head_channels == -1:
      if channels % num_heads:
        raise ValueError(f"adm.num_heads: {num_heads} does not divide {channels} channels")
      return num_heads
    if channels % self.num_head_channels:
      raise ValueError(f"adm.num_head_channels: {self.num_head_channels} does not divide {channels} channels")
    return channels // self.num_head_channels

  @nn.compact
  def __call__(self, x: jnp.ndarray, t: jnp.ndarray, y: Optional[jnp.ndarray] = None, *,
               cond: Optional[jnp.ndarray] = None, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    dtype = jnp.dtype(self.dtype)
    attention_ds = self.attention_ds()
    if (y is None) != (self.num_classes is None):
      raise ValueError("adm: pass labels y if and only if num_classes is set "
                       f"(num_classes={self.num_classes}, y {'given' if y is not None else 'missing'})")
    if cond is not None:
      x = jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
    b, height, width, c = x.shape
    if c != self.in_channels:
      raise ValueError(f"adm.in_channels is {self.in_channels} but the input (x plus cond) has {c} channels")
    mult = 2 ** (len(self.channel_mult) - 1)
    if height % mult or width % mult:
      raise ValueError(f"adm: input size {height}x{width} is not a multiple of {mult}")
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))

    emb_dim = 4 * self.model_channels
    emb = timestep_embedding(t, self.model_channels)
    emb = nn.Dense(emb_dim, kernel_init=TORCH_INIT, name="time_embed_in")(emb)
    emb = nn.Dense(emb_dim, kernel_init=TORCH_INIT, name="time_embed_out")(nn.silu(emb))
    if self.num_classes is not None:
      emb = emb + nn.Embed(self.num_classes, emb_dim, embedding_init=nn.initializers.normal(1.0),
                           name="label_emb")(y)

    res_cls = nn.remat(ResBlock) if self.remat else ResBlock
    attn_cls = nn.remat(AttentionBlock) if self.remat else AttentionBlock
    res = lambda out, name, **kw: res_cls(
        out_channels=out, use_scale_shift_norm=self.use_scale_shift_norm, dropout=self.dropout,
        deterministic=not train, norm_groups=self.norm_groups, dtype=dtype, name=name, **kw)
    attn = lambda ch, heads, name: attn_cls(
        num_heads=self.heads(ch, heads), legacy_order=not self.use_new_attention_order,
        norm_groups=self.norm_groups, dtype=dtype, name=name)
    heads_up = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample

    # Encoder: module names follow the official `input_blocks.<i>.<j>` so the converter is a renaming.
    ch = int(self.channel_mult[0] * self.model_channels)
    h = conv(ch, 3, "input_blocks_0_0", dtype)(x.astype(dtype))
    skips, i, ds = [h], 1, 1
    for level, m in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        ch = int(m * self.model_channels)
        h = res(ch, f"input_blocks_{i}_0")(h, emb)
        if ds in attention_ds:
          h = attn(ch, self.num_heads, f"input_blocks_{i}_1")(h)
        skips.append(h)
        i += 1
      if level != len(self.channel_mult) - 1:
        if self.resblock_updown:
          h = res(ch, f"input_blocks_{i}_0", down=True)(h, emb)
        else:
          h = Downsample(dtype, name=f"input_blocks_{i}_0")(h)
        skips.append(h)
        i, ds = i + 1, ds * 2

    h = res(ch, "middle_block_0")(h, emb)
    h = attn(ch, self.num_heads, "middle_block_1")(h)
    h = res(ch, "middle_block_2")(h, emb)
    middle = h

    i = 0
    for level, m in reversed(list(enumerate(self.channel_mult))):
      for k in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        ch = int(m * self.model_channels)
        h = res(ch, f"output_blocks_{i}_0")(h, emb)
        j = 1
        if ds in attention_ds:
          h = attn(ch, heads_up, f"output_blocks_{i}_{j}")(h)
          j += 1
        if level and k == self.num_res_blocks:
          if self.resblock_updown:
            h = res(ch, f"output_blocks_{i}_{j}", up=True)(h, emb)
          else:
            h = Upsample(dtype, name=f"output_blocks_{i}_{j}")(h)
          ds //= 2
        i += 1

    # The output head runs in float32, as in the official fp16 mode.
    h = nn.silu(group_norm(h.astype(jnp.float32), self.norm_groups, "out_norm"))
    out = conv(self.out_channels, 3, "out_conv", jnp.float32, zero=True)(h)
    return out, middle.astype(jnp.float32)


def config_from_flags(
    image_size: int = 64,
    num_channels: int = 128,
    num_res_blocks: int = 2,
    channel_mult: str = "",
    learn_sigma: bool = False,
    class_cond: bool = False,
    attention_resolutions: str = "16,8",
    num_heads: int = 4,
    num_head_channels: int = -1,
    num_heads_upsample: int = -1,
    use_scale_shift_norm: bool = True,
    dropout: float = 0.0,
    resblock_updown: bool = False,
    use_new_attention_order: bool = False,
    **ignored: Any,
) -> dict[str, Any]:
  """ADMUNet fields from the official command-line flags (`script_util.create_model` meaning, with the
  `model_and_diffusion_defaults()` defaults that the official scripts apply under the README's flags).

  Flags that do not change the network (use_fp16, use_checkpoint, diffusion flags) may be passed and are
  ignored; use our `dtype` / `remat` fields instead.
  """
  known_other = {"use_fp16", "use_checkpoint", "diffusion_steps", "noise_schedule", "timestep_respacing",
                 "use_kl", "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas"}
  unknown = sorted(set(ignored) - known_other)
  if unknown:
    raise ValueError(f"adm flags: unknown flag(s) {', '.join(unknown)}")
  if channel_mult == "":
    defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                64: (1, 2, 3, 4)}
    if image_size not in defaults:
      raise ValueError(f"adm flags: no default channel_mult for image_size {image_size}; pass channel_mult")
    mult = defaults[image_size]
  else:
    mult = tuple(int(m) for m in channel_mult.split(","))
  return dict(
      image_size=image_size,
      in_channels=3,
      model_channels=num_channels,
      out_channels=6 if learn_sigma else 3,
      num_res_blocks=num_res_blocks,
      attention_resolutions=tuple(int(r) for r in attention_resolutions.split(",")),
      dropout=dropout,
      channel_mult=mult,
      num_classes=1000 if class_cond else None,
      num_heads=num_heads,
      num_head_channels=num_head_channels,
      num_heads_upsample=num_heads_upsample,
      use_scale_shift_norm=use_scale_shift_norm,
      resblock_updown=resblock_updown,
      use_new_attention_order=use_new_attention_order,
  )


_RELEASED = dict(attention_resolutions="32,16,8", learn_sigma=True, resblock_updown=True,
                 use_scale_shift_norm=True, num_res_blocks=2, num_channels=256)

# The released guided-diffusion checkpoints (flags from its README) and a toy size for tests and CPUs.
ADM_PRESETS: Mapping[str, dict[str, Any]] = {
    "imagenet256-uncond": config_from_flags(image_size=256, num_head_channels=64, **_RELEASED),
    "imagenet256-cond": config_from_flags(image_size=256, num_head_channels=64, class_cond=True,
                                          **_RELEASED),
    "imagenet512-cond": config_from_flags(image_size=512, num_head_channels=64, class_cond=True,
                                          **_RELEASED),
    "imagenet128-cond": config_from_flags(image_size=128, num_heads=4, class_cond=True, **_RELEASED),
    "imagenet64-cond": config_from_flags(
        image_size=64, num_channels=192, num_res_blocks=3, num_head_channels=64, class_cond=True,
        learn_sigma=True, attention_resolutions="32,16,8", dropout=0.1, resblock_updown=True,
        use_new_attention_order=True, use_scale_shift_norm=True),
    "tiny": dict(image_size=32, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                 attention_resolutions=(16,), dropout=0.0, channel_mult=(1, 2), num_classes=None,
                 num_heads=4, num_head_channels=16, num_heads_upsample=-1, use_scale_shift_norm=True,
                 resblock_updown=True, use_new_attention_order=False),
}


def default_config(preset: str = "imagenet256-uncond") -> ml_collections.ConfigDict:
  """`name: 'adm_unet'` and every ADMUNet field for a preset (a run's `config.model` block), e.g.
  `default_config('tiny')`."""
  if preset not in ADM_PRESETS:
    raise ValueError(f"adm preset: unknown {preset!r} (known: {', '.join(ADM_PRESETS)})")
  fields = {"name": "adm_unet"}
  fields.update({f.name: f.default for f in dataclasses.fields(ADMUNet)
                 if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING})
  fields.update(ADM_PRESETS[preset])
  return ml_collections.ConfigDict(fields)


def build(preset_or_config: str | Mapping[str, Any], **overrides: Any) -> ADMUNet:
  """An ADMUNet from a preset name or a mapping of fields (e.g. a ConfigDict, whose `name`, if any, must
  be 'adm_unet'), plus field overrides."""
  if isinstance(preset_or_config, str):
    if preset_or_config not in ADM_PRESETS:
      raise ValueError(f"adm preset: unknown {preset_or_config!r} (known: {', '.join(ADM_PRESETS)})")
    fields = dict(ADM_PRESETS[preset_or_config])
  else:
    fields = dict(preset_or_config)
    if fields.pop("name", "adm_unet") != "adm_unet":
      raise ValueError(f"adm config: name is {preset_or_config['name']!r}, not 'adm_unet'")
  fields.update(overrides)
  known = set(ADMUNet.__dataclass_fields__) - {"parent", "name"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"adm config: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
  return ADMUNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def param_shapes(model: ADMUNet) -> Any:
  """The model's parameter tree as ShapeDtypeStructs (traced, nothing allocated)."""
  side = 2 ** (len(model.channel_mult) - 1)
  x = jnp.zeros((1, side, side, model.in_channels))
  y = None if model.num_classes is None else jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1,)), y)["params"]
