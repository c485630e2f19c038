"""A two-stage SR3 cascade (cascaded diffusion, CDM) on the embedded images: 16 -> 32 -> 64, x2 per stage.

Each stage is an `sr3` run (configs/sr3.py with its own sizes) trained with conditioning augmentation,
training only, the level u in [0, 1] given to the UNet as a 7th input plane:
  16-32  Gaussian noise on the 16x16 conditioning, std up to 0.2 (in [-1, 1] units): the low stage;
  32-64  Gaussian blur of the upsampled 32 -> 64 conditioning, sigma up to 1 HR pixel: the high stage.

Run (one after the other; the stages do not depend on each other while training):
  python -m restorejax.main --config=configs/sr3_cascade.py:16-32 --workdir=runs/sr3_c16
  python -m restorejax.main --config=configs/sr3_cascade.py:32-64 --workdir=runs/sr3_c32
  python -m restorejax.cascade --stages=runs/sr3_c16,runs/sr3_c32 in16.png --out=out/ --save_stages

Variants: `16-32`, `32-64`, and each with `,tiny` (toy UNets, 20 steps, 8 -> 16 and 16 -> 32) for tests.
"""

import ml_collections

from configs import common, sr3

STAGES = {  # name -> (HR patch, augmentation, its maximum)
    "16-32": (32, "noise", 0.2),
    "32-64": (64, "blur", 1.0),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, source="configs/sr3_cascade.py", variants=tuple(STAGES), tiny=False)
  stage, tiny = args.variant, args.tiny
  patch, augment, max_level = STAGES[stage]
  c = sr3.get_config("tiny" if tiny else "default")
  if tiny:
    patch //= 2
  with c.unlocked():
    c.data.update(scale=2, patch_size=patch)
    c.data.procedural.update(eval_image_size=patch)  # evaluated at the stage's own resolution
    c.data.procedural.image_size = max(c.data.procedural.image_size, patch + patch // 2)
    c.model.update(image_size=patch, in_channels=7)
    c.model.attention_resolutions = (patch // 2 ** (len(c.model.channel_mult) - 1),)  # the lowest level
    c.sr3.update(augment=augment, augment_max=max_level)
  c.lock()
  return c
