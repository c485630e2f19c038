"""Restormer on the embedded default data: deblurring and denoising procedural dead-leaves images.

The data and degradation are configs/default.py's (Gaussian blur sigma 0.1..1 then Gaussian noise sigma
10..50 on 0..255, synthesised on the device); only the network and its optimizer change. The default
variant is a CPU-sized Restormer (dim 16, blocks (1, 2, 2, 4), one refinement block: about 1.6 M
parameters; the official networks are dim 48, blocks (4, 6, 6, 8), 4 refinement blocks, 26 M, see
`restorejax.models.restormer.PRESETS`). AdamW with betas (0.9, 0.999) as the official recipe, at a higher
peak rate (1e-3 instead of 3e-4) for a run of minutes rather than 300k iterations.

Run:
  python -m restorejax.main --config=configs/restormer.py --workdir=runs/restormer
  (or --config=configs/default.py:model=restormer, the same config)
Expect (measured, RESULTS.md "Restormer"; 2-core CPU shared with other jobs, load 2 to 7.5, 2026-12-07):
eval/psnr 21.12 dB (SSIM 0.807) against the degraded input's 18.35 dB (0.656) after the default 600
steps, +2.77 dB; 20.17 / 20.95 dB at steps 200 / 400; 2307 s wall (compile 49 s, 2.2 images/s).

Variants (after a colon):
  configs/restormer.py:tiny   dim 8, blocks (1, 0, 0, 1), configs/default.py:tiny's data and 60 steps;
                              for tests and smoke runs.
The official sizes: --config.model.dim=48 --config.model.num_blocks=(4,6,6,8)
--config.model.num_refinement_blocks=4 (and --config.data.patch_size=128 or more).
"""


import ml_collections

from configs import common, default
from restorejax import models


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, source="configs/restormer.py", variants=("default", "tiny")).variant
  c = default.get_config(variant)
  with c.unlocked():
    c.model = models.default_config("restormer")
    c.model.update(dim=16, num_blocks=(1, 2, 2, 4), num_refinement_blocks=1, heads=(1, 2, 4, 8))
    c.optim.update(lr=1e-3, b2=0.999)
    if variant == "default":  # a run of about 40 minutes on a 2-core CPU (measured above)
      c.update(total_steps=600, eval_every=200, checkpoint_every=200)
    if variant == "tiny":
      c.model.update(dim=8, num_blocks=(1, 0, 0, 1), num_refinement_blocks=0, heads=(1, 1, 1, 1))
  return c
