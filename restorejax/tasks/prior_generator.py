"""Generated priors: a trained diffusion run's rewrite of the degraded image, then GPT-4o-like changes.

Simulated priors (`restorejax.data.priors.simulate_prior` applied to the target) carry the target's
exact pixels at low severity. A generated prior never sees the target: a diffusion model rewrites the
degraded image and the geometric and tonal changes of `data/priors.py` are applied to that rewrite.

Two generators, both read from a run directory (`load`):
- a 'diffusion' run (an unconditional ADM UNet, configs/diffusion_prior.py, or converted official weights):
  SDEdit (`restorejax.diffusion.sdedit`): the degraded image is noised to `strength` of the sampling
  chain and denoised back. The network sees tiles of its own training size (`tile`, blended at every
  step, `restorejax.diffusion.tiled`) at the scale it learned: a run trained on `patch_size` crops
  resized to `diffusion.image_size` learned content `patch_size / image_size` times smaller, so the image
  is bicubic-downscaled by that factor first (`downscale`) and the result upscaled back.
- an 'sr3' run (conditional diffusion on the degraded image: SR3, or Palette-style restoration with
  `data.scale` 1): the same chain, conditioned on the degraded image; strength 1 (the default for it)
  samples from noise, a smaller one starts from the noised bicubic upsampling. Output `scale` times larger.

`generate` is the pure function (network, parameters, degraded batch, key -> rewrite);
`generated_prior(generator, degraded, key, severity)` adds the changes. Neither takes a target.
"""

import dataclasses
import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from restorejax import checkpoint
from restorejax.data import priors, matlab_resize
from restorejax.diffusion import conditioning, schedules, sdedit, tiled
from restorejax.tasks import diffusion, sr3

KINDS = ("diffusion", "sr3")


def _pad(x: jnp.ndarray, multiple: int) -> jnp.ndarray:
  """NHWC padded at the bottom / right to multiples of `multiple` (reflected, or edge-repeated when the
  image is too small to reflect)."""
  h, w = x.shape[1:3]
  ph, pw = -h % multiple, -w % multiple
  if not (ph or pw):
    return x
  mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)


def _resize(x: jnp.ndarray, hw: tuple[int, int], scale: Optional[float] = None) -> jnp.ndarray:
  return jax.vmap(lambda im: matlab_resize.bicubic_resize(im, tuple(hw), scale=scale))(x)


