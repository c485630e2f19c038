"""Official NAFNet checkpoints (megvii-research/NAFNet, `NAFNet_arch.py` keys) -> `models.nafnet` params."""

from typing import Mapping

import ml_collections
import numpy as np

from restorejax.convert import layout


def _block(r: layout.Reader, p: str) -> dict:
  return {
      "norm1": r.norm(f"{p}.norm1"), "norm2": r.norm(f"{p}.norm2"),
      "conv1": r.conv(f"{p}.conv1"), "conv2": r.conv(f"{p}.conv2"), "conv3": r.conv(f"{p}.conv3"),
      "sca": r.conv(f"{p}.sca.1"), "conv4": r.conv(f"{p}.conv4"), "conv5": r.conv(f"{p}.conv5"),
      "beta": r.vector(f"{p}.beta"), "gamma": r.vector(f"{p}.gamma"),
  }


def convert(state_dict: Mapping[str, np.ndarray], model_cfg: ml_collections.ConfigDict) -> dict:
  """The params tree of `models.build(model_cfg)` from an official NAFNet/NAFNetLocal state dict."""
  r = layout.Reader(state_dict)
  params = {"intro": r.conv("intro"), "ending": r.conv("ending")}
  for i, n in enumerate(model_cfg.enc_blocks):
    params.update(layout.blocks(f"encoders_{i}", [_block(r, f"encoders.{i}.{j}") for j in range(n)]))
    params[f"downs_{i}"] = r.conv(f"downs.{i}")
  params.update(layout.blocks("middle_blks",
                              [_block(r, f"middle_blks.{j}") for j in range(model_cfg.middle_blocks)]))
  for i, n in enumerate(model_cfg.dec_blocks):
    params[f"ups_{i}"] = r.conv(f"ups.{i}.0", bias=False)
    params.update(layout.blocks(f"decoders_{i}", [_block(r, f"decoders.{i}.{j}") for j in range(n)]))
  return layout.finish(r, params, model_cfg, arch="nafnet", channels=model_cfg.channels,
                       first_conv=("intro", "kernel"))
