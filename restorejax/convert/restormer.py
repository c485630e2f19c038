"""Official Restormer checkpoints (swz30/Restormer, `restormer_arch.py` keys) -> `models.restormer` params."""

from typing import Mapping

import ml_collections
import numpy as np

from restorejax.convert import layout


def _block(r: layout.Reader, p: str, cfg) -> dict:
  with_bias = cfg.layer_norm == "WithBias"
  conv = lambda name: r.conv(f"{p}.{name}", bias=cfg.bias)
  return {
      "norm1": r.norm(f"{p}.norm1.body", bias=with_bias),
      "attn": {"temperature": r.vector(f"{p}.attn.temperature"), "qkv": conv("attn.qkv"),
               "qkv_dwconv": conv("attn.qkv_dwconv"), "project_out": conv("attn.project_out")},
      "norm2": r.norm(f"{p}.norm2.body", bias=with_bias),
      "ffn": {"project_in": conv("ffn.project_in"), "dwconv": conv("ffn.dwconv"),
              "project_out": conv("ffn.project_out")},
  }


def convert(state_dict: Mapping[str, np.ndarray], model_cfg: ml_collections.ConfigDict) -> dict:
  """The params tree of `models.build(model_cfg)` from an official Restormer state dict."""
  r = layout.Reader(state_dict)
  cfg = model_cfg
  conv = lambda key: r.conv(key, bias=cfg.bias)
  stage = lambda name, n: layout.blocks(name, [_block(r, f"{name}.{j}", cfg) for j in range(n)])
  n1, n2, n3, n4 = cfg.num_blocks
  params = {"patch_embed": r.conv("patch_embed.proj", bias=False), "output": conv("output")}
  for name, n in (("encoder_level1", n1), ("encoder_level2", n2), ("encoder_level3", n3), ("latent", n4),
                  ("decoder_level3", n3), ("decoder_level2", n2), ("decoder_level1", n1),
                  ("refinement", cfg.num_refinement_blocks)):
    params.update(stage(name, n))
  for name in ("down1_2", "down2_3", "down3_4", "up4_3", "up3_2", "up2_1"):
    params[name] = r.conv(f"{name}.body.0", bias=False)
  for name in ("reduce_chan_level3", "reduce_chan_level2"):
    params[name] = conv(name)
  if cfg.dual_pixel_task:
    params["skip_conv"] = conv("skip_conv")
  return layout.finish(r, params, cfg, arch="restormer", channels=cfg.in_channels,
                       first_conv=("patch_embed", "kernel"))
