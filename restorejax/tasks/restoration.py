"""Restoration: `model(degraded, prior=None, prior_mask=None) -> restored`, trained with the loss terms
of `config.losses`, evaluated on full held-out images with BasicSR's PSNR/SSIM
(restorejax.evaluation.held_out)."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from restorejax import losses, models
from restorejax.evaluation import held_out


class Restoration:
  """The default task (see restorejax.tasks)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = models.build(config.model)
    self.loss_fn = losses.build(config.losses)
    self.aux = self.loss_fn.aux

  def init_params(self, rng: jax.Array) -> Any:
    p = self.config.data.patch_size
    return self.model.init(rng, jnp.zeros((1, p, p, 3), jnp.float32))["params"]

  def loss(self, params, batch, rng, aux):
    restored = self.model.apply({"params": params}, batch["degraded"], batch.get("prior"),
                                prior_mask=batch.get("prior_mask"))
    return self.loss_fn(restored, batch, {**aux, "rng": rng})

  def evaluator(self, mesh, batch_sharding):
    return held_out.held_out_evaluator(self.config, self.model, mesh, batch_sharding)
