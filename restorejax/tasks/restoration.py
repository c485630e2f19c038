"""Restoration: `model(degraded, prior=None, prior_mask=None) -> restored`, trained with the loss terms
of `config.losses`, evaluated on full held-out images with BasicSR's PSNR/SSIM (`held_out_evaluator`).

Super-resolution is this task with `config.data.scale` > 1: `degraded` is the LR patch and the network
(SwinIR, RRDBNet) returns it `scale` times larger; its own output scale must equal the data's.

Evaluation (`held_out_evaluator`, EMA parameters): scalars `eval/psnr`, `eval/ssim`, `eval/input_psnr`,
`eval/input_ssim` (means over images, BasicSR conventions with `config.eval.crop_border` /
`config.eval.test_y_channel` when the config has them, else 0 / False) and the image grid
`eval/degraded_restored_target`. The held-out set is `config.eval.dataset` when set ('default' or
'folder:...', see `evaluation.datasets`), else the procedural one, degraded as the trainer degrades it.
Batches stay on the devices between evaluations. With `config.data.scale` > 1 the LR inputs are 1/scale
of the targets, and `eval/bicubic_psnr`, `eval/bicubic_ssim` (= `eval/input_*`) score MATLAB bicubic
upsampling of them, the baseline beside the model's `eval/psnr`; SR configs set
`config.eval.crop_border = scale` and `config.eval.test_y_channel = True` (BasicSR's SR conventions).
A config with `config.eval.perceptual = True` also reports `eval/lpips`, `eval/niqe` (and their input
scores) when the `perceptual` extra is installed.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding

from restorejax import losses, models
from restorejax.evaluation import datasets, scoring
from restorejax.tasks import protocol


class Restoration:
  """The default task (a `tasks.Task`)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = models.build(config.model)
    self.loss_fn = losses.build(config.losses)
    self.aux = self.loss_fn.aux
    self.scale = int(config.data.get("scale", 1))
    net_scale = self.model.output_scale()
    if net_scale != self.scale:
      raise ValueError(f"config.data.scale={self.scale} but the network {config.model.name!r} upsamples by "
                       f"{net_scale}; set them equal (e.g. --config.data.scale={net_scale})")

  def init_params(self, rng: jax.Array) -> Any:
    p = self.config.data.patch_size // self.scale
    return self.model.init(rng, jnp.zeros((1, p, p, 3), jnp.float32))["params"]

  def loss(self, params, batch, rng, aux):
    restored = self.model.apply({"params": params}, batch["degraded"], batch.get("prior"),
                                prior_mask=batch.get("prior_mask"))
    return self.loss_fn(restored, batch, {**aux, "rng": rng})

  def evaluator(self, mesh: Mesh, batch_sharding: NamedSharding) -> protocol.Evaluator:
    return held_out_evaluator(self.config, self.model, mesh, batch_sharding)


def held_out_evaluator(config: ml_collections.ConfigDict, model: nn.Module, mesh: Mesh,
                       batch_sharding: NamedSharding) -> protocol.Evaluator:
  """Full held-out images restored by `model` and scored with BasicSR's metrics (the module docstring)."""
  cfg = config.eval
  multiple, pad_mode = model.input_padding()
  scale = config.data.get("scale", 1)
  examples = datasets.build(cfg.get("dataset", "default") or "default", config, scale=scale)
  ev = scoring.Evaluator(
      lambda params, x, prior: model.apply({"params": params}, x, prior), mesh, batch_sharding,
      examples, batch_size=cfg.batch_size,
      multiple=multiple, pad_mode=pad_mode, crop_border=cfg.get("crop_border", 0),
      test_y_channel=cfg.get("test_y_channel", False), scale=scale, perceptual=cfg.get("perceptual", False))

  def evaluate(params):
    result = ev(params)
    return ({f"eval/{k}": v for k, v in result.means.items()},
            {"eval/degraded_restored_target": result.grid})

  return evaluate
