"""Prior fusion against prior severity: every fusion mode at fixed severities 0 .. 0.8, per seed, against the
same network without a prior (issue 18's experiment on the embedded data with target-derived priors).

Run (one seed: 31 runs of 400 steps, about 1.5-2 hours on a quiet 2-core CPU; `seeds=3` triples it):
  python -m restorejax.sweep --config=configs/default.py --sweep=configs/sweeps/prior_severity.py \
      --workdir=runs/sweep_prior_severity
  python -m restorejax.fusion_report runs/sweep_prior_severity   # gain table and plot
To run variants side by side, `--print_only` prints one command per variant.

The argument after the colon is comma-separated: `seeds=N` (seeds 0 .. N-1, default 1), `steps=N`
(default 400), `modes=A+B` (default every mode but none, in `MODES`'s order), `geometry=false` (priors
without their view change and displaced patch), 'tiny' (10 steps, severities 0 and 0.4, for tests).
Variant names are `<mode>_sev<severity>_s<seed>`; `none` reads no prior, so it runs once per seed
(`none_s<seed>`; its result does not depend on the severity: the severity draw consumes the same random
numbers whatever its value). Every variant is evaluated on 64x64 centre crops of the held-out images with
priors of its own severity.
"""

from configs import common

MODES = ("align", "concat", "match", "sft", "xattn")  # most informative first, for a partial sweep
SEVERITIES = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8)


def parse_arg(arg):
  args = common.parse_arg(arg, source="configs/sweeps/prior_severity.py", seeds=1, steps=400,
                          modes="+".join(MODES), geometry=True, tiny=False)
  modes = tuple(m for m in args.modes.split("+") if m)
  unknown = [m for m in modes if m not in MODES]
  if unknown or not modes:
    raise ValueError(f"configs/sweeps/prior_severity.py: modes={args.modes!r}: unknown mode(s) "
                     f"{', '.join(unknown) or '(none given)'} (known: {', '.join(MODES)})")
  if args.seeds < 1:
    raise ValueError(f"configs/sweeps/prior_severity.py: seeds={args.seeds} must be at least 1")
  return args.seeds, args.steps, modes, args.geometry, args.tiny


def severity_name(s: float) -> str:
  """0.4 -> 'sev0.4' (the variant's severity, read back by `restorejax.fusion_report`)."""
  return f"sev{s:g}"


def get_sweep(arg=None):
  seeds, steps, modes, geometry, tiny = parse_arg(arg)
  severities = (0.0, 0.4) if tiny else SEVERITIES
  if tiny:
    steps = 10
  shared = {"data.simulated_prior.enabled": True, "data.simulated_prior.geometry": geometry,
            "data.eval_crop": 32 if tiny else 64, "total_steps": steps, "eval_every": steps,
            "checkpoint_every": steps, "log_every": min(50, steps)}
  variants = []
  for seed in range(seeds):
    variants.append((f"none_s{seed}", {**shared, "seed": seed, "model.fusion": "none",
                                        "data.simulated_prior.severity": (0.4, 0.4)}))
    for mode in modes:
      for s in severities:
        variants.append((f"{mode}_{severity_name(s)}_s{seed}", {
            **shared, "seed": seed, "model.fusion": mode, "data.simulated_prior.severity": (s, s)}))
  return variants
