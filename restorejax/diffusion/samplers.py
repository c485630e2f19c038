"""DDPM ancestral and DDIM sampling over any eps-prediction network, each one `jax.lax.scan`.

`eps_fn(x_t, t) -> out` is the network with its parameters (and any conditioning, e.g. SR3's low-res
image) closed over; `t` is `schedule.model_t` at the current step broadcast to (B,). `out` has C channels
(eps) or 2C channels ([eps, v] of a learned-sigma model such as ADM with learn_sigma); v is only read by
`variance='learned_range'`. Images are in [-1, 1]. The equations are guided-diffusion's
(`p_mean_variance`, `p_sample`, `ddim_sample`); a re-spaced `Schedule` gives the short chains.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from restorejax.diffusion.schedules import Schedule

EpsFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def _at(a: jnp.ndarray, i: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """Schedule value(s) at step i, shaped to broadcast against x (i scalar or (B,))."""
  v = a[i]
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


def split_output(out: jnp.ndarray, channels: int) -> tuple[jnp.ndarray, Optional[jnp.ndarray]]:
  """Network output -> (eps, v or None)."""
  if out.shape[-1] == channels:
    return out, None
  if out.shape[-1] == 2 * channels:
    return out[..., :channels], out[..., channels:]
  raise ValueError(f"diffusion: the network returned {out.shape[-1]} channels for {channels}-channel images "
                   f"(expected {channels} or {2 * channels})")


def predict_x0(x_t: jnp.ndarray, eps: jnp.ndarray, i: jnp.ndarray, schedule: Schedule) -> jnp.ndarray:
  """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) at step i, with the float64-derived coefficients."""
  return _at(schedule.sqrt_recip_alphas_cumprod, i, x_t) * x_t - _at(schedule.sqrt_recipm1_alphas_cumprod, i, x_t) * eps


def eps_from_x0(x_t: jnp.ndarray, x0: jnp.ndarray, i: jnp.ndarray, schedule: Schedule) -> jnp.ndarray:
  """The eps that takes x0 to x_t at step i (the inverse of `predict_x0`)."""
  return ((_at(schedule.sqrt_recip_alphas_cumprod, i, x_t) * x_t - x0)
          / _at(schedule.sqrt_recipm1_alphas_cumprod, i, x_t))


def p_mean_variance(out: jnp.ndarray, x_t: jnp.ndarray, i: jnp.ndarray, schedule: Schedule, *,
                    variance: str = "fixed_small", clip_denoised: bool = True) -> dict[str, jnp.ndarray]:
  """Mean, log-variance and x0 prediction of p(x_{i-1} | x_i) from the network output at step i."""
  if variance not in VARIANCES:
    raise ValueError(f"diffusion.variance: unknown {variance!r} (known: {', '.join(VARIANCES)})")
  eps, v = split_output(out.astype(jnp.float32), x_t.shape[-1])
  x0 = predict_x0(x_t, eps, i, schedule)
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
  mean = _at(schedule.posterior_mean_coef1, i, x_t) * x0 + _at(schedule.posterior_mean_coef2, i, x_t) * x_t
  if variance == "fixed_small":
    log_var = _at(schedule.posterior_log_variance_clipped, i, x_t) * jnp.ones_like(x_t)
  elif variance == "fixed_large":
    # Step 0 takes the posterior variance of step 1, as the official code does for a better decoder NLL.
    large = jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])
    log_var = jnp.log(_at(large, i, x_t)) * jnp.ones_like(x_t)
  else:
    if v is None:
      raise ValueError("diffusion.variance 'learned_range' needs a network returning [eps, v] (2C channels)")
    frac = (v + 1.0) / 2.0
    log_var = (frac * _at(jnp.log(schedule.betas), i, x_t)
               + (1.0 - frac) * _at(schedule.posterior_log_variance_clipped, i, x_t))
  return {"mean": mean, "log_variance": log_var, "pred_x0": x0, "eps": eps}


def _run(step, key: jax.Array, shape, schedule: Schedule, x_T: Optional[jnp.ndarray]) -> jnp.ndarray:
  key_T, key_steps = jax.random.split(key)
  x = jax.random.normal(key_T, shape, jnp.float32) if x_T is None else x_T.astype(jnp.float32)
  n = schedule.num_steps
  steps = jnp.arange(n - 1, -1, -1)
  x, _ = jax.lax.scan(lambda x, a: (step(x, *a), None), x, (steps, jax.random.split(key_steps, n)))
  return x


def ddpm_sample(eps_fn: EpsFn, key: jax.Array, shape, schedule: Schedule, *, variance: str = "fixed_small",
                clip_denoised: bool = True, x_T: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Ancestral sampling x_T ~ N(0, I) -> x_0 through every step of `schedule`."""

  def step(x, i, k):
    t = jnp.broadcast_to(schedule.model_t[i], (shape[0],))
    p = p_mean_variance(eps_fn(x, t), x, i, schedule, variance=variance, clip_denoised=clip_denoised)
    noise = jax.random.normal(k, x.shape, jnp.float32)
    return p["mean"] + jnp.where(i > 0, jnp.exp(0.5 * p["log_variance"]), 0.0) * noise

  return _run(step, key, shape, schedule, x_T)


def ddim_sample(eps_fn: EpsFn, key: jax.Array, shape, schedule: Schedule, *, eta: float = 0.0,
                clip_denoised: bool = True, x_T: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """DDIM (Song et al. 2021, eq. 12) through every step of `schedule`; eta=0 is deterministic given x_T."""

  def step(x, i, k):
    t = jnp.broadcast_to(schedule.model_t[i], (shape[0],))
    eps, _ = split_output(eps_fn(x, t).astype(jnp.float32), x.shape[-1])
    abar, abar_prev = schedule.alphas_cumprod[i], schedule.alphas_cumprod_prev[i]
    x0 = predict_x0(x, eps, i, schedule)
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = eps_from_x0(x, x0, i, schedule)  # re-derived from the clipped x0, as official
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar)) * jnp.sqrt(1.0 - abar / abar_prev)
    mean = jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev - sigma**2) * eps
    noise = jax.random.normal(k, x.shape, jnp.float32)
    return mean + jnp.where(i > 0, sigma, 0.0) * noise

  return _run(step, key, shape, schedule, x_T)
