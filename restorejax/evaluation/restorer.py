"""A trained restorer from a run directory: config, network, (EMA) parameters, stride and device placement.

What the evaluation, restore and GIR commands share: `load(workdir)` reads `config.json`, builds the
network and loads the parameters (`checkpoint.load_params`: the EMA parameters of the latest
checkpoint, or an exported `params/` directory), checking that they fit the network.
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

from restorejax import checkpoint, models, sharding


# How each network pads its input itself: (multiple, numpy/jnp pad mode) from its config block. Padding
# a canvas the same way gives the network the very input it would make of the image alone; a network
# not listed gets (1, 'constant'): canvases of each image's exact size, exact too, compiled per size.
INPUT_PADDING = {
    "nafnet": lambda cfg: (2 ** len(cfg.enc_blocks), "constant"),
    "restormer": lambda cfg: (8, "reflect"),
    "swinir": lambda cfg: (int(cfg.window_size), "reflect"),
}
# Output / input size ratio of super-resolution networks.
OUTPUT_SCALE = {
    "swinir": lambda cfg: int(cfg.upscale),
    "rrdbnet": lambda cfg: int(cfg.scale),
}


def input_padding(cfg: ml_collections.ConfigDict) -> tuple[int, str]:
  """(multiple, pad mode) for `config.model` (see INPUT_PADDING)."""
  return INPUT_PADDING.get(cfg.name, lambda _: (1, "constant"))(cfg)


def output_scale(cfg: ml_collections.ConfigDict) -> int:
  return OUTPUT_SCALE.get(cfg.name, lambda _: 1)(cfg)


@dataclasses.dataclass
class Restorer:
  workdir: str
  config: ml_collections.ConfigDict
  model: nn.Module
  params: Any           # numpy, on the host
  multiple: int         # input sides the network pads itself to a multiple of ...
  pad_mode: str         # ... this way
  scale: int            # output size / input size (super-resolution)

  def apply(self, params, degraded: jnp.ndarray, prior: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """`apply_fn(params, degraded, prior_or_None) -> restored`, what `Evaluator` takes."""
    return self.model.apply({"params": params}, degraded, prior)


def _check_fit(params: Any, model: nn.Module, workdir: str, multiple: int) -> None:
  side = max(multiple, 16)
  want = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3))))["params"]
  checkpoint.fit(params, want, f"{workdir} (config.model.name={model.__class__.__name__})")


def load(workdir: str) -> Restorer:
  """The restorer of a run directory (see the module docstring); a one-line ValueError if unusable."""
  config = checkpoint.read_config(workdir)
  model = models.build(config.model)
  multiple, pad_mode = input_padding(config.model)
  params = checkpoint.load_params(workdir)
  _check_fit(params, model, workdir, multiple)
  return Restorer(workdir=workdir, config=config, model=model, params=params, multiple=multiple,
                  pad_mode=pad_mode, scale=output_scale(config.model))


def mesh_and_sharding(config: ml_collections.ConfigDict) -> tuple[Mesh, NamedSharding]:
  """The run's mesh when it fits the devices present, else a data-parallel mesh over all of them."""
  try:
    m = sharding.mesh(config)
  except ValueError as e:
    logging.info("The run's mesh does not fit here (%s); evaluating data-parallel over %d devices.", e,
                 jax.device_count())
    fallback = ml_collections.ConfigDict({"mesh": (("data", -1),),
                                          "sharding": {"batch_axes": ("data",)}})
    m = sharding.mesh(fallback)
    return m, sharding.batch_sharding(fallback, m)
  return m, sharding.batch_sharding(config, m)


def place_params(params: Any, config: ml_collections.ConfigDict, m: Mesh) -> Any:
  """Host parameters -> global arrays laid out by the run's sharding rules on mesh `m`."""
  try:
    shardings = sharding.param_shardings(params, config, m)
  except (ValueError, KeyError):  # rules naming axes this mesh lacks: replicate
    shardings = jax.tree_util.tree_map(lambda _: sharding.replicated(m), params)
  return sharding.replicated_to_global(params, shardings)
