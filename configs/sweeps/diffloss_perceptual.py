"""What DiffLoss buys in LPIPS / NIQE and costs in PSNR: DiffLoss at the paper's weight and larger ones, with
an L1 and with the paper's MSE pixel loss, and the VGG perceptual loss as a comparison point.

Needs the perceptual extra (pip install -e ".[perceptual]") and NIQE's parameters (README, Evaluation), and
the DiffLoss prior first:
  python -m restorejax.main --config=configs/diffusion_prior.py --workdir=runs/diffusion_prior
  python -m restorejax.sweep --config=configs/default.py --sweep=configs/sweeps/diffloss_perceptual.py \
      --workdir=runs/sweep_diffloss_perceptual
Tiny (smoke): --sweep=configs/sweeps/diffloss_perceptual.py:tiny,prior=DIR with --config=configs/default.py:tiny.

Variants (no priors in the batches; fusion none):
  l1, l2                      the pixel loss alone (l2 = the paper's MSE)
  {l1,l2}_diffloss_{1e-3,1e-2,1e-1}   + DiffLoss at gamma (its weight) 1e-3 (the paper's), 1e-2, 1e-1;
                              lambda (semantic) 1e-3 as in the paper
  l1_perceptual               + the VGG16 perceptual loss at 0.01 (BasicSR's layers, L1)
Every variant is evaluated with LPIPS (AlexNet) and NIQE (`config.eval.perceptual`) on held-out images of
192x192 (NIQE needs two whole 96x96 blocks). The table: runs/sweep_diffloss_perceptual/results.md.
"""

from configs import common

TINY = {"total_steps": 10, "log_every": 5, "eval_every": 10, "checkpoint_every": 10}


def parse_arg(arg):
  args = common.parse_arg(arg, source="configs/sweeps/diffloss_perceptual.py", tiny=False,
                          prior="runs/diffusion_prior")
  return args.tiny, args.prior


def get_sweep(arg=None):
  tiny, prior = parse_arg(arg)
  shared = {"eval.perceptual": True, "data.procedural.eval_image_size": 192, **(TINY if tiny else {})}
  pixel = {"l1": {"losses.l1.weight": 1.0}, "l2": {"losses.l1.weight": 0.0, "losses.l2.weight": 1.0}}
  variants = []
  for name, loss in pixel.items():
    variants.append((name, {**shared, **loss}))
    for gamma in ("1e-3", "1e-2", "1e-1"):
      variants.append((f"{name}_diffloss_{gamma}", {
          **shared, **loss, "losses.diffloss.weight": float(gamma), "losses.diffloss.semantic": 1e-3,
          "losses.diffloss.diffusion_run": prior}))
  variants.append(("l1_perceptual", {**shared, **pixel["l1"], "losses.perceptual.weight": 0.01}))
  return variants
