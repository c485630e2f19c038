"""The 'concat' way a prior enters a network: its channels appended to the network's first input.

Used by the zoo networks whose `fusion` is 'none' or 'concat'. The prior goes through the same input
normalisation as the degraded image; an absent prior is zeros in the network's input space, so the same
parameters serve batches with and without priors. Global residuals never read these channels.
"""

from typing import Callable, Optional

import jax.numpy as jnp

FUSIONS = ("none", "concat")


def check(fusion: str) -> None:
  if fusion not in FUSIONS:
    raise ValueError(f"model.fusion: unknown mode {fusion!r} (known: {', '.join(map(repr, FUSIONS))})")


def append(
    x: jnp.ndarray,
    prior: Optional[jnp.ndarray],
    *,
    fusion: str,
    channels: int,
    normalize: Callable[[jnp.ndarray], jnp.ndarray] = lambda p: p,
) -> jnp.ndarray:
  """`x` (the normalised degraded input, NHWC) with the normalised prior's `channels` channels appended
  when `fusion == 'concat'`; unchanged when 'none'. The prior must have the degraded image's height/width."""
  check(fusion)
  if fusion == "none":
    return x
  if prior is None:
    return jnp.concatenate([x, jnp.zeros(x.shape[:3] + (channels,), x.dtype)], axis=-1)
  if prior.shape[:3] != x.shape[:3] or prior.shape[-1] != channels:
    raise ValueError(f"prior of shape {tuple(prior.shape)} does not match the input: expected "
                     f"{tuple(x.shape[:3]) + (channels,)} (batch, height, width of the degraded image, "
                     f"{channels} channels)")
  return jnp.concatenate([x, normalize(prior.astype(jnp.float32)).astype(x.dtype)], axis=-1)
