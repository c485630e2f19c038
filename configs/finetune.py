"""Fine-tuning: start from converted official weights (or another run) at a tenth of the learning rate.

The network is the one the checkpoint directory was written for (the `model` block of its config.json,
so a converted preset needs no restating); the data, degradation, losses and schedule are
configs/default.py's with a lower peak learning rate (1e-4, a tenth of NAFNet's official 1e-3, after 20
warm-up steps), 1000 steps. The parameters come from `init_from` (a run directory's EMA parameters or a
converted checkpoint); the EMA starts as a copy of them, the optimizer and the step start afresh. After
the first checkpoint the run resumes from its own checkpoints like any other.

Recipe (convert -> init_from -> train):
  python -m restorejax.convert --arch nafnet --preset sidd-width32 --src NAFNet-SIDD-width32.pth \\
      --out runs/nafnet-sidd32
  python -m restorejax.main --config=configs/finetune.py:init_from=runs/nafnet-sidd32 \\
      --workdir=runs/finetune-sidd32
Your data instead of the embedded images: --config.data.source=records --config.data.records.path=DIR
(see README "Data"). Adding a prior to an official network: convert as it is and fine-tune with
--config.model.fusion=sft (or concat, xattn): the backbone's weights load, the fusion layers start as the
identity. Expect: not measured (no official checkpoint can be downloaded on this machine; CI fine-tunes
a converted official-format NAFNet state dict made by the test, see tests/test_warm_start.py).

The argument after the colon is comma-separated: `init_from=DIR` (required) and optionally the variant
`tiny` (configs/default.py:tiny's data and 60 steps, for tests), e.g.
`configs/finetune.py:tiny,init_from=/tmp/nafnet`.
"""

import json
import os

import ml_collections

from configs import common, default

USAGE = ("configs/finetune.py needs the checkpoint to start from: --config=configs/finetune.py:init_from=DIR "
         "(DIR from `python -m restorejax.convert ... --out DIR`, or a run directory)")


def parse_arg(arg: str | None) -> tuple[str, dict[str, str]]:
  """'tiny,init_from=DIR' -> ('tiny', {'init_from': 'DIR'})."""
  args = common.parse_arg(arg, source="configs/finetune.py", variants=("default", "tiny"), init_from="")
  if not args.init_from:
    raise ValueError(USAGE)
  return args.variant, {"init_from": args.init_from}


def checkpoint_model(path: str) -> ml_collections.ConfigDict:
  """The `model` block of the config.json a run or converted checkpoint directory holds."""
  config_file = os.path.join(path, "config.json")
  if not os.path.isfile(config_file):
    raise ValueError(f"configs/finetune.py: init_from={path} has no config.json ({USAGE.split(': ', 1)[1]})")
  with open(config_file) as f:
    saved = json.load(f)
  if saved.get("task", "restoration") != "restoration" or "model" not in saved:
    raise ValueError(f"configs/finetune.py: init_from={path} holds no restoration network "
                     f"(task {saved.get('task')!r}); fine-tuning takes a restorer's weights")
  # JSON has no tuples; the model fields are tuples in every config (and overrides keep their type).
  model = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["model"].items()}
  return ml_collections.ConfigDict(model)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, options = parse_arg(arg)
  c = default.get_config(variant)
  with c.unlocked():
    c.model = checkpoint_model(options["init_from"])
    c.init_from = options["init_from"]
    c.optim.update(lr=1e-4, warmup_steps=20)
    if variant == "default":
      c.total_steps = 1000
      c.eval_every = c.checkpoint_every = 250
    else:
      c.optim.warmup_steps = 5
  return c
