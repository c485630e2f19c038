"""Noise schedules: betas, cumulative alphas, posterior coefficients, re-spacing, continuous noise levels.

The discrete definitions follow guided-diffusion (`get_named_beta_schedule`, `GaussianDiffusion.__init__`,
`respace.space_timesteps` / `SpacedDiffusion`), computed in float64 with numpy and stored as float32.
A `Schedule` is a pytree, so it can be passed into jitted samplers and losses.

Two ways to tell the network where it is in the chain (`Schedule.conditioning`):
  'timestep'     the model gets the (original, before re-spacing) integer timestep, as ADM does;
  'noise_level'  the model gets `NOISE_LEVEL_SCALE * abar` (SR3's gamma, scaled so that the sinusoidal
                 embedding sees the same range as timesteps 0..1000); in training abar is drawn uniformly
                 between neighbouring schedule values, so any schedule (e.g. 100 re-tuned steps) can be used
                 at inference.
"""

import math
from typing import Iterable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

NOISE_LEVEL_SCALE = 1000.0
CONDITIONINGS = ("timestep", "noise_level")


@flax.struct.dataclass
class Schedule:
  """Per-step arrays of a (possibly re-spaced) diffusion chain of `len(betas)` steps, step 0 = least noise."""

  betas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  posterior_variance: jnp.ndarray
  posterior_log_variance_clipped: jnp.ndarray
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray
  # Square roots taken in float64 before the cast, as guided-diffusion precomputes them: near abar = 1,
  # sqrt(1 - abar) from a float32 abar is off by up to 3e-4 relative (t = 0 of the linear schedule).
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  sqrt_recip_alphas_cumprod: jnp.ndarray
  sqrt_recipm1_alphas_cumprod: jnp.ndarray
  timesteps: jnp.ndarray  # original timestep index of each step (identity unless re-spaced)
  model_t: jnp.ndarray  # what the network receives as its time input at each step
  conditioning: str = flax.struct.field(pytree_node=False, default="timestep")

  @property
  def num_steps(self) -> int:
    return self.betas.shape[0]


def beta_schedule(name: str, num_steps: int) -> np.ndarray:
  """guided-diffusion's named schedules: 'linear' (1e-4..0.02 scaled by 1000/T) or 'cosine' (Nichol & Dhariwal)."""
  if num_steps < 1:
    raise ValueError(f"diffusion.num_steps must be positive, got {num_steps}")
  if name == "linear":
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
  if name == "cosine":
    return betas_for_alpha_bar(num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
  raise ValueError(f"diffusion.schedule: unknown {name!r} (known: 'linear', 'cosine')")


def betas_for_alpha_bar(num_steps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
  """Betas that discretise a continuous abar(t), t in [0, 1], clipped at `max_beta`."""
  t1 = np.arange(num_steps) / num_steps
  t2 = np.arange(1, num_steps + 1) / num_steps
  return np.array([min(1 - alpha_bar(b) / alpha_bar(a), max_beta) for a, b in zip(t1, t2)], np.float64)


def from_betas(betas: Sequence[float], timesteps: Iterable[int] | None = None,
               conditioning: str = "timestep") -> Schedule:
  """A Schedule from betas (float64 maths, float32 storage)."""
  if conditioning not in CONDITIONINGS:
    raise ValueError(f"diffusion.conditioning: unknown {conditioning!r} (known: {', '.join(CONDITIONINGS)})")
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
    raise ValueError("diffusion: betas must be a 1-D array in (0, 1]")
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  # Step 0's posterior variance is 0; the official code clips its log with step 1's value.
  post_log_var = np.log(np.append(post_var[1], post_var[1:])) if len(betas) > 1 else np.log(betas)
  timesteps = np.arange(len(betas)) if timesteps is None else np.asarray(list(timesteps))
  if timesteps.shape != betas.shape:
    raise ValueError(f"diffusion: {len(timesteps)} timesteps for {len(betas)} betas")
  model_t = timesteps.astype(np.float64) if conditioning == "timestep" else NOISE_LEVEL_SCALE * abar
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Schedule(
      betas=f32(betas),
      alphas_cumprod=f32(abar),
      alphas_cumprod_prev=f32(abar_prev),
      posterior_variance=f32(post_var),
      posterior_log_variance_clipped=f32(post_log_var),
      posterior_mean_coef1=f32(betas * np.sqrt(abar_prev) / (1.0 - abar)),
      posterior_mean_coef2=f32((1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)),
      sqrt_alphas_cumprod=f32(np.sqrt(abar)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - abar)),
      sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / abar)),
      sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / abar - 1.0)),
      timesteps=jnp.asarray(timesteps, jnp.int32),
      model_t=f32(model_t),
      conditioning=conditioning,
  )


def make(name: str, num_steps: int, conditioning: str = "timestep") -> Schedule:
  """The named schedule of `num_steps` steps."""
  return from_betas(beta_schedule(name, num_steps), conditioning=conditioning)


def space_timesteps(num_steps: int, section_counts: str | Sequence[int]) -> list[int]:
  """guided-diffusion's `space_timesteps`: steps kept from equal sections ('10,15,20'), or 'ddimN' striding."""
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired = int(section_counts[len("ddim"):])
      for stride in range(1, num_steps):
        if len(range(0, num_steps, stride)) == desired:
          return list(range(0, num_steps, stride))
      raise ValueError(f"diffusion.respacing: cannot take exactly {desired} of {num_steps} steps with an integer stride")
    section_counts = [int(x) for x in section_counts.split(",")]
  size_per, extra = divmod(num_steps, len(section_counts))
  start, steps = 0, []
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(f"diffusion.respacing: cannot divide a section of {size} steps into {count}")
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    steps += [start + round(stride * j) for j in range(count)]
    start += size
  return sorted(set(steps))


def respace(betas: Sequence[float], use_timesteps: Iterable[int], conditioning: str = "timestep") -> Schedule:
  """A shorter chain through the kept timesteps that keeps their abar values exactly (SpacedDiffusion)."""
  abar = np.cumprod(1.0 - np.asarray(betas, np.float64))
  keep = sorted(set(int(t) for t in use_timesteps))
  if not keep or keep[0] < 0 or keep[-1] >= len(abar):
    raise ValueError(f"diffusion.respacing: timesteps must lie in [0, {len(abar)})")
  kept = abar[keep]
  new_betas = 1.0 - kept / np.append(1.0, kept[:-1])
  return from_betas(new_betas, timesteps=keep, conditioning=conditioning)


def sample_noise_level(key: jax.Array, schedule: Schedule, batch: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """SR3's continuous noise level: step i ~ U{0..N-1}, abar ~ U(abar_i, abar_{i-1}) with abar_{-1} = 1.

  Returns (abar, step) of shape (batch,); the network input for it is `NOISE_LEVEL_SCALE * abar`.
  """
  key_i, key_u = jax.random.split(key)
  i = jax.random.randint(key_i, (batch,), 0, schedule.num_steps)
  lo, hi = schedule.alphas_cumprod[i], schedule.alphas_cumprod_prev[i]
  return lo + (hi - lo) * jax.random.uniform(key_u, (batch,)), i
