"""Official RRDBNet checkpoints -> `models.rrdbnet` params.

Reads both namings: BasicSR / Real-ESRGAN (`conv_first`, `body.N.rdb1.conv1`, `conv_body`, `conv_up1`,
`conv_up2`, `conv_hr`, `conv_last`) and the ESRGAN repository's (`RRDB_trunk.N.RDB1.conv1`, `trunk_conv`,
`upconv1`, `upconv2`, `HRconv`, `conv_last`), chosen by which keys the state dict holds.
"""

from typing import Mapping

import ml_collections
import numpy as np

from restorejax.convert import layout

BASICSR = dict(body="body", rdb="rdb", conv_body="conv_body", conv_up1="conv_up1", conv_up2="conv_up2",
               conv_hr="conv_hr")
ESRGAN = dict(body="RRDB_trunk", rdb="RDB", conv_body="trunk_conv", conv_up1="upconv1", conv_up2="upconv2",
              conv_hr="HRconv")


def convert(state_dict: Mapping[str, np.ndarray], model_cfg: ml_collections.ConfigDict) -> dict:
  """The params tree of `models.build(model_cfg)` from an ESRGAN / BasicSR / Real-ESRGAN state dict."""
  r = layout.Reader(state_dict)
  names = ESRGAN if any(k.startswith("RRDB_trunk.") for k in state_dict) else BASICSR
  params = {"conv_first": r.conv("conv_first"), "conv_last": r.conv("conv_last")}
  for ours in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
    params[ours] = r.conv(names[ours])
  body = [{f"rdb{k}": {f"conv{c}": r.conv(f"{names['body']}.{j}.{names['rdb']}{k}.conv{c}")
                       for c in range(1, 6)} for k in range(1, 4)}
          for j in range(model_cfg.num_block)]
  params.update(layout.blocks("body", body))
  return layout.finish(r, params, model_cfg, arch="rrdbnet", channels=model_cfg.in_channels,
                       first_conv=("conv_first", "kernel"))
