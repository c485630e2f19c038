"""NAFNet with a visual prior (channel concat) trained on a triple dataset (degraded, prior, target).

The dataset comes from `python -m restorejax.data.build --degraded D --target T --prior P --out DIR`
(see README "Data"); its directory is the config argument. Evaluation runs on
`config.data.records.eval_path` (default: the training set itself, so give a held-out set for real
numbers), on centre crops of `config.data.eval_crop` pixels so that images of any size can be stacked.

Run:
  python -m restorejax.main --config=configs/triples.py:/data/ohaze_train --workdir=runs/ohaze \\
      --config.data.records.eval_path=/data/ohaze_test
No-prior ablation (same network, the prior input is zeros):
  python -m restorejax.main --config=configs/triples.py:/data/ohaze_train --workdir=runs/ohaze_noprior \\
      --config.data.use_prior=False
A dataset without priors trains with simulated ones (misaligned, re-toned versions of the target):
  --config.data.simulated_prior.enabled=True
Smoke test (`tiny` after the directory, comma-separated: width 8, one block per stage, 32x32 patches and
crops, 60 steps, no worker processes; no overrides needed, eval on the training set):
  python -m restorejax.main --config=configs/triples.py:/data/ohaze_train,tiny --workdir=/tmp/smoke
No figure measured yet on a real dataset: this config has only been run on tiny generated sets.
"""

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: the dataset directory, optionally with `,tiny` (the smoke-test variant)."""
  args = common.parse_arg(arg, source="configs/triples.py", positional="path", path="", tiny=False)
  tiny, arg = args.tiny, args.path
  if not arg:
    raise ValueError("configs/triples.py needs the dataset directory: --config=configs/triples.py:/path/to/records"
                     " (smoke test: configs/triples.py:/path/to/records,tiny)")
  c = default.get_config()
  c.unlock()
  c.total_steps = 100_000
  c.log_every = 100
  c.eval_every = 5_000
  c.checkpoint_every = 5_000
  c.model.update(width=32, enc_blocks=(2, 2, 4, 8), middle_blocks=12, dec_blocks=(2, 2, 2, 2), fusion="concat")
  c.data.source = "records"
  c.data.records.path = arg
  c.data.records.eval_path = arg
  c.data.patch_size = 256
  c.data.batch_size = 8
  c.data.num_workers = 4
  c.data.eval_crop = 256
  c.data.use_prior = True
  c.eval.batch_size = 4
  c.optim.lr = 1e-3
  if tiny:
    c.total_steps = 60
    c.log_every = 10
    c.eval_every = 30
    c.checkpoint_every = 20
    c.model.update(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1))
    c.data.patch_size = 32
    c.data.eval_crop = 32
    c.data.num_workers = 0
    c.eval.batch_size = 4
    c.data.eval_max_images = 8
    c.optim.warmup_steps = 5
  c.lock()
  return c
