"""The trainer's held-out evaluation on full images with BasicSR metrics, in the tasks' evaluator interface.

`held_out_evaluator(config, model, mesh, batch_sharding)` returns `fn(params) -> (scalars, images)` like
`tasks.restoration.HeldOutEvaluator`: scalars `eval/psnr`, `eval/ssim`, `eval/input_psnr`,
`eval/input_ssim` (means over images, BasicSR conventions with `config.eval.crop_border` /
`config.eval.test_y_channel` when the config has them, else 0 / False) and the image grid
`eval/degraded_restored_target`. The held-out set is `config.eval.dataset` when set ('default' or
'folder:...', see `evaluation.datasets`), else the procedural one, degraded as the trainer degrades it.
Batches stay on the devices between evaluations.

Super-resolution (`config.data.scale` > 1): the LR inputs are 1/scale of the targets, and
`eval/bicubic_psnr`, `eval/bicubic_ssim` (= `eval/input_*`) score MATLAB bicubic upsampling of them, the
baseline beside the model's `eval/psnr`. SR configs set `config.eval.crop_border = scale` and
`config.eval.test_y_channel = True` (BasicSR's SR conventions).
A config with `config.eval.perceptual = True` also
reports `eval/lpips`, `eval/niqe` (and their input scores) when the `perceptual` extra is installed.
"""

from typing import Any, Callable

import flax.linen as nn
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from restorejax.evaluation import datasets, evaluator, restorer


def held_out_evaluator(config: ml_collections.ConfigDict, model: nn.Module, mesh: Mesh,
                       batch_sharding: NamedSharding) -> Callable[[Any], tuple[dict, dict]]:
  cfg = config.eval
  multiple, pad_mode = restorer.input_padding(config.model)
  scale = config.data.get("scale", 1)
  examples = datasets.build(cfg.get("dataset", "default") or "default", config, scale=scale)
  ev = evaluator.Evaluator(
      lambda params, x, prior: model.apply({"params": params}, x, prior), mesh, batch_sharding,
      examples, batch_size=cfg.batch_size,
      multiple=multiple, pad_mode=pad_mode, crop_border=cfg.get("crop_border", 0),
      test_y_channel=cfg.get("test_y_channel", False), scale=scale, perceptual=cfg.get("perceptual", False))

  def evaluate(params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    result = ev(params)
    return ({f"eval/{k}": v for k, v in result.means.items()},
            {"eval/degraded_restored_target": result.grid})

  return evaluate
