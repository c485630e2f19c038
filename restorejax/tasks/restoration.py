"""Restoration: `model(degraded, prior=None, prior_mask=None) -> restored`, trained with the loss terms
of `config.losses`, evaluated on full held-out images with BasicSR's PSNR/SSIM
(restorejax.evaluation.held_out).

Super-resolution is this task with `config.data.scale` > 1: `degraded` is the LR patch and the network
(SwinIR, RRDBNet) returns it `scale` times larger; its own output scale must equal the data's."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from restorejax import losses, models
from restorejax.evaluation import held_out, restorer


class Restoration:
  """The default task (see restorejax.tasks)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = models.build(config.model)
    self.loss_fn = losses.build(config.losses)
    self.aux = self.loss_fn.aux
    self.scale = int(config.data.get("scale", 1))
    net_scale = restorer.output_scale(config.model)
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

  def evaluator(self, mesh, batch_sharding):
    return held_out.held_out_evaluator(self.config, self.model, mesh, batch_sharding)
