"""NAFNet on the embedded default data (configs/default.py) trained with its pixel loss plus DiffLoss.

DiffLoss uses a frozen diffusion prior, named by a run directory: one trained here first
(configs/diffusion_prior.py, 30-60 minutes on a 2-core CPU) or converted official weights
(`python -m restorejax.convert.adm --checkpoint 256x256_diffusion_uncond.pt --out DIR`; that prior works
at 256x256, so train on 256x256 patches as the paper does (`--config.data.patch_size=256`), or set
`--config.losses.diffloss.resize_method=none` to show it the patches at their own size).

Run:
  python -m restorejax.main --config=configs/diffusion_prior.py --workdir=runs/diffusion_prior
  python -m restorejax.main --config=configs/diffloss_nafnet.py --workdir=runs/diffloss_nafnet
Expect: eval/psnr within a few tenths of a dB of configs/default.py (DiffLoss is a naturalness
constraint, not a PSNR booster; see RESULTS.md), at about 2.2x the step time of the plain run on a CPU
(4.6x its FLOPs: `python -m restorejax.bench step --config=configs/diffloss_nafnet.py --baseline=configs/default.py`).

The argument after the colon is comma-separated: a variant of configs/default.py ('default' or 'tiny')
and/or `prior=DIR` (default runs/diffusion_prior), e.g. `configs/diffloss_nafnet.py:tiny,prior=/tmp/p`;
`--config.losses.diffloss.diffusion_run=DIR` does the same (its old name `prior` still works). Loss weights
as in the paper (gamma = lambda = 1e-3, see restorejax/losses/diffloss.py): `losses.diffloss.weight` is
gamma, `losses.diffloss.semantic` lambda.
"""


import ml_collections

from configs import common, default
from restorejax.losses import diffloss


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, source="configs/diffloss_nafnet.py", variants=("default", "tiny"),
                          prior="runs/diffusion_prior")
  variant = args.variant
  c = default.get_config(variant)
  with c.unlocked():
    c.losses.diffloss.update(weight=1e-3, semantic=1e-3, diffusion_run=args.prior)
    # The prior's parameters live in aux under diffloss/params/...: ADM's FSDP rules, then the restorer's.
    c.sharding.rules = diffloss.sharding_rules() + tuple(c.sharding.rules)
  return c
