"""How a prior image enters a restoration network: `config.model.fusion`, one place for every backbone.

A prior is a generative "restoration" of the degraded image (the GPT-4o restoration study, arXiv:2505.05621): clean-looking but
misaligned, re-toned, partly hallucinated, and missing for some examples. Modes:

- 'none': the prior is ignored (not even read).
- 'concat': the normalised prior and a presence plane (1 present, 0 absent) are appended to the network's
  input channels, so the first conv's kernel grows by `channels + 1` input channels and nothing else changes
  (converters give those channels zero weights: the converted network computes the official function).
  Pixel-wise, so it needs the prior at the input's size and trusts its alignment.
- 'sft': spatial feature transform (Wang et al., CVPR 2018). `PriorEncoder`, a few 3x3 convs with a
  stride-2 conv per level, turns [prior, presence] into features at every scale of the backbone; after each
  backbone stage an `SFT` layer maps the features at that stage's scale to a per-pixel scale and shift,
  `x * (1 + scale) + shift`. Their last 1x1 convs start at zero, so an initialised network computes its
  backbone exactly and learns how much to trust the prior. Coarse levels see a shifted prior as still
  roughly in place; the finest trust its alignment.
- 'xattn': backbone tokens attend to prior tokens at low resolution (1/`fusion_scale` of the input, or the
  backbone's own scale where that is coarser), multi-head, with no absolute positions on either side: a
  per-head learned bias `-locality_h * |p_query - p_key|^2` on positions normalised to [0, 1] prefers
  nearby prior tokens, as softly as each head learns, so a shifted or rescaled prior still matches by
  content. A learned "null" key/value per head is always attendable (a query may take nothing from the
  prior). The output goes through a zero-initialised projection and is added to the backbone features
  (upsampled when the tokens were pooled): identity at initialisation.
- 'match': correspondence (restorejax/models/fusion_match.py): the degraded image finds each part of itself
  in the prior within a search window at 1/4 scale (a local cost volume, soft-argmax flow and confidence);
  after every stage where 'sft' modulates, the `PriorEncoder` features at that scale are warped by the flow
  and added through a gated residual whose value conv starts at zero (identity at initialisation; zero for
  an absent prior whatever the weights). Built for shifted, rescaled, re-toned priors.
- 'align': registration (restorejax/models/fusion_align.py): per example, a homography from the degraded
  image to the prior by ECC (coarse-to-fine Gauss-Newton on blurred, normalised luminance; no learned
  parameters), the prior's pixels resampled by it, and [registered prior, in-bounds mask, correlation]
  added at the first 'sft' hook through a small conv branch whose last conv starts at zero (identity at
  initialisation; zero for an absent prior). 'concat' after undoing the prior's global view change.

Absent priors. `model(degraded, prior=None, prior_mask=None)`: `prior=None` means absent for the whole
batch; `prior_mask` (B,) bool marks per example which priors are present (None: all present). An absent
prior is replaced by zeros (after normalisation) before anything reads it, and the presence plane is an
input of 'concat' and of the 'sft'/'xattn' encoder; 'xattn' also masks every prior token of an absent
example out of the attention, leaving the null token. So an absent example's output does not depend on
the content of its prior, and the same parameters serve batches with, without and with some priors.

Hook points (the prior encoder runs on the prior padded as the backbone pads its input):
  network    'sft' after each of                                    'xattn' at (queries)
  NAFNet     encoders_i, middle_blks, decoders_i (every level)       the bottleneck, before middle_blks
  Restormer  encoder_level1-3, latent, decoder_level3-1              the latent level, before its blocks
  SwinIR     each RSTB (layers_i), one scale                         the body input, pooled
  RRDBNet    the trunk input (conv_first) and output (body), one     the trunk input, pooled
             scale (the RRDB trunk is one scanned stage)
  DehazeNet  'concat' only: a 4-layer CNN regressing one transmission map has no feature stages to
             modulate, and its output is the physics inversion of the degraded image alone.
'match' uses the hooks of 'sft'; 'align' the first of them.
'sft', 'xattn', 'match' and 'align' accept a prior of any size (resized to the degraded input's grid);
'concat' needs the degraded image's height and width. Every fusion parameter outside the first conv lives
at the top of the params tree under a name starting with `fusion_` (`fusion_encoder`, `fusion_sft_<stage>`,
`fusion_xattn`, `fusion_match`, `fusion_match_<stage>`, `fusion_align_inject`), so backbone parameters
(official, converted, or trained without a prior) carry over unchanged.
"""

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from restorejax.models import convs, fusion_align, fusion_match, restorer
from restorejax.models.torch_compat import TORCH_INIT, leaky_relu

