"""Training objectives of diffusion models: forward noising, eps-prediction loss (L2 / L1), hybrid L_vlb.

`diffusion_loss` is the whole training loss of an eps-prediction network (ADM, SR3): draw a step (or, for
a 'noise_level' schedule, SR3's continuous abar), noise the clean image, predict eps. With a
learned-sigma network it adds improved-DDPM's L_vlb on the variance channels (eps stopped), as
guided-diffusion's `training_losses` does with `learn_sigma=True`. Images are in [-1, 1].
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from restorejax.diffusion import samplers
from restorejax.diffusion import schedules
from restorejax.diffusion.schedules import NOISE_LEVEL_SCALE, Schedule

LOSSES = ("l2", "l1")


def _flat_mean(x: jnp.ndarray) -> jnp.ndarray:
  return x.mean(axis=tuple(range(1, x.ndim)))


def _bcast(v: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(x0: jnp.ndarray, abar: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
  """x_t = sqrt(abar) x0 + sqrt(1 - abar) noise for a continuous abar, scalar or (B,) (SR3's noise level)."""
  abar = _bcast(jnp.asarray(abar, jnp.float32), x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def q_sample_step(x0: jnp.ndarray, i: jnp.ndarray, noise: jnp.ndarray, schedule: Schedule) -> jnp.ndarray:
  """x_t at schedule step i, scalar or (B,), with the float64-derived square roots (guided-diffusion's)."""
  return (_bcast(schedule.sqrt_alphas_cumprod[i], x0) * x0
          + _bcast(schedule.sqrt_one_minus_alphas_cumprod[i], x0) * noise)


def eps_loss(pred: jnp.ndarray, target: jnp.ndarray, kind: str = "l2") -> jnp.ndarray:
  """Per-example mean squared (l2) or absolute (l1) error, shape (B,)."""
  if kind not in LOSSES:
    raise ValueError(f"diffusion.loss: unknown {kind!r} (known: {', '.join(LOSSES)})")
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return _flat_mean(d * d if kind == "l2" else jnp.abs(d))


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_std_normal_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """Log-probability (nats) of 8-bit images x in [-1, 1] under a Gaussian discretised to 256 bins."""
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_terms_bpd(out: jnp.ndarray, x0: jnp.ndarray, x_t: jnp.ndarray, i: jnp.ndarray,
                 schedule: Schedule) -> jnp.ndarray:
  """One step's term of the variational bound in bits/dim, (B,): KL to the true posterior, or the decoder
  NLL at step 0; `out` is the [eps, v] output of a learned-range network."""
  true_mean = (_bcast(schedule.posterior_mean_coef1[i], x0) * x0
               + _bcast(schedule.posterior_mean_coef2[i], x0) * x_t)
  true_log_var = _bcast(schedule.posterior_log_variance_clipped[i], x0)
  p = samplers.p_mean_variance(out, x_t, i, schedule, variance="learned_range", clip_denoised=False)
  kl = _flat_mean(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
  nll = -_flat_mean(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])) / math.log(2.0)
  return jnp.where(i == 0, nll, kl)


def diffusion_loss(eps_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray], key: jax.Array,
                   x0: jnp.ndarray, schedule: Schedule, *, loss: str = "l2",
                   vb_weight: float = 1.0) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Mean training loss over the batch and its per-example parts.

  Args:
    eps_fn: network (x_t, t) -> C or 2C channels, parameters and conditioning closed over.
    key: randomness for the steps and the noise.
    x0: clean images (B, H, W, C) in [-1, 1].
    schedule: 'timestep' conditioning draws integer steps; 'noise_level' draws SR3's continuous abar.
    loss: 'l2' (DDPM/ADM) or 'l1' (SR3) on eps.
    vb_weight: weight of the one-step bound term when the network returns [eps, v] (hybrid loss; official:
      1, i.e. improved DDPM's lambda = 1e-3 on the full 1000-step bound). Unused for C-channel networks.

  Returns:
    (loss, {'eps': (B,), 'vb': (B,) if learned sigma, 't': (B,) network time input}).
  """
  b = x0.shape[0]
  key_t, key_n = jax.random.split(key)
  noise = jax.random.normal(key_n, x0.shape, jnp.float32)
  if schedule.conditioning == "noise_level":
    abar, i = schedules.sample_noise_level(key_t, schedule, b)
    t = NOISE_LEVEL_SCALE * abar
    x_t = q_sample(x0, abar, noise)
  else:
    i = jax.random.randint(key_t, (b,), 0, schedule.num_steps)
    t = schedule.model_t[i]
    x_t = q_sample_step(x0, i, noise, schedule)
  out = eps_fn(x_t, t)
  eps, v = samplers.split_output(out.astype(jnp.float32), x0.shape[-1])
  terms = {"eps": eps_loss(eps, noise, loss), "t": t}
  total = terms["eps"]
  if v is not None:
    if schedule.conditioning == "noise_level":
      raise ValueError("diffusion: the learned-variance bound needs discrete steps ('timestep' conditioning)")
    # The bound trains only the variance: the mean (eps) it sees is frozen, as in guided-diffusion.
    frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
    terms["vb"] = vb_terms_bpd(frozen, x0, x_t, i, schedule)
    total = total + vb_weight * terms["vb"]
  return total.mean(), terms
