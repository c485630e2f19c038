"""What every restoration network is: the fields they all share and the facts evaluation reads from them.

`Restorer` is the base of every network in `models.MODELS`, called as
`model(degraded, prior=None, prior_mask=None) -> restored` on NHWC float images in [0, 1]. It declares
once the fields every network has (`fusion`, `dtype`, `scan`, `remat`); `FeatureFusionRestorer` adds the
settings of the feature-level fusion modes ('sft', 'xattn', 'match': `fusion_width`, `fusion_heads`,
`fusion_scale`) for the networks that have feature stages (all but DehazeNet). A network overrides
`input_padding` when it pads its input itself and `output_scale` when it super-resolves; the network's own
`__call__` reads them too, so the fact lives in one place.
"""

import flax.linen as nn

# The shared fields in the order `config.model` blocks list them (after the network's own fields).
SHARED_FIELDS = ("fusion", "fusion_width", "fusion_heads", "fusion_scale", "dtype", "scan", "remat")


class Restorer(nn.Module):
  """Base of the restoration networks.

  Attributes:
    fusion: how a prior enters (restorejax.models.fusion): 'none', 'concat', and for feature-level
      networks 'sft', 'xattn' or 'match'.
    dtype: compute dtype ('float32' or 'bfloat16'); parameters and the output stay float32.
    scan: compile each stage's repeated blocks once (`restorejax.models.stack`).
    remat: recompute activations in the backward pass.
  """

  fusion: str = "none"
  dtype: str = "float32"
  scan: bool = True
  remat: bool = False

  def input_padding(self) -> tuple[int, str]:
    """(multiple, numpy/jnp pad mode): the network pads its input's height and width to a multiple of
    `multiple` this way. Padding a canvas the same way gives the network the very input it would make of
    the image alone; (1, 'constant') means canvases of each image's exact size (exact too, compiled per
    size)."""
    return 1, "constant"

  def output_scale(self) -> int:
    """Output size / input size (super-resolution networks: their factor)."""
    return 1


class FeatureFusionRestorer(Restorer):
  """A restorer with feature stages, which the prior may also enter as features ('sft', 'xattn', 'match').

  Attributes:
    fusion_width: the prior encoder's base width.
    fusion_heads: the cross-attention heads ('xattn').
    fusion_scale: the cross-attention tokens' downsampling of the input (the network's attention level's
      when that is coarser); a power of two.
  """

  fusion_width: int = 16
  fusion_heads: int = 4
  fusion_scale: int = 8
