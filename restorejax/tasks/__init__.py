"""What a run trains: `config.task` picks one, the trainer runs any of them the same way.

A task (`Task`, in `tasks.protocol`) owns its network, the initialisation, the loss, the frozen models
its loss needs (`aux`, never in the train state) and its evaluator; the trainer owns everything else:
mesh, data, optimizer, state, checkpoints, logging.

Tasks: 'restoration' (`model(degraded, prior) -> restored`, weighted loss terms; the default),
'diffusion' (an unconditional DDPM on the targets: the prior DiffLoss loads) and 'sr3' (super-resolution
by conditional diffusion).

`prior_generator` is no task: it turns a trained 'diffusion' or 'sr3' run into a generator of priors from
degraded images (SDEdit / conditional sampling, then the GPT-4o-like changes of `data.priors`).
"""

import ml_collections

from restorejax.tasks import diffusion, restoration, sr3
from restorejax.tasks.protocol import Evaluator, Task  # noqa: F401  (public here: tasks.Task)

TASKS = {
    "restoration": restoration.Restoration,
    "diffusion": diffusion.Diffusion,
    "sr3": sr3.SR3,
}


def build(config: ml_collections.ConfigDict) -> Task:
  name = config.get("task", "restoration")
  if name not in TASKS:
    raise ValueError(f"config.task: unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
  return TASKS[name](config)
