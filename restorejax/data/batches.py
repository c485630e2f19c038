"""Batch preparation on the device: host uint8 batches -> float32 in [0, 1], with the degradations and
simulated priors a source lacks synthesised per example, keyed by the example's index.

The trainer's step and every evaluation that must see the trainer's inputs (the held-out sets of
`evaluation.datasets`, the diffusion task's evaluator) prepare batches here, with the same keys.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from restorejax.data import degrade, priors

_SPLITS = {"train": 1, "eval": 2}


def data_key(config: ml_collections.ConfigDict, split: str) -> jax.Array:
  """The key of a split's on-device randomness (degradations, priors, evaluation noise), from the seed."""
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), _SPLITS[split])


def prepare_batch(batch: dict[str, jax.Array], degrade_fn: Callable, key: jax.Array, *,
                  prior_geometry: bool = True) -> dict[str, jax.Array]:
  """uint8 images -> float32 in [0, 1]; what the source lacks is synthesised, keyed by example index.

  `degraded` comes from `degrade_fn(target)` when absent; a batch with `prior_severity` (simulated priors,
  see `restorejax.data.pipeline`) gets `prior = quantize(simulate_prior(target, severity))` instead
  (`prior_geometry=False`: without its geometric changes, `simulate_prior(..., geometry=False)`).
  """
  out = {k: v.astype(jnp.float32) / 255.0 if v.dtype == jnp.uint8 else v for k, v in batch.items()}
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(out["index"])
  if "degraded" not in out:
    out["degraded"] = jax.vmap(degrade_fn)(keys, out["target"])
  if "prior_severity" in out:
    severity = out.pop("prior_severity")
    prior_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)  # a stream apart from degrade_fn's
    out["prior"] = degrade.quantize(jax.vmap(functools.partial(priors.simulate_prior, geometry=prior_geometry))(
        prior_keys, out["target"], severity))
  return out


def preparer(config: ml_collections.ConfigDict, split: str) -> Callable[[dict], dict]:
  """`prepare_batch` with the run's degradation (`config.data.degrade`, `config.data.scale`), the
  split's key and `config.data.simulated_prior.geometry`: what the trainer does to a `split` batch."""
  degrade_fn = degrade.from_config(config.data.degrade, config.data.get("scale", 1))
  key = data_key(config, split)
  geometry = bool((config.data.get("simulated_prior", None) or {}).get("geometry", True))
  return lambda batch: prepare_batch(batch, degrade_fn, key, prior_geometry=geometry)
