"""The task protocol: what the trainer needs of a task (see `restorejax.tasks`)."""

from typing import Any, Callable, Protocol, runtime_checkable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

# `fn(params) -> (scalars, images)`: scalars named `eval/...`; images a dict of uint8 (N, H, W, 3) grids.
Evaluator = Callable[[Any], tuple[dict[str, float], dict[str, np.ndarray]]]


@runtime_checkable
class Task(Protocol):
  """A network, its initialisation, its loss and its evaluation; the trainer owns everything else.

  `aux` is a pytree of host arrays passed to `loss` (frozen models the loss needs, never in the train
  state), sharded by the config's rules like the parameters. `isinstance(x, Task)` checks that the
  members exist, not their signatures.
  """

  model: nn.Module
  aux: Any

  def init_params(self, rng: jax.Array) -> Any:
    """Freshly initialised parameters."""

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array,
           aux: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(total, {term: value})` on a prepared (float, on-device) batch (`data.batches.prepare_batch`)."""

  def evaluator(self, mesh: Mesh, batch_sharding: NamedSharding) -> Evaluator:
    """The held-out evaluation of (EMA) parameters, its data placed on `mesh` once."""