def generate(model: Any, params: Any, degraded: jnp.ndarray, key: jax.Array, *, kind: str,
             schedule: schedules.Schedule, strength: float, sampler: str = "ddim", eta: float = 0.0,
             scale: int = 1, multiple: int = 1, downscale: int = 1, tile: int = 0, overlap: int = 0,
             augmented: bool = False, variance: str = "fixed_small") -> jnp.ndarray:
  """A diffusion model's rewrite of `degraded` (NHWC in [0, 1]) -> (B, h * scale, w * scale, 3) in [0, 1].

  `kind` 'diffusion': SDEdit with the unconditional network `model`; 'sr3': conditioned on `degraded`
  (bicubic-upsampled by `scale`). `schedule` is the full sampling chain, `strength` the fraction of it
  run; `multiple` the UNet's side multiple; `downscale` (diffusion only) the factor the image is reduced
  by before and enlarged by after; `tile` > 0 runs the network on tiles of that side (blended at every
  step), `augmented` feeds an SR3 network trained with conditioning augmentation its level-0 plane,
  `variance` is DDPM's (`samplers.VARIANCES`; 'learned_range' for a learned-sigma network). Deterministic
  given `key`.
  """
  if kind not in KINDS:
    raise ValueError(f"prior generator: unknown kind {kind!r} (known: {', '.join(KINDS)})")
  b, h, w, c = degraded.shape
  f = downscale if kind == "diffusion" else 1
  x = _pad(degraded.astype(jnp.float32), f * (multiple // math.gcd(multiple, scale)))
  ph, pw = x.shape[1:3]
  if f > 1:
    x = jnp.clip(_resize(x, (ph // f, pw // f), scale=1.0 / f), 0.0, 1.0)
  hw = (x.shape[1] * scale, x.shape[2] * scale)
  if kind == "diffusion":
    cond = jnp.zeros(x.shape[:3] + (1,), jnp.float32)  # unread: tiling cuts a conditioning like x
    start = x
    net = lambda x_t, t, cnd: model.apply({"params": params}, x_t, t)[0]
  else:
    cond = sr3.clean_conditioning(x, hw, augmented)
    start = jnp.clip((cond[..., :c] + 1.0) / 2.0, 0.0, 1.0)
    net = lambda x_t, t, cnd: model.apply({"params": params}, x_t, t, cond=cnd)[0]
  if tile and (tile < hw[0] or tile < hw[1]):
    net = tiled.tiled_eps_fn(net, hw, tile, overlap)
  out = sdedit.sdedit(lambda x_t, t: net(x_t, t, cond), key, start, schedule, strength=strength,
                      sampler=sampler, eta=eta, variance=variance)
  if f > 1:
    out = jnp.clip(_resize(out, (ph, pw)), 0.0, 1.0)
  return out[:, :h * scale, :w * scale]


@dataclasses.dataclass
class Generator:
  """A run directory's network and parameters with the sampling settings; `gen(degraded, key)`."""

  path: str
  kind: str
  model: Any
  params: Any
  settings: dict[str, Any]   # generate's keyword arguments (kind, schedule, strength, ...)

  def __post_init__(self):
    self._generate = jax.jit(functools.partial(generate, self.model, **self.settings))

  @property
  def scale(self) -> int:
    return self.settings["scale"]

  def __call__(self, degraded: np.ndarray, key: jax.Array) -> np.ndarray:
    """One (H, W, 3) image in [0, 1] -> its rewrite (H * scale, W * scale, 3) in [0, 1] (numpy)."""
    return np.asarray(self._generate(self.params, jnp.asarray(degraded, jnp.float32)[None], key)[0])

  def describe(self) -> str:
    s = self.settings
    return (f"{self.kind} run {self.path}: {s['sampler']} {s['schedule'].num_steps} steps, strength "
            f"{s['strength']} ({sdedit.steps_run(s['schedule'].num_steps, s['strength'])} run), tile "
            f"{s['tile'] or 'none'}, downscale {s['downscale']}, scale {s['scale']}")


class OptionError(ValueError):
  """A sampling option `load` was given does not suit the run; the message names the option."""


def _check_sampling(steps: int, train_steps: int, sampler: str, strength: float, tile: int, overlap: int,
                    multiple: int, downscale: int) -> None:
  if not 0.0 < strength <= 1.0:
    raise OptionError(f"strength={strength}: need a value in (0, 1]")
  if not 1 <= steps <= train_steps:
    raise OptionError(f"sample_steps={steps}: need 1..{train_steps} (the run's training schedule)")
  if sampler not in sdedit.SAMPLERS:
    raise OptionError(f"sampler={sampler}: unknown (known: {', '.join(sdedit.SAMPLERS)})")
  if tile < 0 or tile % multiple:
    raise OptionError(f"tile={tile}: need 0 (whole image) or a positive multiple of the UNet's {multiple}")
  if tile and not 0 <= overlap < tile:
    raise OptionError(f"overlap={overlap}: need 0 <= overlap < tile={tile}")
  if downscale < 1:
    raise OptionError(f"downscale={downscale}: need a positive integer")


def load(path: str, *, strength: Optional[float] = None, sample_steps: Optional[int] = None,
         sampler: Optional[str] = None, eta: Optional[float] = None, tile: Optional[int] = None,
         overlap: Optional[int] = None, downscale: Optional[int] = None) -> Generator:
  """The generator of a 'diffusion' or 'sr3' run directory (EMA parameters of its latest checkpoint, or
  params/); options left None take the run's own values (module doc). An unusable option is an
  `OptionError` naming it; any other ValueError (not a run, parameters that do not fit) starts with `path`."""
  try:
    config = checkpoint.read_config(path)
    kind = config.get("task", "restoration")
    if kind == "diffusion":
      task = diffusion.Diffusion(config)
      model = task.model
      if model.in_channels != 3:
        raise ValueError(f"SDEdit needs an unconditional RGB network (in_channels 3), this one has "
                         f"{model.in_channels}")
      d = config.diffusion
      learned = config.get("data", {}).get("patch_size", task.size) / task.size
      f = downscale or max(1, round(learned))
      steps = d.sample_steps if sample_steps is None else sample_steps
      sampler = sampler or "ddim"
      strength = 0.5 if strength is None else strength
      tile = task.size if tile is None else tile
      overlap = tile // 4 if overlap is None else overlap
      multiple = 2 ** (len(model.channel_mult) - 1)
      _check_sampling(steps, d.num_steps, sampler, strength, tile, overlap, multiple, f)
      schedule = schedules.respace(schedules.beta_schedule(d.schedule, d.num_steps),
                                   schedules.space_timesteps(d.num_steps, str(steps)))
      settings = dict(kind=kind, schedule=schedule, strength=float(strength), sampler=sampler,
                      eta=float(d.sample_eta if eta is None else eta), scale=1, multiple=multiple,
                      downscale=f, tile=tile, overlap=overlap, augmented=False,
                      variance="learned_range" if model.out_channels == 2 * model.in_channels else "fixed_small")
    elif kind == "sr3":
      task = sr3.SR3(config)
      model = task.model
      b = config.sr3
      if downscale not in (None, 0, 1):
        raise OptionError(f"downscale={downscale}: an sr3 run is conditioned on the image as it is")
      steps = b.sample_steps if sample_steps is None else sample_steps
      sampler = sampler or b.sampler
      strength = 1.0 if strength is None else strength
      tile = b.tile if tile is None else tile
      overlap = b.tile_overlap if overlap is None else overlap
      _check_sampling(steps, b.num_steps, sampler, strength, tile, overlap, task.multiple, 1)
      schedule = conditioning.sampling_schedule(b.schedule, b.num_steps, steps, b.noise_level)
      settings = dict(kind=kind, schedule=schedule, strength=float(strength), sampler=sampler,
                      eta=float(b.sample_eta if eta is None else eta), scale=task.scale, multiple=task.multiple,
                      downscale=1, tile=tile, overlap=overlap, augmented=b.augment != "none")
    else:
      raise ValueError(f"a run of task {kind!r}: priors are generated by a 'diffusion' run (SDEdit) or an "
                       "'sr3' run (conditional diffusion on the degraded image)")
    like = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    params = checkpoint.fit(checkpoint.load_params(path), like, "its parameters")
  except OptionError:
    raise
  except ValueError as e:
    message = str(e)
    raise ValueError(message if message.startswith(path) else f"{path}: {message}") from None
  return Generator(path, kind, model, params, settings)


_perturb = jax.jit(priors.simulate_prior)  # one compile per image size; severity is traced


def generated_prior(generator: Generator, degraded: np.ndarray, key: jax.Array, severity: float) -> np.ndarray:
  """`generator`'s rewrite of `degraded` (H, W, 3 in [0, 1]) with the GPT-4o-like geometric and tonal
  changes of `data.priors.simulate_prior` at `severity` (0: the rewrite as it is) -> HWC in [0, 1]."""
  key_gen, key_changes = jax.random.split(key)
  rewrite = generator(degraded, key_gen)
  return np.asarray(_perturb(key_changes, jnp.asarray(rewrite), jnp.float32(severity)))
