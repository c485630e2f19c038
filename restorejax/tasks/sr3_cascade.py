"""Sampling from trained SR3 runs: a run directory as a stage, one stage on an LR batch, a cascade of them.

`load_stage(run_dir)` makes a stage (network, EMA parameters, the run's `config.sr3` block, its scale);
`run_stage` super-resolves an LR batch with it, `run_cascade` chains stages (cascaded diffusion, CDM) with
stage i's key `fold_in(key, i)`. The cascade command (`restorejax.cascade`) and the restore command (on an
SR3 run: a one-stage cascade) sample through these, so both give the same images for the same seed.
"""

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from restorejax import checkpoint
from restorejax.tasks import sr3


@dataclasses.dataclass
class Stage:
  """One SR3 model of a cascade: network, parameters, its `config.sr3` block and its scale."""
  name: str
  model: Any
  params: Any
  block: Any
  scale: int
  multiple: int       # HR sides must be multiples of this (2 ** (UNet levels - 1))
  _compiled: dict = dataclasses.field(default_factory=dict)

  def sample_fn(self, **sampling):
    key = tuple(sorted(sampling.items()))
    if key not in self._compiled:
      self._compiled[key] = jax.jit(sr3.make_sample_fn(self.model, self.block, self.scale, **sampling))
    return self._compiled[key]


def is_sr3_run(workdir: str) -> bool:
  """Whether the run directory holds an `sr3` run (ValueError without config.json)."""
  return checkpoint.read_config(workdir).get("task") == "sr3"


def load_stage(workdir: str) -> Stage:
  """A stage from an `sr3` run directory (EMA parameters of its latest checkpoint, or params/)."""
  config = checkpoint.read_config(workdir)
  if config.get("task") != "sr3":
    raise ValueError(f"{workdir}: a run of task {config.get('task', 'restoration')!r}, not 'sr3'")
  task = sr3.SR3(config)
  like = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  params = checkpoint.fit(checkpoint.load_params(workdir), like, workdir)
  return Stage(workdir, task.model, params, config.sr3, task.scale, task.multiple)


def run_stage(stage: Stage, lr, key, **sampling):
  """One stage on an LR batch (B, h, w, 3) in [0, 1] -> (B, h * scale, w * scale, 3) in [0, 1], 8-bit
  levels. Sides are reflect-padded to what the UNet takes and the output cropped back."""
  lr = np.asarray(lr, np.float32)
  b, h, w, _ = lr.shape
  s, m = stage.scale, stage.multiple
  step = m // np.gcd(m, s)  # LR padding that makes HR sides multiples of m
  ph, pw = -h % step, -w % step
  if ph or pw:
    lr = np.pad(lr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
  out = stage.sample_fn(**sampling)(stage.params, jnp.asarray(lr), key)
  out = np.asarray(out)[:, :h * s, :w * s]
  return np.round(np.clip(out, 0.0, 1.0) * 255.0) / 255.0


def run_cascade(stages: Sequence[Stage], lr, key, **sampling) -> list:
  """Every stage's output for an LR batch in [0, 1]: [stage 0 output, stage 1 output, ...]."""
  outputs, x = [], lr
  for i, stage in enumerate(stages):
    x = run_stage(stage, x, jax.random.fold_in(key, i), **sampling)
    outputs.append(x)
  return outputs