FUSIONS = ("none", "concat", "sft", "xattn", "match", "align")
PREFIX = "fusion_"  # every fusion parameter tree outside the first conv starts with it


def check(fusion: str, network: str = "", supported: Sequence[str] = FUSIONS, why: str = "") -> None:
  """A clear error for an unknown mode or one the network does not support."""
  if fusion not in FUSIONS:
    raise ValueError(f"model.fusion: unknown mode {fusion!r} (known: {', '.join(map(repr, FUSIONS))})")
  if fusion not in supported:
    raise ValueError(f"model.fusion: {fusion!r} is not supported by {network} (supported: "
                     f"{', '.join(map(repr, supported))}){': ' + why if why else ''}")


def prior_input(
    degraded: jnp.ndarray,
    prior: Optional[jnp.ndarray],
    prior_mask: Optional[jnp.ndarray],
    *,
    channels: int,
    normalize: Callable[[jnp.ndarray], jnp.ndarray] = lambda p: p,
    resize: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """([normalised prior, presence plane] (B, H, W, channels + 1) float32, present (B,) bool).

  Absent priors (all of them when `prior` is None, else where `prior_mask` is False) are zeros after
  normalisation, and their presence plane is 0. `resize`: a prior of another height/width is resized to
  the degraded image's (bilinear, antialiased); without it, that is an error.
  """
  b, h, w = degraded.shape[:3]
  if prior is None:
    return jnp.zeros((b, h, w, channels + 1), jnp.float32), jnp.zeros((b,), bool)
  expected = f"({b}, {'H, W' if resize else f'{h}, {w}'}, {channels})"
  if prior.ndim != 4 or prior.shape[0] != b or prior.shape[-1] != channels or (
      not resize and prior.shape[1:3] != (h, w)):
    raise ValueError(f"prior of shape {tuple(prior.shape)} does not match the input: expected {expected} "
                     f"(batch{'' if resize else ', height, width'} of the degraded image, {channels} channels)")
  if prior_mask is None:
    present = jnp.ones((b,), bool)
  else:
    if tuple(prior_mask.shape) != (b,):
      raise ValueError(f"prior_mask of shape {tuple(prior_mask.shape)}: expected ({b},), one flag per example")
    present = jnp.asarray(prior_mask).astype(bool)
  p = prior.astype(jnp.float32)
  if p.shape[1:3] != (h, w):
    p = jax.image.resize(p, (b, h, w, channels), "linear", antialias=True)
  # `where`, not a product: a NaN in an absent prior must not reach the network either.
  p = jnp.where(present[:, None, None, None], normalize(p), 0.0)
  plane = jnp.broadcast_to(present[:, None, None, None].astype(jnp.float32), (b, h, w, 1))
  return jnp.concatenate([p, plane], axis=-1), present


def append(
    x: jnp.ndarray,
    prior: Optional[jnp.ndarray],
    prior_mask: Optional[jnp.ndarray] = None,
    *,
    fusion: str,
    channels: int,
    normalize: Callable[[jnp.ndarray], jnp.ndarray] = lambda p: p,
) -> jnp.ndarray:
  """`x` (the normalised degraded input, NHWC) with [normalised prior, presence] appended when
  `fusion == 'concat'`; unchanged otherwise (the prior is not read)."""
  if fusion != "concat":
    return x
  p, _ = prior_input(x, prior, prior_mask, channels=channels, normalize=normalize)
  return jnp.concatenate([x, p.astype(x.dtype)], axis=-1)




def from_backbone(backbone: Any, fused: Any, mode: str) -> Any:
  """Parameters for a network with fusion `mode` from its backbone's (trained or converted without it).

  `fused` holds the fused network's initialised parameters (nested dicts, as `backbone`). Top-level
  `fusion_*` trees that `backbone` lacks are taken from `fused` (their output layers start at zero, so the
  network computes the backbone's function); under 'concat', a kernel that lacks only the prior's input
  channels (axis -2) gets zero weights for them, as the converters give. Anything else is returned as it
  is, for the caller's shape check to name.
  """
  if mode == "none" or not isinstance(backbone, dict):
    return backbone
  out = dict(backbone)
  for name, tree in fused.items():
    if name.startswith(PREFIX) and name not in out:
      out[name] = tree
  if mode != "concat":
    return out

  def pad(have, want):
    if isinstance(have, dict) and isinstance(want, dict):
      return {k: pad(v, want[k]) if k in want else v for k, v in have.items()}
    have_shape, want_shape = np.shape(have), np.shape(want)
    if (len(have_shape) == len(want_shape) >= 2 and have_shape[:-2] == want_shape[:-2]
        and have_shape[-1] == want_shape[-1] and have_shape[-2] < want_shape[-2]):
      have = np.asarray(have)
      zeros = np.zeros(have_shape[:-2] + (want_shape[-2] - have_shape[-2], have_shape[-1]), have.dtype)
      return np.concatenate([have, zeros], axis=-2)
    return have

  return pad(out, fused)


class PriorEncoder(nn.Module):
  """[prior, presence] -> features at levels 0..`levels` (level l at 1/2**l), widths `width * 2**min(l, 2)`.

  Level 0: two 3x3 convs; each further level: a stride-2 3x3 conv and a 3x3 conv (LeakyReLU 0.2).
  """

  width: int = 16
  levels: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, p: jnp.ndarray) -> list[jnp.ndarray]:
    conv = lambda f, s, name: nn.Conv(f, (3, 3), strides=s, padding=1, dtype=self.dtype,
                                      kernel_init=TORCH_INIT, name=name)
    act = lambda t: leaky_relu(t, 0.2)
    x = act(conv(self.width, 1, "conv0_0")(p.astype(self.dtype)))
    feats = [act(conv(self.width, 1, "conv0_1")(x))]
    for level in range(1, self.levels + 1):
      f = self.width * 2 ** min(level, 2)
      x = act(conv(f, 2, f"conv{level}_0")(feats[-1]))
      feats.append(act(conv(f, 1, f"conv{level}_1")(x)))
    return feats


