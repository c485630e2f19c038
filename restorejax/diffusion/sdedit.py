"""SDEdit (Meng et al. 2022): a diffusion model's plausible rewrite of an image, by noising and denoising.

The image is noised to an intermediate point of the chain (`strength` in (0, 1]: the fraction of the
sampling chain's steps that are run, so 0.5 of a 50-step chain starts at step 25, i.e. near timestep 500
of a 1000-step schedule) and the sampler (DDIM or DDPM, `restorejax.diffusion.samplers`) walks it back to
step 0. Small strengths keep the layout and colours of the input and replace its fine detail; strength 1
starts from (almost) pure noise and keeps nothing unless the network is conditioned on the input (SR3 /
Palette, whose conditioning the caller closes into `eps_fn`).

This is how the project makes generated priors without a ground truth: the function takes the degraded
image and a key, never a target. Pure and deterministic given the key (DDIM with eta 0 draws noise only
once, for the starting point).
"""

import jax
import jax.numpy as jnp

from restorejax.diffusion import samplers
from restorejax.diffusion.schedules import Schedule

SAMPLERS = ("ddim", "ddpm")


def steps_run(num_steps: int, strength: float) -> int:
  """How many steps of a `num_steps` chain SDEdit runs at `strength` (at least 1)."""
  if not 0.0 < strength <= 1.0:
    raise ValueError(f"sdedit: strength must be in (0, 1], got {strength}")
  return max(1, min(num_steps, round(strength * num_steps)))


def truncate(schedule: Schedule, steps: int) -> Schedule:
  """The first `steps` steps (least noise) of a chain: itself a chain, ending at step `steps - 1`'s level.

  Every per-step array depends on its own step and the one before only, so a prefix is exact.
  """
  if not 1 <= steps <= schedule.num_steps:
    raise ValueError(f"sdedit: cannot keep {steps} of {schedule.num_steps} steps")
  return jax.tree_util.tree_map(lambda a: a[:steps], schedule)


def sdedit(eps_fn: samplers.EpsFn, key: jax.Array, image: jnp.ndarray, schedule: Schedule, *,
           strength: float, sampler: str = "ddim", eta: float = 0.0, variance: str = "fixed_small",
           clip_denoised: bool = True) -> jnp.ndarray:
  """`image` (NHWC in [0, 1]) noised to `strength` of `schedule` and denoised to step 0 -> NHWC in [0, 1].

  `eps_fn(x_t, t)` and `schedule` are as for `samplers.ddim_sample` (a re-spaced sampling chain); the
  starting point is q(x_k | x_0 = image) at the last kept step k, drawn from `key`.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sdedit: unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
  chain = truncate(schedule, steps_run(schedule.num_steps, strength))
  key_start, key_chain = jax.random.split(key)
  x0 = 2.0 * image.astype(jnp.float32) - 1.0
  noise = jax.random.normal(key_start, x0.shape, jnp.float32)
  last = chain.num_steps - 1
  x_k = chain.sqrt_alphas_cumprod[last] * x0 + chain.sqrt_one_minus_alphas_cumprod[last] * noise
  if sampler == "ddim":
    out = samplers.ddim_sample(eps_fn, key_chain, x0.shape, chain, eta=eta, clip_denoised=clip_denoised,
                               x_T=x_k)
  else:
    out = samplers.ddpm_sample(eps_fn, key_chain, x0.shape, chain, variance=variance,
                               clip_denoised=clip_denoised, x_T=x_k)
  return jnp.clip((out + 1.0) / 2.0, 0.0, 1.0)
