"""SwinIR classical super-resolution (x2, x4) on the embedded procedural images, trained from scratch.

High-resolution dead-leaves patches are cropped on the host; the low-resolution input is made on the
device by MATLAB bicubic downsampling (`config.data.degrade.name='sr'`, BasicSR's `imresize`, the
convention behind every SR paper's numbers). Evaluation follows BasicSR's SR conventions: PSNR/SSIM on
the Y channel with crop_border = scale; `eval/bicubic_psnr` is bicubic upsampling of the same inputs,
the baseline the model must beat.

Run:
  python -m restorejax.main --config=configs/swinir_sr.py --workdir=runs/swinir_x2
Measured (RESULTS.md, "Super-resolution"; 2-core CPU shared with other jobs): the x2 default reaches
eval/psnr 22.01 dB against eval/bicubic_psnr 20.40 dB (+1.61 dB; Y, crop_border 2; SSIM 0.848 vs 0.774)
in 574 s wall, +1 dB between steps 200 and 400. The x4 variant (`:x4`, same 800 steps) reaches 18.08 dB
against 17.36 dB (+0.71 dB; Y, crop_border 4; SSIM 0.590 vs 0.502) in 366 s wall (2026-12-07), still
rising by 0.03 dB per 200 steps: for x4, RRDBNet (configs/rrdbnet.py, +1.04 dB in 1500 steps) does better here.

Variants (after a colon):
  configs/swinir_sr.py:x2      the default: a small classical-SR SwinIR (embed 32, 2 RSTBs of depth 2,
                               window 8), x2, 32x32 HR patches (16x16 LR), batch 8, 800 steps.
  configs/swinir_sr.py:x4      the same network at x4 (64x64 HR, 16x16 LR patches).
  configs/swinir_sr.py:tiny    embed 12, one RSTB, x2, 32x32 HR patches, 20 steps: for tests.
The official classical-SR architecture (embed 180, six RSTBs of depth 6) is one override away:
  --config.model.embed_dim=180 --config.model.depths='(6,6,6,6,6,6)' --config.model.num_heads='(6,6,6,6,6,6)'
Noise / blur / JPEG before or after the downsampling: --config.data.degrade.noise_sigma='(0,15)',
--config.data.degrade.order=realworld (see restorejax/data/degrade.py).
"""

import ml_collections

from configs import common
from restorejax import losses, models, optim

VARIANTS = ("x2", "x4", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, source="configs/swinir_sr.py", variants=VARIANTS).variant
  scale = 4 if variant == "x4" else 2
  c = common.run(total_steps=800, log_every=50, eval_every=200, checkpoint_every=200)

  c.model = models.default_config("swinir")
  c.model.update(upscale=scale, upsampler="pixelshuffle", embed_dim=32, depths=(2, 2), num_heads=(4, 4),
                 window_size=8, mlp_ratio=2.0, resi_connection="1conv", img_range=1.0)

  c.data = common.restoration_data(common.bicubic_sr(), eval_num_images=16, scale=scale, patch_size=16 * scale)
  c.eval = common.restoration_eval(crop_border=scale, test_y_channel=True)  # BasicSR's SR conventions

  c.losses = losses.default_config(l1=1.0)
  c.optim = optim.default_config()
  c.optim.update(lr=2e-3, b2=0.99, warmup_steps=50)

  if variant == "tiny":
    common.tiny_sr(c)
    c.model.update(embed_dim=12, depths=(2,), num_heads=(2,), window_size=4)

  c.lock()
  return c
