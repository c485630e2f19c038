"""A trained restorer from a run directory: config, network, (EMA) parameters and device placement.

What the evaluation, restore and GIR commands share: `load(workdir)` reads `config.json`, builds the
network and loads the parameters (`checkpoint.load_params`: the EMA parameters of the latest
checkpoint, or an exported `params/` directory), checking that they fit the network. How the network pads
its input and scales its output are the network's own facts (`restorejax.models.restorer.Restorer`).
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import Mesh, NamedSharding

from restorejax import checkpoint, models, sharding
from restorejax.models import restorer


@dataclasses.dataclass
class TrainedRestorer:
  workdir: str
  config: ml_collections.ConfigDict
  model: restorer.Restorer
  params: Any           # numpy, on the host

  @property
  def multiple(self) -> int:
    """Input sides the network pads itself to a multiple of ..."""
    return self.model.input_padding()[0]

  @property
  def pad_mode(self) -> str:
    """... this way (numpy/jnp pad mode)."""
    return self.model.input_padding()[1]

  @property
  def scale(self) -> int:
    """Output size / input size (super-resolution)."""
    return self.model.output_scale()

  def apply(self, params, degraded: jnp.ndarray, prior: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """`apply_fn(params, degraded, prior_or_None) -> restored`, what `Evaluator` takes."""
    return self.model.apply({"params": params}, degraded, prior)


def _check_fit(params: Any, model: restorer.Restorer, workdir: str) -> None:
  side = max(model.input_padding()[0], 16)
  want = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3))))["params"]
  checkpoint.fit(params, want, f"{workdir} (config.model.name={model.__class__.__name__})")


def load(workdir: str) -> TrainedRestorer:
  """The restorer of a run directory (see the module docstring); a one-line ValueError if unusable."""
  config = checkpoint.read_config(workdir)
  model = models.build(config.model)
  if not isinstance(model, restorer.Restorer):
    raise ValueError(f"{workdir}: config.model.name={config.model.name!r} is not a restoration network "
                     f"(known: {', '.join(sorted(models.MODELS))})")
  params = checkpoint.load_params(workdir)
  _check_fit(params, model, workdir)
  return TrainedRestorer(workdir=workdir, config=config, model=model, params=params)


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
