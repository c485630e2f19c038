"""Restoration networks, chosen by name in `config.model`.

An explicit table of names -> (module, class), imported lazily, so that an optional heavy network never
breaks `import restorejax`. Every network is a `restorejax.models.restorer.Restorer`, a Flax Linen module
called as `model(degraded, prior=None, prior_mask=None)` on NHWC float images in [0, 1], agnostic of
sharding: the base declares the fields all networks share (`fusion`, how the prior enters, see
restorejax.models.fusion; `dtype`, `scan`, `remat`) and what evaluation asks of a network
(`model.input_padding()`, `model.output_scale()`). The config block holds `name` plus the module's fields;
each network module's `PRESETS` maps its official configurations to such field values
(`restorejax.convert.preset_config(name, preset)` builds the block). Adding a network: its module (a
`Restorer` subclass) and one line in `MODELS`; a converter (`restorejax.convert`) only if official
weights exist.

`GENERATIVE` lists the networks that are not restorers (other call signatures) but are built from a
`config.model` block the same way: 'adm_unet' (`model(x_t, t) -> (eps, h)`, the diffusion UNet of the
'diffusion' task and of DiffLoss; its block is `restorejax.models.adm_unet.default_config(preset)` plus
`name: 'adm_unet'`).
"""

import dataclasses
import importlib

import flax.linen as nn
import ml_collections

from restorejax.models import restorer

MODELS = {
    "nafnet": ("restorejax.models.nafnet", "NAFNet"),
    "restormer": ("restorejax.models.restormer", "Restormer"),
    "swinir": ("restorejax.models.swinir", "SwinIR"),
    "rrdbnet": ("restorejax.models.rrdbnet", "RRDBNet"),
    "dehazenet": ("restorejax.models.dehazenet", "DehazeNet"),
}

GENERATIVE = {
    "adm_unet": ("restorejax.models.adm_unet", "ADMUNet"),
}


def model_class(name: str) -> type:
  table = {**MODELS, **GENERATIVE}
  if name not in table:
    raise ValueError(f"config.model.name: unknown model {name!r} (known: {', '.join(sorted(table))})")
  module, cls = table[name]
  return getattr(importlib.import_module(module), cls)


def _fields(name: str) -> set[str]:
  return {f.name for f in dataclasses.fields(model_class(name))} - {"parent", "name"}


def _config_order(field: dataclasses.Field) -> int:
  """The network's own fields first (as declared), then the shared ones in `restorer.SHARED_FIELDS`
  order: the order config blocks have always listed them in (dataclasses put base fields first)."""
  return restorer.SHARED_FIELDS.index(field.name) + 1 if field.name in restorer.SHARED_FIELDS else 0


def default_config(name: str) -> ml_collections.ConfigDict:
  """The `config.model` block of a network with its defaults: `name` plus every field of the module."""
  cls = model_class(name)
  fields = {f.name: f.default for f in sorted(dataclasses.fields(cls), key=_config_order)
            if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING}
  return ml_collections.ConfigDict({"name": name, **fields})


def build(cfg: ml_collections.ConfigDict) -> nn.Module:
  """`config.model` -> an unbound Flax module; an unknown option is an error naming it."""
  cls = model_class(cfg.name)
  known = _fields(cfg.name)
  options = {k: v for k, v in cfg.items() if k != "name"}
  unknown = sorted(set(options) - known)
  owners = [other for other in MODELS if unknown and other != cfg.name and set(unknown) <= _fields(other)]
  if owners:  # `--config.model.name=X` on a config written for another network
    raise ValueError(f"config.model.name={cfg.name!r}, but config.model holds the fields of {owners[0]!r} "
                     f"({', '.join(unknown)}): choose the network by its config, "
                     f"--config=configs/default.py:model={cfg.name} (configs/{cfg.name}.py), not by its name")
  if unknown:
    raise ValueError(f"config.model: unknown option(s) {', '.join(unknown)} for model {cfg.name!r} "
                     f"(known: {', '.join(sorted(known))})")
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
