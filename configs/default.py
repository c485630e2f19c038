"""The embedded default run: NAFNet learns to deblur and denoise procedural dead-leaves images.

Nothing is downloaded: images are drawn on the fly (restorejax/data/procedural.py) and degraded on the
device (Gaussian blur sigma 0.1..1 then Gaussian noise sigma 10..50 on 0..255, rounded to 8 bits).

Run:
  python -m restorejax.main --config=configs/default.py --workdir=runs/default
Expect on a 2-core CPU: about 6 minutes; summary.json shows eval/psnr about 3.6 dB above
eval/input_psnr (21.95 vs 18.35 dB; see BENCHMARKS.md for measured figures).

Variants (after a colon):
  configs/default.py:tiny   width 8, one block per stage, 32x32 patches, 60 steps: under a minute; for
                            tests and smoke runs.
Any field can be overridden: --config.total_steps=500 --config.model.width=32 --config.losses.psnr.weight=1

Another network: `configs/default.py:model=NAME` (with a variant: `:tiny,model=NAME`) is that network's
own config, configs/NAME.py (e.g. configs/restormer.py, configs/dehazenet.py); `--config.model.name=NAME`
alone cannot work, the model block holds NAFNet's fields.
"""

import importlib
import os

import ml_collections

from configs import common
from restorejax import losses, models, optim
from restorejax.data import degrade


def parse_arg(arg: str | None) -> tuple[str, str]:
  """'tiny,model=restormer' -> ('tiny', 'restormer'); the model defaults to 'nafnet'."""
  args = common.parse_arg(arg, source="configs/default.py", variants=("default", "tiny"), model="nafnet")
  return args.variant, args.model


# A network whose config file is not named after it.
CONFIG_FILES = {"swinir": "swinir_sr"}


def network_config(model: str, variant: str) -> ml_collections.ConfigDict:
  """configs/<model>.py's config; the 'default' variant is that file's own default."""
  if model not in models.MODELS:
    raise ValueError(f"configs/default.py: model={model!r} unknown (known: {', '.join(sorted(models.MODELS))})")
  here = os.path.dirname(os.path.abspath(__file__))
  path = os.path.join(here, f"{CONFIG_FILES.get(model, model)}.py")
  if not os.path.isfile(path):
    shipped = sorted(m for m in models.MODELS
                     if os.path.isfile(os.path.join(here, f"{CONFIG_FILES.get(m, m)}.py")))
    raise ValueError(f"configs/default.py: model={model}: no configs/{model}.py ships yet (shipped: nafnet, "
                     f"{', '.join(shipped)})")
  module = importlib.import_module(f"configs.{CONFIG_FILES.get(model, model)}")
  return module.get_config(None if variant == "default" else variant)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, model = parse_arg(arg)
  if model != "nafnet":
    return network_config(model, variant)
  c = common.run(total_steps=1500, log_every=50, eval_every=500, checkpoint_every=500)

  c.model = models.default_config("nafnet")
  c.model.update(width=16, enc_blocks=(1, 1, 2), middle_blocks=2, dec_blocks=(1, 1, 1))

  c.data = common.restoration_data(degrade.default_config())
  # Mostly denoising: a small network learns it within minutes on a CPU (see BENCHMARKS.md).
  c.data.degrade.update(blur_sigma=(0.1, 1.0), noise_sigma=(10.0, 50.0))
  c.eval = common.restoration_eval()

  c.losses = losses.default_config(l1=1.0)
  c.optim = optim.default_config()
  c.optim.lr = 2e-3

  if variant == "tiny":
    c.total_steps = 60
    c.log_every = 10
    c.eval_every = 30
    c.checkpoint_every = 20
    c.model.update(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1))
    c.data.procedural.update(num_images=64, image_size=40, eval_num_images=8, eval_image_size=32)
    c.data.patch_size = 32
    c.optim.warmup_steps = 5

  c.lock()
  return c
