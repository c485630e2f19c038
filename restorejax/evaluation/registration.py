"""How far a simulated prior is from its target before and after registration ('align'), outside any network.

The check of `python -m restorejax.bench fusion`: the run's held-out images as evaluation makes them
(`pipeline.eval_examples`, centre crops of `crop`), their degraded inputs by the trainer's own degradation
and priors of fixed severities by `simulate_prior`, both from the evaluation keys
(`batches.preparer(config, 'eval')`: the inputs and priors the prior_severity sweep's runs are scored on),
and per severity the normalised error (`normalised_error`) from the target of:
- the prior as it is,
- the prior registered onto the degraded image by `fusion_align.align` (what 'align' feeds the network),
- the degraded (noisy) input itself, the level a prior has to beat to be worth reading.
"""

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from restorejax.data import batches, pipeline
from restorejax.models import fusion_align

SEVERITIES = (0.0, 0.2, 0.4, 0.6)
DEFINITION = (
    "normalised error of an image a against its target t: per image and channel c, z(x)_c = (x_c - mean(x_c)) "
    "/ std(x_c) over the pixels (population std; a flat channel's z is 0), then the mean over pixels and "
    "channels of (z(a) - z(t))^2, averaged over the images. Any gain and offset per channel (a tone change) "
    "costs nothing; it equals 2 (1 - rho) for a channel's correlation coefficient rho: 0 identical up to "
    "tone, 2 uncorrelated. Over every pixel, including those a registration samples from outside the prior "
    "(border-clamped).")


def normalised_error(a: np.ndarray, t: np.ndarray) -> np.ndarray:
  """(N, H, W, C) images and their targets -> (N,) normalised errors (`DEFINITION`), in float64."""
  def z(x):
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True)
    return np.where(std > 1e-6, centred / np.maximum(std, 1e-6), 0.0)
  return np.mean((z(a) - z(t)) ** 2, axis=(1, 2, 3))


def held_out(config: ml_collections.ConfigDict, crop: int) -> dict[str, np.ndarray]:
  """The held-out set's `index`, `target` (and a source's own `degraded`) as uint8 centre crops of `crop`."""
  if config.data.get("scale", 1) != 1:
    raise ValueError(f"the registration check compares a prior with the degraded image on one grid; "
                     f"config.data.scale={config.data.scale} (give --nocheck)")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.eval_crop = crop
  try:
    examples = pipeline.eval_examples(config)
  except ValueError as e:
    raise ValueError(f"--crop={crop}: {e}") from e
  return {k: v for k, v in examples.items() if k in ("index", "target", "degraded")}


def check(config: ml_collections.ConfigDict, *, crop: int = 64,
          severities: Sequence[float] = SEVERITIES) -> dict:
  """Normalised errors per severity of the prior, the registered prior and the input (module doc)."""
  examples = held_out(config, crop)
  prepare = jax.jit(batches.preparer(config, "eval"))
  align = jax.jit(fusion_align.align)
  target = examples["target"].astype(np.float64) / 255.0
  out = {"images": int(len(target)), "crop": crop, "severities": {}, "definition": DEFINITION,
         "source": "the held-out set of config.data (centre crops), degraded as the trainer's evaluation "
                   "degrades it, priors by simulate_prior from the evaluation keys (quantised to 8 bits)"}
  align_s = []
  for s in severities:
    batch = {**examples, "prior_severity": np.full(len(target), s, np.float32)}
    made = prepare(batch)
    degraded, prior = made["degraded"], made["prior"]
    registered = align(degraded, prior)
    jax.block_until_ready(registered)
    t0 = time.perf_counter()  # once compiled: the registration's own time
    jax.block_until_ready(align(degraded, prior))
    align_s.append(time.perf_counter() - t0)
    channels = prior.shape[-1]
    out["severities"][f"{s:g}"] = {
        "prior": float(normalised_error(np.asarray(prior), target).mean()),
        "registered": float(normalised_error(np.asarray(registered[..., :channels]), target).mean()),
        "input": float(normalised_error(np.asarray(degraded), target).mean()),
        "registered_in_bounds": float(jnp.mean(registered[..., channels])),
    }
  out["align_s"] = min(align_s)
  return out
