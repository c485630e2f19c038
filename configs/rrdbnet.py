"""RRDBNet x4 (the ESRGAN generator, PSNR-oriented: L1 only, no GAN) on the embedded procedural images.

High-resolution dead-leaves patches are cropped on the host; the x4 low-resolution input is made on the
device by MATLAB bicubic downsampling (`config.data.degrade.name='sr'`). Evaluation follows BasicSR's SR
conventions (Y channel, crop_border = 4); `eval/bicubic_psnr` is the bicubic-upsampling baseline.

Run:
  python -m restorejax.main --config=configs/rrdbnet.py --workdir=runs/rrdbnet_x4
Measured (RESULTS.md, "Super-resolution"; 2-core CPU shared with other jobs): eval/psnr 18.12 dB against
eval/bicubic_psnr 17.36 dB (+0.76 dB; Y, crop_border 4; SSIM 0.601 vs 0.502) in 1787 s wall; short of
+1 dB, which needs a longer run (e.g. --config.total_steps=3000; not measured).

Variants (after a colon):
  configs/rrdbnet.py           the default: 32 features, 2 RRDBs, growth 16, 48x48 HR (12x12 LR) patches,
                               batch 8, 800 steps.
  configs/rrdbnet.py:tiny      8 features, 1 RRDB, growth 8, 32x32 HR patches, 20 steps: for tests.
ESRGAN's own generator (RRDB_PSNR_x4: 64 features, 23 RRDBs, growth 32) is one override away:
  --config.model.num_feat=64 --config.model.num_block=23 --config.model.num_grow_ch=32
and its converted official weights can be fine-tuned with --config.init_from=DIR (README, "Converting").
"""

import ml_collections

from configs import common
from restorejax import losses, models, optim

VARIANTS = ("default", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, source="configs/rrdbnet.py", variants=VARIANTS).variant
  scale = 4
  c = common.run(total_steps=800, log_every=50, eval_every=200, checkpoint_every=200)

  c.model = models.default_config("rrdbnet")
  c.model.update(scale=scale, num_feat=32, num_block=2, num_grow_ch=16)

  c.data = common.restoration_data(common.bicubic_sr(), eval_num_images=16, scale=scale, patch_size=48)
  c.eval = common.restoration_eval(crop_border=scale, test_y_channel=True)  # BasicSR's SR conventions

  c.losses = losses.default_config(l1=1.0)
  c.optim = optim.default_config()
  c.optim.update(lr=2e-3, b2=0.99, warmup_steps=50)

  if variant == "tiny":
    common.tiny_sr(c)
    c.model.update(num_feat=8, num_block=1, num_grow_ch=8)

  c.lock()
  return c
