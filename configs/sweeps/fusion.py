"""Prior fusion benchmark: the same NAFNet with fusion none / concat / sft / xattn / match, same steps and seed,
on the embedded dead-leaves data with simulated (misaligned, re-toned) priors.

Run (five short runs, about 20 minutes on a 2-core CPU):
  python -m restorejax.sweep --config=configs/default.py --sweep=configs/sweeps/fusion.py \
      --workdir=runs/sweep_fusion
Results: runs/sweep_fusion/results.md (and .csv, .png); measured figures in BENCHMARKS.md.

The argument after the colon is comma-separated: `steps=N` (default 400), `severity=LO:HI` (the simulated
priors' severity range, default 0:0.2, mild: a few pixels of shift, a small warp and tone change; the
default config's 0.2:0.6 is much harder), 'tiny' (10 steps, for tests). Every variant is evaluated on
centre crops of the training patch size, for the reason given in configs/sweeps/losses.py.
"""

from configs import common

MODES = ("none", "concat", "sft", "xattn", "match")


def parse_arg(arg):
  args = common.parse_arg(arg, source="configs/sweeps/fusion.py", steps=400, severity=(0.0, 0.2), tiny=False)
  return args.steps, tuple(args.severity), args.tiny


def get_sweep(arg=None):
  steps, severity, tiny = parse_arg(arg)
  if tiny:
    steps = 10
  common = {"data.simulated_prior.enabled": True, "data.simulated_prior.severity": severity,
            "data.eval_crop": 32 if tiny else 64, "total_steps": steps, "eval_every": steps,
            "checkpoint_every": steps, "log_every": min(50, steps)}
  return [(mode, {**common, "model.fusion": mode}) for mode in MODES]
