"""SR3: super-resolution by conditional diffusion (Saharia et al. 2021); also each stage of a cascade (CDM).

`config.task = 'sr3'`. A batch holds `target`, the HR patch, and `degraded`, the LR image at
1/`config.data.scale` of it (the super-resolution data path: HR crops on the host, LR made on the device
with MATLAB bicubic or read from LR/HR folders). The LR image is bicubic-upsampled to the HR size (MATLAB
`imresize`, `restorejax.data.matlab_resize`) and concatenated to the noisy HR image x_t ([-1, 1]); the ADM UNet
(`config.model`, name 'adm_unet', `in_channels` 6, or 7 with conditioning augmentation) predicts eps,
conditioned on the continuous noise level (`config.sr3.noise_level`: SR3's sqrt(abar) by default, see
`restorejax.diffusion.conditioning`), with an L1 (SR3) or L2 loss. EMA, mesh, checkpoints and resume come
from the trainer as for every task. Logged: `train/loss/eps`.

Sampling (`sample`, `make_sample_fn`): a pure function of (params, LR batch, key), jittable with the batch
sharded over devices: DDPM ancestral sampling (fixed small variance) or DDIM (`sample_eta`) along a
`sample_steps`-step re-spacing of the training schedule (<= 100 steps is the intended use), deterministic
given the key. `tile` > 0 samples images larger than the network's tile with the overlaps blended at
every step (`restorejax.diffusion.tiled`). Output: (B, h * scale, w * scale, 3) in [0, 1].

Cascades: with `config.sr3.augment` 'noise' (low-resolution stages) or 'blur' (high-resolution stages),
training augments the conditioning with a random level u in [0, 1] given to the network as an extra input
plane; sampling and evaluation never augment and feed level 0. `restorejax.cascade` chains stages.

Evaluation (EMA parameters, on the first `sample_count` held-out images): SR conventions (Y channel of
BT.601, `crop_border` = scale), `eval/psnr`, `eval/ssim` of the samples and `eval/bicubic_psnr`,
`eval/bicubic_ssim` of bicubic upsampling; SR3's consistency, `eval/consistency` = MSE (on [0, 1]) between
the bicubic-downsampled sample and the LR input (and `eval/bicubic_consistency`); `eval/loss`, the
held-out eps loss at fixed noise levels and noise; the grid `eval/samples` (rows: bicubic | sample |
target), which the trainer also writes to `<workdir>/samples.png`. The held-out LR images are the
source's own when it has them at 1/scale, else MATLAB bicubic downsamplings of the targets rounded to 8 bits
(plain bicubic SR, SR3's setting), whatever the training recipe.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from restorejax import models, reporting, sharding
from restorejax.data import batches, pipeline, matlab_resize
from restorejax.diffusion import conditioning, objectives, samplers, schedules, tiled
from restorejax.evaluation import metrics
from restorejax.tasks import protocol

SAMPLERS = ("ddpm", "ddim")


def default_config() -> ml_collections.ConfigDict:
  """The `config.sr3` block."""
  return ml_collections.ConfigDict({
      "schedule": "linear",        # training schedule: 'linear' (1e-4..0.02) or 'cosine'
      "num_steps": 1000,           # its steps; noise levels are drawn between neighbouring values
      "noise_level": "sqrt_abar",  # network input: 1000*sqrt(abar) (SR3) or 1000*abar ('abar')
      "loss": "l1",                # on eps: 'l1' (SR3) or 'l2'
      "sampler": "ddpm",           # 'ddpm' (ancestral) or 'ddim'
      "sample_steps": 100,         # re-spaced sampling chain
      "sample_eta": 0.0,           # DDIM's eta
      "sample_count": 4,           # held-out images sampled at each evaluation
      "augment": "none",           # conditioning augmentation: 'none', 'noise' (low res), 'blur' (high res)
      "augment_max": 0.0,          # noise: max std in [-1, 1] units; blur: max sigma in HR pixels
      "tile": 0,                   # > 0: sample in tiles of this size (HR pixels), blended at every step
      "tile_overlap": 16,
  })


def data_scale(config: ml_collections.ConfigDict) -> int:
  s = config.data.get("scale", 1)
  if int(s) != s or s < 1:
    raise ValueError(f"config.data.scale: need a positive integer, got {s!r}")
  return int(s)


# ----------------------------------------------------------------------------------------------------
# Conditioning: LR batch in [0, 1] -> the network's conditioning channels at the HR size, in [-1, 1].
# ----------------------------------------------------------------------------------------------------

def bicubic_up(lr: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
  """MATLAB bicubic upsampling of an NHWC batch to `hw` (any value range: rows of weights sum to 1)."""
  return jax.vmap(lambda im: matlab_resize.bicubic_resize(im, tuple(hw)))(lr.astype(jnp.float32))


def bicubic_down(hr: jnp.ndarray, scale: int) -> jnp.ndarray:
  """MATLAB `imresize(x, 1/scale, 'bicubic')` (antialiased) of an NHWC batch."""
  h, w = hr.shape[1:3]
  return jax.vmap(lambda im: matlab_resize.bicubic_resize(im, (h // scale, w // scale), scale=1.0 / scale))(
      hr.astype(jnp.float32))


def clean_conditioning(lr: jnp.ndarray, hw: tuple[int, int], augmented: bool) -> jnp.ndarray:
  """Sampling / evaluation conditioning: the upsampled LR (+ a level-0 plane for augmented models)."""
  cond = bicubic_up(2.0 * lr - 1.0, hw)
  if augmented:
    cond = jnp.concatenate([cond, conditioning.level_plane(jnp.zeros(lr.shape[0]), hw)], axis=-1)
  return cond


def training_conditioning(key: jax.Array, lr: jnp.ndarray, hw: tuple[int, int], kind: str,
                          max_level: float) -> jnp.ndarray:
  """Training conditioning: as `clean_conditioning`, augmented (and its level plane) when `kind` != 'none'."""
  if kind == "none":
    return clean_conditioning(lr, hw, augmented=False)
  cond, level = conditioning.augment(key, 2.0 * lr - 1.0, lambda x: bicubic_up(x, hw), kind=kind,
                                     max_level=max_level)
  return jnp.concatenate([cond, conditioning.level_plane(level, hw)], axis=-1)


# ----------------------------------------------------------------------------------------------------
# Sampling: a pure function of (params, LR, key).
# ----------------------------------------------------------------------------------------------------

def sample(model, params, lr: jnp.ndarray, key: jax.Array, *, scale: int, schedule: schedules.Schedule,
           sampler: str = "ddpm", eta: float = 0.0, augmented: bool = False, tile: int = 0,
           overlap: int = 16) -> jnp.ndarray:
  """HR samples (B, h * scale, w * scale, 3) in [0, 1] for an LR batch (B, h, w, 3) in [0, 1].

  `schedule` is a noise-level sampling schedule (`conditioning.sampling_schedule`); `tile` > 0 (HR pixels)
  runs the network on overlapping tiles blended at every step (`diffusion.tiled`).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sr3.sampler: unknown {sampler!r} (known: {', '.join(SAMPLERS)})")
  b, h, w, c = lr.shape
  hw = (h * scale, w * scale)
  cond = clean_conditioning(lr, hw, augmented)

  def net(x, t, cnd):
    out, _ = model.apply({"params": params}, x, t, cond=cnd)
    return samplers.split_output(out.astype(jnp.float32), c)[0]

  if tile and (tile < hw[0] or tile < hw[1]):
    net = tiled.tiled_eps_fn(net, hw, tile, overlap)
  eps_fn = lambda x, t: net(x, t, cond)
  shape = (b,) + hw + (c,)
  if sampler == "ddpm":
    x0 = samplers.ddpm_sample(eps_fn, key, shape, schedule, variance="fixed_small")
  else:
    x0 = samplers.ddim_sample(eps_fn, key, shape, schedule, eta=eta)
  return jnp.clip((x0 + 1.0) / 2.0, 0.0, 1.0)


