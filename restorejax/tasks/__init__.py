"""What a run trains: `config.task` picks one, the trainer runs any of them the same way.

A task owns its network, the initialisation, the loss and the evaluation, and the frozen models its loss
needs (`aux`, never in the train state). The trainer owns everything else: mesh, data, optimizer, state,
checkpoints, logging. A task object has:

- `model`: the Flax module;
- `init_params(rng) -> params`;
- `loss(params, batch, rng, aux) -> (total, {term: value})` on a prepared (float, on-device) batch;
- `aux`: a pytree of host arrays passed to `loss` (sharded by the config's rules like the params);
- `evaluator(mesh, batch_sharding) -> fn(params) -> (scalars, images)`: scalars named `eval/...`, images a
  dict of uint8 (N, H, W, 3) grids for TensorBoard.

Tasks: 'restoration' (`model(degraded, prior) -> restored`, weighted loss terms; the default) and
'diffusion' (an unconditional DDPM on the targets: the prior DiffLoss loads), imported lazily.

`prior_generator` is no task: it turns a trained 'diffusion' or 'sr3' run into a generator of priors from
degraded images (SDEdit / conditional sampling, then the GPT-4o-like changes of `data.priors`).
"""

import importlib

import ml_collections

TASKS = {
    "restoration": ("restorejax.tasks.restoration", "Restoration"),
    "diffusion": ("restorejax.tasks.diffusion", "Diffusion"),
    "sr3": ("restorejax.tasks.sr3", "SR3"),
}


def build(config: ml_collections.ConfigDict):
  name = config.get("task", "restoration")
  if name not in TASKS:
    raise ValueError(f"config.task: unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
  module, cls = TASKS[name]
  return getattr(importlib.import_module(module), cls)(config)
