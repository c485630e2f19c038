"""Loss ablation with generative priors: {pixel only, + prior loss, + DiffLoss, + both} x fusion {none,
concat}, on the embedded dead-leaves data with simulated (misaligned, re-toned) priors.

Run (8 runs of the default config; the DiffLoss ones take about twice as long: 1-1.5 hours in all on a
quiet 2-core CPU, several hours on a loaded one; DiffLoss needs its prior first):
  python -m restorejax.main --config=configs/diffusion_prior.py --workdir=runs/diffusion_prior
  python -m restorejax.sweep --config=configs/default.py --sweep=configs/sweeps/losses.py \
      --workdir=runs/sweep_losses
Tiny (tests, smoke): --sweep=configs/sweeps/losses.py:tiny,prior=DIR with --config=configs/default.py:tiny.

The argument after the colon is comma-separated: 'tiny' (10 steps per variant) and/or `prior=DIR`, the
DiffLoss prior (default runs/diffusion_prior). Every variant trains with simulated priors in its batches
(`data.simulated_prior.enabled`), so the variants differ only in the loss and the fusion:
  pixel     the config's own pixel loss (l1)
  prior     + prior_color, prior_patch and prior_gradient, each weight 0.01 (restorejax/losses/prior.py)
  diffloss  + DiffLoss, weight 1e-3 and semantic 1e-3 (the paper's gamma and lambda)
  both      + both
  fusion    none: the network ignores the prior; concat: its channels are appended to the input
Every variant is evaluated on 64x64 centre crops of the held-out images (the training patch size).
Results: runs/sweep_losses/results.md, results.csv, results.png; measured figures in RESULTS.md.
"""

from configs import common

PRIOR_TERMS = {"losses.prior_color.weight": 0.01, "losses.prior_patch.weight": 0.01,
               "losses.prior_gradient.weight": 0.01}
TINY = {"total_steps": 10, "log_every": 5, "eval_every": 10, "checkpoint_every": 10}


def parse_arg(arg):
  args = common.parse_arg(arg, source="configs/sweeps/losses.py", tiny=False,
                          prior="runs/diffusion_prior")
  return args.tiny, args.prior


def get_sweep(arg=None):
  tiny, prior = parse_arg(arg)
  diffloss = {"losses.diffloss.weight": 1e-3, "losses.diffloss.semantic": 1e-3,
              "losses.diffloss.diffusion_run": prior}
  losses = {"pixel": {}, "prior": PRIOR_TERMS, "diffloss": diffloss, "both": {**PRIOR_TERMS, **diffloss}}
  # Evaluated on centre crops of the training patch size: simulated priors are made from the image they
  # accompany, so their misalignment in pixels grows with its size, and a full 96x96 held-out image gets
  # 1.5x the shifts the 64x64 training patches had (RESULTS.md, "Prior fusion"). Real priors, cropped
  # with the same window as their images, do not have this mismatch.
  common = {"data.simulated_prior.enabled": True, "data.eval_crop": 32 if tiny else 64,
            **(TINY if tiny else {})}
  return [(f"{fusion}_{name}", {**common, "model.fusion": fusion, **terms})
          for fusion in ("none", "concat") for name, terms in losses.items()]
