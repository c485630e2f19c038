"""Restoration: `model(degraded, prior=None, prior_mask=None) -> restored`, trained with the loss terms
of `config.losses`, evaluated by PSNR/SSIM of the EMA parameters on the held-out set."""

import functools
from typing import Any

import dm_pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from restorejax import losses, models, reporting, sharding
from restorejax.data import degrade, pipeline


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
    return HeldOutEvaluator(self.config, self.model, batch_sharding)


def make_eval_step(model) -> Any:
  """`eval_step(params, batch) -> (per-image metrics, restored)`; outputs rounded to 8 bits, as saved."""

  def eval_step(params, batch):
    restored = model.apply({"params": params}, batch["degraded"], batch.get("prior"),
                           prior_mask=batch.get("prior_mask"))
    restored = degrade.quantize(restored)
    return {
        "psnr": dm_pix.psnr(restored, batch["target"]),
        "ssim": dm_pix.ssim(restored, batch["target"]),
        "input_psnr": dm_pix.psnr(batch["degraded"], batch["target"]),
        "input_ssim": dm_pix.ssim(batch["degraded"], batch["target"]),
    }, restored

  return eval_step


class HeldOutEvaluator:
  """The fixed held-out set, degraded once on the device, evaluated in batches with the EMA params."""

  def __init__(self, config, model, batch_sharding):
    from restorejax import train  # pylint: disable=g-import-not-at-top  (prepare_batch, data_key)
    examples = pipeline.eval_examples(config)
    n = len(examples["index"])
    bs = config.eval.batch_size
    pad = -n % bs
    examples = {k: np.concatenate([v, v[:pad]]) if pad else v for k, v in examples.items()}
    examples["mask"] = np.arange(n + pad) < n
    degrade_fn = degrade.from_config(config.data.degrade)
    prep = jax.jit(functools.partial(train.prepare_batch, degrade_fn=degrade_fn,
                                     key=train.data_key(config, "eval")), out_shardings=batch_sharding)
    self.batches = []
    for i in range(0, n + pad, bs):
      chunk = {k: v[i:i + bs] for k, v in examples.items()}
      self.batches.append(prep(sharding.replicated_to_global(chunk, batch_sharding)))
    self.step = jax.jit(make_eval_step(model), out_shardings=(batch_sharding, batch_sharding))

  def __call__(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    per_image, first = [], None
    for batch in self.batches:
      metrics, restored = self.step(params, batch)
      per_image.append(sharding.to_host(metrics))
      if first is None:
        first = (batch["degraded"], restored, batch["target"])
    mask = np.concatenate([sharding.to_host(b["mask"]) for b in self.batches])
    scalars = {f"eval/{k}": float(np.mean(np.concatenate([p[k] for p in per_image])[mask]))
               for k in per_image[0]}
    grid = reporting.image_grid(*[sharding.to_host(x) for x in first])
    return scalars, {"eval/degraded_restored_target": grid}