def make_sample_fn(model, block: ml_collections.ConfigDict, scale: int, **overrides: Any) -> Callable:
  """`fn(params, lr, key) -> HR samples` with the settings of a `config.sr3` block (`overrides`:
  sample_steps, sampler, sample_eta, tile, tile_overlap)."""
  cfg = {k: block[k] for k in ("sample_steps", "sampler", "sample_eta", "tile", "tile_overlap")}
  for k, v in overrides.items():
    if k not in cfg:
      raise ValueError(f"sr3 sampling: unknown option {k!r} (known: {', '.join(cfg)})")
    if v is not None:
      cfg[k] = v
  schedule = conditioning.sampling_schedule(block.schedule, block.num_steps, int(cfg["sample_steps"]),
                                            block.noise_level)
  augmented = block.augment != "none"
  kw = dict(scale=scale, schedule=schedule, sampler=cfg["sampler"], eta=float(cfg["sample_eta"]),
            augmented=augmented, tile=int(cfg["tile"]), overlap=int(cfg["tile_overlap"]))
  if cfg["sampler"] not in SAMPLERS:
    raise ValueError(f"sr3.sampler: unknown {cfg['sampler']!r} (known: {', '.join(SAMPLERS)})")
  return lambda params, lr, key: sample(model, params, lr, key, **kw)


