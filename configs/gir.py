"""General image restoration (GIR): the default NAFNet trained on MiOIR's mixed degradations, and the two
reference runs whose per-task scores set the GIR protocol's acceptance and excellence lines (Kong et al.,
"General image restoration", arXiv:2408.15143: a weak and a strong reference model per task).

Every variant degrades the embedded dead-leaves targets on the device with `mixed`: one to three of
haze, rain, low light, blur, bicubic down-up, Poisson noise, Gaussian noise and JPEG at MiOIR's training
ranges (restorejax/data/degrade.py), i.e. the distribution of the GIR suite's `@train` tasks.

  configs/gir.py          the general model, 1500 steps like the embedded default run; the excellence
                          reference of the report below.
  configs/gir.py:weak     the acceptance reference: the same network after 300 steps.
  configs/gir.py:tiny     configs/default.py:tiny with mixed degradations, for tests.

The GIR report of the embedded default model (trained on blur + noise only) against the two references,
on the 100-task suite built from procedural ground truth (no download):
  python -m restorejax.main --config=configs/default.py --workdir=runs/default
  python -m restorejax.main --config=configs/gir.py:weak --workdir=runs/gir_weak
  python -m restorejax.main --config=configs/gir.py --workdir=runs/gir
  restorejax-gir --workdir=runs/default --weak=runs/gir_weak --strong=runs/gir --gt=default \\
      --out=runs/gir_report
Measured figures: RESULTS.md ("GIR").
"""


import ml_collections

from configs import common, default
from restorejax.data import degrade

STEPS = {"default": 1500, "weak": 300}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, source="configs/gir.py", variants=(*STEPS, "tiny")).variant
  c = default.get_config("tiny" if variant == "tiny" else "default")
  with c.unlocked():
    c.data.degrade = ml_collections.ConfigDict(
        {"name": "mixed", "ops": degrade.OPS, "max_ops": 3, "ranges": "train"})
    if variant in STEPS:
      c.total_steps = STEPS[variant]
      c.eval_every = min(c.eval_every, c.total_steps)
      c.checkpoint_every = min(c.checkpoint_every, c.total_steps)
  return c
