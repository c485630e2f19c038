"""The authors' DehazeNet weights (caibolun/DehazeNet `dehaze.mat`) -> `models.dehazenet` params.

The MATLAB arrays are `weights_<layer>` of shape (in, k*k, out) with the k x k kernel stored column-major
(`reshape(w(j, :, i), k, k)`), used by imfilter as a correlation, and `biases_<layer>` (out, 1); the 6x6
regression layer `weights_ip` is (48, 36) with one output. Read the .mat with `torch_io.load_state_dict`.
"""

import math
from typing import Mapping

import ml_collections
import numpy as np

from restorejax.convert import layout


def _conv(r: layout.Reader, name: str) -> dict:
  w = r.take(f"weights_{name}")
  b = r.take(f"biases_{name}")
  if w is None or b is None:
    return {"kernel": None, "bias": None}
  if w.ndim == 2:
    w = w[..., None]
  cin, kk, cout = w.shape
  k = math.isqrt(kk)
  # (in, col*k + row, out) -> (row, col, in, out)
  kernel = w.reshape(cin, k, k, cout).transpose(2, 1, 0, 3)
  return {"kernel": kernel, "bias": b.reshape(-1)}


def convert(state_dict: Mapping[str, np.ndarray], model_cfg: ml_collections.ConfigDict) -> dict:
  """The params tree of `models.build(model_cfg)` from the arrays of `dehaze.mat`."""
  r = layout.Reader(state_dict)
  cnn = {"conv1": _conv(r, "conv1"), "ip": _conv(r, "ip")}
  for k in model_cfg.scales:
    cnn[f"conv{k}x{k}"] = _conv(r, f"conv{k}x{k}")
  return layout.finish(r, {"cnn": cnn}, model_cfg, arch="dehazenet", channels=3,
                       first_conv=("cnn", "conv1", "kernel"))