class SFT(nn.Module):
  """`x * (1 + scale) + shift`, both per pixel and channel from the prior features `cond` (1x1 convs);
  the scale/shift convs start at zero, so the layer starts as the identity."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, cond: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    if cond.shape[1:3] != x.shape[1:3]:  # a hook given the wrong level: a bug in the network, not input
      raise ValueError(f"SFT: prior features {cond.shape[1:3]} and backbone features {x.shape[1:3]} "
                       "are on different grids")
    h = leaky_relu(convs.PointwiseConv(cond.shape[-1], dtype=self.dtype, kernel_init=TORCH_INIT,
                                       name="shared")(cond), 0.2)
    zero = lambda name: convs.PointwiseConv(c, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                                            name=name)(h)
    x = x.astype(self.dtype)
    return x * (1 + zero("scale")) + zero("shift")


def _positions(h: int, w: int) -> np.ndarray:
  """(h * w, 2) token centres in [0, 1] (row-major): grids of different sizes share one frame."""
  ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
  return np.stack([ys.reshape(-1), xs.reshape(-1)], axis=-1).astype(np.float32)


class CrossAttention(nn.Module):
  """Queries from backbone features, keys/values from prior features plus a learned null token.

  Returns the attention output after a zero-initialised projection, on the query grid (the caller adds
  it). `present` (B,) bool: an absent example's prior tokens are masked out (only the null token is left).
  """

  heads: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, prior_feats: jnp.ndarray, present: jnp.ndarray) -> jnp.ndarray:
    b, h, w, c = x.shape
    _, hk, wk, _ = prior_feats.shape
    if c % self.heads:
      raise ValueError(f"model.fusion_heads {self.heads} must divide the {c} channels of the backbone "
                       "features that attend to the prior")
    d = c // self.heads
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype, name=name)
    dense = lambda name, init=nn.initializers.lecun_normal(): nn.Dense(
        c, dtype=self.dtype, kernel_init=init, name=name)
    q = dense("query")(norm("norm_query")(x)).reshape(b, h * w, self.heads, d)
    kv = norm("norm_prior")(prior_feats.astype(self.dtype))
    k = dense("key")(kv).reshape(b, hk * wk, self.heads, d)
    v = dense("value")(kv).reshape(b, hk * wk, self.heads, d)
    null_k = self.param("null_key", nn.initializers.normal(0.02), (self.heads, d))
    null_v = self.param("null_value", nn.initializers.zeros, (self.heads, d))
    # Head h prefers prior tokens within ~1/sqrt(locality_h) of the query (in image fractions); the
    # initial spread runs from nearly global to about one token of a 16 x 16 grid.
    log_locality = self.param(
        "log_locality", lambda _, n: jnp.log(2.0 * 4.0 ** jnp.arange(n, dtype=jnp.float32)), self.heads)

    scale = 1.0 / math.sqrt(d)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    pq, pk = _positions(h, w), _positions(hk, wk)
    dist2 = jnp.asarray(((pq[:, None, :] - pk[None, :, :]) ** 2).sum(-1))
    logits = logits - jnp.exp(log_locality)[None, :, None, None] * dist2[None, None]
    logits = jnp.where(present[:, None, None, None], logits, -1e9)
    null = jnp.einsum("bqhd,hd->bhq", q, null_k.astype(self.dtype),
                      preferred_element_type=jnp.float32)[..., None] * scale
    attn = jax.nn.softmax(jnp.concatenate([null, logits], axis=-1), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn[..., 1:], v) + jnp.einsum(
        "bhq,hd->bqhd", attn[..., 0], null_v.astype(self.dtype))
    out = out.reshape(b, h, w, c)
    return dense("proj", nn.initializers.zeros)(out)


@dataclasses.dataclass
class Fusion:
  """The fusion hooks of one network call; build it inside the network's compact `__call__` (`of`).

  Call `concat` on the first conv's input, `encode` once with the padding the backbone applies, then
  `modulate` after every stage and `attend` at the attention hook; each is a no-op in the modes it is
  not for, so a network's code reads the same whatever the mode.
  """

  mode: str
  prior: jnp.ndarray          # [normalised prior, presence], the degraded image's grid (unpadded)
  present: jnp.ndarray        # (B,) bool
  width: int
  heads: int
  scale: int
  dtype: Any
  remat: bool
  feats: Optional[list] = None
  degraded: Optional[jnp.ndarray] = None  # 'match': the degraded image, matched against the prior
  match: Optional[tuple] = None           # 'match': (flow, confidence) from `encode`
  aligned: Optional[jnp.ndarray] = None   # 'align': [registered prior, in-bounds, correlation], padded

  @classmethod
  def of(cls, module: restorer.Restorer, network: str, degraded: jnp.ndarray, prior, prior_mask, *,
         channels: int, normalize: Callable = lambda p: p, supported: Sequence[str] = FUSIONS,
         why: str = "") -> "Fusion":
    """From the network's shared fields (`restorer.Restorer`, `restorer.FeatureFusionRestorer`)."""
    check(module.fusion, network, supported, why)
    if module.fusion in ("sft", "xattn", "match", "align"):
      if module.fusion_width < 1 or module.fusion_heads < 1:
        raise ValueError(f"model.fusion_width {module.fusion_width} and model.fusion_heads "
                         f"{module.fusion_heads} must be positive")
      if module.fusion_scale < 1 or module.fusion_scale & (module.fusion_scale - 1):
        raise ValueError(f"model.fusion_scale {module.fusion_scale} must be a power of two")
    if module.fusion == "none":
      p, present = None, None
    else:
      p, present = prior_input(degraded, prior, prior_mask, channels=channels, normalize=normalize,
                               resize=module.fusion != "concat")
    if isinstance(module, restorer.FeatureFusionRestorer):
      width, heads, scale = module.fusion_width, module.fusion_heads, module.fusion_scale
    else:  # a network without feature stages supports no mode that reads them
      width, heads, scale = 0, 0, 1
    return cls(module.fusion, p, present, width, heads, scale, jnp.dtype(module.dtype), module.remat,
               degraded=degraded.astype(jnp.float32) if module.fusion in ("match", "align") else None)

  def concat(self, x: jnp.ndarray) -> jnp.ndarray:
    """The first conv's input `x` (unpadded, the degraded image's grid) with the prior channels in 'concat'."""
    if self.mode != "concat":
      return x
    return jnp.concatenate([x, self.prior.astype(x.dtype)], axis=-1)

  def token_level(self, level: int) -> int:
    return max(level, int(math.log2(self.scale)))

  def encode(self, pad: Callable[[jnp.ndarray], jnp.ndarray], deepest: int) -> None:
    """Runs the prior encoder on `pad(prior input)` down to the backbone's `deepest` level (sft) or the
    attention tokens' level (xattn, whose hook is always at the deepest level); in 'align', registers
    the prior onto the degraded image (`fusion_align.align`, on the unpadded grid) instead."""
    if self.mode == "align":
      self.aligned = pad(fusion_align.align(self.degraded, self.prior[..., :-1]))
      return
    if self.mode not in ("sft", "xattn", "match"):
      return
    levels = self.token_level(deepest) if self.mode == "xattn" else deepest
    cls = nn.remat(PriorEncoder) if self.remat else PriorEncoder
    prior = pad(self.prior)
    self.feats = cls(self.width, levels, self.dtype, name=f"{PREFIX}encoder")(prior)
    if self.mode == "match":  # restorejax.models.fusion_match
      self.match = fusion_match.Correspondence(self.width, dtype=self.dtype, remat=self.remat,
                                               name=f"{PREFIX}match")(pad(self.degraded), prior[..., :-1])

  def modulate(self, x: jnp.ndarray, level: int, stage: str) -> jnp.ndarray:
    """After a backbone stage at `level` (1/2**level of the padded input): SFT in 'sft', the matched
    prior's gated transfer in 'match', the registered prior added at the first hook in 'align'."""
    if self.mode == "align":
      if self.aligned is None:  # after the first hook
        return x
      cls = nn.remat(fusion_align.Inject) if self.remat else fusion_align.Inject
      x = cls(self.width, self.dtype, name=f"{PREFIX}align_inject")(x, self.aligned, self.present)
      self.aligned = None
      return x
    if self.mode == "match":
      return fusion_match.Transfer(self.dtype, name=f"{PREFIX}match_{stage}")(
          x, self.feats[level], *self.match, self.present)
    if self.mode != "sft":
      return x
    return SFT(self.dtype, name=f"{PREFIX}sft_{stage}")(x, self.feats[level])

  def attend(self, x: jnp.ndarray, level: int) -> jnp.ndarray:
    """At the attention hook (features at `level`): cross-attention to the prior tokens in 'xattn'."""
    if self.mode != "xattn":
      return x
    tokens = self.token_level(level)
    b, h, w, c = x.shape
    f = 2 ** (tokens - level)
    q = x if f == 1 else jax.image.resize(x, (b, -(-h // f), -(-w // f), c), "linear", antialias=True)
    out = CrossAttention(self.heads, self.dtype, name=f"{PREFIX}xattn")(q, self.feats[tokens],
                                                                         self.present)
    if f > 1:
      out = jax.image.resize(out, x.shape, "linear")
    return (x + out).astype(x.dtype)
