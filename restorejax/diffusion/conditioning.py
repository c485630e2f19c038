"""SR3 / cascaded-diffusion conditioning: the continuous noise level and conditioning augmentation.

Noise level (`mode`), the network's time input, both continuous so any inference schedule works:
  'sqrt_abar'  SR3 (Saharia et al. 2021, sec. 2.4, and its code): sqrt(gamma) = sqrt(abar) is drawn
               uniformly between the neighbouring values sqrt(abar_i) and sqrt(abar_{i-1}) of the training
               schedule (step i uniform, abar_{-1} = 1) and the network sees `NOISE_LEVEL_SCALE * sqrt(abar)`;
  'abar'       the same with abar itself (`schedules.sample_noise_level`), network input `1000 * abar`.
Sampling schedules (`sampling_schedule`) are re-spaced chains whose network input is the same function of
their abar values.

Conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models", sec. 3.2; training only):
  'noise'  Gaussian noise of std `u * max_level` ([-1, 1] units) on the low-resolution conditioning,
           before it is upsampled (their choice for the low-resolution stages);
  'blur'   Gaussian blur of sigma `u * max_level` (pixels of the high-resolution image) on the upsampled
           conditioning (their choice for the high-resolution stages);
with u ~ U(0, 1) per example. u is the augmentation level the network is told about: `level_plane` turns
it into one constant input channel concatenated to the conditioning (the ADM UNet has no second scalar
embedding; a plane carries the same information to every layer through the convolutions). Sampling and
evaluation never call `augment`: they feed level 0, the clean conditioning (a previous stage's sample).
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from restorejax.diffusion import schedules
from restorejax.diffusion.schedules import NOISE_LEVEL_SCALE, Schedule

NOISE_LEVELS = ("sqrt_abar", "abar")
AUGMENTS = ("none", "noise", "blur")


def check_mode(mode: str) -> str:
  if mode not in NOISE_LEVELS:
    raise ValueError(f"sr3.noise_level: unknown {mode!r} (known: {', '.join(NOISE_LEVELS)})")
  return mode


def sample_abar(key: jax.Array, schedule: Schedule, batch: int, mode: str) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(abar, network time input), each (batch,), drawn as `mode` says (see the module docstring)."""
  check_mode(mode)
  if mode == "abar":
    abar, _ = schedules.sample_noise_level(key, schedule, batch)
    return abar, NOISE_LEVEL_SCALE * abar
  key_i, key_u = jax.random.split(key)
  i = jax.random.randint(key_i, (batch,), 0, schedule.num_steps)
  lo = schedule.sqrt_alphas_cumprod[i]
  hi = jnp.sqrt(schedule.alphas_cumprod_prev[i])
  root = lo + (hi - lo) * jax.random.uniform(key_u, (batch,))
  return root * root, NOISE_LEVEL_SCALE * root


def sampling_schedule(name: str, num_steps: int, sample_steps: int, mode: str) -> Schedule:
  """The `sample_steps`-step re-spacing of the `num_steps` training schedule (keeps its abar values), with
  the network input of `mode` at each step."""
  check_mode(mode)
  if not 1 <= sample_steps <= num_steps:
    raise ValueError(f"sr3.sample_steps: need 1..{num_steps} (the training schedule's steps), got {sample_steps}")
  betas = schedules.beta_schedule(name, num_steps)
  spaced = schedules.respace(betas, schedules.space_timesteps(num_steps, str(sample_steps)),
                             conditioning="noise_level")
  if mode == "sqrt_abar":
    spaced = spaced.replace(model_t=NOISE_LEVEL_SCALE * spaced.sqrt_alphas_cumprod)
  return spaced


def _blur_one(image: jnp.ndarray, sigma: jnp.ndarray, radius: int) -> jnp.ndarray:
  """Separable Gaussian blur of one HWC image, sigma traced (0 gives the image), reflected borders."""
  r = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-0.5 * (r / jnp.maximum(sigma, 1e-3)) ** 2)
  k = k / k.sum()
  h, w, _ = image.shape
  x = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
  x = sum(k[i] * x[i:i + h] for i in range(2 * radius + 1))
  return sum(k[i] * x[:, i:i + w] for i in range(2 * radius + 1))


def augment(key: jax.Array, lr: jnp.ndarray, upsample: Callable[[jnp.ndarray], jnp.ndarray], *, kind: str,
            max_level: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Training-time conditioning augmentation: LR (B, h, w, C) in [-1, 1] -> (augmented upsampled
  conditioning (B, H, W, C), level u (B,) in [0, 1]). `upsample` maps LR batches to the HR size."""
  if kind not in AUGMENTS or kind == "none":
    raise ValueError(f"sr3.augment: {kind!r} is not an augmentation (known: noise, blur)")
  key_u, key_n = jax.random.split(key)
  u = jax.random.uniform(key_u, (lr.shape[0],))
  if kind == "noise":
    sigma = (u * max_level).reshape(-1, 1, 1, 1)
    return upsample(lr + sigma * jax.random.normal(key_n, lr.shape, jnp.float32)), u
  radius = max(1, int(math.ceil(3.0 * max_level)))
  up = upsample(lr)
  if radius >= min(up.shape[1:3]):
    raise ValueError(f"sr3.augment_max: blur sigma {max_level} needs more than {up.shape[1]}x{up.shape[2]} pixels")
  return jax.vmap(lambda im, s: _blur_one(im, s, radius))(up, u * max_level), u


def level_plane(level: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
  """Augmentation level (B,) -> a constant (B, H, W, 1) input plane."""
  level = jnp.asarray(level, jnp.float32)
  return jnp.broadcast_to(level.reshape(-1, 1, 1, 1), (level.shape[0],) + tuple(hw) + (1,))


def expected_in_channels(channels: int, augment_kind: str) -> int:
  """Input channels of the SR3 network: noisy image + conditioning (+ the level plane when augmented)."""
  return 2 * channels + (0 if augment_kind == "none" else 1)