def consistency(sr: jnp.ndarray, lr: jnp.ndarray, scale: int) -> jnp.ndarray:
  """SR3's consistency, per image (B,): MSE on [0, 1] between the bicubic-downsampled sample and the LR."""
  d = bicubic_down(sr, scale) - lr.astype(jnp.float32)
  return jnp.mean(d * d, axis=(1, 2, 3))


# ----------------------------------------------------------------------------------------------------
# The task.
# ----------------------------------------------------------------------------------------------------

class SR3:
  """The 'sr3' task (a `tasks.Task`; see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict):
    if config.model.get("name") != "adm_unet":
      raise ValueError(f"config.model.name: the sr3 task trains 'adm_unet', not {config.model.get('name')!r}")
    if "sr3" not in config:
      raise ValueError("config.sr3: missing (the SR3 block, restorejax.tasks.sr3.default_config())")
    self.config = config
    b = config.sr3
    self.model = models.build(config.model)
    if self.model.num_classes is not None:
      raise ValueError("config.model.num_classes: SR3 networks are not class-conditional; set it to None")
    if self.model.out_channels != 3:
      raise ValueError(f"config.model.out_channels: SR3 predicts eps only (3 channels), "
                       f"got {self.model.out_channels}")
    if b.augment not in conditioning.AUGMENTS:
      raise ValueError(f"config.sr3.augment: unknown {b.augment!r} (known: {', '.join(conditioning.AUGMENTS)})")
    if b.augment != "none" and not b.augment_max > 0:
      raise ValueError(f"config.sr3.augment_max: augmentation {b.augment!r} needs a positive maximum, "
                       f"got {b.augment_max}")
    want = conditioning.expected_in_channels(3, b.augment)
    if self.model.in_channels != want:
      raise ValueError(f"config.model.in_channels: SR3 with augment={b.augment!r} needs {want} "
                       f"(noisy image + upsampled LR{' + level plane' if want == 7 else ''}), "
                       f"got {self.model.in_channels}")
    conditioning.check_mode(b.noise_level)
    objectives.eps_loss(jnp.zeros(1), jnp.zeros(1), b.loss)  # an unknown loss name fails here, not in jit
    if b.sampler not in SAMPLERS:
      raise ValueError(f"config.sr3.sampler: unknown {b.sampler!r} (known: {', '.join(SAMPLERS)})")
    self.scale = data_scale(config)
    self.multiple = 2 ** (len(self.model.channel_mult) - 1)
    p = config.data.patch_size
    if p % self.scale or p % self.multiple:
      raise ValueError(f"config.data.patch_size={p} must be a multiple of config.data.scale={self.scale} and "
                       f"of the UNet's {self.multiple} (2 ** (levels - 1))")
    self.schedule = schedules.make(b.schedule, b.num_steps, conditioning="noise_level")
    self.sample_fn = make_sample_fn(self.model, b, self.scale)  # validates the sampling schedule now
    self.size = p
    self.aux = {}

  def init_params(self, rng: jax.Array) -> Any:
    p = self.size
    x = jnp.zeros((1, p, p, 3), jnp.float32)
    cond = jnp.zeros((1, p, p, self.model.in_channels - 3), jnp.float32)
    return self.model.init(rng, x, jnp.zeros((1,)), cond=cond)["params"]

  def check_batch(self, hr: jnp.ndarray, lr: jnp.ndarray) -> None:
    s = self.scale
    if lr.shape[1] * s != hr.shape[1] or lr.shape[2] * s != hr.shape[2]:
      raise ValueError(f"sr3: batch 'degraded' is {lr.shape[1]}x{lr.shape[2]} for a {hr.shape[1]}x{hr.shape[2]} "
                       f"target; it must be the LR image at 1/config.data.scale={s} (the super-resolution data path)")

  def eps_loss(self, params, hr, cond, key, train: bool = False, dropout_key=None):
    """Per-example eps loss at a noise level and noise drawn from `key` (B,)."""
    b = self.config.sr3
    key_level, key_noise = jax.random.split(key)
    x0 = 2.0 * hr.astype(jnp.float32) - 1.0
    abar, t = conditioning.sample_abar(key_level, self.schedule, x0.shape[0], b.noise_level)
    noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
    x_t = objectives.q_sample(x0, abar, noise)
    rngs = {"dropout": dropout_key} if train else {}
    out, _ = self.model.apply({"params": params}, x_t, t, cond=cond, train=train, rngs=rngs)
    eps, _ = samplers.split_output(out.astype(jnp.float32), 3)
    return objectives.eps_loss(eps, noise, b.loss)

  def loss(self, params, batch, rng, aux):
    del aux
    b = self.config.sr3
    hr, lr = batch["target"], batch["degraded"]
    self.check_batch(hr, lr)
    key_loss, key_aug, key_dropout = jax.random.split(rng, 3)
    cond = training_conditioning(key_aug, lr, hr.shape[1:3], b.augment, b.augment_max)
    per_example = self.eps_loss(params, hr, cond, key_loss, train=self.model.dropout > 0,
                                dropout_key=key_dropout)
    return per_example.mean(), {"eps": per_example.mean()}

  def evaluator(self, mesh, batch_sharding) -> protocol.Evaluator:
    return SR3Evaluator(self, mesh, batch_sharding)


def _mod_crop(images: np.ndarray, multiple: int) -> np.ndarray:
  h, w = images.shape[1:3]
  return images[:, :h - h % multiple, :w - w % multiple]


def held_out(config: ml_collections.ConfigDict, scale: int, multiple: int,
             count: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `count` (at least 1) held-out (HR, LR) pairs, uint8: targets mod-cropped to multiples of
  `scale` and of the UNet's `multiple`; LR the source's own when it has them at 1/scale, else MATLAB
  bicubic downsamplings of the targets rounded to 8 bits (plain bicubic SR, SR3's setting)."""
  s = scale
  examples = pipeline.eval_examples(config)
  hr = _mod_crop(examples["target"], s * multiple // math.gcd(s, multiple))
  count = max(1, min(len(hr), int(count)))
  hr = hr[:count]
  lr = examples.get("degraded")
  if lr is not None and lr.shape[1] * s >= hr.shape[1] and lr.shape[2] * s >= hr.shape[2]:
    lr = lr[:count, :hr.shape[1] // s, :hr.shape[2] // s]
  else:  # plain bicubic SR of the held-out targets, rounded to 8 bits like a stored LR image
    lr = np.asarray(jax.jit(lambda x: jnp.round(jnp.clip(bicubic_down(x / 255.0, s), 0, 1) * 255.0))(hr))
    lr = lr.astype(np.uint8)
  return hr, lr


class SR3Evaluator:
  """Samples the first `sr3.sample_count` held-out images; SR metrics, consistency, bicubic baseline."""

  def __init__(self, task: SR3, mesh, batch_sharding):
    config, s = task.config, task.scale
    b = config.sr3
    self.task, self.scale = task, s
    self.key = batches.data_key(config, "eval")
    hr, lr = held_out(config, s, task.multiple, int(b.sample_count))
    count = len(hr)
    self.hr, self.lr = hr, lr
    bs = config.eval.batch_size
    index = np.arange(-(-count // bs) * bs) % count
    lr01 = lr[index].astype(np.float32) / 255.0
    hr01 = hr[index].astype(np.float32) / 255.0
    self.batches = [sharding.replicated_to_global({"lr": lr01[i:i + bs], "hr": hr01[i:i + bs],
                                                   "index": index[i:i + bs]}, batch_sharding)
                    for i in range(0, len(index), bs)]
    self.count = count
    self.sample = jax.jit(task.sample_fn, out_shardings=batch_sharding)

    def eval_loss(params, batch):  # fixed noise levels and noise per example: comparable across evaluations
      hw = batch["hr"].shape[1:3]
      keys = jax.vmap(lambda i: jax.random.fold_in(self.key, i))(batch["index"])
      cond = clean_conditioning(batch["lr"], hw, b.augment != "none")
      per = jax.vmap(lambda k, h, c: task.eps_loss(params, h[None], c[None], k)[0])(keys, batch["hr"], cond)
      return per

    self.loss_step = jax.jit(eval_loss, out_shardings=batch_sharding)
    self.bicubic = np.asarray(jax.jit(lambda x: jnp.clip(bicubic_up(x, hr.shape[1:3]), 0, 1))(
        lr.astype(np.float32) / 255.0))

  def __call__(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    samples, losses = [], []
    for i, batch in enumerate(self.batches):
      samples.append(sharding.to_host(self.sample(params, batch["lr"], jax.random.fold_in(self.key, 1000 + i))))
      losses.append(sharding.to_host(self.loss_step(params, batch)))
    sr = np.concatenate(samples)[:self.count]
    scores = sr_scores(sr, self.hr, self.lr, self.scale)
    bicubic = sr_scores(self.bicubic, self.hr, self.lr, self.scale)
    scalars = {f"eval/{k}": v for k, v in scores.items()}
    scalars.update({f"eval/bicubic_{k}": v for k, v in bicubic.items()})
    scalars["eval/loss"] = float(np.mean(np.concatenate(losses)[:self.count]))
    grid = reporting.image_grid(self.bicubic, sr, self.hr.astype(np.float32) / 255.0, count=self.count)
    return scalars, {"eval/samples": grid}


def sr_scores(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: int) -> dict[str, float]:
  """Means over images: PSNR/SSIM (Y channel, crop_border = scale) against `hr` (uint8) and consistency
  against `lr` (uint8) for `sr` in [0, 1]."""
  sr = jnp.asarray(sr, jnp.float32)
  border = scale if 2 * scale < min(hr.shape[1:3]) else 0
  return {
      "psnr": float(np.mean(np.asarray(metrics.psnr(sr, hr, crop_border=border, test_y_channel=True)))),
      "ssim": float(np.mean(np.asarray(metrics.ssim(sr, hr, crop_border=border, test_y_channel=True)))),
      "consistency": float(np.mean(np.asarray(consistency(sr, jnp.asarray(lr, jnp.float32) / 255.0, scale)))),
  }
