"""DehazeNet learns to dehaze the embedded procedural images, haze synthesised on the device.

The targets are configs/default.py's dead-leaves images; the haze is the GIR protocol's (MiOIR's) haze
op of `restorejax.data.degrade`, alone: `I = J t + A (1 - t)`, `t = exp(-beta depth)`, airlight A in
[0.8, 1], beta in [0.5, 2.5] (the training ranges; the `haze@harder` GIR tasks use beta 2.5..3) on a
smooth depth proxy, rounded to 8 bits. The network is the official one (16 features, maxout over 4,
3/5/7 multi-scale convs, 7x7 extremum, 6x6 regression, BReLU; about 8 k parameters) trained end to end
through its physics inversion with an L1 loss on the dehazed image. Its guided-filter refinement radius
is 16 pixels instead of the official 50, which suits full-resolution photographs, not 64-pixel patches.

Run:
  python -m restorejax.main --config=configs/dehazenet.py --workdir=runs/dehazenet
  (or --config=configs/default.py:model=dehazenet, the same config)
Expect (measured, RESULTS.md "DehazeNet default run"; a shared 2-core CPU, 1626 s): eval/psnr 15.54 dB vs
11.56 dB for the hazy input after 1500 steps (+3.98 dB), but 18.41 dB at step 1000: training is erratic
(an almost-zero gradient for its first ~500 steps, then spikes), not yet tuned.

Variants (after a colon):
  configs/dehazenet.py:tiny   a 4-feature CNN, refinement radius 4, configs/default.py:tiny's data and
                              60 steps; for tests and smoke runs.
Fine-tuning the authors' MATLAB weights: `python -m restorejax.convert --arch dehazenet --preset official
--src dehaze.mat --out runs/dehazenet-official`, then configs/finetune.py (see there).
"""


import ml_collections

from configs import common, default
from restorejax import models


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, source="configs/dehazenet.py", variants=("default", "tiny")).variant
  c = default.get_config(variant)
  with c.unlocked():
    c.model = models.default_config("dehazenet")
    c.model.refine_radius = 16
    c.data.degrade = ml_collections.ConfigDict(
        {"name": "mixed", "ops": ("haze",), "max_ops": 1, "ranges": "train"})
    c.optim.lr = 1e-3
    if variant == "tiny":
      c.model.update(features=4, maxout_groups=2, scale_features=4, scales=(3, 5), extremum_size=3,
                     refine_radius=4)
  return c
