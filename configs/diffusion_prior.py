"""A small unconditional diffusion prior (ADM UNet, DDPM) on the embedded dead-leaves images: the frozen
prior DiffLoss needs when no official checkpoint is at hand.

The network learns the targets at 32x32: 64x64 crops area-downsampled by 2, i.e. exactly how DiffLoss
(configs/diffloss_nafnet.py) shows it the restorer's 64x64 patches. eps-prediction, linear schedule,
1000 steps, learned sigma (hybrid loss), as the official ImageNet priors.

Run:
  python -m restorejax.main --config=configs/diffusion_prior.py --workdir=runs/diffusion_prior
Expect on a 2-core CPU: 25-50 minutes; eval/loss (the held-out eps-MSE at fixed steps and noise) falls
from 0.135 at step 500 to about 0.123, and runs/diffusion_prior/samples.png shows DDIM samples: flat and
textured overlapping shapes like the data (measured figures in RESULTS.md). The directory is what
`config.losses.diffloss.diffusion_run` takes.

Variants (after a colon):
  configs/diffusion_prior.py:64    the same at 64x64 (crops as they are), a wider UNet with one more level.
  configs/diffusion_prior.py:tiny  a toy UNet, 60 steps: a prior for tests (samples are noise-like blobs).
"""

import ml_collections

from configs import common
from restorejax import optim
from restorejax.data import degrade
from restorejax.models import adm_unet
from restorejax.tasks import diffusion


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, source="configs/diffusion_prior.py", variants=("32", "64", "tiny")).variant
  c = common.run(task="diffusion", total_steps=2500, log_every=100, eval_every=500,
                 checkpoint_every=500, keep_checkpoints=1, rules=adm_unet.ADM_SHARDING_RULES)

  c.model = adm_unet.default_config("tiny")
  c.model.update(image_size=32, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attention_resolutions=(8,), num_head_channels=32, out_channels=6, norm_groups=32)

  c.diffusion = diffusion.default_config()
  c.diffusion.image_size = 32

  c.data = ml_collections.ConfigDict({
      "source": "procedural",
      "procedural": {"seed": 0, "num_images": 4096, "image_size": 96,
                     "eval_num_images": 64, "eval_image_size": 64},
      "patch_size": 64,
      "batch_size": 16,
      "num_workers": 0,
      "read_threads": 2,
      "degrade": degrade.default_config(),  # unused by this task (the compiled step drops it)
  })
  c.eval = ml_collections.ConfigDict({"batch_size": 16})

  c.optim = optim.default_config()
  # A short run: a high rate decayed to zero, and an EMA whose horizon (200 steps) forgets the init.
  c.optim.update(lr=1e-3, warmup_steps=200, b2=0.999, ema_decay=0.995, grad_clip_norm=1.0)

  if variant == "64":
    c.model.update(image_size=64, model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                   attention_resolutions=(16, 8))
    c.diffusion.image_size = 64
    c.data.batch_size = 16
    c.eval.batch_size = 16
    c.total_steps = 5000
  elif variant == "tiny":
    c.model.update(model_channels=16, channel_mult=(1, 2), attention_resolutions=(16,), num_head_channels=16,
                   norm_groups=8)
    c.data.procedural.update(num_images=64, eval_num_images=8)
    c.data.batch_size = 8
    c.eval.batch_size = 8
    c.diffusion.update(sample_count=4, sample_steps=5)
    c.total_steps = 60
    c.log_every = 10
    c.eval_every = 60
    c.checkpoint_every = 60
    c.optim.warmup_steps = 5
  c.lock()
  return c
