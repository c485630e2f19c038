"""What a diffusion model's run directory says about its training: the `config.diffusion` block.

The 'diffusion' task trains with it (`restorejax.tasks.diffusion`), DiffLoss reads the schedule back from a
run directory's config.json, and `prior_config` writes the smallest such config for converted official
weights (`restorejax.convert.adm.export_prior`).
"""

from typing import Any

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """The `config.diffusion` block."""
  return ml_collections.ConfigDict({
      "schedule": "linear",       # 'linear' (DDPM/ADM, 1e-4..0.02) or 'cosine' (improved DDPM)
      "num_steps": 1000,
      "loss": "l2",               # on eps; 'l1' as SR3
      "vb_weight": 1.0,           # hybrid loss weight of the bound term (learned sigma only)
      "image_size": 0,            # train at this resolution (targets resized); 0: the patch size
      "resize": "area",           # how targets are resized to image_size: 'area' or 'bilinear'
      "sample_count": 16,         # evaluation sample grid (a square number looks best)
      "sample_steps": 50,         # DDIM steps of the evaluation samples
      "sample_eta": 0.0,
  })


def prior_config(model_cfg: ml_collections.ConfigDict, **diffusion: Any) -> ml_collections.ConfigDict:
  """The smallest run config a diffusion prior directory needs (converted official weights): the task,
  the model block and the diffusion block (defaults updated by `diffusion`)."""
  block = default_config()
  for k, v in diffusion.items():
    if k not in block:
      raise ValueError(f"config.diffusion: unknown option {k!r} (known: {', '.join(sorted(block))})")
    block[k] = v
  return ml_collections.ConfigDict({"task": "diffusion", "model": model_cfg, "diffusion": block})
