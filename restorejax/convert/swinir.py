"""Official SwinIR checkpoints (JingyunLiang/SwinIR, `network_swinir.py` keys) -> `models.swinir` params.

The derived buffers `relative_position_index` and `attn_mask` are recognised and checked against what the
model computes (the mask for the training patch size the checkpoint was built with), not converted.
"""

import math
from typing import Mapping, Optional

import ml_collections
import numpy as np

from restorejax.convert import layout
from restorejax.models import swinir


def _check_index(window: int):
  def check(index: np.ndarray) -> Optional[str]:
    if not np.array_equal(index, swinir.relative_position_index(window)):
      return f"differs from the relative position index of window {window}"
    return None
  return check


def _check_mask(window: int):
  def check(mask: np.ndarray) -> Optional[str]:
    n = window * window
    if mask.ndim != 3 or mask.shape[1:] != (n, n):
      return f"shape {mask.shape} is not (windows, {n}, {n}) for window {window}"
    side = math.isqrt(mask.shape[0])
    if side * side == mask.shape[0]:
      expected = swinir.shifted_window_mask(side * window, side * window, window, window // 2)
      if not np.array_equal(mask, expected):
        return f"differs from the shifted-window mask of a {side * window}x{side * window} input"
    elif not np.isin(mask, (0.0, -100.0)).all():
      return "holds values other than 0 and -100"
    return None
  return check


def _block(r: layout.Reader, p: str, cfg) -> dict:
  r.skip(f"{p}.attn.relative_position_index", _check_index(cfg.window_size))
  r.skip(f"{p}.attn_mask", _check_mask(cfg.window_size))
  return {
      "norm1": r.norm(f"{p}.norm1"),
      "attn": {"relative_position_bias_table": r.take(f"{p}.attn.relative_position_bias_table"),
               "qkv": r.linear(f"{p}.attn.qkv", bias=cfg.qkv_bias), "proj": r.linear(f"{p}.attn.proj")},
      "norm2": r.norm(f"{p}.norm2"),
      "fc1": r.linear(f"{p}.mlp.fc1"),
      "fc2": r.linear(f"{p}.mlp.fc2"),
  }


def _residual_convs(r: layout.Reader, prefix: str, name: str, kind: str) -> dict:
  if kind == "1conv":
    return {name: r.conv(prefix)}
  return {f"{name}_{i}": r.conv(f"{prefix}.{i}") for i in (0, 2, 4)}


def convert(state_dict: Mapping[str, np.ndarray], model_cfg: ml_collections.ConfigDict) -> dict:
  """The params tree of `models.build(model_cfg)` from an official SwinIR state dict."""
  r = layout.Reader(state_dict)
  cfg = model_cfg
  params = {"conv_first": r.conv("conv_first"), "norm": r.norm("norm")}
  if cfg.patch_norm:
    params["patch_embed_norm"] = r.norm("patch_embed.norm")
  for i, depth in enumerate(cfg.depths):
    p = f"layers.{i}"
    pairs = [{"regular": _block(r, f"{p}.residual_group.blocks.{2 * j}", cfg),
              "shifted": _block(r, f"{p}.residual_group.blocks.{2 * j + 1}", cfg)}
             for j in range(depth // 2)]
    params[f"layers_{i}"] = {**layout.blocks("pairs", pairs),
                             **_residual_convs(r, f"{p}.conv", "conv", cfg.resi_connection)}
  params.update(_residual_convs(r, "conv_after_body", "conv_after_body", cfg.resi_connection))
  if cfg.upsampler in ("pixelshuffle", "nearest+conv"):
    params["conv_before_upsample"] = r.conv("conv_before_upsample.0")
  if cfg.upsampler == "pixelshuffle":
    steps = 1 if cfg.upscale == 3 else int(math.log2(cfg.upscale))
    for k in range(steps):
      params[f"upsample_{2 * k}"] = r.conv(f"upsample.{2 * k}")
  elif cfg.upsampler == "pixelshuffledirect":
    params["upsample_0"] = r.conv("upsample.0")
  elif cfg.upsampler == "nearest+conv":
    params["conv_up1"] = r.conv("conv_up1")
    if cfg.upscale == 4:
      params["conv_up2"] = r.conv("conv_up2")
    params["conv_hr"] = r.conv("conv_hr")
  if cfg.upsampler != "pixelshuffledirect":
    params["conv_last"] = r.conv("conv_last")
  return layout.finish(r, params, cfg, arch="swinir", channels=cfg.channels,
                       first_conv=("conv_first", "kernel"))
