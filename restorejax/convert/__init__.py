"""Conversion of official PyTorch (and MATLAB) checkpoints into restorejax parameters.

`convert(arch, state_dict, model_cfg)` dispatches to `restorejax.convert.<arch>.convert`, a pure function
of a flat {key: numpy array} state dict (see `torch_io.load_state_dict`) and the `config.model` block,
returning the Flax params tree in the model's scan or unrolled layout. Every official key must be used and
every expected one present, or it fails naming them. `preset_config(arch, preset)` is the `config.model`
of an official configuration; `python -m restorejax.convert` does it all from the command line.

A network with official weights adds its converter module and its line in `CONVERTERS` (an explicit
table, like `models.MODELS`); every other fact about the network (fields, presets, input padding, output
scale) lives in its model module.
"""

import importlib
from typing import Mapping

import ml_collections
import numpy as np

from restorejax import models

CONVERTERS = {
    "nafnet": "restorejax.convert.nafnet",
    "restormer": "restorejax.convert.restormer",
    "swinir": "restorejax.convert.swinir",
    "rrdbnet": "restorejax.convert.rrdbnet",
    "dehazenet": "restorejax.convert.dehazenet",
}


def presets(arch: str) -> dict:
  """The named official configurations of a network (its module's PRESETS)."""
  return importlib.import_module(models.model_class(arch).__module__).PRESETS


def preset_config(arch: str, preset: str) -> ml_collections.ConfigDict:
  """`config.model` for an official configuration: the model's defaults updated by the preset."""
  known = presets(arch)
  if preset not in known:
    raise ValueError(f"preset {preset!r} unknown for {arch} (known: {', '.join(sorted(known))})")
  cfg = models.default_config(arch)
  cfg.update(known[preset])
  return cfg


def convert(arch: str, state_dict: Mapping[str, np.ndarray], model_cfg: ml_collections.ConfigDict) -> dict:
  if arch not in CONVERTERS:
    raise ValueError(f"no converter for {arch!r} (known: {', '.join(sorted(CONVERTERS))})")
  if model_cfg.name != arch:
    raise ValueError(f"model config is for {model_cfg.name!r}, not {arch!r}")
  return importlib.import_module(CONVERTERS[arch]).convert(state_dict, model_cfg)
